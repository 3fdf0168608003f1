"""Behaviour cloning: supervised regression of dataset actions on observations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from offrl_robot.algos.base import AlgoConfig, Batch, UpdateOutput, register
from offrl_robot.algos.common import CosineLR, EnsembleAlgorithm, export_eval, make_adam
from offrl_robot.errors import ConfigError
from offrl_robot.nets import DeterministicActor, GaussianActor

BC_LOSSES = ("mse", "nll")


@dataclass
class BCConfig(AlgoConfig):
    """loss: "mse" (deterministic tanh policy) or "nll" (Gaussian, maximum likelihood).
    learning_rate 3e-4 and 256x256 nets as CORL's BC baseline on D4RL locomotion.
    lr_schedule: "cosine" decays the learning rate to 0 over the run's `steps` (precise goal
    reaching needs the final averaging); "none" keeps it constant. lr_schedule_steps: the decay's
    length, set to `steps` by the Trainer; an explicit value must equal `steps` (older configs)."""

    loss: str = "mse"
    learning_rate: float = 3e-4
    lr_schedule: str = "none"
    lr_schedule_steps: int | None = None

    lr_schedules: ClassVar[dict[str, str]] = {"lr_schedule": "lr_schedule_steps"}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in BC_LOSSES:
            raise ConfigError(f"algo_config.loss {self.loss!r}: bc supports 'mse' or 'nll'")


@register
class BC(EnsembleAlgorithm):
    """Behaviour cloning.

    MSE variant (deterministic policy pi(s) = tanh(f(s))):
        L(theta) = E_{(s,a)~D} || pi(s) - a ||^2      (mean over batch and action dims, as CORL)

    NLL variant (Gaussian policy N(tanh(f(s)), diag(exp(log_std))^2), state-independent log_std):
        L(theta) = - E_{(s,a)~D} log N(a | tanh(f(s)), exp(log_std))

    The NLL policy is not tanh-squashed (see `GaussianActor`) so dataset actions at ±1 are fine.
    `act`/export use the mean in both variants. BC has no critic, so PER weights are ignored.
    """

    name = "bc"
    config_class = BCConfig
    value_based = False

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        num_seeds: int,
        config: BCConfig,
        seeds: Sequence[int] | None = None,
    ) -> None:
        super().__init__(observation_dim, action_dim, num_seeds, config, seeds)
        hidden = config.hidden_sizes
        self.actor: DeterministicActor | GaussianActor
        if config.loss == "mse":
            self.actor = DeterministicActor(self.seeds, observation_dim, action_dim, hidden, "bc/actor")
        else:
            self.actor = GaussianActor(self.seeds, observation_dim, action_dim, hidden, "bc/actor")
        self.optimizers["actor"] = make_adam(
            [{"params": self.actor.parameters(), "lr": config.learning_rate}]
        )
        horizon = config.schedule_horizon("lr_schedule")
        if horizon:
            self.schedulers["actor"] = CosineLR(self.optimizers["actor"], [0], horizon)

    def update(self, batch: Batch) -> UpdateOutput:
        if isinstance(self.actor, GaussianActor):
            loss = -self.actor.log_prob(batch.observations, batch.actions).mean(-1)
        else:
            loss = (self.actor(batch.observations) - batch.actions).square().mean(dim=(-2, -1))
        self._step(self.optimizers["actor"], loss.sum())
        self.num_updates += 1
        return UpdateOutput(metrics={"actor_loss": loss.detach()})

    @torch.no_grad()
    def act(self, observations: Tensor) -> Tensor:
        return self.actor.mode(observations)

    def policy_for_export(self, seed_index: int) -> nn.Module:
        return export_eval(self.actor.export(seed_index))
