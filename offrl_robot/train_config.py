"""The train config (`TrainConfig`) and the lookups it names: device, dataset, algorithm config.

Kept apart from the Trainer (`offrl_robot.train`) so that code below the trainer — the
dynamics fit and MOPO in `offrl_robot.algos` — can build and check a run's config without
importing the training loop (which imports the algorithms: a cycle).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from offrl_robot.accel import ACCEL_MODES, PRECISIONS
from offrl_robot.checkpoint import plain
from offrl_robot.data.dataset import Dataset
from offrl_robot.errors import ConfigError


@dataclass
class TrainConfig:
    """One training run. Loaded from YAML with strict keys (a typo is an error, not a default).

    algo: registry name (`offrl_robot.algos.REGISTRY`); algo_config: that algorithm's
    hyper-parameters (its `config_class` fields; unknown keys are an error).
    dataset: local Minari dataset name or path. task: env for evaluation (default: the
    dataset's `metadata.task`; none -> no evaluation). seeds: trained together as one batched
    program. prioritized: switch uniform -> prioritised replay (value-based algorithms only).
    eval_every / checkpoint_every / log_every: in update steps; 0 disables the periodic
    evaluation / checkpoint (a final evaluation and checkpoint are always made).
    threads: torch CPU threads for this run (0 = torch's default). On a CPU shared with other
    jobs, 1 is often several times faster: idle OpenMP workers spin against the other jobs.
    accelerate: none | graph | compile. On CUDA, `graph` replays each training step (sampling,
    gather, update) from a captured CUDA graph (7-13x the eager updates/s on an H100, same
    numbers as eager); `compile` also passes the update through torch.compile. On the CPU
    `graph` falls back to eager and `compile` compiles the update with Inductor (1.0-1.5x eager for
    CQL; deterministic, resume included, but not bit-equal to eager; see offrl_robot/accel.py).
    precision: fp32 | tf32 | bf16, CUDA only (offrl_robot.accel.PRECISIONS): bf16 autocasts
    hidden layers for speed with fp32 output layers, weights and optimiser state.
    """

    algo: str = "bc"
    algo_config: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    task: str | None = None
    steps: int = 100_000
    seeds: list[int] = field(default_factory=lambda: [0])
    batch_size: int = 256
    eval_every: int = 10_000
    eval_episodes: int = 10
    eval_seed: int = 10_000
    log_every: int = 1_000
    checkpoint_every: int = 10_000
    keep_checkpoints: int = 3
    log_dir: str = "runs"
    device: str = "cpu"
    prioritized: bool = False
    per_alpha: float = 0.6
    per_beta: float = 0.4
    per_eps: float = 1e-6
    progress: bool = True
    threads: int = 0
    accelerate: str = "none"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> TrainConfig:
        """Type- and range-check every field; raise ConfigError naming the first bad one."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        if not self.seeds:
            raise ConfigError("config field 'seeds' is empty; give at least one seed, e.g. [0]")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"config field 'seeds' repeats a seed: {self.seeds}")
        for name in ("steps", "batch_size", "eval_episodes", "log_every", "keep_checkpoints"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"config field {name!r} must be positive, got {getattr(self, name)}")
        for name in ("eval_every", "checkpoint_every", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(
                    f"config field {name!r} must be >= 0 (0 disables it), got {getattr(self, name)}"
                )
        if self.accelerate not in ACCEL_MODES:
            raise ConfigError(
                f"config field 'accelerate' is {self.accelerate!r}; use one of {', '.join(ACCEL_MODES)}"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"config field 'precision' is {self.precision!r}; use one of {', '.join(PRECISIONS)}"
            )
        if self.precision != "fp32" and self.device.startswith("cpu"):
            raise ConfigError(
                f"config field 'precision' is {self.precision!r}, which needs device: cuda; "
                "on the CPU use precision: fp32"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; valid keys are {known}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Load and check a YAML config; every problem is one ConfigError line naming the file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(
                f"cannot read train config {path}: {err.strerror or err}; check the path"
            ) from err
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"train config {path}{where} is not valid YAML; fix its syntax") from err
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(
                f"train config {path} must be a YAML mapping of keys, got {type(data).__name__}"
            )
        try:
            return cls.from_dict(data, source=f"train config {path}")
        except ConfigError as err:
            message = str(err)
            raise ConfigError(
                message if str(path) in message else f"train config {path}: {message}"
            ) from None


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check `value` against the field's type hint; int -> float widening and tuples -> lists only."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _coerce(name, value, inner[0])
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, int) and not isinstance(value, bool) and item is int:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config field {name!r} must be a list, got {value!r}")
        return [_coerce(name, v, item) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config field {name!r} must be a mapping, got {value!r}")
        return plain(value)  # tuples -> lists: the config is saved as YAML and in checkpoints
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config field {name!r} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config field {name!r} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            # YAML 1.1 (PyYAML) reads `1e-3` (no dot) as a string: take the number it spells
            with contextlib.suppress(ValueError):
                value = float(value.strip())
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"config field {name!r} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config field {name!r} must be a string, got {value!r}")
        return value
    return value


def _is_scalar_hint(hint: Any) -> bool:
    """float / int / bool / str, optionally `| None`: the hints `_coerce` checks fully."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    inner = [o for o in options if o is not type(None)]
    return len(inner) == 1 and inner[0] in (float, int, bool, str)


def build_algo_config(
    algo_cls: type, params: dict[str, Any], batch_size: int, steps: int | None = None
) -> Any:
    """The algorithm's typed config from `algo_config:`; unknown keys name the valid ones.

    With the run's `steps`, learning-rate schedules are made to span the run (`AlgoConfig.follow_steps`):
    export rebuilds from a checkpoint's resolved config and passes none."""
    config_class = algo_cls.config_class
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ConfigError(
            f"algo_config for {algo_cls.name!r} has unknown key(s) {unknown}; valid keys are {sorted(fields)}"
        )
    if "batch_size" in params and params["batch_size"] != batch_size:
        raise ConfigError("set batch_size at the top level of the train config, not under algo_config")
    values = dict(params)
    if "batch_size" in fields:
        values["batch_size"] = batch_size
    hints = typing.get_type_hints(config_class)
    for name, value in values.items():
        # scalar fields are checked like the top-level ones (a `1e-3` string becomes 1e-3)
        if _is_scalar_hint(hints.get(name)):
            values[name] = _coerce(f"algo_config.{name}", value, hints[name])
    for name, value in values.items():
        default = fields[name].default
        if isinstance(default, tuple) and isinstance(value, list):
            values[name] = tuple(value)  # YAML has no tuples (hidden_sizes etc.)
    try:
        config = config_class(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"algo_config for {algo_cls.name!r} is invalid: {err}") from err
    if steps is not None:
        config.follow_steps(steps)
    return config


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(
            f"config field 'device' {name!r} is not a torch device; use cpu, cuda or cuda:N"
        ) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available here; use --device cpu")
    return device


def load_dataset_by_name(name: str) -> Dataset:
    """Local Minari dataset by name or path (imported lazily: Minari is slow to import)."""
    from offrl_robot.data.minari_io import load_dataset

    return load_dataset(name)
