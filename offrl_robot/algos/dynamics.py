"""Learned dynamics: a probabilistic ensemble of K next-state-delta + reward models (PETS / MBPO).

Why an ensemble of Gaussians: a model-based controller exploits every error of its model; the
Gaussian heads capture noise in the data (aleatoric) and the spread between K independently
initialised members marks states and actions the data does not cover (epistemic). The MPC
planner (`offrl_robot.mpc`) penalises that spread, so it stays where the model is trustworthy.

Shapes and spaces. The K members are one `EnsembleMLP` (weights [K, in, out], one batched
matmul). Inputs are normalised inside the module (observation mean/std as the Trainer computes
them, actions scaled to [-1, 1] from the dataset bounds); targets are the state delta
next_obs - obs and the reward, each standardised by its dataset mean/std. The normalisers are
buffers of the module, so a checkpoint and the exported ONNX graph carry them and the graph
takes and returns physical units.

Why its own fit loop rather than `Trainer`: the Trainer's loop is built around policies (it
evaluates `act` in the env and exports `policy_for_export`); a dynamics model instead needs a
held-out split and per-member early stopping (MBPO: keep each member's best held-out weights,
stop when none improved by more than 1 % for `patience` epochs). The run directory and
checkpoint use the Trainer's conventions (`config.yaml`, `metrics.csv`, `summary.json`,
`checkpoints/step_XXXXXXXX.pt` with the same format and fields), so `read_checkpoint` and
export treat it like any other run. `offrl-robot train --algo dynamics` runs `fit_dynamics`.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from offrl_robot import __version__
from offrl_robot.atomic import atomic_write_text

# The Trainer's checkpoint pieces: one normaliser floor, one run-dir naming, one checkpoint layout.
from offrl_robot.checkpoint import (
    CHECKPOINT_FORMAT,
    OBS_STD_FLOOR,
    default_run_dir,
    list_checkpoints,
    plain,
    write_checkpoint,
)
from offrl_robot.data.dataset import Dataset
from offrl_robot.errors import ConfigError
from offrl_robot.nets import EnsembleMLP

ALGORITHM_NAME = "dynamics"
# Delta/reward std below this is treated as this: constant targets (a goal that never moves
# within an episode) would otherwise be divided by zero.
TARGET_STD_FLOOR = 1e-6
# A member's held-out error must improve by this fraction to count as an improvement (MBPO).
IMPROVEMENT_FRACTION = 0.01


@dataclass
class DynamicsConfig:
    """Hyper-parameters of the ensemble and its fit (PETS/MBPO defaults scaled to small robots).

    members: K ensemble members. hidden_sizes: per-member MLP. An MPC tick costs about
    samples x horizon x iterations x K x hidden^2 (BENCHMARKS.md "MPC latency": 256 x 10 on
    5 x 64 x 64, the ArmReach config's shape, is ~5 ms p50 on the 2-core dev CPU).
    holdout_fraction / max_holdout: the held-out split used for early stopping.
    patience: epochs without a >1 % held-out improvement of any member before stopping.
    mpc: planner settings written into the exported model's card (`offrl_robot.mpc.MPCConfig`
    fields), so the gate validates exactly the planner that deploys.
    """

    members: int = 5
    hidden_sizes: tuple[int, ...] = (128, 128)
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    holdout_fraction: float = 0.1
    max_holdout: int = 5000
    patience: int = 5
    max_epochs: int = 200
    logvar_bound_weight: float = 0.01
    mpc: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> DynamicsConfig:
        if not isinstance(self.mpc, dict):
            raise ConfigError(
                "algo_config.mpc must be a mapping of planner settings (see offrl_robot/mpc.py)"
            )
        if self.mpc:
            from offrl_robot.mpc import MPCConfig

            MPCConfig.from_dict(self.mpc, source="algo_config.mpc")  # fail before training, not at export
        if self.members < 2:
            raise ConfigError(f"algo_config.members {self.members}: an ensemble needs at least 2 members")
        if not self.hidden_sizes or any(int(h) < 1 for h in self.hidden_sizes):
            raise ConfigError(f"algo_config.hidden_sizes {list(self.hidden_sizes)} must be positive sizes")
        if not 0.0 < self.holdout_fraction < 0.5:
            raise ConfigError(
                f"algo_config.holdout_fraction {self.holdout_fraction} must be in (0, 0.5), e.g. 0.1"
            )
        for name in ("learning_rate", "max_holdout", "patience", "max_epochs"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"algo_config.{name} must be positive, got {getattr(self, name)}")
        if self.weight_decay < 0 or self.logvar_bound_weight < 0:
            raise ConfigError("algo_config.weight_decay and logvar_bound_weight must be >= 0")
        return self


class DynamicsEnsemble(nn.Module):
    """K Gaussian models of (next_obs - obs, reward) given (obs, action), normalisers inside.

    forward_normalised: x [K, N, O + A] (normalised) -> mean, log-variance [K, N, O + 1]
    (standardised targets). predict: physical obs [N, O], action [N, A] -> per-member physical
    next observation [K, N, O] and reward [K, N] (the Gaussian means).
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        config: DynamicsConfig,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.observation_dim = observation_dim
        self.action_dim = action_dim
        self.members = config.members
        out = observation_dim + 1
        self.net = EnsembleMLP(
            [seed], config.members, observation_dim + action_dim, config.hidden_sizes, 2 * out, "dynamics"
        )
        # PETS soft bounds on the log-variance: learned, so the heads cannot collapse to
        # zero variance on the training data or explode off it.
        self.max_logvar = nn.Parameter(torch.full((1, 1, out), 0.5))
        self.min_logvar = nn.Parameter(torch.full((1, 1, out), -10.0))
        for name, size in (
            ("obs_mean", observation_dim),
            ("obs_std", observation_dim),
            ("action_low", action_dim),
            ("action_high", action_dim),
            ("target_mean", out),
            ("target_std", out),
        ):
            self.register_buffer(
                name, torch.zeros(size) if "mean" in name or "low" in name else torch.ones(size)
            )

    def set_normalisers(
        self,
        obs_mean: np.ndarray,
        obs_std: np.ndarray,
        action_low: np.ndarray,
        action_high: np.ndarray,
        target_mean: np.ndarray,
        target_std: np.ndarray,
    ) -> None:
        for name, value in (
            ("obs_mean", obs_mean),
            ("obs_std", obs_std),
            ("action_low", action_low),
            ("action_high", action_high),
            ("target_mean", target_mean),
            ("target_std", target_std),
        ):
            getattr(self, name).copy_(torch.as_tensor(np.asarray(value, dtype=np.float32)))

    def normalise_inputs(self, obs: Tensor, action: Tensor) -> Tensor:
        """Physical [..., O], [..., A] -> the network's input [..., O + A] (same maps as the Trainer)."""
        obs_n = (obs - self.obs_mean) / self.obs_std
        unit = ((action - self.action_low) / (self.action_high - self.action_low) * 2.0 - 1.0).clamp(
            -1.0, 1.0
        )
        return torch.cat([obs_n, unit], dim=-1)

    def forward_normalised(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, raw_logvar = self.net(x).chunk(2, dim=-1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - raw_logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar

    def predict_distribution(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """Each member's Gaussian over (next_obs - obs, reward) in physical units: mean and std
        [K, N, O + 1]. What model rollouts sample from (MOPO: mean + std * eps); `predict` gives
        the means as next states, what the planner and the exported graph use."""
        x = self.normalise_inputs(obs, action)
        x = x.unsqueeze(0).expand(self.members, *x.shape)
        mean, logvar = self.forward_normalised(x)
        return mean * self.target_std + self.target_mean, torch.exp(0.5 * logvar) * self.target_std

    def predict(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """Per-member Gaussian means in physical units: next obs [K, N, O], reward [K, N]."""
        x = self.normalise_inputs(obs, action)
        x = x.unsqueeze(0).expand(self.members, *x.shape)
        mean, _ = self.forward_normalised(x)
        target = mean * self.target_std + self.target_mean
        next_obs = obs.unsqueeze(0) + target[..., : self.observation_dim]
        return next_obs, target[..., self.observation_dim]

    def module_for_export(self) -> PhysicalUnitsDynamics:
        """The inference module the exporter turns into the planner's graph (and checks against)."""
        return PhysicalUnitsDynamics(self).eval()


class PhysicalUnitsDynamics(nn.Module):
    """What a dynamics model exports, batched over planner candidates (every member sees every row):

        observation [N, O], action [N, A]   float32, physical units
          -> normalise inside the graph -> K members as one batched matmul
          -> member_next_observation [K, N, O], member_reward [K, N]   (physical units)
          -> next_observation [N, O], reward [N]                        (ensemble means)
          -> disagreement [N] = max_k || (member_k - mean) / obs_std ||  (the pessimism signal)

    The disagreement is computed in the graph because the planner needs it for every candidate
    at every step, and in normalised units (radians and rad/s must not be summed raw).
    Output order: `offrl_robot.card.DYNAMICS_OUTPUTS`.
    """

    def __init__(self, model: DynamicsEnsemble) -> None:
        super().__init__()
        self.model = model

    def forward(self, observation: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        member_next, member_reward = self.model.predict(observation, action)
        next_obs = member_next.mean(dim=0)
        reward = member_reward.mean(dim=0)
        spread = (member_next - next_obs.unsqueeze(0)) / self.model.obs_std
        disagreement = spread.square().sum(dim=-1).sqrt().amax(dim=0)
        return next_obs, reward, disagreement, member_next, member_reward


# ---------------------------------------------------------------------------------- fitting
@dataclass
class FitResult:
    """What `fit_dynamics` produced (also written as summary.json)."""

    model: DynamicsEnsemble
    summary: dict[str, Any]
    checkpoint: Path | None


def _targets(dataset: Dataset) -> np.ndarray:
    delta = dataset.next_observations.astype(np.float64) - dataset.observations.astype(np.float64)
    return np.concatenate([delta, dataset.rewards.astype(np.float64)[:, None]], axis=1)


def _gaussian_nll(mean: Tensor, logvar: Tensor, target: Tensor) -> Tensor:
    """Per-member mean Gaussian NLL (constant dropped): [K, B, D] -> [K]."""
    return ((mean - target).square() * torch.exp(-logvar) + logvar).mean(dim=(1, 2))


def build_algo_config(params: dict[str, Any]) -> DynamicsConfig:
    """DynamicsConfig from a train config's `algo_config:` (unknown keys name the valid ones)."""
    fields = DynamicsConfig.__dataclass_fields__
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ConfigError(
            f"algo_config for 'dynamics' has unknown key(s) {unknown}; valid keys are {sorted(fields)}"
        )
    values = dict(params)
    if "hidden_sizes" in values:
        values["hidden_sizes"] = tuple(int(h) for h in values["hidden_sizes"])
    try:
        return DynamicsConfig(**values)
    except TypeError as err:
        raise ConfigError(f"algo_config for 'dynamics' is invalid: {err}") from None


def fit_dynamics(
    config: Any,
    dataset: Dataset | None = None,
    run_dir: str | Path | None = None,
    write: bool = True,
) -> FitResult:
    """Fit the ensemble on a dataset with held-out early stopping; write a Trainer-style run.

    `config` is a `TrainConfig` (algo "dynamics"): `steps` caps the gradient steps, `seeds`
    must hold one seed (it seeds the init, the split and the batches: same seed, same weights on
    the same CPU build), `batch_size` is per member. Each member draws its own batches.
    """
    from offrl_robot.train_config import load_dataset_by_name, resolve_device

    config.validate()
    if len(config.seeds) != 1:
        raise ConfigError(
            f"dynamics trains one ensemble per run; seeds {config.seeds} must hold one seed (its members are the ensemble)"
        )
    seed = int(config.seeds[0])
    algo_config = build_algo_config(config.algo_config)
    if dataset is None:
        if not config.dataset:
            raise ConfigError("no dataset: set `dataset:` in the train config or pass --dataset NAME")
        dataset = load_dataset_by_name(config.dataset)
    dataset_name = config.dataset or "in-memory"
    dataset = dataset.validate(dataset_name)
    if len(dataset) < 20:
        raise ConfigError(
            f"dataset {dataset_name!r} has {len(dataset)} transitions; dynamics needs at least 20"
        )
    device = resolve_device(config.device)
    threads_before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(seed)
    try:
        return _fit(config, algo_config, dataset, dataset_name, seed, run_dir, write, device)
    finally:
        torch.set_num_threads(threads_before)


def _fit(
    config: Any,
    algo_config: DynamicsConfig,
    dataset: Dataset,
    dataset_name: str,
    seed: int,
    run_dir: str | Path | None,
    write: bool,
    device: torch.device,
) -> FitResult:
    wall_start = time.perf_counter()
    obs = dataset.observations.astype(np.float64)
    obs_mean = obs.mean(axis=0).astype(np.float32)
    obs_std = np.maximum(obs.std(axis=0), OBS_STD_FLOOR).astype(np.float32)
    low = np.asarray(dataset.metadata.action_low, dtype=np.float32)
    high = np.asarray(dataset.metadata.action_high, dtype=np.float32)
    targets = _targets(dataset)

    rng = np.random.default_rng([seed, 0xD1])
    order = rng.permutation(len(dataset))
    n_hold = min(algo_config.max_holdout, max(1, round(algo_config.holdout_fraction * len(dataset))))
    hold_idx, train_idx = np.sort(order[:n_hold]), np.sort(order[n_hold:])
    target_mean = targets[train_idx].mean(axis=0).astype(np.float32)
    target_std = np.maximum(targets[train_idx].std(axis=0), TARGET_STD_FLOOR).astype(np.float32)

    model = DynamicsEnsemble(dataset.observation_dim, dataset.action_dim, algo_config, seed)
    model.set_normalisers(obs_mean, obs_std, low, high, target_mean, target_std)
    model.to(device)
    with torch.no_grad():
        inputs = model.normalise_inputs(
            torch.from_numpy(dataset.observations.astype(np.float32)).to(device),
            torch.from_numpy(dataset.actions.astype(np.float32)).to(device),
        )
    norm_targets = torch.from_numpy(((targets - target_mean) / target_std).astype(np.float32)).to(device)
    train_rows, hold_rows = torch.from_numpy(train_idx).to(device), torch.from_numpy(hold_idx).to(device)
    x_train, y_train = inputs[train_rows], norm_targets[train_rows]
    x_hold = inputs[hold_rows].unsqueeze(0).expand(model.members, -1, -1)
    y_hold = norm_targets[hold_rows].unsqueeze(0)

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=algo_config.learning_rate, weight_decay=algo_config.weight_decay
    )
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 0xBA]).generate_state(1)[0]))
    batch = min(config.batch_size, len(train_idx))
    steps_per_epoch = max(1, len(train_idx) // batch)
    best = torch.full((model.members,), float("inf"), device=device)
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rows: list[dict[str, Any]] = []
    step, epoch, stale = 0, 0, 0
    stop_reason = "max_epochs"
    while epoch < algo_config.max_epochs:
        model.train()
        loss_sum = torch.zeros((), device=device)
        for _ in range(steps_per_epoch):
            # Indices come from a CPU generator on every device: the same batches on CPU and GPU.
            idx = torch.randint(len(train_idx), (model.members, batch), generator=generator).to(device)
            mean, logvar = model.forward_normalised(x_train[idx])
            nll = _gaussian_nll(mean, logvar, y_train[idx])
            bound = algo_config.logvar_bound_weight * (model.max_logvar.sum() - model.min_logvar.sum())
            loss = nll.sum() + bound
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += nll.detach().mean()
            step += 1
            if step >= config.steps:
                break
        epoch += 1
        holdout = _holdout_mse(model, x_hold, y_hold)
        improved = holdout < best * (1.0 - IMPROVEMENT_FRACTION)  # inf at the start: improves
        if bool(improved.any()):
            _keep_members(best_state, model, improved)
            best = torch.where(improved, holdout, best)
            stale = 0
        else:
            stale += 1
        rows.append(
            {
                "epoch": epoch,
                "step": step,
                "train_nll": round(float(loss_sum) / steps_per_epoch, 6),
                "holdout_mse": round(float(holdout.mean()), 6),
                "best_holdout_mse": round(float(best.mean()), 6),
            }
        )
        if step >= config.steps:
            stop_reason = "steps"
            break
        if stale >= algo_config.patience:
            stop_reason = "early_stop"
            break
    model.load_state_dict(best_state)
    model.eval()
    final = _holdout_mse(model, x_hold, y_hold)
    summary = {
        "algo": ALGORITHM_NAME,
        "dataset": dataset_name,
        "dataset_sha256": dataset.sha256(),
        "task": config.task or dataset.metadata.task,
        "seeds": [seed],
        "steps": config.steps,
        "steps_run": step,
        "epochs": epoch,
        "stop_reason": stop_reason,
        "train_transitions": len(train_idx),
        "holdout_transitions": len(hold_idx),
        "holdout_mse_per_member": [round(float(v), 6) for v in final],
        "holdout_mse": round(float(final.mean()), 6),
        "wall_time_s": round(time.perf_counter() - wall_start, 3),
    }
    if not write:
        return FitResult(model=model, summary=summary, checkpoint=None)
    folder = (
        Path(run_dir) if run_dir is not None else default_run_dir(config.log_dir, ALGORITHM_NAME, dataset_name)
    )
    if list_checkpoints(folder):
        raise ConfigError(
            f"run directory {folder} already holds checkpoints; pass --out NEW_DIR (dynamics runs do not resume)"
        )
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": __version__,
        "torch_version": str(torch.__version__),
        "step": step,
        "algo": ALGORITHM_NAME,
        "algo_config": plain(asdict(algo_config)),
        "seeds": [seed],
        "num_seeds": 1,
        "observation_dim": dataset.observation_dim,
        "action_dim": dataset.action_dim,
        "config": config.to_dict(),
        "task": summary["task"],
        "normalizer": {
            "obs_mean": torch.from_numpy(obs_mean.copy()),
            "obs_std": torch.from_numpy(obs_std.copy()),
            "obs_min": torch.from_numpy(dataset.observations.min(axis=0).astype(np.float32)),
            "obs_max": torch.from_numpy(dataset.observations.max(axis=0).astype(np.float32)),
        },
        "action_scale": {"low": torch.from_numpy(low.copy()), "high": torch.from_numpy(high.copy())},
        "dataset": {
            "name": dataset_name,
            "sha256": summary["dataset_sha256"],
            "num_transitions": len(dataset),
            "metadata": plain(dataset.metadata.to_dict()),
        },
        "algo_state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        "summary": plain(summary),
    }
    path = write_checkpoint(folder, step, state)
    atomic_write_text(folder / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(folder / "metrics.csv", text.getvalue())
    summary.update({"checkpoint": str(path), "run_dir": str(folder)})
    atomic_write_text(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
    return FitResult(model=model, summary=summary, checkpoint=path)


@torch.no_grad()
def _holdout_mse(model: DynamicsEnsemble, x_hold: Tensor, y_hold: Tensor) -> Tensor:
    """Per-member MSE of the means on the held-out rows, in standardised target units: [K]."""
    model.eval()
    mean, _ = model.forward_normalised(x_hold)
    return (mean - y_hold).square().mean(dim=(1, 2))


def _keep_members(best_state: dict[str, Tensor], model: DynamicsEnsemble, improved: Tensor) -> None:
    """Copy the improved members' current weights into the best snapshot (per member, MBPO)."""
    members = torch.nonzero(improved).flatten()
    for name, value in model.state_dict().items():
        if name.startswith("net.") and value.shape[0] == model.members:
            best_state[name][members] = value.detach()[members]
        elif not name.startswith("net."):
            best_state[name] = value.detach().clone()


def load_dynamics(state: dict[str, Any]) -> DynamicsEnsemble:
    """Rebuild the ensemble from a dynamics checkpoint's state (see `fit_dynamics`)."""
    algo_config = build_algo_config(
        {k: v for k, v in dict(state["algo_config"]).items() if k in DynamicsConfig.__dataclass_fields__}
    )
    model = DynamicsEnsemble(
        int(state["observation_dim"]), int(state["action_dim"]), algo_config, int(state["seeds"][0])
    )
    model.load_state_dict(state["algo_state"])
    model.requires_grad_(False)
    return model.eval()


def run_cli(config: Any, run_dir: str | Path | None, resume: bool) -> int:
    """`offrl-robot train --algo dynamics` (called by `offrl_robot.train.run`)."""
    if resume:
        raise ConfigError("--resume: dynamics runs are short and do not resume; start a new run with --out")
    result = fit_dynamics(config, run_dir=run_dir)
    s = result.summary
    print(
        f"trained dynamics ({len(s['holdout_mse_per_member'])} members) on {s['dataset']}: "
        f"{s['steps_run']} steps, {s['epochs']} epochs ({s['stop_reason']}), held-out MSE {s['holdout_mse']:.4g} "
        "(standardised units)"
    )
    print(f"checkpoint: {result.checkpoint}")
    print(f"summary: {Path(s['run_dir']) / 'summary.json'}")
    return 0
