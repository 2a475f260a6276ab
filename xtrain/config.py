"""Typed configuration: YAML files -> a tree of dataclasses, with ``--set`` overrides.

    cfg = load_config("configs/unet.yaml", overrides=["optim.lr=3e-4", "data.patch=96"])
    cfg.optim.lr            # 0.0003
    save_config(cfg, run_dir / "config.yaml")   # the resolved config beside every output

Unknown keys are errors that name the closest valid key; values are checked against the
field types (an int where a float is expected is fine, a string is not).  Free-form
dictionaries (``model.kwargs``, ``tune.space``) are passed through and checked by whoever
consumes them (``create_model`` checks model keyword arguments).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, InputNotFoundError, UnknownNameError


@dataclass
class AugmentConfig:
    flips: bool = True  # random flips along Y and X
    rot90: bool = True  # random multiples of 90 degrees in the patch plane
    intensity_scale: float = 0.1  # multiply by U(1-s, 1+s) after normalisation
    intensity_shift: float = 0.1  # add U(-s, s) after normalisation
    noise_std: float = 0.0  # Gaussian noise (in normalised units) ...
    noise_fraction: float = 0.0  # ... applied to this fraction of training samples (noise study)

    def __post_init__(self):
        if not 0.0 <= self.noise_fraction <= 1.0 or self.noise_std < 0:
            raise ConfigError(f"data.augment.noise_fraction={self.noise_fraction} must be in [0, 1] and "
                              f"noise_std={self.noise_std} >= 0")


@dataclass
class DataConfig:
    store: str = ""  # path of the Zarr store (usually given by --data)
    patch: int = 64  # patch edge in pixels (patches are patch x patch)
    slices: int = 1  # 2.5D: number of neighbouring slices stacked as channels (odd)
    axis: str = "z"  # slicing axis of training patches: z, y, x, or "any" (random per sample)
    train_z: list[int] | None = None  # [start, stop) of the training slab; None: from val_fraction
    val_z: list[int] | None = None  # [start, stop) of the validation slab
    val_fraction: float = 0.2  # used when train_z/val_z are not given: last fraction of z
    gap: int = 4  # slices left out between train and validation slabs (neighbours leak)
    fraction: float = 1.0  # fraction of the training slab used (data-size studies)
    samples_per_epoch: int = 2048  # random training patches per epoch (all workers together)
    val_patches: int = 256  # validation patches on a fixed grid (upper bound); val_mode "patches"
    # validation: "patches" (the z-plane grid above) or "slab" (every z-plane of the validation
    # slab whole, as `segment --axes z` does; adds the TPB ratio and phase-fraction error)
    val_mode: str = "patches"
    loader_workers: int = 2  # torch DataLoader worker processes per training worker
    cache_mb: int = 256  # decoded-chunk LRU cache per reading process (0: off); see data/chunkcache.py
    # sparse labels: this share of the training patches is drawn uniformly over the training region (the dense
    # draw), so they are nearly all unlabelled pixels, for train.pseudo_weight (self-training); 0: every patch
    # around a labelled voxel, as without it.  No effect on dense labels.
    unlabelled_fraction: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self):
        _check_choice("data.val_mode", self.val_mode, VAL_MODES)
        if self.patch < 1:
            raise ConfigError(f"data.patch={self.patch} must be a positive number of pixels; e.g. --set data.patch=64")
        if self.slices < 1 or self.slices % 2 == 0:
            raise ConfigError(f"data.slices={self.slices} must be odd (centre slice plus neighbours); "
                              "e.g. --set data.slices=3")
        if self.axis not in AXIS_CHOICES:
            raise ConfigError(f"data.axis='{self.axis}' is not one of {', '.join(AXIS_CHOICES)}; e.g. --set data.axis=z")
        if self.samples_per_epoch < 1:
            raise ConfigError(f"data.samples_per_epoch={self.samples_per_epoch} must be >= 1; "
                              "e.g. --set data.samples_per_epoch=2048")
        if self.val_patches < 1:
            raise ConfigError(f"data.val_patches={self.val_patches} must be >= 1; e.g. --set data.val_patches=256")
        _check_range("data.loader_workers", self.loader_workers, 0, None)
        _check_range("data.cache_mb", self.cache_mb, 0, None)
        # < 1: some patches must be drawn around labels, or the supervised loss has (nearly) nothing to learn from
        _check_range("data.unlabelled_fraction", self.unlabelled_fraction, 0.0, 1.0, high_open=True)
        self._check_slabs()

    def _check_slabs(self) -> None:
        """The z-slab settings that need no volume (split_regions checks them against its depth)."""
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"data.fraction={self.fraction} must be in (0, 1]; e.g. --set data.fraction=0.25")
        if self.gap < 0:
            raise ConfigError(f"data.gap={self.gap} must be >= 0; e.g. --set data.gap=4")
        if self.val_z is None and not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={self.val_fraction} must be in (0, 1); "
                              "e.g. --set data.val_fraction=0.2")
        for key in ("train_z", "val_z"):
            value = getattr(self, key)
            if value is None:
                continue
            if len(value) != 2:
                raise ConfigError(f"data.{key}={list(value)} must be [start, stop); e.g. --set data.{key}=[0,200]")
            if value[0] >= value[1]:
                raise ConfigError(f"data.{key}={list(value)} is empty; give [start, stop) with start < stop")
            if value[0] < 0:
                raise ConfigError(f"data.{key}={list(value)} is outside the volume's z range, which starts at 0; "
                                  "set it within")
        if self.train_z is not None and self.val_z is not None:
            check_slabs_apart(tuple(self.train_z), tuple(self.val_z), self.gap)


def check_slabs_apart(train: tuple[int, int], val: tuple[int, int], gap: int) -> None:
    """Refuse training and validation z-slabs [z0, z1) that overlap or lie closer than ``gap`` slices."""
    if train[0] < val[1] and val[0] < train[1]:
        raise ConfigError(f"data.train_z={list(train)} and data.val_z={list(val)} overlap; make them disjoint")
    apart = val[0] - train[1] if train[1] <= val[0] else train[0] - val[1]
    if apart < gap:
        raise ConfigError(f"data.train_z={list(train)} and data.val_z={list(val)} are {apart} slices apart but "
                          f"data.gap={gap}; move them apart or lower data.gap")


@dataclass
class ModelConfig:
    name: str = "unet"  # a name registered in xtrain.models (create_model lists them)
    kwargs: dict[str, Any] = field(default_factory=dict)  # keyword arguments of that model


@dataclass
class OptimConfig:
    lr: float = 1e-3
    beta1: float = 0.9  # Adam beta1: matters most for the GAN, so sweeps tune it
    beta2: float = 0.999
    weight_decay: float = 0.0
    d_lr: float | None = None  # Pix2Pix discriminator learning rate (None: same as lr)
    # learning-rate schedule per optimiser step (xtrain/train/recipe.py): constant; cosine
    # (linear warm-up from 0, then cosine down to lr * min_lr_ratio); onecycle (torch OneCycleLR)
    schedule: str = "constant"
    warmup: float = 0.05  # fraction of all steps spent warming up (cosine and onecycle)
    min_lr_ratio: float = 0.01  # cosine: final lr / lr

    def __post_init__(self):
        _check_choice("optim.schedule", self.schedule, SCHEDULES)
        _check_range("optim.lr", self.lr, 0.0, None, low_open=True)
        if self.d_lr is not None:
            _check_range("optim.d_lr", self.d_lr, 0.0, None)
        _check_range("optim.warmup", self.warmup, 0.0, 1.0, high_open=True)
        _check_range("optim.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)


@dataclass
class LossConfig:
    name: str = "ce+dice"  # ce, dice, or ce+dice
    class_weights: list[float] | None = None
    adversarial_weight: float = 0.05  # Pix2Pix: lambda in seg_loss + lambda * adversarial
    # image-aware pairwise (CRF) loss for sparse labels (xtrain/train/pairwise.py; off by default):
    # loss += crf_weight * relaxed Potts term, neighbours within crf_radius px weighted by
    # exp(-dI^2 / 2 crf_sigma^2) exp(-d^2 / 2 crf_sigma_xy^2) on the normalised centre slice
    crf_weight: float = 0.0  # 0: off
    crf_radius: int = 2
    crf_sigma: float = 0.1
    crf_sigma_xy: float = 6.0

    def __post_init__(self):  # the name and class weights are checked by create_loss (train/losses.py)
        _check_range("loss.adversarial_weight", self.adversarial_weight, 0.0, None)
        _check_range("loss.crf_weight", self.crf_weight, 0.0, None)
        _check_range("loss.crf_radius", self.crf_radius, 1, 8)
        _check_range("loss.crf_sigma", self.crf_sigma, 0.0, None, low_open=True)
        _check_range("loss.crf_sigma_xy", self.crf_sigma_xy, 0.0, None, low_open=True)


@dataclass
class TrainConfig:
    epochs: int = 35
    batch_size: int = 16  # per worker
    seed: int = 0
    workers: int = 2  # Ray Train workers (one per GPU on a GPU node)
    use_gpu: bool = False
    amp: bool = True  # bf16 autocast on GPU (ignored on CPU)
    max_failures: int = 2  # worker deaths Ray Train recovers from by restarting
    ema_decay: float = 0.0  # EMA of the weights (0: off): ema = d * ema + (1 - d) * w after each step;
    #                         validation and model.pt use the EMA weights
    ema_warmup: bool = True  # decay min(d, (1 + n) / (10 + n)) at update n (TensorFlow's EMA warm-up)
    sync_bn: bool = True  # DDP with > 1 worker: BatchNorm statistics over the global batch (recipe.py)
    select: str = "dice"  # model.pt selection: dice, or dice+tpb (needs data.val_mode=slab)
    select_tpb_weight: float = 0.1  # dice+tpb score = mean Dice - weight * |TPB ratio - 1|
    # fine-tuning: a model.pt whose weights the run starts from (architecture and classes must match;
    # normalisation, optimiser and lr schedule are the run's own: xtrain/train/finetune.py); None: from scratch
    init: str | None = None
    # self-training from the EMA teacher (xtrain/train/self_training.py; needs ema_decay > 0; off by default):
    # loss += pseudo_weight * CE(student, teacher's argmax) over unlabelled pixels where the teacher's max
    # softmax probability >= pseudo_threshold, from step round(pseudo_start * all steps) on
    pseudo_weight: float = 0.0  # 0: off
    pseudo_threshold: float = 0.9
    pseudo_start: float = 0.25  # fraction of the run's steps before pseudo-labels start (the teacher is poor early)

    def __post_init__(self):
        if self.workers < 1 or self.batch_size < 1 or self.epochs < 1:
            raise ConfigError("train.workers, train.batch_size and train.epochs must be >= 1; "
                              f"got {self.workers}, {self.batch_size}, {self.epochs}")
        _check_range("train.max_failures", self.max_failures, 0, None)
        _check_choice("train.select", self.select, SELECT)
        _check_range("train.ema_decay", self.ema_decay, 0.0, 1.0, high_open=True)
        _check_range("train.select_tpb_weight", self.select_tpb_weight, 0.0, None)
        _check_range("train.pseudo_weight", self.pseudo_weight, 0.0, None)
        _check_range("train.pseudo_threshold", self.pseudo_threshold, 0.0, 1.0)
        _check_range("train.pseudo_start", self.pseudo_start, 0.0, 1.0, high_open=True)
        if self.pseudo_weight > 0 and self.ema_decay <= 0:
            raise ConfigError(f"train.pseudo_weight={self.pseudo_weight} needs train.ema_decay > 0: the EMA weights "
                              "are the teacher; e.g. --set train.ema_decay=0.995")


@dataclass
class TuneConfig:
    """``xtrain tune``: a search space over any config key (see xtrain/tune/space.py)."""

    space: dict[str, Any] = field(default_factory=dict)  # dotted key -> {loguniform: [a, b]} | {grid: [...]} ...
    num_samples: int = 8  # trials (with grid axes: repeats of the whole grid); --trials overrides
    scheduler: str = "asha"  # asha (early stopping) or fifo (every trial runs all epochs: studies)
    metric: str = "val_mean_dice"  # reported every epoch by the train loop
    mode: str = "max"
    grace_period: int = 1  # ASHA: epochs every trial runs before it may be stopped
    reduction_factor: int = 2  # ASHA: keep the best 1/reduction_factor at each rung
    max_concurrent: int = 0  # 0: as many trials at once as the cluster's CPUs (GPUs) hold
    seed: int | None = None  # seed of the random search (None: different samples each sweep)

    def __post_init__(self):
        if self.scheduler not in TUNE_SCHEDULERS:
            raise UnknownNameError("tune scheduler", self.scheduler, TUNE_SCHEDULERS, where="tune.scheduler")
        if self.mode not in ("max", "min"):
            raise UnknownNameError("tune mode", self.mode, ("max", "min"), where="tune.mode")
        if self.num_samples < 1 or self.grace_period < 1 or self.reduction_factor < 2 or self.max_concurrent < 0:
            raise ConfigError("tune.num_samples and tune.grace_period must be >= 1, tune.reduction_factor >= 2 and "
                              f"tune.max_concurrent >= 0; got {self.num_samples}, {self.grace_period}, "
                              f"{self.reduction_factor}, {self.max_concurrent}")
        metrics = ("val_mean_dice", "val_accuracy", "val_mean_iou", "train_loss", "best_mean_dice")
        if not (self.metric.startswith("val_") or self.metric.startswith("train_") or self.metric in metrics):
            raise UnknownNameError("tune metric", self.metric, metrics, where="tune.metric")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def __post_init__(self):
        if self.train.select == "dice+tpb" and self.data.val_mode != "slab":
            raise ConfigError("train.select=dice+tpb needs the TPB of whole validation planes; "
                              "also set data.val_mode=slab")
        # not done for Pix2Pix: whether the discriminator should see pseudo-labels as "real" masks, and whether
        # the pairwise term belongs to the generator's loss or to the adversarial game, are choices of their own
        for key, weight in (("train.pseudo_weight", self.train.pseudo_weight), ("loss.crf_weight", self.loss.crf_weight)):
            if weight > 0 and self.model.name in GAN_MODELS:
                raise ConfigError(f"{key}={weight} is for segmenters (unet, mlp), not model.name={self.model.name}; "
                                  f"set {key}=0 for it")


SCHEDULES = ("constant", "cosine", "onecycle")
TUNE_SCHEDULERS = ("asha", "fifo")
AXIS_CHOICES = ("z", "y", "x", "any")  # data.axis: the slicing axis of training patches, or any
SELECT = ("dice", "dice+tpb")
VAL_MODES = ("patches", "slab")
GAN_MODELS = ("pix2pix",)  # trained adversarially (train/loop.py's is_gan): no self-training


def _check_range(key: str, value: float, low: float | None, high: float | None, *, low_open: bool = False,
                 high_open: bool = False) -> None:
    """Raise ConfigError naming ``key`` unless low <= value <= high (open ends where asked)."""
    bad = (low is not None and (value < low or (low_open and value == low))) or \
          (high is not None and (value > high or (high_open and value == high)))
    if bad:
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        interval = f"{'(' if low_open else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise ConfigError(f"config key '{key}'={value} must be in {interval}; set it with --set {key}=...")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"valid: {', '.join(choices)}"
        raise ConfigError(f"config key '{key}'='{value}' is not one of {', '.join(choices)}; {hint}")


# --------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (resolved), converting int->float."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return _build(tp, value, key)
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            valid = [f"{prefix}.{n}" if prefix else n for n in names]
            raise UnknownNameError("config key", dotted, valid)
        kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any] | None, cls: type = Config) -> Any:
    """Build a (validated) config dataclass tree from a plain nested dict."""
    return _build(cls, values or {})


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, refusing a mapping that holds the same key twice (PyYAML keeps the last one
    silently, so a second ``data:`` section would replace the first): ``ConfigError`` naming the key
    and both line numbers."""

    source = "the YAML"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *base": keys given here override it, as meant
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
                seen[key] = line
            except TypeError:  # an unhashable key: the base class says so
                break
            if first is not None:
                where = f"lines {first} and {line}" if first != line else f"both on line {line}"
                raise ConfigError(f"{self.source} has the key '{key}' twice ({where}); YAML would keep only the "
                                  "second: merge them into one")
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str) -> Any:
    """``text`` parsed as YAML with ``UniqueKeyLoader`` (``source`` names it in errors)."""
    loader = UniqueKeyLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> (["optim", "lr"], 0.0003). The value is parsed as YAML; one that is
    not valid YAML is a ``ConfigError`` (one line), not a traceback."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not KEY=VALUE; write e.g. --set optim.lr=3e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key; write e.g. --set optim.lr=3e-4")
    try:
        value = load_yaml(raw, f"--set '{text}'") if raw.strip() else None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"--set '{text}': the value is not valid YAML ({problem}); close every bracket and quote "
                          "text with special characters, e.g. --set 'model.kwargs={width: 8, depth: 2}'") from None
    return key.split("."), value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides to a nested dict (validation happens when it is built)."""
    for text in overrides:
        path, value = parse_override(text)
        node = values
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return values


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"config file '{path}' does not exist; pass a YAML file such as configs/unet.yaml")
    try:
        values = load_yaml(path.read_text(), f"config file '{path}'") or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file '{path}' is not valid YAML{where}; fix the syntax") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections, got {type(values).__name__}")
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls: type = Config) -> Any:
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    values = read_yaml(path) if path is not None else {}
    apply_overrides(values, list(overrides or []))
    try:
        return config_from_dict(values, cls)
    except UnknownNameError as exc:
        if path is not None and exc.kind == "config key":
            raise UnknownNameError("config key", exc.name, exc.valid, where=str(path)) from None
        raise


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (loadable again by ``load_config``), atomically."""
    from .io import atomic_write

    atomic_write(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False), what="the resolved config")


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts, e.g. ``['optim.lr']``."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(dict.fromkeys([*old, *new]))
        return [d for k in keys for d in differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        old, new = list(old), list(new)
    return [] if old == new else [prefix.rstrip(".")]


def describe_differences(old: dict[str, Any], new: dict[str, Any], keys: list[str]) -> str:
    """'optim.lr was 0.001, now 0.003; ...' for the first few differing keys."""

    def get(d: Any, key: str) -> Any:
        for part in key.split("."):
            d = d.get(part) if isinstance(d, dict) else None
        return d

    shown = "; ".join(f"{k} was {get(old, k)!r}, now {get(new, k)!r}" for k in keys[:3])
    return shown + (f" (and {len(keys) - 3} more)" if len(keys) > 3 else "")
