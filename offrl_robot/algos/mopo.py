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

The dynamics model is a checkpoint of `offrl-robot train --algo dynamics` (`dynamics_checkpoint`)
fitted on the SAME dataset: its observation normaliser then equals the Trainer's (same formula,
same data), which is how normalised batch states are mapped to the model's physical units.
Tasks without a learned termination are assumed never to terminate in model rollouts (ArmReach).

Not yet in the shared registry (`offrl_robot.algos.REGISTRY`, so no `--algo mopo`): the
registry's consumers (the export tests, the GPU trainer benchmark) train every registered
algorithm from its default config, and MOPO cannot run without a dynamics checkpoint. Its
tests register it for themselves; wiring it in needs those loops to supply one.

Hot-loop rules hold: all sizes are fixed by the config, the ring-buffer cursor and fill level
are Python ints, and no value of a tensor is read on the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from offrl_robot.algos.base import Batch, UpdateOutput
from offrl_robot.algos.cql import CQL, CQLConfig
from offrl_robot.errors import ConfigError


@dataclass
class MOPOConfig(CQLConfig):
    """SAC hyper-parameters (CQL's, conservative weight 0) plus the model-based ones.

    dynamics_checkpoint: path of the dynamics run or checkpoint. rollout_length: h (paper: 1-5).
    penalty: lambda (paper: 0.5-5). real_fraction: share of real rows per batch (paper: 0.05).
    rollout_every: updates between rollouts (each rollout starts from the current batch's
    states). model_buffer_size: model transitions kept per seed (oldest overwritten).
    """

    conservative_weight: float = 0.0
    # CQL's regulariser is computed even at weight 0 (3 x N extra critic rows per state) and its
    # value is unused here; N = 1 keeps that waste small. The TD target uses one sample anyway.
    num_sampled_actions: int = 1
    dynamics_checkpoint: str = ""
    rollout_length: int = 5
    penalty: float = 1.0
    real_fraction: float = 0.05
    rollout_every: int = 10
    model_buffer_size: int = 50_000

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.dynamics_checkpoint:
            raise ConfigError(
                "algo_config.dynamics_checkpoint is empty; train one with `offrl-robot train --algo dynamics` "
                "on the same dataset and give its run directory"
            )
        if self.rollout_length < 1 or self.rollout_every < 1 or self.model_buffer_size < 1:
            raise ConfigError("algo_config.rollout_length, rollout_every and model_buffer_size must be >= 1")
        if not 0.0 <= self.real_fraction < 1.0 or self.penalty < 0:
            raise ConfigError("algo_config.real_fraction must be in [0, 1) and penalty >= 0")


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
        from offrl_robot.algos.dynamics import load_dynamics
        from offrl_robot.export import resolve_checkpoint
        from offrl_robot.train import load_checkpoint

        state = load_checkpoint(resolve_checkpoint(config.dynamics_checkpoint))
        if state.get("algo") != "dynamics":
            raise ConfigError(
                f"algo_config.dynamics_checkpoint {config.dynamics_checkpoint} is not a dynamics run"
            )
        if (int(state["observation_dim"]), int(state["action_dim"])) != (observation_dim, action_dim):
            raise ConfigError(
                f"algo_config.dynamics_checkpoint {config.dynamics_checkpoint} models obs {state['observation_dim']} / "
                f"act {state['action_dim']}, the dataset has {observation_dim} / {action_dim}"
            )
        self.dynamics = load_dynamics(state)
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

    # ------------------------------------------------------------------ model rollouts
    @torch.no_grad()
    def _model_step(self, obs_n: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised states [S, B, O] and actions in [-1, 1] -> (normalised next states,
        penalised rewards), each row on a random member."""
        dyn = self.dynamics
        s, b, o = obs_n.shape
        physical = (obs_n * dyn.obs_std + dyn.obs_mean).reshape(s * b, o)
        act = (dyn.action_low + (actions + 1.0) * 0.5 * (dyn.action_high - dyn.action_low)).reshape(s * b, -1)
        member_next, member_reward = dyn.predict(physical, act)  # [K, SB, O], [K, SB]
        mean_next = member_next.mean(0)
        disagreement = (((member_next - mean_next) / dyn.obs_std).square().sum(-1).sqrt()).amax(0)
        pick = torch.randint(dyn.members, (s * b,), device=obs_n.device)
        rows = torch.arange(s * b, device=obs_n.device)
        next_obs = member_next[pick, rows]
        reward = member_reward[pick, rows] - self.config.penalty * disagreement
        return ((next_obs - dyn.obs_mean) / dyn.obs_std).view(s, b, o), reward.view(s, b)

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
        return state

    def load_optimizer_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        buffer = state.pop("model_buffer", {"cursor": 0, "filled": 0})
        super().load_optimizer_state_dict(state)
        self.cursor, self.filled = int(buffer["cursor"]), int(buffer["filled"])
