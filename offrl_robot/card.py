"""The model metadata and card: the single place that knows their format.

An exported policy is `models/NAME.onnx` plus `models/NAME.card.yaml` (design.md):

- `metadata_props` inside the ONNX file (strings; JSON where structured), keys `offrl.*`
  (see `METADATA_KEYS`). They travel with the file, so a model copied without its card still
  says what it expects.
- The card, beside it: the same facts, the sha256 of the .onnx (so a card cannot silently
  describe another file), a training summary, and after the MuJoCo gate a `validation:` block.

Layout of NAME.card.yaml (card_version 1):

    card_version: 1
    model: NAME.onnx            # file name, resolved beside the card
    sha256: <hex of NAME.onnx>
    metadata: {observation_names, action_names, action_low, action_high, control_rate_hz,
               algorithm, dataset_sha256, train_config, controller, version}
    training: {...}             # free-form summary: steps, final losses, wall time, seed, ...
    validation:                 # absent until the gate has run
      task: str, episodes: int, metrics: {name: float},
      thresholds: {name: {min: float} | {max: float}}, passed: bool, date: ISO-8601 UTC,
      model_sha256: sha256 of the exact ONNX bytes the gate ran

What binds a verdict to behaviour: everything that changes how the deployed model acts lives
inside the ONNX file (graph, names, bounds, and `metadata.controller`: the MPC planner settings),
so the file's sha256 covers it; the verdict records that sha256, and the ROS node accepts it only
for the file it loads, re-derives `passed` from metrics and thresholds, and refuses thresholds
weaker than its own floor (`verdict_problems`). The card is not signed: this catches a stale
verdict (a swapped or re-exported model), a hand-flipped `passed` and a verdict made under weak
thresholds, not a forger who rewrites the metrics themselves.

Everything that can be wrong with user-supplied files raises `ModelError` with one line that
names the file and field. The exporter, the validation gate, PolicyRuntime and the ROS node
all go through here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from offrl_robot import __version__
from offrl_robot.atomic import atomic_write_text
from offrl_robot.errors import ModelError

CARD_VERSION = 1
CARD_SUFFIX = ".card.yaml"
METADATA_PREFIX = "offrl."
INPUT_NAME = "observation"
OUTPUT_NAME = "action"
# A dynamics model's graph (`offrl_robot.export.dynamics` writes it, `offrl_robot.mpc` plans with it):
# inputs observation [N, O] + action [N, A], these outputs in this order.
DYNAMICS_INPUTS = ("observation", "action")
DYNAMICS_OUTPUTS = ("next_observation", "reward", "disagreement", "member_next_observation", "member_reward")


def plain(value: Any) -> Any:
    """Plain Python containers/scalars for YAML/JSON: numpy scalars and arrays (a gate's metrics,
    a config's bounds) and tuples would otherwise fail yaml.safe_dump / json.dumps."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy scalar or array
        return plain(value.tolist())
    return value


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as err:
        raise ModelError(f"{path}: cannot read ({err.strerror}); check the path") from None
    return digest.hexdigest()


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def card_path_for(onnx_path: str | os.PathLike[str]) -> Path:
    """models/NAME.onnx -> models/NAME.card.yaml."""
    path = Path(onnx_path)
    return (
        path.with_name(path.stem + CARD_SUFFIX)
        if path.suffix == ".onnx"
        else path.with_name(path.name + CARD_SUFFIX)
    )


# ---------------------------------------------------------------------------------- metadata


@dataclass
class ModelMetadata:
    """What a deployed policy needs to be wired correctly; stored in metadata_props and the card.

    observation_names / action_names: the order of the graph's input/output columns (the ROS
    node maps JointState by these names). action_low/high: physical action bounds. controller:
    settings that change how the deployed model acts beyond its graph (a dynamics model's MPC
    planner: {"mpc": {...}}), stored here so the file's sha256 covers them. version: the
    offrl_robot version that wrote the model.
    """

    observation_names: list[str]
    action_names: list[str]
    action_low: list[float]
    action_high: list[float]
    control_rate_hz: float
    algorithm: str
    dataset_sha256: str = ""
    train_config: dict[str, Any] = field(default_factory=dict)
    controller: dict[str, Any] = field(default_factory=dict)
    version: str = __version__

    def __post_init__(self) -> None:
        # numpy arrays/scalars and tuples from callers become plain lists/floats, so that
        # validation, comparison and YAML/JSON all see one representation.
        for name in (
            "observation_names",
            "action_names",
            "action_low",
            "action_high",
            "train_config",
            "controller",
        ):
            setattr(self, name, plain(getattr(self, name)))
        self.control_rate_hz = plain(self.control_rate_hz)

    def validate(self, source: str) -> ModelMetadata:
        """Raise ModelError naming `source` and the field; return self."""
        for name in ("observation_names", "action_names"):
            names = getattr(self, name)
            if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
                raise ModelError(f"{source}: {name} must be a non-empty list of non-empty strings")
            if len(set(names)) != len(names):
                dup = next(n for n in names if names.count(n) > 1)
                raise ModelError(f"{source}: {name} lists {dup!r} twice; names must be unique")
        n_act = len(self.action_names)
        for name in ("action_low", "action_high"):
            values = getattr(self, name)
            if not isinstance(values, list) or len(values) != n_act:
                raise ModelError(f"{source}: {name} must have one number per action ({n_act})")
            if not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
            ):
                raise ModelError(f"{source}: {name} must be finite numbers, got {values}")
        for j, (lo, hi) in enumerate(zip(self.action_low, self.action_high, strict=True)):
            if lo > hi:
                raise ModelError(
                    f"{source}: action {self.action_names[j]!r} has action_low {lo} > action_high {hi}; fix the bounds and re-export"
                )
        rate = self.control_rate_hz
        if (
            isinstance(rate, bool)
            or not isinstance(rate, (int, float))
            or not math.isfinite(rate)
            or rate <= 0
        ):
            raise ModelError(f"{source}: control_rate_hz must be a finite number > 0, got {rate!r}")
        if not isinstance(self.algorithm, str) or not self.algorithm:
            raise ModelError(f"{source}: algorithm must be a non-empty string")
        if not isinstance(self.dataset_sha256, str) or not isinstance(self.version, str):
            raise ModelError(f"{source}: dataset_sha256 and version must be strings")
        for name in ("train_config", "controller"):
            if not isinstance(getattr(self, name), dict):
                raise ModelError(f"{source}: {name} must be a mapping")
        return self

    @property
    def observation_dim(self) -> int:
        return len(self.observation_names)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    def to_dict(self) -> dict[str, Any]:
        return plain(asdict(self))

    @classmethod
    def from_dict(cls, data: Any, source: str) -> ModelMetadata:
        """Parse and validate; unknown or missing keys are ModelErrors naming `source`."""
        if not isinstance(data, Mapping):
            raise ModelError(f"{source}: metadata must be a mapping")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"{source}: unknown metadata keys {unknown}; expected {sorted(known)}")
        required = (
            "observation_names",
            "action_names",
            "action_low",
            "action_high",
            "control_rate_hz",
            "algorithm",
        )
        missing = [key for key in required if key not in data]
        if missing:
            raise ModelError(f"{source}: metadata is missing {missing}; re-export the model")
        data = dict(data)
        for key in ("action_low", "action_high"):  # YAML/JSON ints are fine as bounds
            if isinstance(data[key], list):
                data[key] = [
                    float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in data[key]
                ]
        return cls(**data).validate(source)

    def to_metadata_props(self) -> dict[str, str]:
        """{"offrl.<field>": string}: strings as they are, everything else as JSON."""
        return {
            METADATA_PREFIX + key: value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            for key, value in self.to_dict().items()
        }

    @classmethod
    def from_metadata_props(cls, props: Mapping[str, str], source: str) -> ModelMetadata:
        """Inverse of `to_metadata_props`; other (non-offrl) keys are ignored."""
        string_fields = {"algorithm", "dataset_sha256", "version"}
        data: dict[str, Any] = {}
        for key, raw in props.items():
            if not key.startswith(METADATA_PREFIX):
                continue
            name = key[len(METADATA_PREFIX) :]
            if name in string_fields:
                data[name] = raw
                continue
            try:
                data[name] = json.loads(raw)
            except json.JSONDecodeError:
                raise ModelError(
                    f"{source}: metadata_props {key!r} is not valid JSON; re-export the model"
                ) from None
        if not data:
            raise ModelError(f"{source}: has no offrl.* metadata_props; export it with `offrl-robot export`")
        return cls.from_dict(data, f"{source} metadata_props")


def write_metadata_props(model: Any, metadata: ModelMetadata) -> None:
    """Set the offrl.* entries of an `onnx.ModelProto` (others are kept, stale offrl.* replaced)."""
    metadata.validate("metadata to write")
    keep = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(METADATA_PREFIX)]
    del model.metadata_props[:]
    for key, value in [*keep, *sorted(metadata.to_metadata_props().items())]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata_props(model: Any, source: str) -> ModelMetadata:
    """ModelMetadata from an `onnx.ModelProto`'s metadata_props."""
    return ModelMetadata.from_metadata_props({p.key: p.value for p in model.metadata_props}, source)


def metadata_mismatch(a: ModelMetadata, b: ModelMetadata) -> str | None:
    """Name of the first field on which two metadata records disagree, or None."""
    other = b.to_dict()
    for key, value in a.to_dict().items():
        if value != other[key]:
            return key
    return None


# ---------------------------------------------------------------------------------- validation


@dataclass
class ValidationRecord:
    """The sim gate's verdict, stored in the card. thresholds: {metric: {"min"|"max": value}}."""

    task: str
    episodes: int
    metrics: dict[str, float]
    thresholds: dict[str, dict[str, float]]
    passed: bool
    date: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    model_sha256: str = ""  # the ONNX bytes the gate ran ("" in cards written before verdicts were bound)

    def __post_init__(self) -> None:
        self.episodes, self.metrics, self.thresholds = plain([self.episodes, self.metrics, self.thresholds])

    def validate(self, source: str) -> ValidationRecord:
        if not isinstance(self.task, str) or not self.task:
            raise ModelError(f"{source}: validation.task must be a non-empty string")
        if isinstance(self.episodes, bool) or not isinstance(self.episodes, int) or self.episodes < 1:
            raise ModelError(f"{source}: validation.episodes must be an integer >= 1")
        if not isinstance(self.metrics, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.metrics.values()
        ):
            raise ModelError(f"{source}: validation.metrics must map names to numbers")
        if not isinstance(self.thresholds, dict):
            raise ModelError(f"{source}: validation.thresholds must be a mapping")
        for name, bound in self.thresholds.items():
            if not isinstance(bound, dict) or not bound or set(bound) - {"min", "max"}:
                raise ModelError(
                    f"{source}: validation.thresholds.{name} must be {{min: x}} and/or {{max: y}}"
                )
        if not isinstance(self.passed, bool):
            raise ModelError(f"{source}: validation.passed must be true or false")
        if not isinstance(self.date, str):
            raise ModelError(f"{source}: validation.date must be an ISO-8601 string")
        if not isinstance(self.model_sha256, str):
            raise ModelError(f"{source}: validation.model_sha256 must be a hex string")
        return self

    @staticmethod
    def failures(metrics: Mapping[str, float], thresholds: Mapping[str, Mapping[str, float]]) -> list[str]:
        """Human-readable threshold violations ([] = pass); a missing or NaN metric fails."""
        out = []
        for name, bound in thresholds.items():
            value = metrics.get(name)
            if value is None or not math.isfinite(value):
                out.append(f"{name} is {value}")
                continue
            if "min" in bound and value < bound["min"]:
                out.append(f"{name} = {value:g} < min {bound['min']:g}")
            if "max" in bound and value > bound["max"]:
                out.append(f"{name} = {value:g} > max {bound['max']:g}")
        return out


def parse_threshold_floor(entries: Any, source: str) -> dict[str, dict[str, float]]:
    """["success_rate>=0.8", "nan_events<=0"] (a ROS string-array parameter) -> {name: {min|max: x}}."""
    if isinstance(entries, str) or not isinstance(entries, (list, tuple)):
        raise ModelError(
            f"{source}: must be a list like ['success_rate>=0.8', 'nan_events<=0'], got {entries!r}"
        )
    floor: dict[str, dict[str, float]] = {}
    for entry in entries:
        text = str(entry).replace(" ", "")
        key = "min" if ">=" in text else "max"
        name, _, value = text.partition(">=" if key == "min" else "<=")
        try:
            number = float(value) if name and value else math.nan
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ModelError(f"{source}: entry {entry!r} must look like 'metric>=number' or 'metric<=number'")
        floor.setdefault(name, {})[key] = number
    return floor


DEFAULT_THRESHOLD_FLOOR: dict[str, dict[str, float]] = {
    "success_rate": {"min": 0.8},
    "nan_events": {"max": 0.0},
    "intervention_rate": {"max": 0.05},
}


def verdict_problems(
    record: ValidationRecord | None,
    model_sha256: str,
    floor: Mapping[str, Mapping[str, float]] = DEFAULT_THRESHOLD_FLOOR,
) -> list[str]:
    """Why a card's verdict does not license THIS model file to run ([] = it does).

    Re-derives the verdict instead of trusting `passed`: the record must be for these exact bytes
    (`model_sha256`), every threshold it records must hold for its metrics, and its thresholds
    must be at least as strict as `floor` (a metric in the floor must have been checked, unless
    the task does not report that metric at all, e.g. success_rate on a locomotion task).
    """
    if record is None:
        return ["model has no validation block; run `offrl-robot validate` first"]
    problems = []
    if not record.model_sha256:
        problems.append("validation block is not bound to a model file (no model_sha256); validate again")
    elif record.model_sha256 != model_sha256:
        problems.append(
            f"validation was made for another model file (sha256 {record.model_sha256[:12]}..., "
            f"this one is {model_sha256[:12]}...); validate this model"
        )
    if not record.passed:
        problems.append(f"model FAILED validation on {record.task} ({record.date})")
    failures = ValidationRecord.failures(record.metrics, record.thresholds)
    if failures and record.passed:
        problems.append(f"validation says passed but its own thresholds fail: {'; '.join(failures)}")
    for name, bound in floor.items():
        recorded = record.thresholds.get(name)
        if recorded is None:
            if name in record.metrics:
                problems.append(f"validation did not check {name} (the floor requires it)")
            continue
        if "min" in bound and not recorded.get("min", -math.inf) >= bound["min"]:
            problems.append(
                f"validation threshold {name} min {recorded.get('min', '-inf')} is weaker than the floor {bound['min']:g}"
            )
        if "max" in bound and not recorded.get("max", math.inf) <= bound["max"]:
            problems.append(
                f"validation threshold {name} max {recorded.get('max', 'inf')} is weaker than the floor {bound['max']:g}"
            )
    return problems


# ---------------------------------------------------------------------------------- card


@dataclass
class ModelCard:
    """NAME.card.yaml. `model` is the ONNX file name, resolved relative to the card's folder."""

    model: str
    sha256: str
    metadata: ModelMetadata
    training: dict[str, Any] = field(default_factory=dict)
    validation: ValidationRecord | None = None
    card_version: int = CARD_VERSION

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "card_version": self.card_version,
            "model": self.model,
            "sha256": self.sha256,
            "metadata": self.metadata.to_dict(),
            "training": plain(self.training),
        }
        if self.validation is not None:
            data["validation"] = plain(asdict(self.validation))
        return data

    def write(self, path: str | os.PathLike[str]) -> None:
        """Atomic write (temp + rename): a reader never sees half a card."""
        self.metadata.validate(str(path))
        if self.validation is not None:
            self.validation.validate(str(path))
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None))

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ModelCard:
        src = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ModelError(
                f"{src}: model card not found; export the model again (it writes NAME.card.yaml)"
            ) from None
        except (OSError, UnicodeDecodeError) as err:
            raise ModelError(f"{src}: cannot read model card ({err})") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ModelError(f"{src}: model card is not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ModelError(f"{src}: model card must be a YAML mapping")
        known = {"card_version", "model", "sha256", "metadata", "training", "validation"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"{src}: unknown card keys {unknown}; expected {sorted(known)}")
        if data.get("card_version") != CARD_VERSION:
            raise ModelError(
                f"{src}: card_version {data.get('card_version')!r} is not supported (this offrl_robot reads {CARD_VERSION})"
            )
        for key in ("model", "sha256"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise ModelError(f"{src}: card field {key!r} must be a non-empty string")
        training = data.get("training") or {}
        if not isinstance(training, dict):
            raise ModelError(f"{src}: card field 'training' must be a mapping")
        validation = None
        if data.get("validation") is not None:
            raw = data["validation"]
            if not isinstance(raw, dict):
                raise ModelError(f"{src}: card field 'validation' must be a mapping")
            fields_ = set(ValidationRecord.__dataclass_fields__)
            if set(raw) - fields_ or {"task", "episodes", "metrics", "thresholds", "passed"} - set(raw):
                raise ModelError(f"{src}: validation block must have exactly the keys {sorted(fields_)}")
            if isinstance(raw.get("date"), datetime):  # YAML turns unquoted timestamps into datetimes
                raw = {**raw, "date": raw["date"].strftime("%Y-%m-%dT%H:%M:%SZ")}
            validation = ValidationRecord(**raw).validate(src)
        return cls(
            model=data["model"],
            sha256=data["sha256"],
            metadata=ModelMetadata.from_dict(data.get("metadata"), f"{src} metadata"),
            training=training,
            validation=validation,
        )

    def model_path(self, card_path: str | os.PathLike[str]) -> Path:
        return Path(card_path).parent / self.model

    def require_passing_validation(
        self,
        card_path: str | os.PathLike[str],
        model_sha256: str,
        floor: Mapping[str, Mapping[str, float]] = DEFAULT_THRESHOLD_FLOOR,
    ) -> None:
        """For deployment: refuse a model whose verdict does not license these exact bytes
        (`verdict_problems`); one line naming the card and every problem."""
        problems = verdict_problems(self.validation, model_sha256, floor)
        if problems:
            raise ModelError(f"{card_path}: " + "; ".join(problems))


def set_validation(card_path: str | os.PathLike[str], record: ValidationRecord) -> ModelCard:
    """Read a card, replace its validation block, write it back atomically (used by the gate).

    Refused (nothing written) when the card now describes other bytes than the gate ran: the
    model or card was replaced while the gate was running.
    """
    card = ModelCard.read(card_path)
    if record.model_sha256 and record.model_sha256 != card.sha256:
        raise ModelError(
            f"{card_path}: the card now describes sha256 {card.sha256[:12]}..., the gate ran "
            f"{record.model_sha256[:12]}...; the model changed during validation, nothing was written"
        )
    card.validation = record.validate(str(card_path))
    card.write(card_path)
    return card
