"""What every ONNX export shares: checkpoint facts, the exporter call, parity inputs, card, files.

`offrl_robot.export.policy` (a policy -> observation-to-action graph) and
`offrl_robot.export.dynamics` (a dynamics ensemble -> the MPC planner's graph) are users of this
module; each algorithm supplies its own inference module (`Algorithm.policy_for_export`,
`DynamicsEnsemble.module_for_export`), the machinery here is generic:

- `read_checkpoint`: everything export relies on, checked, with one-line ModelErrors;
- `torch_to_onnx`: the dynamo exporter, quiet, in memory, weights embedded, batch axis dynamic,
  debug annotations stripped (bytes must not depend on where Python is installed);
- `parity_observations`: >= 1,000 inputs for torch vs onnxruntime — training rows when the
  dataset is available and unchanged, plus uniform draws inside the observed range;
- `run_in_onnxruntime`: the onnxruntime side of every parity check;
- `metadata_for` / `training_summary`: the card's metadata and `training:` block;
- `write_model_and_card`: model + card together or not at all (`atomic_write_group`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from offrl_robot.atomic import atomic_write_group
from offrl_robot.card import ModelMetadata, card_path_for
from offrl_robot.checkpoint import OBS_STD_FLOOR, load_checkpoint, resolve_checkpoint
from offrl_robot.errors import ConfigError, DatasetError, ModelError

DEFAULT_OPSET = 18
# The dynamo exporter writes opset 18+ natively; older opsets need a lossy converter that fails
# on common ops (CastLike), so they are refused up front.
MIN_OPSET = 18
MIN_PARITY_SAMPLES = 1000


@dataclass(frozen=True)
class ParityReport:
    """How the ONNX graph compared with the torch policy it came from."""

    samples: int
    dataset_samples: int
    random_samples: int
    max_abs_diff: float  # physical units
    max_unit_diff: float  # [-1, 1] action units: what the tolerance applies to
    tolerance: float
    argmax_ties: int = 0  # BCQ rows where both runtimes picked equally good candidates

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "dataset_samples": self.dataset_samples,
            "random_samples": self.random_samples,
            "max_abs_diff": self.max_abs_diff,
            "max_unit_diff": self.max_unit_diff,
            "tolerance": self.tolerance,
            "argmax_ties": self.argmax_ties,
        }


@dataclass(frozen=True)
class ExportResult:
    """What `export_checkpoint` wrote and how it checked it."""

    model_path: Path
    card_path: Path
    sha256: str
    algorithm: str
    seed: int
    step: int
    observation_dim: int
    action_dim: int
    opset: int
    parity: ParityReport



# ---------------------------------------------------------------------------------- checkpoint
@dataclass(frozen=True)
class CheckpointFacts:
    """The checked contents of a checkpoint that export uses."""

    path: Path
    state: dict[str, Any]
    algorithm: str
    step: int
    seeds: list[int]
    observation_dim: int
    action_dim: int
    obs_mean: np.ndarray
    obs_std: np.ndarray
    obs_min: np.ndarray | None
    obs_max: np.ndarray | None
    action_low: np.ndarray
    action_high: np.ndarray
    dataset_name: str
    dataset_sha256: str
    dataset_metadata: dict[str, Any]
    train_config: dict[str, Any]


def _vector(state: dict[str, Any], path: Path, group: str, key: str, size: int) -> np.ndarray:
    """One per-dimension vector of the checkpoint, checked for presence, length and finiteness."""
    try:
        value = state[group][key]
    except (KeyError, TypeError):
        raise ModelError(
            f"checkpoint {path} has no {group}.{key}; it was not written by `offrl-robot train`"
        ) from None
    array = np.asarray(value.numpy() if isinstance(value, Tensor) else value, dtype=np.float32).reshape(-1)
    if array.shape != (size,):
        raise ModelError(f"checkpoint {path}: {group}.{key} has {array.size} values, expected {size}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ModelError(
            f"checkpoint {path}: {group}.{key} is {array[bad[0]]} at index {bad[0]}; "
            "the training data or run was corrupt, retrain from a clean dataset"
        )
    return array


def read_checkpoint(path: str | os.PathLike[str]) -> CheckpointFacts:
    """Load a checkpoint and check everything export relies on, with one-line ModelErrors."""
    path = resolve_checkpoint(path)
    state = load_checkpoint(path)
    try:
        obs_dim = int(state["observation_dim"])
        act_dim = int(state["action_dim"])
        algorithm = str(state["algo"])
        step = int(state["step"])
        seeds = [int(s) for s in state["seeds"]]
        dataset = dict(state["dataset"])
        meta = dict(dataset["metadata"])
        config = dict(state["config"])
        missing = next((key for key in ("algo_state", "algo_config", "normalizer") if key not in state), None)
        if missing is not None:
            raise KeyError(missing)
    except (KeyError, TypeError, ValueError) as err:
        raise ModelError(
            f"checkpoint {path} lacks field {err}; it was not written by `offrl-robot train`"
        ) from None
    mean = _vector(state, path, "normalizer", "obs_mean", obs_dim)
    std = _vector(state, path, "normalizer", "obs_std", obs_dim)
    if np.any(std <= 0):
        index = int(np.flatnonzero(std <= 0)[0])
        raise ModelError(
            f"checkpoint {path}: normalizer.obs_std is {std[index]} at index {index}; it must be positive"
        )
    std = np.maximum(std, np.float32(OBS_STD_FLOOR))
    low = _vector(state, path, "action_scale", "low", act_dim)
    high = _vector(state, path, "action_scale", "high", act_dim)
    if np.any(low >= high):
        index = int(np.flatnonzero(low >= high)[0])
        raise ModelError(
            f"checkpoint {path}: action_scale low {low[index]} >= high {high[index]} for action {index}; "
            "fix the dataset's action_low/action_high and retrain"
        )
    has_range = isinstance(state["normalizer"], dict) and "obs_min" in state["normalizer"]
    obs_min = _vector(state, path, "normalizer", "obs_min", obs_dim) if has_range else None
    obs_max = _vector(state, path, "normalizer", "obs_max", obs_dim) if has_range else None
    for field_name, expected in (("observation_names", obs_dim), ("action_names", act_dim)):
        names = meta.get(field_name)
        if not isinstance(names, list) or len(names) != expected:
            count = len(names) if isinstance(names, list) else "no"
            raise ModelError(
                f"checkpoint {path}: dataset.metadata.{field_name} has {count} names for {expected} dimensions"
            )
    rate = meta.get("control_rate_hz")
    if not isinstance(rate, (int, float)) or not np.isfinite(rate) or rate <= 0:
        raise ModelError(f"checkpoint {path}: dataset.metadata.control_rate_hz is {rate!r}; it must be > 0")
    return CheckpointFacts(
        path=path,
        state=state,
        algorithm=algorithm,
        step=step,
        seeds=seeds,
        observation_dim=obs_dim,
        action_dim=act_dim,
        obs_mean=mean,
        obs_std=std,
        obs_min=obs_min,
        obs_max=obs_max,
        action_low=low,
        action_high=high,
        dataset_name=str(dataset.get("name", "")),
        dataset_sha256=str(dataset.get("sha256", "")),
        dataset_metadata=meta,
        train_config=config,
    )



# ---------------------------------------------------------------------------------- ONNX
@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """The dynamo exporter (and onnxscript's opset converter) log progress, optional-dependency
    warnings and even tracebacks of conversions they recover from; a CLI wants one line, and
    what matters is checked on the result (opset, signature, parity)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    previous = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, previous, strict=True):
            logger.setLevel(level)


def strip_debug_metadata(model: Any) -> None:
    """Drop per-node/value exporter annotations (stack traces with absolute file paths, FX names):
    they make the bytes depend on where Python is installed, and a deployed model needs none."""
    graph = model.graph
    for collection in (graph.node, graph.input, graph.output, graph.value_info, graph.initializer):
        for item in collection:
            del item.metadata_props[:]
            if hasattr(item, "doc_string"):
                item.doc_string = ""
    del graph.metadata_props[:]
    del model.metadata_props[:]
    model.doc_string = ""


def torch_to_onnx(
    module: nn.Module,
    example: tuple[Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int,
    what: str = "",
) -> Any:
    """torch.export -> ONNX (dynamo exporter), in memory, weights embedded, axis 0 of every input
    dynamic (one shared `batch`), debug metadata stripped. An exporter failure is one ModelError
    line naming `what`; the caller checks what its graph needs (opset, signature, parity)."""
    batch = torch.export.Dim("batch", min=1)
    try:
        with quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                module,
                example,
                dynamo=True,
                external_data=False,
                verbose=False,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_shapes={name: {0: batch} for name in input_names},
                opset_version=int(opset),
                optimize=True,
            )
    except Exception as err:  # the exporter raises many types; the first line is the useful part
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        label = f"ONNX export of {what}" if what else "ONNX export"
        raise ModelError(f"{label} (opset {opset}) failed: {first}") from err
    model = program.model_proto
    strip_debug_metadata(model)
    return model



# ---------------------------------------------------------------------------------- parity
def load_parity_dataset(facts: CheckpointFacts) -> np.ndarray | None:
    """The checkpoint's training observations, if its dataset loads here and is the same data."""
    if not facts.dataset_name or facts.dataset_name == "in-memory":
        return None
    from offrl_robot.train_config import load_dataset_by_name  # Minari: slow to import

    try:
        dataset = load_dataset_by_name(facts.dataset_name)
    except (DatasetError, ConfigError, OSError):
        return None
    if dataset.sha256() != facts.dataset_sha256 or dataset.observation_dim != facts.observation_dim:
        return None
    return dataset.observations


def parity_observations(
    facts: CheckpointFacts,
    dataset_observations: np.ndarray | None,
    samples: int,
    seed: int = 0,
) -> tuple[np.ndarray, int]:
    """`samples` observations: up to half dataset rows, the rest uniform in the observed range.

    Without a recorded min/max (checkpoints from before it was stored) the range is mean ± 3 std.
    Returns (observations [samples, O] float32, how many came from the dataset).
    """
    rng = np.random.default_rng(seed)
    rows: list[np.ndarray] = []
    from_dataset = 0
    if dataset_observations is not None and len(dataset_observations):
        data = np.asarray(dataset_observations, dtype=np.float32)
        from_dataset = min(samples // 2, len(data))
        rows.append(data[rng.choice(len(data), size=from_dataset, replace=False)])
    if facts.obs_min is not None and facts.obs_max is not None:
        low, high = facts.obs_min, facts.obs_max
    else:
        low, high = facts.obs_mean - 3 * facts.obs_std, facts.obs_mean + 3 * facts.obs_std
    uniform = rng.uniform(low, high, size=(samples - from_dataset, facts.observation_dim))
    rows.append(uniform.astype(np.float32))
    return np.ascontiguousarray(np.concatenate(rows), dtype=np.float32), from_dataset


def parity_dataset_observations(facts: CheckpointFacts, dataset: Any | None) -> np.ndarray | None:
    """Observations of the training data: the given Dataset (must be the same data) or a loaded one."""
    if dataset is None:
        return load_parity_dataset(facts)
    if dataset.observation_dim != facts.observation_dim:
        raise DatasetError(
            f"parity dataset has {dataset.observation_dim} observation columns, checkpoint {facts.path} "
            f"expects {facts.observation_dim}; pass the dataset the run was trained on"
        )
    if facts.dataset_sha256 and dataset.sha256() != facts.dataset_sha256:
        raise DatasetError(
            f"parity dataset sha256 {dataset.sha256()[:12]}… is not the data checkpoint {facts.path} was "
            f"trained on ({facts.dataset_sha256[:12]}…); pass that dataset or none"
        )
    return dataset.observations


def run_in_onnxruntime(
    model_bytes: bytes, feeds: list[dict[str, np.ndarray]], output_names: list[str], what: str
) -> list[list[np.ndarray]]:
    """Run an in-memory graph once per feed (1 thread, quiet): the onnxruntime side of every
    parity check. A graph onnxruntime cannot load or run is a one-line ModelError naming `what`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        return [session.run(output_names, feed) for feed in feeds]
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"onnxruntime cannot run the {what}: {first}") from err



# ---------------------------------------------------------------------------------- card + files
def metadata_for(facts: CheckpointFacts) -> ModelMetadata:
    """The model's metadata_props / card metadata, from the checkpoint's dataset metadata."""
    meta = facts.dataset_metadata
    source = f"checkpoint {facts.path} dataset.metadata"
    for key, embedded in (("action_low", facts.action_low), ("action_high", facts.action_high)):
        values = meta.get(key)
        if not isinstance(values, list) or not np.array_equal(np.asarray(values, np.float32), embedded):
            raise ModelError(
                f"{source}.{key} {values} disagrees with the checkpoint's action_scale {embedded.tolist()}; "
                "the checkpoint is inconsistent, retrain"
            )
    metadata = ModelMetadata(
        observation_names=list(meta["observation_names"]),
        action_names=list(meta["action_names"]),
        action_low=[float(v) for v in meta["action_low"]],
        action_high=[float(v) for v in meta["action_high"]],
        control_rate_hz=float(meta["control_rate_hz"]),
        algorithm=facts.algorithm,
        dataset_sha256=facts.dataset_sha256,
        train_config=facts.train_config,
    )
    return metadata.validate(source)


def training_summary(facts: CheckpointFacts, seed_index: int) -> dict[str, Any]:
    """The card's `training:` block: checkpoint facts + the run's summary.json when present."""
    summary: dict[str, Any] = {
        "algorithm": facts.algorithm,
        "step": facts.step,
        "seed": facts.seeds[seed_index],
        "seed_index": seed_index,
        "seeds_in_run": list(facts.seeds),
        "checkpoint": str(facts.path),
        "dataset": facts.dataset_name,
        "dataset_sha256": facts.dataset_sha256,
        "num_transitions": int(facts.state["dataset"].get("num_transitions", 0)),
    }
    run_summary = facts.path.parent.parent / "summary.json"
    if run_summary.is_file():
        with contextlib.suppress(OSError, ValueError):
            summary["run_summary"] = json.loads(run_summary.read_text(encoding="utf-8"))
    return summary


def write_model_and_card(out: Path, model_bytes: bytes, card_bytes: bytes) -> Path:
    """Write NAME.onnx and NAME.card.yaml together or not at all; return the card's path."""
    card_path = card_path_for(out)
    try:
        atomic_write_group({out: model_bytes, card_path: card_bytes})
    except OSError as err:
        raise ConfigError(
            f"--out {out}: cannot write there ({err.strerror}); choose a writable folder"
        ) from None
    return card_path
