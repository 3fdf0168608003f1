"""`offrl-robot export`: a policy checkpoint -> one self-contained ONNX model + its card.

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

The policy itself comes from the algorithm (`Algorithm.policy_for_export`); everything else
(exporter, parity inputs, card, files) is the shared machinery of `offrl_robot.export.common`.
A dynamics checkpoint is handed to `offrl_robot.export.dynamics`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from offrl_robot.algos import resolve_algo
from offrl_robot.card import (
    INPUT_NAME,
    OUTPUT_NAME,
    ModelCard,
    bytes_sha256,
    card_path_for,
    write_metadata_props,
)
from offrl_robot.errors import ConfigError, ModelError
from offrl_robot.export.common import (
    DEFAULT_OPSET,
    MIN_OPSET,
    MIN_PARITY_SAMPLES,
    CheckpointFacts,
    ExportResult,
    ParityReport,
    metadata_for,
    parity_dataset_observations,
    parity_observations,
    read_checkpoint,
    run_in_onnxruntime,
    torch_to_onnx,
    training_summary,
    write_model_and_card,
)
from offrl_robot.train_config import build_algo_config

# Max |torch - onnxruntime| in [-1, 1] action units (see the module docstring).
PARITY_TOLERANCE = 1e-5
# Rows checked again one at a time: proves batch=1 (the control-loop case) runs and agrees.
SINGLE_ROW_CHECKS = 8


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


def build_export_module(facts: CheckpointFacts, seed_index: int = 0) -> PhysicalUnitsPolicy:
    """Rebuild the algorithm from the checkpoint and wrap one seed's policy for export."""
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
def to_onnx(module: PhysicalUnitsPolicy, observation_dim: int, opset: int = DEFAULT_OPSET) -> Any:
    """torch.export -> ONNX (dynamo exporter), in memory, weights embedded, batch axis dynamic."""
    import onnx

    example = (torch.zeros(2, observation_dim, dtype=torch.float32),)
    model = torch_to_onnx(module, example, [INPUT_NAME], [OUTPUT_NAME], opset)
    produced = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if produced != int(opset):
        raise ModelError(
            f"--opset {opset}: the exporter could not convert the graph to that opset (got {produced}); "
            f"use the default {DEFAULT_OPSET}"
        )
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ModelError(
            f"ONNX export left weights {external[:3]} in external data; the model must be one file"
        )
    onnx.checker.check_model(model, full_check=True)
    return model



# ---------------------------------------------------------------------------------- parity
def argmax_tie_rows(
    module: PhysicalUnitsPolicy, observations: np.ndarray, onnx_unit: np.ndarray, tolerance: float
) -> np.ndarray:
    """Rows where onnxruntime legitimately picked another candidate of an argmax policy.

    A policy that picks the best of several candidates (BCQ: by Q1) may, when two candidates are
    equally good within float32 rounding, legitimately pick another one in onnxruntime. The
    policy module says which rows are such ties through its `argmax_tie_rows` hook (see
    `offrl_robot.algos.bcq.BCQExportPolicy`); `onnx_unit` is the ONNX action in [-1, 1] units.
    Returns a bool mask over the rows; all False for policies without the hook.
    """
    hook = getattr(module.policy, "argmax_tie_rows", None)
    if hook is None:
        return np.zeros(len(observations), dtype=bool)
    return np.asarray(hook(lambda: module(torch.from_numpy(observations)), onnx_unit, tolerance), dtype=bool)


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
        ties[off] = argmax_tie_rows(module, all_obs[off], onnx_unit, tolerance)
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
        from offrl_robot.export.dynamics import export_dynamics

        return export_dynamics(
            checkpoint_path, out, parity_samples, opset=opset, dataset=dataset, parity_seed=parity_seed
        )
    metadata = metadata_for(facts)
    module = build_export_module(facts, seed_index)
    observations, from_dataset = parity_observations(
        facts, parity_dataset_observations(facts, dataset), parity_samples, seed=parity_seed
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
