"""What a user asks of a segmentation (``SegmentOptions``) and what determines its bits (``Settings``).

    options = SegmentOptions(tile=256, axes="zyx", workers=2)     # checked when made (validate)
    options.validate(Path("scan_labels.zarr"))                   # ... and against the output
    segment("model.pt", "scan.zarr", "scan_labels.zarr", options)

``SegmentOptions`` holds every user option of ``segment`` (the CLI builds one from argparse,
``nightly`` and ``compare`` pass one); ``None`` means "choose": ``block`` from the axes and the
volume (``plan.default_block``), ``axes``/``clean`` from the settings the model was validated
with (``xtrain.models.checkpoint.validated_inference``), ``workers``/``threads`` from the
machine or the Ray cluster.  ``plan.plan`` resolves them into ``Settings``, the frozen record of
everything the output depends on, written to job.json and compared on ``--resume``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from ..data.volumes.formats import OUTPUT_HDF5_SUFFIXES, OUTPUT_TIFF_SUFFIXES
from ..errors import InvalidInputError
from .predict import AXES, WINDOWS

NORMALISATIONS = ("auto", "train", "own", "peaks")  # xtrain.data.normalise.choose_mapping's modes
OUTPUT_SUFFIXES = (".zarr", *OUTPUT_TIFF_SUFFIXES, *OUTPUT_HDF5_SUFFIXES)


def _ints(value: object) -> tuple[int, ...] | None:
    """A sequence of sizes as a tuple of ints (lists from JSON, YAML or a test), None as it is."""
    return None if value is None else tuple(int(v) for v in value)  # type: ignore[union-attr]


@dataclass(frozen=True)
class SegmentOptions:
    """Every user option of ``segment`` (``xtrain segment --help`` says what each does).

    ``block``/``chunks``: (Z, Y, X) voxels; ``tile``/``halo``: voxels; ``axes``: "z" or "zyx";
    ``threads``: torch threads per worker; ``mask``: a volume spec, non-zero = sample.
    Raises ``InvalidInputError`` (one line naming the value and the fix) when made with a bad value.
    """

    block: tuple[int, int, int] | None = None  # None: plan.default_block(axes, shape)
    tile: int = 512
    halo: int = 16
    axes: str | None = None  # None: the model's validated setting, else "z"
    tta: bool = False
    probabilities: bool = False
    clean: bool | None = None  # None: the model's validated setting, else False
    window: str = "gaussian"
    batch_size: int | None = None  # None: about 256k input voxels per forward (predict.TILE_VOXELS)
    workers: int | None = None  # None: in-process (one per GPU with gpu)
    gpu: bool = False
    threads: int | None = None  # None: the recorded ones on --resume, else all cores / workers
    chunks: tuple[int, int, int] | None = None  # output chunks (data.layout.default_layout)
    shard: bool = True
    normalisation: str = "auto"
    dataset: str | None = None  # which volume of the input (xtrain.data.volumes.open_volume)
    channel: int | None = None
    time: int | None = None
    mask: str | None = None
    allow_missing: bool = False  # as open_volume: a foreign Zarr's absent chunks / a folder's number gaps, warned
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "block", _ints(self.block))
        object.__setattr__(self, "chunks", _ints(self.chunks))
        if self.mask is not None:
            object.__setattr__(self, "mask", str(self.mask))
        self.validate()

    @property
    def use_ray(self) -> bool:
        """Whether the blocks run on Ray actors (``gpu``, or more than one worker) instead of in-process."""
        return self.gpu or (self.workers or 1) > 1

    def validate(self, out: Path | None = None) -> None:
        """Refuse a bad option (and, given ``out``, an output it cannot write) with ``InvalidInputError``."""
        for name, shape in (("block", self.block), ("chunks", self.chunks)):
            if shape is not None and (len(shape) != 3 or min(shape) < 1):
                raise InvalidInputError(f"{name} {shape} must be three positive sizes Z,Y,X, e.g. 64,512,512")
        if self.tile < 8:
            raise InvalidInputError(f"tile {self.tile} is too small; use at least 8 (default 512)")
        if not 0 <= 2 * self.halo < self.tile:
            raise InvalidInputError(f"halo {self.halo} must be >= 0 and less than half the tile ({self.tile}); "
                                    "e.g. --halo 16")
        for name, value, valid in (("axes", self.axes, AXES), ("window", self.window, WINDOWS),
                                   ("normalisation", self.normalisation, NORMALISATIONS)):
            if value is not None and value not in valid:
                raise InvalidInputError(f"{name} '{value}' is not one of {', '.join(valid)}")
        for name, value in (("workers", self.workers), ("batch size", self.batch_size), ("threads", self.threads)):
            if value is not None and value < 1:
                raise InvalidInputError(f"{name} {value} must be at least 1")
        if out is not None:
            _check_output_name(Path(out), self.probabilities)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names (what the CLI copies from argparse)."""
        return tuple(f.name for f in fields(cls))


def _check_output_name(out: Path, probabilities: bool) -> None:
    suffix = out.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise InvalidInputError(f"output '{out}' must end in .zarr (OME-Zarr), .tif/.tiff (ImageJ TIFF) or "
                                ".h5/.hdf5/.nxs (NeXus HDF5)")
    if probabilities and suffix != ".zarr":
        raise InvalidInputError(f"--probabilities needs a .zarr output (a TIFF or HDF5 file holds labels only); "
                                f"use e.g. '{out.with_suffix('.zarr')}'")


@dataclass(frozen=True)
class Settings:
    """Everything that determines the output bits; recorded in job.json and checked on --resume.

    Add fields at the end with a default (job.json records of earlier runs lack them)."""

    block: tuple[int, int, int]  # after rounding up to the output shards
    tile: int
    halo: int
    axes: str
    tta: bool
    probabilities: bool
    window: str
    batch_size: int | None
    threads: int  # torch threads per worker: oneDNN results depend on it in the 7th digit
    chunks: tuple[int, int, int] | None
    shard: bool
    clean: bool = False  # 3D majority filter over the probabilities (postprocess.py)
