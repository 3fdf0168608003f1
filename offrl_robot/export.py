"""`offrl-robot export`: a training checkpoint -> one self-contained ONNX model + its card.

The exported graph is everything a robot needs between sensor values and joint commands:

    observation [batch, O] float32, physical units
      -> (observation - mean) / std          (the training normaliser; std floored)
      -> the policy of one seed               (deterministic: mean action / BCQ argmax-Q)
      -> clip to [-1, 1] -> scale to [low, high]
      -> action [batch, A] float32, physical units

so that a deployed model never depends on Python-side preprocessing that could drift from
training. Observations are NOT clipped: the policy sees exactly what the Trainer's evaluation
fed it, and guarding against wild sensor values is the SafetyFilter's job, not the graph's.

Why a parity check inside export: the ONNX graph is a second implementation of the policy
(different kernels, different op set, possible exporter bugs). Export runs the torch module and
onnxruntime on >= 1,000 observations — rows of the training dataset when it can be loaded, plus
uniform draws inside the observed per-dimension range — and refuses to write anything unless
they agree. The tolerance is applied in the policy's own [-1, 1] action units (|diff| divided by
the half-range of each action): an absolute 1e-5 in physical units would be below float32
resolution for actions of magnitude >= ~100 (e.g. efforts), where one ulp is already 7.6e-6.

Nothing half-written: the model exists only in memory until it has passed the parity check
and PolicyRuntime (every check a robot runs: sha256, metadata vs card, I/O shapes, finite
constants) has opened it from a scratch folder; then model and card are written together with
`atomic_write_group` (temp files + rename). Any failure leaves the target folder untouched.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from offrl_robot.atomic import atomic_write_group
from offrl_robot.card import (
    INPUT_NAME,
    OUTPUT_NAME,
    ModelCard,
    ModelMetadata,
    bytes_sha256,
    card_path_for,
    write_metadata_props,
)
from offrl_robot.errors import ConfigError, DatasetError, ModelError

DEFAULT_OPSET = 18
# The dynamo exporter writes opset 18+ natively; older opsets need a lossy converter that fails
# on common ops (CastLike), so they are refused up front.
MIN_OPSET = 18
MIN_PARITY_SAMPLES = 1000
# Max |torch - onnxruntime| in [-1, 1] action units (see the module docstring).
PARITY_TOLERANCE = 1e-5
# Rows checked again one at a time: proves batch=1 (the control-loop case) runs and agrees.
SINGLE_ROW_CHECKS = 8


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


# ---------------------------------------------------------------------------------- the graph
class PhysicalUnitsPolicy(nn.Module):
    """Normaliser + policy + action scaling as one module: physical obs [B, O] -> physical action [B, A].

    The arithmetic mirrors `offrl_robot.evaluation.evaluate` (normalise, clip to [-1, 1], then
    low + (unit + 1) * (high - low) / 2) so the exported model acts like the evaluated one.
    """

    def __init__(
        self,
        policy: nn.Module,
        obs_mean: Tensor,
        obs_std: Tensor,
        action_low: Tensor,
        action_high: Tensor,
    ) -> None:
        super().__init__()
        self.policy = policy
        self.register_buffer("obs_mean", obs_mean.detach().to(torch.float32).clone())
        self.register_buffer("obs_std", obs_std.detach().to(torch.float32).clone())
        self.register_buffer("action_low", action_low.detach().to(torch.float32).clone())
        self.register_buffer(
            "action_half_range", ((action_high - action_low) * 0.5).detach().to(torch.float32).clone()
        )

    def forward(self, observation: Tensor) -> Tensor:
        unit = self.policy((observation - self.obs_mean) / self.obs_std).clamp(-1.0, 1.0)
        return self.action_low + (unit + 1.0) * self.action_half_range


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


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A checkpoint file, or a run directory (its latest checkpoint)."""
    from offrl_robot.train import list_checkpoints

    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise ModelError(
                f"{path} is a directory without checkpoints/step_*.pt; pass a checkpoint file or a run directory"
            )
        return found[-1]
    if not path.exists():
        raise ModelError(f"checkpoint {path} does not exist; pass a checkpoint file or a run directory")
    return path


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
    from offrl_robot.train import load_checkpoint

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
    from offrl_robot.train import OBS_STD_FLOOR

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


def build_export_module(facts: CheckpointFacts, seed_index: int = 0) -> PhysicalUnitsPolicy:
    """Rebuild the algorithm from the checkpoint and wrap one seed's policy for export."""
    from offrl_robot.train import build_algo_config, resolve_algo

    if not 0 <= seed_index < len(facts.seeds):
        raise ConfigError(
            f"--seed-index {seed_index} is out of range: checkpoint {facts.path} holds "
            f"{len(facts.seeds)} seed(s) {facts.seeds}; use 0..{len(facts.seeds) - 1}"
        )
    try:
        algo_cls = resolve_algo(facts.algorithm)
    except ConfigError as err:
        raise ModelError(f"checkpoint {facts.path}: {err}") from None
    params = {k: v for k, v in dict(facts.state["algo_config"]).items() if k != "batch_size"}
    try:
        config = build_algo_config(algo_cls, params, int(facts.train_config.get("batch_size", 256)))
        algo = algo_cls(facts.observation_dim, facts.action_dim, len(facts.seeds), config, seeds=facts.seeds)
    except (ConfigError, TypeError, ValueError) as err:
        raise ModelError(f"checkpoint {facts.path}: cannot rebuild {facts.algorithm!r} ({err})") from None
    weights = facts.state["algo_state"]
    for name, tensor in weights.items():
        if isinstance(tensor, Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelError(
                f"checkpoint {facts.path}: weights {name!r} hold NaN/inf; training diverged, "
                "export an earlier checkpoint or retrain"
            )
    try:
        algo.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ModelError(
            f"checkpoint {facts.path}: weights do not fit {facts.algorithm!r} with the saved config ({first})"
        ) from None
    algo.eval()
    policy = algo.policy_for_export(seed_index)
    module = PhysicalUnitsPolicy(
        policy,
        torch.from_numpy(facts.obs_mean),
        torch.from_numpy(facts.obs_std),
        torch.from_numpy(facts.action_low),
        torch.from_numpy(facts.action_high),
    )
    module.requires_grad_(False)
    return module.eval()


# ---------------------------------------------------------------------------------- ONNX
@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
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


def _strip_debug_metadata(model: Any) -> None:
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


def to_onnx(module: PhysicalUnitsPolicy, observation_dim: int, opset: int = DEFAULT_OPSET) -> Any:
    """torch.export -> ONNX (dynamo exporter), in memory, weights embedded, batch axis dynamic."""
    import onnx

    example = torch.zeros(2, observation_dim, dtype=torch.float32)
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                external_data=False,
                verbose=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch", min=1)}},
                opset_version=int(opset),
                optimize=True,
            )
    except Exception as err:  # the exporter raises many types; the first line is the useful part
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"ONNX export (opset {opset}) failed: {first}") from err
    model = program.model_proto
    produced = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if produced != int(opset):
        raise ModelError(
            f"--opset {opset}: the exporter could not convert the graph to that opset (got {produced}); "
            f"use the default {DEFAULT_OPSET}"
        )
    _strip_debug_metadata(model)
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ModelError(
            f"ONNX export left weights {external[:3]} in external data; the model must be one file"
        )
    onnx.checker.check_model(model, full_check=True)
    return model


# ---------------------------------------------------------------------------------- parity
def _load_parity_dataset(facts: CheckpointFacts) -> np.ndarray | None:
    """The checkpoint's training observations, if its dataset loads here and is the same data."""
    if not facts.dataset_name or facts.dataset_name == "in-memory":
        return None
    from offrl_robot.train import load_dataset_by_name

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


def _argmax_tie_rows(
    module: PhysicalUnitsPolicy, observations: np.ndarray, onnx_unit: np.ndarray, tolerance: float
) -> np.ndarray:
    """Rows where onnxruntime legitimately picked another candidate of an argmax-Q policy (BCQ).

    BCQ chooses the best of N candidate actions by Q1. When two candidates' Q values differ by
    less than the float32 rounding difference of two GEMM implementations, torch and onnxruntime
    may pick different (both correct) candidates: a large action difference that is no export
    bug (about 1 row in 50,000 for a BCQ trained 500 steps). A row counts as such a tie only if
    the ONNX action equals, within `tolerance`, a torch candidate whose Q is within a relative
    1e-4 of torch's best. Returns a bool mask over the rows; all False for other policies.
    """
    from offrl_robot.algos.bcq import BCQExportPolicy

    ties = np.zeros(len(observations), dtype=bool)
    policy = module.policy
    if not isinstance(policy, BCQExportPolicy):
        return ties
    captured: dict[str, Tensor] = {}

    def keep_q_inputs(_module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        captured["inputs"], captured["q"] = inputs[0], output

    handle = policy.q1.register_forward_hook(keep_q_inputs)
    try:
        with torch.no_grad():
            module(torch.from_numpy(observations))
    finally:
        handle.remove()
    rows, action_dim = len(observations), onnx_unit.shape[1]
    num_candidates = policy.latents.shape[0]
    q = captured["q"].reshape(rows, num_candidates).numpy().astype(np.float64)
    candidates = captured["inputs"][:, -action_dim:].reshape(rows, num_candidates, action_dim).numpy()
    best = q.max(axis=1, keepdims=True)
    near_best = q >= best - 1e-4 * (1.0 + np.abs(best))
    matches = np.abs(candidates - onnx_unit[:, None, :]).max(axis=2) <= tolerance
    ties[:] = (near_best & matches).any(axis=1)
    return ties


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


def check_parity(
    module: PhysicalUnitsPolicy,
    model_bytes: bytes,
    observations: np.ndarray,
    dataset_samples: int,
    tolerance: float = PARITY_TOLERANCE,
) -> ParityReport:
    """torch vs onnxruntime on every row (one batch) and on a few rows alone (batch = 1)."""
    feeds = [{INPUT_NAME: observations}]
    feeds += [{INPUT_NAME: observations[i : i + 1]} for i in range(SINGLE_ROW_CHECKS)]
    runs = run_in_onnxruntime(model_bytes, feeds, [OUTPUT_NAME], "exported graph")
    batch_out = runs[0][0]
    single_out = np.concatenate([outputs[0] for outputs in runs[1:]])
    with torch.no_grad():
        reference = module(torch.from_numpy(observations)).numpy()
    if not np.isfinite(reference).all():
        raise ModelError(
            "the torch policy outputs NaN/inf on in-range observations; its weights are unusable"
        )
    low = module.action_low.numpy()
    half_range = module.action_half_range.numpy()
    onnx_out = np.concatenate([batch_out, single_out])
    torch_out = np.concatenate([reference, reference[:SINGLE_ROW_CHECKS]])
    abs_diff = np.nan_to_num(np.abs(onnx_out - torch_out), nan=np.inf).max(axis=1)
    unit_diff = np.nan_to_num(np.abs(onnx_out - torch_out) / half_range, nan=np.inf).max(axis=1)
    ties = np.zeros(len(onnx_out), dtype=bool)
    off = np.flatnonzero(unit_diff > tolerance)
    if off.size:
        all_obs = np.concatenate([observations, observations[:SINGLE_ROW_CHECKS]])
        onnx_unit = (onnx_out[off] - low) / half_range - 1.0
        ties[off] = _argmax_tie_rows(module, all_obs[off], onnx_unit, tolerance)
    kept = ~ties
    max_unit = float(unit_diff[kept].max()) if kept.any() else 0.0
    report = ParityReport(
        samples=len(observations),
        dataset_samples=dataset_samples,
        random_samples=len(observations) - dataset_samples,
        max_abs_diff=float(abs_diff[kept].max()) if kept.any() else 0.0,
        max_unit_diff=max_unit,
        tolerance=float(tolerance),
        argmax_ties=int(ties.sum()),
    )
    if not max_unit <= tolerance:
        raise ModelError(
            f"parity check failed: onnxruntime and torch differ by {max_unit:.3g} (action units [-1, 1]) "
            f"> {tolerance:g} on {len(observations)} observations; nothing was written"
        )
    return report


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


def _card_bytes_checked_by_runtime(
    out: Path, model_bytes: bytes, card: ModelCard, probe: np.ndarray
) -> bytes:
    """Open model + card, under their final names in a scratch folder, with PolicyRuntime (every
    check a robot will run) and act once; return the card's bytes. `out`'s folder is not touched.

    The single-tick path (preallocated, io_binding) must equal the batch path on the same row:
    torch vs onnxruntime was the parity check's job, this proves the deployed entry point works.
    """
    from offrl_robot.runtime import PolicyRuntime

    with tempfile.TemporaryDirectory(prefix="offrl-export-") as scratch:
        model_file = Path(scratch) / out.name
        model_file.write_bytes(model_bytes)
        card_file = card_path_for(model_file)
        card.write(card_file)
        runtime = PolicyRuntime(model_file)
        action = runtime.act(probe)
        batch_action = runtime.act_batch(probe[None, :])[0]
        half_range = (np.asarray(card.metadata.action_high) - np.asarray(card.metadata.action_low)) / 2
        if action.shape != batch_action.shape or not np.all(
            np.abs(action - batch_action) / half_range <= PARITY_TOLERANCE
        ):
            raise ModelError(
                f"PolicyRuntime.act gives {action.tolist()} but act_batch {batch_action.tolist()} on the same "
                "observation; nothing was written"
            )
        return card_file.read_bytes()


def _parity_dataset_observations(facts: CheckpointFacts, dataset: Any | None) -> np.ndarray | None:
    """Observations of the training data: the given Dataset (must be the same data) or a loaded one."""
    if dataset is None:
        return _load_parity_dataset(facts)
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


def export_checkpoint(
    checkpoint_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    seed_index: int = 0,
    parity_samples: int = MIN_PARITY_SAMPLES,
    *,
    opset: int = DEFAULT_OPSET,
    dataset: Any | None = None,
    parity_tolerance: float = PARITY_TOLERANCE,
    parity_seed: int = 0,
) -> ExportResult:
    """Export one seed's policy of a checkpoint (or a run directory's latest) to `out_path`.

    Writes `out_path` (NAME.onnx) and NAME.card.yaml beside it, both or neither. `dataset`: the
    training Dataset for parity observations (default: load the checkpoint's dataset by name if
    it is available here and unchanged; otherwise only random in-range observations are used).
    `parity_tolerance`: max |torch - onnxruntime| in [-1, 1] action units.
    """
    out = Path(out_path)
    if out.suffix != ".onnx":
        raise ConfigError(f"--out {out} must name a .onnx file, e.g. models/reach_iql.onnx")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; name the .onnx file to write")
    if parity_samples < MIN_PARITY_SAMPLES:
        raise ConfigError(f"parity_samples {parity_samples} is too few; use at least {MIN_PARITY_SAMPLES}")
    if not parity_tolerance >= 0:
        raise ConfigError(f"parity tolerance {parity_tolerance} must be >= 0")
    import onnx

    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ConfigError(
            f"--opset {opset} is not supported; use {MIN_OPSET}..{onnx.defs.onnx_opset_version()} "
            f"(default {DEFAULT_OPSET})"
        )
    # Every check of the inputs first (cheap), the exporter (seconds) only when they pass.
    facts = read_checkpoint(checkpoint_path)
    if facts.algorithm == "dynamics":  # an ensemble for MPC, not a policy: its own graph and card
        from offrl_robot.export_dynamics import export_dynamics

        return export_dynamics(
            checkpoint_path, out, parity_samples, opset=opset, dataset=dataset, parity_seed=parity_seed
        )
    metadata = metadata_for(facts)
    module = build_export_module(facts, seed_index)
    observations, from_dataset = parity_observations(
        facts, _parity_dataset_observations(facts, dataset), parity_samples, seed=parity_seed
    )
    model = to_onnx(module, facts.observation_dim, opset)
    write_metadata_props(model, metadata)
    model_bytes = model.SerializeToString()
    parity = check_parity(module, model_bytes, observations, from_dataset, parity_tolerance)
    sha256 = bytes_sha256(model_bytes)
    training = training_summary(facts, seed_index)
    training["export"] = {
        "opset": int(opset),
        "exporter": f"torch {torch.__version__} (dynamo)",
        "parity": parity.to_dict(),
    }
    card = ModelCard(model=out.name, sha256=sha256, metadata=metadata, training=training)
    card_bytes = _card_bytes_checked_by_runtime(out, model_bytes, card, observations[0])
    card_path = write_model_and_card(out, model_bytes, card_bytes)
    return ExportResult(
        model_path=out,
        card_path=card_path,
        sha256=sha256,
        algorithm=facts.algorithm,
        seed=facts.seeds[seed_index],
        step=facts.step,
        observation_dim=facts.observation_dim,
        action_dim=facts.action_dim,
        opset=int(opset),
        parity=parity,
    )


# ---------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", help="checkpoint file (runs/NAME/checkpoints/step_*.pt) or a run directory"
    )
    parser.add_argument("--out", required=True, help="model file to write, e.g. models/reach_iql.onnx")
    parser.add_argument(
        "--seed-index", type=int, default=0, help="which of the run's seeds to export (index into its seeds)"
    )
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    parser.add_argument(
        "--parity-samples",
        type=int,
        default=MIN_PARITY_SAMPLES,
        help=f"observations for the torch vs onnxruntime check (>= {MIN_PARITY_SAMPLES})",
    )


def run(args: argparse.Namespace) -> int:
    result = export_checkpoint(
        args.checkpoint,
        args.out,
        seed_index=args.seed_index,
        parity_samples=args.parity_samples,
        opset=args.opset,
    )
    parity = result.parity
    print(
        f"exported {result.algorithm} seed {result.seed} (step {result.step}) -> {result.model_path} "
        f"[observation {result.observation_dim} -> action {result.action_dim}, opset {result.opset}]"
    )
    print(
        f"parity: {parity.samples} observations ({parity.dataset_samples} from the dataset), "
        f"max |torch - onnxruntime| = {parity.max_abs_diff:.3g} ({parity.max_unit_diff:.3g} in [-1, 1] units, "
        f"tolerance {parity.tolerance:g})"
    )
    print(f"card: {result.card_path}  sha256: {result.sha256}")
    return 0
