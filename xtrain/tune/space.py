"""Search spaces from YAML: dotted config keys -> distributions (no Ray needed to parse).

    tune:
      space:
        optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
        train.batch_size: {choice: [8, 16, 32]}
        optim.beta1: {uniform: [0.5, 0.9]}
        model.name: {choice: [unet, mlp]}
        data.fraction: {grid: [0.1, 0.25, 0.5, 1.0]}
        data.augment.noise_std: 0.3          # a plain value: fixed for every trial

Every key is a dotted path into ``Config`` (an unknown one is an ``UnknownNameError`` naming the
closest valid key); a key may also name a whole section or a free-form mapping, with mappings as
values, e.g. ``model: {choice: [{name: unet, kwargs: {width: 8}}, {name: mlp, kwargs: {}}]}``
(a section's keys are merged into the base config, a free-form mapping such as
``model.kwargs`` is replaced).  Every value a distribution can produce (choice/grid items,
range ends) is checked against the field's type before any trial starts.

``apply_params(base, params)`` turns a trial's sampled ``{dotted key: value}`` into the
resolved config dict; ``to_ray(space)`` gives the Ray Tune ``param_space``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any

from ..config import Config, config_from_dict
from ..errors import ConfigError, UnknownNameError

# kind -> number of arguments (None: a non-empty list of values)
KINDS: dict[str, int | None] = {
    "uniform": 2,  # [low, high]
    "loguniform": 2,  # [low, high], low > 0
    "quniform": 3,  # [low, high, q]
    "qloguniform": 3,  # [low, high, q]
    "randint": 2,  # [low, high): integers
    "lograndint": 2,  # [low, high): integers, log-uniform
    "choice": None,  # random choice among the values
    "grid": None,  # every value (grid search; num_samples repeats the grid)
}
RANGE_KINDS = ("uniform", "loguniform", "quniform", "qloguniform", "randint", "lograndint")


@dataclass(frozen=True)
class Param:
    """One search axis: ``key`` (dotted config path), ``kind`` (a KINDS name or "fixed"), ``args``."""

    key: str
    kind: str
    args: tuple[Any, ...]

    @property
    def values(self) -> list[Any] | None:
        """The finite values (choice, grid, fixed), else None."""
        if self.kind in ("choice", "grid"):
            return list(self.args)
        if self.kind == "fixed":
            return [self.args[0]]
        return None


def _field_type(path: list[str]) -> Any:
    """The annotation of ``path`` in Config (raises UnknownNameError for a bad path)."""
    tp: Any = Config
    for i, part in enumerate(path):
        if not dataclasses.is_dataclass(tp):
            if typing.get_origin(tp) is dict or tp is dict:
                return Any  # inside a free-form mapping (model.kwargs.width): anything goes
            raise ConfigError(f"search space key '{'.'.join(path)}': '{'.'.join(path[:i])}' is not a section")
        hints = typing.get_type_hints(tp)
        names = [f.name for f in dataclasses.fields(tp)]
        if part not in names:
            prefix = ".".join(path[:i])
            valid = [f"{prefix}.{n}" if prefix else n for n in names]
            raise UnknownNameError("config key", ".".join(path[: i + 1]), valid, where="tune.space")
        tp = hints[part]
    return tp


def _is_mapping_target(path: list[str]) -> bool:
    tp = _field_type(path)
    return dataclasses.is_dataclass(tp) or typing.get_origin(tp) is dict or tp is dict


def set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict; a mapping value is merged into a section, replaces a free-form dict."""
    path = key.split(".")
    node = values
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    last = path[-1]
    tp = _field_type(path)
    if isinstance(value, dict) and dataclasses.is_dataclass(tp) and isinstance(node.get(last), dict):
        node[last] = _merge(node[last], value, path, tp)
    else:
        node[last] = copy.deepcopy(value)


def _merge(base: dict[str, Any], value: dict[str, Any], path: list[str], tp: Any) -> dict[str, Any]:
    """Merge ``value`` into the section ``base`` (dataclass ``tp``): sub-sections merge, the rest replaces."""
    out = copy.deepcopy(base)
    hints = typing.get_type_hints(tp)
    for k, v in value.items():
        if k not in hints:
            raise UnknownNameError("config key", ".".join([*path, str(k)]), [".".join([*path, n]) for n in hints],
                                   where="tune.space")
        sub = hints[k]
        if isinstance(v, dict) and dataclasses.is_dataclass(sub) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, [*path, k], sub)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The resolved config dict of a trial: ``base`` (a config dict) with ``params`` set."""
    values = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(values, key, value)
    return values


def _parse_one(key: str, spec: Any) -> Param:
    if not isinstance(spec, dict):
        return Param(key, "fixed", (spec,))
    if len(spec) != 1:
        raise ConfigError(f"search space key '{key}': give one distribution such as {{loguniform: [1e-4, 1e-2]}}, "
                          f"got {spec!r}")
    ((kind, args),) = spec.items()
    if kind not in KINDS:
        raise UnknownNameError("search distribution", str(kind), KINDS, where=f"tune.space.{key}")
    n = KINDS[kind]
    if not isinstance(args, (list, tuple)) or not args:
        raise ConfigError(f"search space key '{key}': {kind} takes a list, e.g. "
                          f"{{{kind}: {'[1e-4, 1e-2]' if n == 2 else '[0.1, 1.0, 0.1]' if n == 3 else '[8, 16, 32]'}}}")
    args = tuple(args)
    if n is not None:
        if len(args) != n:
            raise ConfigError(f"search space key '{key}': {kind} takes {n} numbers, got {list(args)}")
        try:
            nums = tuple(float(a) for a in args)
        except (TypeError, ValueError):
            raise ConfigError(f"search space key '{key}': {kind} takes numbers, got {list(args)}") from None
        low, high = nums[0], nums[1]
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise ConfigError(f"search space key '{key}': {kind} needs low < high, got {list(args)}")
        if kind.startswith("log") or kind.startswith("qlog"):
            if low <= 0:
                raise ConfigError(f"search space key '{key}': {kind} needs low > 0, got {list(args)}")
        if kind in ("randint", "lograndint"):
            if any(a != int(a) for a in nums):
                raise ConfigError(f"search space key '{key}': {kind} takes integers, got {list(args)}")
            args = tuple(int(a) for a in nums)
        else:
            args = nums
    return Param(key, kind, args)


def _check_values(param: Param, base: dict[str, Any]) -> None:
    """Build the config with each value a distribution can produce: type errors before any trial."""
    if param.values is not None:
        probes = param.values
    elif param.kind in ("randint", "lograndint"):
        probes = [param.args[0], param.args[1] - 1]
    else:
        probes = [param.args[0], param.args[1]]
    for v in probes:
        try:
            config_from_dict(apply_params(base, {param.key: v}))
        except ConfigError as exc:
            raise ConfigError(f"search space key '{param.key}': value {v!r} does not fit: {exc}") from None


def parse_space(space: dict[str, Any] | None, base: dict[str, Any] | None = None) -> list[Param]:
    """Check and parse ``tune.space`` (a mapping of dotted config keys to distributions)."""
    if space is None:
        return []
    if not isinstance(space, dict):
        raise ConfigError(f"tune.space must be a mapping of config keys to distributions, got {space!r}")
    base = base if base is not None else dataclasses.asdict(Config())
    params = []
    for key, spec in space.items():
        key = str(key)
        path = key.split(".")
        if not all(path):
            raise ConfigError(f"search space key '{key}' is not a dotted config key such as optim.lr")
        _field_type(path)  # unknown keys -> UnknownNameError with a suggestion
        if key.startswith("tune.") or key == "tune":
            raise ConfigError(f"search space key '{key}': the tune section itself cannot be searched")
        param = _parse_one(key, spec)
        _check_values(param, base)
        params.append(param)
    return params


def grid_size(params: list[Param]) -> int:
    n = 1
    for p in params:
        if p.kind == "grid":
            n *= len(p.args)
    return n


def to_ray(params: list[Param]) -> dict[str, Any]:
    """The Ray Tune ``param_space`` (flat: dotted keys)."""
    from ray import tune

    out: dict[str, Any] = {}
    for p in params:
        a = p.args
        out[p.key] = {
            "fixed": lambda: a[0],
            "uniform": lambda: tune.uniform(a[0], a[1]),
            "loguniform": lambda: tune.loguniform(a[0], a[1]),
            "quniform": lambda: tune.quniform(a[0], a[1], a[2]),
            "qloguniform": lambda: tune.qloguniform(a[0], a[1], a[2]),
            "randint": lambda: tune.randint(a[0], a[1]),
            "lograndint": lambda: tune.lograndint(a[0], a[1]),
            "choice": lambda: tune.choice(list(a)),
            "grid": lambda: tune.grid_search(list(a)),
        }[p.kind]()
    return out
