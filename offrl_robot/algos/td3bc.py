"""TD3+BC (Fujimoto & Gu, 2021): TD3 with a behaviour-cloning term in the actor loss."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from offrl_robot.algos.base import AlgoConfig, Batch, UpdateOutput, register
from offrl_robot.algos.common import EnsembleAlgorithm, export_eval, make_adam, seed_mean
from offrl_robot.errors import ConfigError
from offrl_robot.nets import DeterministicActor, QEnsemble, hard_copy, polyak_update


@dataclass
class TD3BCConfig(AlgoConfig):
    """Paper / CORL defaults: alpha 2.5, policy noise 0.2, noise clip 0.5, policy freq 2,
    lrs 3e-4, tau 5e-3."""

    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha: float = 2.5
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    policy_freq: int = 2
    tau: float = 5e-3

    def __post_init__(self) -> None:
        if self.policy_freq < 1:
            raise ConfigError(f"algo_config.policy_freq {self.policy_freq}: must be an integer >= 1")


@register
class TD3BC(EnsembleAlgorithm):
    """TD3+BC.

        a' = clip(pi'(s') + clip(eps, -c, c), -1, 1),   eps ~ N(0, sigma^2)
        y  = r + gamma * (1 - done) * min_i Q'_i(s', a')
        L_Q = sum_i E_D[(Q_i(s,a) - y)^2]
        every `policy_freq` updates:
            lambda = alpha / E_D[|Q_1(s, pi(s))|]  (detached; the normalisation that makes alpha
                                                    independent of the reward scale)
            L_pi = -lambda * E_D[Q_1(s, pi(s))] + E_D[(pi(s) - a)^2]
            then soft-update the target actor and both target critics.

    Order and delays as in CORL's `td3_bc.py` (critic step first; the actor sees the updated
    critic). The delay branches on `num_updates`, a Python int, never on a tensor; a compiled
    capture therefore sees two static programs (critic-only, critic+actor). `actor_loss` in the
    metrics is the latest actor loss (unchanged on critic-only steps).
    """

    name = "td3bc"
    config_class = TD3BCConfig
    value_based = True

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        num_seeds: int,
        config: TD3BCConfig,
        seeds: Sequence[int] | None = None,
    ) -> None:
        super().__init__(observation_dim, action_dim, num_seeds, config, seeds)
        hidden = config.hidden_sizes
        self.actor = DeterministicActor(self.seeds, observation_dim, action_dim, hidden, "td3bc/actor")
        self.target_actor = hard_copy(self.actor)
        self.critic = QEnsemble(self.seeds, observation_dim, action_dim, hidden, "td3bc/critic")
        self.target_critic = hard_copy(self.critic)
        self.optimizers["actor"] = make_adam([{"params": self.actor.parameters(), "lr": config.actor_lr}])
        self.optimizers["critic"] = make_adam([{"params": self.critic.parameters(), "lr": config.critic_lr}])
        self.register_buffer("last_actor_loss", torch.zeros(num_seeds))  # logged between actor steps

    def update(self, batch: Batch) -> UpdateOutput:
        cfg: TD3BCConfig = self.config  # type: ignore[assignment]
        obs, actions = batch.observations, batch.actions
        with torch.no_grad():
            noise = (torch.randn_like(actions) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            next_actions = (self.target_actor(batch.next_observations) + noise).clamp(-1.0, 1.0)
            target_q = self.target_critic(batch.next_observations, next_actions).amin(dim=1)
            td_target = batch.rewards + cfg.discount * (1.0 - batch.terminals) * target_q
        td = self.critic(obs, actions) - td_target.unsqueeze(1)
        critic_loss = seed_mean(td.square().sum(1), batch.weights)
        self._step(self.optimizers["critic"], critic_loss.sum())
        self.num_updates += 1

        metrics = {"critic_loss": critic_loss.detach()}
        if self.num_updates % cfg.policy_freq == 0:
            pi = self.actor(obs)
            q1 = self.critic(obs, pi, detach_params=True)[:, 0]
            lmbda = cfg.alpha / q1.abs().mean(-1).detach()
            actor_loss = -lmbda * q1.mean(-1) + (pi - actions).square().mean(dim=(-2, -1))
            self._step(self.optimizers["actor"], actor_loss.sum())
            polyak_update(
                [*self.target_actor.parameters(), *self.target_critic.parameters()],
                [*self.actor.parameters(), *self.critic.parameters()],
                cfg.tau,
            )
            self.last_actor_loss.copy_(actor_loss.detach())
        metrics["actor_loss"] = self.last_actor_loss.clone()
        return UpdateOutput(metrics=metrics, td_error=td.detach().abs().mean(1))

    @torch.no_grad()
    def act(self, observations: Tensor) -> Tensor:
        return self.actor(observations)

    def policy_for_export(self, seed_index: int) -> nn.Module:
        return export_eval(self.actor.export(seed_index))
