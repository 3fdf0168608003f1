"""A dynamics-ensemble checkpoint -> one ONNX model + card that the MPC controller plans with.

The graph is the ensemble's own inference module (`DynamicsEnsemble.module_for_export`, see
`offrl_robot.algos.dynamics.PhysicalUnitsDynamics`), batched over planner candidates:

    observation [N, O], action [N, A]   float32, physical units
      -> next_observation [N, O], reward [N], disagreement [N],
         member_next_observation [K, N, O], member_reward [K, N]   (physical units)

Same guarantees as the policy export (both use `offrl_robot.export.common`): torch vs
onnxruntime parity on >= 1,000 dataset rows and in-range draws before anything is written,
metadata via `card.py`, the card's sha256 over the bytes, model + card written together
atomically. The card's `training.mpc` holds the planner settings the checkpoint's
`algo_config.mpc` asked for, so the validation gate runs, and records its verdict for, the same
planner that deploys.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offrl_robot.algos.dynamics import ALGORITHM_NAME, PhysicalUnitsDynamics, load_dynamics
from offrl_robot.card import (
    DYNAMICS_INPUTS,
    DYNAMICS_OUTPUTS,
    ModelCard,
    bytes_sha256,
    card_path_for,
    plain,
    write_metadata_props,
)
from offrl_robot.errors import ConfigError, ModelError
from offrl_robot.export.common import (
    DEFAULT_OPSET,
    MIN_PARITY_SAMPLES,
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

OBSERVATION_INPUT, ACTION_INPUT = DYNAMICS_INPUTS
OUTPUTS = DYNAMICS_OUTPUTS
# Max |torch - onnxruntime| of next observations in units of the observation std (and of the
# reward in units of its std): float32 GEMMs of two libraries agree to ~1e-6 here.
DYNAMICS_PARITY_TOLERANCE = 1e-4


def dynamics_to_onnx(module: PhysicalUnitsDynamics, opset: int = DEFAULT_OPSET) -> Any:
    """torch.export -> ONNX in memory, weights embedded, candidate axis dynamic."""
    import onnx

    model = module.model
    example = (
        torch.zeros(4, model.observation_dim, dtype=torch.float32),
        torch.zeros(4, model.action_dim, dtype=torch.float32),
    )
    proto = torch_to_onnx(
        module, example, [OBSERVATION_INPUT, ACTION_INPUT], list(OUTPUTS), opset, "the dynamics ensemble"
    )
    onnx.checker.check_model(proto, full_check=True)
    return proto


def check_dynamics_parity(
    module: PhysicalUnitsDynamics,
    model_bytes: bytes,
    observations: np.ndarray,
    actions: np.ndarray,
    dataset_samples: int,
    tolerance: float = DYNAMICS_PARITY_TOLERANCE,
) -> ParityReport:
    """torch vs onnxruntime on every output, in observation-std / reward-std units."""
    got, single = run_in_onnxruntime(
        model_bytes,
        [
            {OBSERVATION_INPUT: observations, ACTION_INPUT: actions},
            {OBSERVATION_INPUT: observations[:1], ACTION_INPUT: actions[:1]},
        ],
        list(OUTPUTS),
        "exported dynamics graph",
    )
    with torch.no_grad():
        reference = [t.numpy() for t in module(torch.from_numpy(observations), torch.from_numpy(actions))]
    if not all(np.isfinite(r).all() for r in reference):
        raise ModelError(
            "the torch dynamics model outputs NaN/inf on in-range inputs; its weights are unusable"
        )
    obs_std = module.model.obs_std.numpy()
    reward_std = float(module.model.target_std[-1])
    scales = (obs_std, reward_std, 1.0, obs_std, reward_std)
    unit = max(
        float(np.nan_to_num(np.abs(g - r) / s, nan=np.inf).max())
        for g, r, s in zip(got, reference, scales, strict=True)
    )
    unit = max(
        unit,
        float(np.nan_to_num(np.abs(single[0] - reference[0][:1]) / obs_std, nan=np.inf).max()),
    )
    absolute = max(
        float(np.nan_to_num(np.abs(g - r), nan=np.inf).max()) for g, r in zip(got, reference, strict=True)
    )
    if not unit <= tolerance:
        raise ModelError(
            f"parity check failed: onnxruntime and torch dynamics differ by {unit:.3g} std units > {tolerance:g} "
            f"on {len(observations)} inputs; nothing was written"
        )
    return ParityReport(
        samples=len(observations),
        dataset_samples=dataset_samples,
        random_samples=len(observations) - dataset_samples,
        max_abs_diff=absolute,
        max_unit_diff=unit,
        tolerance=float(tolerance),
    )


def export_dynamics(
    checkpoint_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    parity_samples: int = MIN_PARITY_SAMPLES,
    *,
    opset: int = DEFAULT_OPSET,
    dataset: Any | None = None,
    mpc: dict[str, Any] | None = None,
    parity_seed: int = 0,
) -> ExportResult:
    """Export a dynamics checkpoint (or run directory) to `out_path` + NAME.card.yaml.

    `mpc`: planner settings for the card (default: the checkpoint's `algo_config.mpc`); they are
    checked by `offrl_robot.mpc.MPCConfig` before anything is written.
    """
    from offrl_robot.mpc import MPCConfig, check_reward_source

    out = Path(out_path)
    if out.suffix != ".onnx":
        raise ConfigError(f"--out {out} must name a .onnx file, e.g. models/arm_reach_mpc.onnx")
    if parity_samples < MIN_PARITY_SAMPLES:
        raise ConfigError(f"parity_samples {parity_samples} is too few; use at least {MIN_PARITY_SAMPLES}")
    facts = read_checkpoint(checkpoint_path)
    if facts.algorithm != ALGORITHM_NAME:
        raise ModelError(
            f"checkpoint {facts.path} holds {facts.algorithm!r}, not a dynamics ensemble; use `offrl-robot export`"
        )
    metadata = metadata_for(facts)
    planner = dict(facts.state["algo_config"].get("mpc") or {}) if mpc is None else dict(mpc)
    mpc_config = MPCConfig.from_dict(planner, source=f"checkpoint {facts.path} algo_config.mpc")
    check_reward_source(mpc_config.reward, metadata.observation_dim, metadata.action_dim)
    # inside the ONNX file, so the sha256 (and a validation verdict bound to it) covers the planner
    metadata.controller = plain({"mpc": mpc_config.to_dict()})
    try:
        model = load_dynamics(facts.state)
    except (ConfigError, RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()[0]
        raise ModelError(f"checkpoint {facts.path}: cannot rebuild the dynamics ensemble ({first})") from None
    module = model.module_for_export()
    observations, from_dataset = parity_observations(
        facts, parity_dataset_observations(facts, dataset), parity_samples, seed=parity_seed
    )
    rng = np.random.default_rng([parity_seed, 1])
    actions = rng.uniform(facts.action_low, facts.action_high, size=(len(observations), facts.action_dim))
    actions = actions.astype(np.float32)
    proto = dynamics_to_onnx(module, opset)
    write_metadata_props(proto, metadata)
    model_bytes = proto.SerializeToString()
    parity = check_dynamics_parity(module, model_bytes, observations, actions, from_dataset)
    sha256 = bytes_sha256(model_bytes)
    training = training_summary(facts, 0)
    training["export"] = {
        "opset": int(opset),
        "exporter": f"torch {torch.__version__} (dynamo)",
        "parity": parity.to_dict(),
        "outputs": list(OUTPUTS),
    }
    training["members"] = model.members
    training["controller"] = "mpc"
    training["mpc"] = metadata.controller[
        "mpc"
    ]  # readable copy; MPCController checks it equals the embedded one
    card = ModelCard(model=out.name, sha256=sha256, metadata=metadata, training=training)
    card_bytes = _card_bytes_checked_by_controller(out, model_bytes, card, observations[0])
    card_path = write_model_and_card(out, model_bytes, card_bytes)
    return ExportResult(
        model_path=out,
        card_path=card_path,
        sha256=sha256,
        algorithm=facts.algorithm,
        seed=facts.seeds[0],
        step=facts.step,
        observation_dim=facts.observation_dim,
        action_dim=facts.action_dim,
        opset=int(opset),
        parity=parity,
    )


def _card_bytes_checked_by_controller(
    out: Path, model_bytes: bytes, card: ModelCard, probe: np.ndarray
) -> bytes:
    """Open model + card with MPCController (every check a robot runs) in a scratch folder and
    plan once; return the card's bytes. The target folder is not touched."""
    from offrl_robot.mpc import MPCController

    with tempfile.TemporaryDirectory(prefix="offrl-export-") as scratch:
        model_file = Path(scratch) / out.name
        model_file.write_bytes(model_bytes)
        card_file = card_path_for(model_file)
        card.write(card_file)
        action = MPCController(model_file).act(probe)
        low, high = np.asarray(card.metadata.action_low), np.asarray(card.metadata.action_high)
        if (
            action.shape != low.shape
            or not np.all(np.isfinite(action))
            or np.any((action < low) | (action > high))
        ):
            raise ModelError(
                f"the MPC controller planned {action.tolist()} on a dataset observation; nothing was written"
            )
        return card_file.read_bytes()
