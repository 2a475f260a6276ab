"""The steps of one labelling round, without Qt: what the dock widget runs in its worker threads.

    seg = segment_volume("model.pt", "scan.zarr", work, axes="z", progress=bar, should_stop=stop.is_set)
    picks = ranked_planes(seg, n=10, axes="z", labelled={"z": [40]})      # suggest's ranking of seg's entropy
    report = save_painted("scan-labels.zarr", painted, classes=classes, image=image)   # xtrain.data.painted
    new = finetune("scan-labels.zarr", "model.pt", run_dir, progress, should_stop)  # .finetune: in-process

Each one is the library's own code (``xtrain.infer.segment`` with ``--probabilities``,
``xtrain.infer.suggest``, ``xtrain.data.painted``), so the widget's results are those of the CLI; ``finetune``
(finetune.py) is the one-process fine-tune of an interactive round (no Ray start-up).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..data.volumes import Volume, array_volume, open_volume
from ..infer.suggest import SPACING, Pick, entropy_scores, pick_planes
from ..stop import never
from .finetune import STEPS as FINETUNE_STEPS
from .finetune import finetune

log = logging.getLogger(__name__)

__all__ = ["FINETUNE_STEPS", "finetune", "ranked_planes", "segment_volume", "volume_of"]


def volume_of(source: "str | os.PathLike | np.ndarray", name: str = "layer") -> Volume:
    """The raw volume behind an image layer: a path (an xtrain store or any format ``open_volume`` reads)
    or the layer's (Z, Y, X) array (read into memory: the interactive, small-volume case)."""
    if isinstance(source, (str, os.PathLike)):
        return open_volume(source)
    return array_volume(np.asarray(source), spec=name)


def segment_volume(model: str | os.PathLike, volume: str | os.PathLike | Volume, out: str | os.PathLike, *,
                   axes: str = "z", progress: Callable[[int, int], None] | None = None,
                   should_stop: Callable[[], bool] = never) -> Path:
    """``xtrain segment MODEL VOLUME OUT --probabilities --axes AXES`` in this process; ``progress(done, total)``
    in voxels after each block.  Raises ``RunInterrupted`` once ``should_stop()`` (the blocks in flight are
    abandoned) and every error ``segment`` raises."""
    from ..infer import segment

    vol = open_volume(volume)
    total = int(np.prod(vol.shape))
    done = [0]

    def on_block(block) -> None:
        done[0] += block.voxels
        if progress is not None:
            progress(done[0], total)

    return segment(model, vol, out, axes=axes, probabilities=True, should_stop=should_stop, on_block=on_block)


def ranked_planes(segmentation: str | os.PathLike, n: int, *, axes: str = "z", spacing: int = SPACING,
                  labelled: Mapping[str, Sequence[int]] | None = None) -> list[Pick]:
    """The ``n`` planes ``xtrain suggest --score entropy`` picks, from the entropy a ``--probabilities``
    segmentation stored (no second prediction): z-planes for ``axes`` "z", planes normal to z, y and x for "zyx".
    ``labelled``: axis -> planes already labelled (skipped, and kept ``spacing`` planes away from)."""
    from ..data.store import open_segmentation

    scores = entropy_scores(open_segmentation(segmentation).entropy)
    planes = ("z",) if axes == "z" else ("z", "y", "x")
    return pick_planes({a: scores[a] for a in planes}, n, spacing, labelled)
