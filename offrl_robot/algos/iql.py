"""Implicit Q-Learning (Kostrikov, Nair & Levine, 2021)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from offrl_robot.algos.base import AlgoConfig, Batch, UpdateOutput, register
from offrl_robot.algos.common import CosineLR, EnsembleAlgorithm, export_eval, make_adam, seed_mean
from offrl_robot.data.dataset import Dataset
from offrl_robot.errors import ConfigError
from offrl_robot.nets import (
    DeterministicActor,
    GaussianActor,
    QEnsemble,
    ValueEnsemble,
    hard_copy,
    polyak_update,
)


@dataclass
class IQLConfig(AlgoConfig):
    """CORL / paper D4RL-locomotion defaults: expectile 0.7, inverse temperature 3.0, lrs 3e-4,
    tau 5e-3, advantage weights clipped at 100, Gaussian policy, and the actor's learning rate
    decayed to 0 by a cosine over the run (actor_lr_schedule: "cosine", the default since
    2026-12-04: the IQL authors' code and CORL both decay it; "none" keeps it constant, the
    behaviour before). actor_lr_schedule_steps: its length, set to `steps` by the Trainer (an
    explicit value must equal `steps`); building IQL directly, give it or choose "none". The
    schedule is a device tensor (`CosineLR`), so it also runs under `accelerate: graph|compile`.
    normalize_reward: scale rewards by 1000 / (max - min episode return of the dataset), as the
    IQL paper and CORL do on locomotion data: beta = 3 was tuned for returns in that range, and
    on raw returns of another scale the advantage weights exp(beta * A) are too flat or too sharp.
    Off by default, as in d3rlpy; on our ArmReach and Hopper datasets it scored lower
    (BENCHMARKS.md, Quality follow-up)."""

    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    value_lr: float = 3e-4
    expectile: float = 0.7
    temperature: float = 3.0
    max_advantage_weight: float = 100.0
    tau: float = 5e-3
    deterministic_policy: bool = False
    actor_lr_schedule: str = "cosine"
    actor_lr_schedule_steps: int | None = None
    normalize_reward: bool = False

    lr_schedules: ClassVar[dict[str, str]] = {"actor_lr_schedule": "actor_lr_schedule_steps"}

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.expectile < 1.0:
            raise ConfigError(f"algo_config.expectile {self.expectile}: must lie strictly between 0 and 1")


def expectile_loss(diff: Tensor, expectile: float) -> Tensor:
    """Asymmetric L2, element-wise: |expectile - 1(diff < 0)| * diff^2, with diff = Q - V.

    With expectile > 0.5, under-estimates (diff > 0) cost more, so V tracks an upper expectile
    of Q over dataset actions: an in-sample approximation of max_a Q without querying OOD actions.
    """
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return weight * diff.square()


@register
class IQL(EnsembleAlgorithm):
    """IQL: never evaluates Q on actions outside the dataset.

        L_V = E_D[ L2_tau( min_i Q'_i(s,a) - V(s) ) ]                      (expectile tau)
        L_Q = 1/2 * sum_i E_D[ (Q_i(s,a) - r - gamma (1 - done) V(s'))^2 ]
        L_pi = E_D[ min(exp(beta * (min_i Q'_i(s,a) - V(s))), 100) * (-log pi(a|s)) ]   (AWR)
               (deterministic policy: ||pi(s) - a||^2 summed over action dims instead of -log pi)

    As in CORL's `iql.py`, all three losses come from one snapshot: V(s') for the Q target and the
    advantage for the policy are computed before V's step. So they are minimised with ONE
    backward and ONE fused Adam (param groups for V, Q, pi); identical to CORL's three optimisers.
    PER weights multiply the V and Q losses per sample.
    """

    name = "iql"
    config_class = IQLConfig
    value_based = True

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        num_seeds: int,
        config: IQLConfig,
        seeds: Sequence[int] | None = None,
    ) -> None:
        super().__init__(observation_dim, action_dim, num_seeds, config, seeds)
        hidden = config.hidden_sizes
        self.actor: DeterministicActor | GaussianActor
        if config.deterministic_policy:
            self.actor = DeterministicActor(self.seeds, observation_dim, action_dim, hidden, "iql/actor")
        else:
            self.actor = GaussianActor(self.seeds, observation_dim, action_dim, hidden, "iql/actor")
        self.critic = QEnsemble(self.seeds, observation_dim, action_dim, hidden, "iql/critic")
        self.target_critic = hard_copy(self.critic)
        self.value = ValueEnsemble(self.seeds, observation_dim, hidden, "iql/value")
        # Multiplies every reward (normalize_reward); a buffer so checkpoints and resume keep it,
        # one entry per seed like every other learning state (all seeds share one dataset).
        self.register_buffer("reward_scale", torch.ones(num_seeds))
        self.optimizers["all"] = make_adam(
            [
                {"params": self.actor.parameters(), "lr": config.actor_lr},
                {"params": self.critic.parameters(), "lr": config.critic_lr},
                {"params": self.value.parameters(), "lr": config.value_lr},
            ]
        )
        horizon = config.schedule_horizon("actor_lr_schedule")
        if horizon:  # the actor's group only; V and Q keep their constant rates (as CORL)
            self.schedulers["all"] = CosineLR(self.optimizers["all"], [0], horizon)

    def prepare(self, dataset: Dataset) -> None:
        """normalize_reward: reward_scale = 1000 / (max - min episode return), from the run's data."""
        if not self.config.normalize_reward:  # type: ignore[attr-defined]
            return
        returns = [float(dataset.rewards[start:stop].sum()) for start, stop in dataset.episode_bounds()]
        spread = max(returns) - min(returns)
        if spread <= 0.0:
            raise ConfigError(
                "algo_config.normalize_reward: every episode of the dataset has the same return "
                f"({returns[0]:g}), so there is no return range to normalise by; set it to false"
            )
        self.reward_scale.fill_(1000.0 / spread)

    def update(self, batch: Batch) -> UpdateOutput:
        cfg: IQLConfig = self.config  # type: ignore[assignment]
        obs, actions, weights = batch.observations, batch.actions, batch.weights
        with torch.no_grad():
            target_q = self.target_critic(obs, actions).amin(dim=1)
            next_v = self.value(batch.next_observations)
            td_target = (
                batch.rewards * self.reward_scale[:, None] + cfg.discount * (1.0 - batch.terminals) * next_v
            )

        advantage = target_q - self.value(obs)
        value_loss = seed_mean(expectile_loss(advantage, cfg.expectile), weights)

        td = self.critic(obs, actions) - td_target.unsqueeze(1)
        critic_loss = seed_mean(td.square().mean(1), weights)

        advantage_weight = torch.exp(cfg.temperature * advantage.detach()).clamp(max=cfg.max_advantage_weight)
        if isinstance(self.actor, GaussianActor):
            bc_loss = -self.actor.log_prob(obs, actions)
        else:
            bc_loss = (self.actor(obs) - actions).square().sum(-1)
        actor_loss = (advantage_weight * bc_loss).mean(-1)

        self._step(self.optimizers["all"], (value_loss + critic_loss + actor_loss).sum())
        polyak_update(self.target_critic.parameters(), self.critic.parameters(), cfg.tau)
        self.num_updates += 1
        return UpdateOutput(
            metrics={
                "value_loss": value_loss.detach(),
                "critic_loss": critic_loss.detach(),
                "actor_loss": actor_loss.detach(),
                "advantage": advantage.detach().mean(-1),
            },
            td_error=td.detach().abs().mean(1),
        )

    @torch.no_grad()
    def act(self, observations: Tensor) -> Tensor:
        return self.actor.mode(observations)

    def policy_for_export(self, seed_index: int) -> nn.Module:
        """The policy mean (Gaussian) or the deterministic policy of this seed."""
        return export_eval(self.actor.export(seed_index))
