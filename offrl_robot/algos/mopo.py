"""MOPO (Yu et al., 2020): SAC on short rollouts of a learned dynamics ensemble, with the reward
penalised by the ensemble's uncertainty, mixed with a small fraction of real transitions.

    r~(s, a) = r^(s, a) - lambda * u(s, a)

r^ is the ensemble's reward head and u its disagreement: max over members of the distance of
a member's predicted next state from the ensemble mean, in observation-std units (the same
signal the MPC planner penalises, `offrl_robot.export_dynamics`). The paper uses the largest
predicted standard deviation; the disagreement form (MOReL / LOMPO style) needs only the means,
which is what the exported graph carries, so training and planning share one notion of "the
model does not know". Rollouts start from dataset states (the Trainer's batch), follow the
current policy for `rollout_length` steps on a randomly chosen member per row, and land in a
fixed-size ring buffer; each update trains SAC (our CQL with conservative weight 0) on
`real_fraction` real rows plus model rows from that buffer.

Where the dynamics model comes from (one ensemble per seed, `self.dynamics[i]` for seed i):

- By default MOPO fits its own, inside the same run, as OfflineRL-Kit does: `prepare(dataset)`
  (called by the Trainer on a fresh run, before the first update) runs `fit_dynamics` on the
  run's dataset for each seed: held-out split, per-member early stopping, at most
  `dynamics_steps` gradient steps of `dynamics_batch_size` rows, ensemble shape and fit settings
  from `dynamics:` (DynamicsConfig fields). The fit is seeded by the seed alone and runs in a
  forked RNG, so seed s of `--seeds 0,1,2` gets exactly the model of a `--seeds s` run (and of
  `offrl-robot train --algo dynamics --seeds s` with the same settings), and the run's own RNG
  streams do not depend on it. The fitted weights are module state, so every checkpoint holds
  them: a resumed run restores the model, it never refits it.
- `dynamics_checkpoint`: a run of `offrl-robot train --algo dynamics` fitted on the SAME
  dataset, shared by all seeds.

Either way the model's observation normaliser equals the Trainer's (same formula, same data),
which is how normalised batch states are mapped to the model's physical units. Tasks without a
learned termination are assumed never to terminate in model rollouts (ArmReach).

Not CUDA-graph capturable: the rollout schedule and the ring-buffer cursor are host-side Python
state a captured graph would freeze, so `accelerate: graph|compile` is refused with a ConfigError.

Hot-loop rules hold: all sizes are fixed by the config, the ring-buffer cursor and fill level
are Python ints, and no value of a tensor is read on the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from offrl_robot.algos.base import Batch, UpdateOutput, register
from offrl_robot.algos.cql import CQL, CQLConfig
from offrl_robot.algos.dynamics import DynamicsConfig, DynamicsEnsemble
from offrl_robot.data.dataset import Dataset
from offrl_robot.errors import ConfigError


@dataclass
class MOPOConfig(CQLConfig):
    """SAC hyper-parameters (CQL's, conservative weight 0) plus the model-based ones.

    dynamics: DynamicsConfig fields (members, hidden_sizes, patience, ...) of the ensemble MOPO
    fits itself; dynamics_steps / dynamics_batch_size: that fit's step cap and per-member batch.
    dynamics_checkpoint: a dynamics run to use instead (then `dynamics` must stay empty).
    rollout_length: h (paper: 1-5). penalty: lambda (paper: 0.5-5). real_fraction: share of
    real rows per batch (paper: 0.05). rollout_every: updates between rollouts (each rollout
    starts from the current batch's states). model_buffer_size: model transitions kept per seed
    (oldest overwritten).
    """

    conservative_weight: float = 0.0
    # CQL's regulariser is computed even at weight 0 (3 x N extra critic rows per state) and its
    # value is unused here; N = 1 keeps that waste small. The TD target uses one sample anyway.
    num_sampled_actions: int = 1
    dynamics: dict[str, Any] = field(default_factory=dict)
    dynamics_steps: int = 20_000
    dynamics_batch_size: int = 256
    dynamics_checkpoint: str = ""
    rollout_length: int = 5
    penalty: float = 1.0
    real_fraction: float = 0.05
    rollout_every: int = 10
    model_buffer_size: int = 50_000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dynamics_checkpoint and self.dynamics:
            raise ConfigError(
                "algo_config.dynamics and dynamics_checkpoint are both set; give the checkpoint or the "
                "settings MOPO fits its own ensemble with, not both"
            )
        self.dynamics_config()  # a bad key or value fails here, before any training
        if self.dynamics_steps < 1 or self.dynamics_batch_size < 1:
            raise ConfigError("algo_config.dynamics_steps and dynamics_batch_size must be >= 1")
        if self.rollout_length < 1 or self.rollout_every < 1 or self.model_buffer_size < 1:
            raise ConfigError("algo_config.rollout_length, rollout_every and model_buffer_size must be >= 1")
        if not 0.0 <= self.real_fraction < 1.0 or self.penalty < 0:
            raise ConfigError("algo_config.real_fraction must be in [0, 1) and penalty >= 0")

    def dynamics_config(self) -> DynamicsConfig:
        """The DynamicsConfig of the self-fitted ensemble (`dynamics:` over its defaults)."""
        from offrl_robot.algos.dynamics import build_algo_config

        if not isinstance(self.dynamics, dict):
            raise ConfigError(
                "algo_config.dynamics must be a mapping of DynamicsConfig fields, e.g. {members: 5}"
            )
        try:
            return build_algo_config(self.dynamics)
        except ConfigError as err:
            raise ConfigError(f"algo_config.dynamics: {err}") from None


@register
class MOPO(CQL):
    """Model-based offline policy optimisation; see the module docstring."""

    name = "mopo"
    config_class = MOPOConfig
    value_based = False  # TD errors are of the mixed batch, not of the sampled dataset rows

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        num_seeds: int,
        config: MOPOConfig,
        seeds: Sequence[int] | None = None,
    ) -> None:
        super().__init__(observation_dim, action_dim, num_seeds, config, seeds)
        if config.dynamics_checkpoint:
            models = [self._load_checkpoint_model(config.dynamics_checkpoint) for _ in self.seeds]
        else:  # fitted by prepare(); until then (or until a checkpoint is loaded) untrained
            dynamics_config = config.dynamics_config()
            models = [
                DynamicsEnsemble(observation_dim, action_dim, dynamics_config, seed) for seed in self.seeds
            ]
        self.dynamics = nn.ModuleList(models).requires_grad_(False).eval()
        self.dynamics_fit: list[dict[str, Any]] = []
        size = config.model_buffer_size
        for name, width in (
            ("model_obs", observation_dim),
            ("model_actions", action_dim),
            ("model_next_obs", observation_dim),
        ):
            self.register_buffer(name, torch.zeros(num_seeds, size, width))
        self.register_buffer("model_rewards", torch.zeros(num_seeds, size))
        self.cursor = 0
        self.filled = 0

    def _load_checkpoint_model(self, path: str) -> DynamicsEnsemble:
        from offrl_robot.algos.dynamics import load_dynamics
        from offrl_robot.export import resolve_checkpoint
        from offrl_robot.train import load_checkpoint

        state = load_checkpoint(resolve_checkpoint(path))
        if state.get("algo") != "dynamics":
            raise ConfigError(f"algo_config.dynamics_checkpoint {path} is not a dynamics run")
        if (int(state["observation_dim"]), int(state["action_dim"])) != (
            self.observation_dim,
            self.action_dim,
        ):
            raise ConfigError(
                f"algo_config.dynamics_checkpoint {path} models obs {state['observation_dim']} / "
                f"act {state['action_dim']}, the dataset has {self.observation_dim} / {self.action_dim}"
            )
        return load_dynamics(state)

    def prepare(self, dataset: Dataset) -> None:
        """Fit each seed's ensemble on the run's dataset (nothing to do with a dynamics_checkpoint)."""
        if self.config.dynamics_checkpoint:
            return
        from offrl_robot.algos.dynamics import fit_dynamics
        from offrl_robot.train import TrainConfig

        cfg: MOPOConfig = self.config  # type: ignore[assignment]
        device = self.model_obs.device
        self.dynamics_fit = []
        for seed, model in zip(self.seeds, self.dynamics, strict=True):
            fit_config = TrainConfig(
                algo="dynamics",
                algo_config=dict(cfg.dynamics),
                steps=cfg.dynamics_steps,
                seeds=[seed],
                batch_size=cfg.dynamics_batch_size,
                device=str(device),
                progress=False,
            )
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                fit = fit_dynamics(fit_config, dataset, write=False)
            model.load_state_dict(fit.model.state_dict())
            self.dynamics_fit.append(
                {k: fit.summary[k] for k in ("steps_run", "epochs", "stop_reason", "holdout_mse")}
            )

    # ------------------------------------------------------------------ model rollouts
    @torch.no_grad()
    def _model_step(self, obs_n: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised states [S, B, O] and actions in [-1, 1] -> (normalised next states,
        penalised rewards), seed i's rows on seed i's ensemble, each row on a random member."""
        steps = [
            self._seed_model_step(dyn, o, a) for dyn, o, a in zip(self.dynamics, obs_n, actions, strict=True)
        ]
        return torch.stack([n for n, _ in steps]), torch.stack([r for _, r in steps])

    def _seed_model_step(
        self, dyn: DynamicsEnsemble, obs_n: Tensor, actions: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One seed: [B, O], [B, A] -> [B, O], [B]."""
        physical = obs_n * dyn.obs_std + dyn.obs_mean
        act = dyn.action_low + (actions + 1.0) * 0.5 * (dyn.action_high - dyn.action_low)
        member_next, member_reward = dyn.predict(physical, act)  # [K, B, O], [K, B]
        mean_next = member_next.mean(0)
        disagreement = (((member_next - mean_next) / dyn.obs_std).square().sum(-1).sqrt()).amax(0)
        rows = torch.arange(obs_n.shape[0], device=obs_n.device)
        pick = torch.randint(dyn.members, rows.shape, device=obs_n.device)
        next_obs = member_next[pick, rows]
        reward = member_reward[pick, rows] - self.config.penalty * disagreement
        return (next_obs - dyn.obs_mean) / dyn.obs_std, reward

    @torch.no_grad()
    def _rollout(self, start: Tensor) -> None:
        """h policy steps from the batch's states into the ring buffer."""
        obs = start
        for _ in range(self.config.rollout_length):
            actions, _ = self.actor.sample(obs)
            next_obs, reward = self._model_step(obs, actions)
            self._store(obs, actions, next_obs, reward)
            obs = next_obs

    def _store(self, obs: Tensor, actions: Tensor, next_obs: Tensor, reward: Tensor) -> None:
        size = self.config.model_buffer_size
        b = obs.shape[1]
        index = (torch.arange(b, device=obs.device) + self.cursor) % size
        self.model_obs[:, index] = obs
        self.model_actions[:, index] = actions
        self.model_next_obs[:, index] = next_obs
        self.model_rewards[:, index] = reward
        self.cursor = (self.cursor + b) % size
        self.filled = min(size, self.filled + b)

    def update(self, batch: Batch) -> UpdateOutput:
        if batch.observations.is_cuda and torch.cuda.is_current_stream_capturing():
            raise ConfigError(
                "accelerate: MOPO's rollout schedule and model-buffer cursor are host-side state a CUDA "
                "graph would freeze; set accelerate: none for algo mopo"
            )
        if self.num_updates % self.config.rollout_every == 0:
            self._rollout(batch.observations)
        s, b, _ = batch.observations.shape
        real = max(1, round(self.config.real_fraction * b)) if self.config.real_fraction > 0 else 0
        model = b - real
        index = torch.randint(self.filled, (s, model), device=batch.observations.device)

        def take(buffer: Tensor) -> Tensor:
            gathered = buffer.gather(1, index.unsqueeze(-1).expand(-1, -1, buffer.shape[-1]))
            return gathered

        mixed = Batch(
            observations=torch.cat([batch.observations[:, :real], take(self.model_obs)], 1),
            actions=torch.cat([batch.actions[:, :real], take(self.model_actions)], 1),
            rewards=torch.cat([batch.rewards[:, :real], self.model_rewards.gather(1, index)], 1),
            next_observations=torch.cat([batch.next_observations[:, :real], take(self.model_next_obs)], 1),
            terminals=torch.cat([batch.terminals[:, :real], torch.zeros(s, model, device=index.device)], 1),
        )
        out = super().update(mixed)
        out.metrics["model_reward"] = self.model_rewards[:, : self.filled].mean(-1)
        return UpdateOutput(metrics=out.metrics, td_error=None)

    # ------------------------------------------------------------------ checkpoints
    def optimizer_state_dict(self) -> dict[str, Any]:
        state = super().optimizer_state_dict()
        state["model_buffer"] = {"cursor": self.cursor, "filled": self.filled}
        state["dynamics_fit"] = list(self.dynamics_fit)  # a record; the weights are module state
        return state

    def load_optimizer_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        buffer = state.pop("model_buffer", {"cursor": 0, "filled": 0})
        self.dynamics_fit = list(state.pop("dynamics_fit", []))
        super().load_optimizer_state_dict(state)
        self.cursor, self.filled = int(buffer["cursor"]), int(buffer["filled"])
