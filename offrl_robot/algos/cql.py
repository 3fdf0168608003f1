"""Conservative Q-Learning, CQL(H) on top of SAC (Kumar et al., 2020)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from offrl_robot.algos.base import AlgoConfig, Batch, UpdateOutput, register
from offrl_robot.algos.common import EnsembleAlgorithm, export_eval, make_adam, seed_mean
from offrl_robot.errors import ConfigError
from offrl_robot.nets import QEnsemble, TanhGaussianActor, hard_copy, polyak_update, repeat_per_sample

TARGET_ACTIONS = ("sample", "mean")


@dataclass
class CQLConfig(AlgoConfig):
    """D4RL-locomotion defaults of the CQL paper / d3rlpy: actor lr 1e-4, critic lr 3e-4,
    conservative weight 5.0 (CORL uses 10.0), 10 sampled actions, target entropy -|A| (None),
    tau 5e-3. Lagrange (automatic conservative weight) is off by default, as in CORL and the
    paper's gym runs; d3rlpy turns it on by default (measured worse here with either target, and
    with d3rlpy's dual lr 1e-4: BENCHMARKS.md, "CQL recipe"). The TD target uses the policy's
    deterministic action, as d3rlpy does (`target_action`; "sample" is the paper's)."""

    actor_lr: float = 1e-4
    critic_lr: float = 3e-4
    temperature_lr: float = 1e-4
    initial_temperature: float = 1.0
    target_entropy: float | None = None
    tau: float = 5e-3
    conservative_weight: float = 5.0
    num_sampled_actions: int = 10
    logsumexp_temperature: float = 1.0
    lagrange: bool = False
    lagrange_threshold: float = 10.0
    lagrange_lr: float = 3e-4
    initial_lagrange: float = 1.0
    backup_entropy: bool = False
    # The TD target's next action a': "mean" takes the deterministic tanh(mu(s')) (d3rlpy's
    # default, soft_q_backup=False); "sample" draws a' ~ pi(.|s') (the CQL authors' SAC code and
    # CORL: the paper variant). "mean" is the default because it measured better on all three
    # datasets of issue 17 (BENCHMARKS.md, "CQL recipe"): HalfCheetah medium 4,585 vs 4,400,
    # Hopper medium 1,420 vs 986, ArmReach mixed -84.7 vs -99.3 (one H200, 10,000 updates, 3 seeds).
    target_action: str = "mean"

    def __post_init__(self) -> None:
        if self.num_sampled_actions < 1:
            raise ConfigError(f"algo_config.num_sampled_actions {self.num_sampled_actions}: must be >= 1")
        if self.target_action not in TARGET_ACTIONS:
            raise ConfigError(
                f"algo_config.target_action {self.target_action!r}: use one of {', '.join(TARGET_ACTIONS)}"
            )
        if self.backup_entropy and self.target_action != "sample":
            raise ConfigError(
                "algo_config.backup_entropy backs up the entropy of a sampled next action; set "
                "target_action: sample with it"
            )


@register
class CQL(EnsembleAlgorithm):
    """CQL(H): SAC with twin Q, target critics, automatic entropy tuning, plus a conservative term.

    For each critic i in {1, 2} (BOTH are regularised), with N = num_sampled_actions:

        L_Q(i) = E_D[(Q_i(s,a) - y)^2]
                 + alpha' * w * ( E_s[ T * log sum_{a_j} exp(Q_i(s,a_j)/T - log mu(a_j|s)) ] - E_D[Q_i(s,a)] )

    where the a_j are 3N importance samples: N uniform actions (density mu = 0.5^|A|), N actions
    pi(.|s) and N actions pi(.|s') (both evaluated at s, log mu = their detached log-prob), w the
    conservative weight and T the logsumexp temperature. The sign: minimising the regulariser
    pushes Q DOWN on sampled actions and UP on dataset actions. (The CQL sketch in several
    tutorials subtracts logsumexp and adds Q(data), and regularises only Q1: both are wrong.)

        y = r + gamma * (1 - done) * (min_i Q'_i(s', a') [- alpha * log pi(a'|s') if backup_entropy]),
            a' ~ pi(.|s') (target_action "sample") or a' = tanh(mu(s')) ("mean", d3rlpy's default)
        L_pi = E_s[ alpha * log pi(a|s) - min_i Q_i(s, a) ],  a ~ pi(.|s) (reparameterised)
        L_alpha = -E_s[ log alpha * (log pi(a|s) + target_entropy) ]
        Lagrange (optional): alpha' = clip(exp(log alpha'), 0, 1e6),
            L_alpha' = -alpha' * w * (mean_i gap_i - threshold)

    Differences from CORL's `cql.py` (same maths, fewer passes): all losses are computed from one
    snapshot of the networks (CORL also computes the actor loss before the critic step) and
    minimised with ONE backward and ONE fused Adam whose param groups hold the per-network
    learning rates; with `target_action: sample` the TD-target action a' is the first of the N
    next-state policy samples used by the regulariser (same distribution), by default it is the
    deterministic tanh(mu(s')) (d3rlpy's choice; a measured deviation from the paper's sampled
    a', see CQLConfig); the policy network runs once per state and only the
    noise is drawn N times (as d3rlpy). No max-Q backup, no BC warm-start, no diff clipping.
    PER weights multiply both the TD term and the conservative term per sample (both are
    expectations over the dataset distribution that PER skews).
    """

    name = "cql"
    config_class = CQLConfig
    value_based = True

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        num_seeds: int,
        config: CQLConfig,
        seeds: Sequence[int] | None = None,
    ) -> None:
        super().__init__(observation_dim, action_dim, num_seeds, config, seeds)
        hidden = config.hidden_sizes
        self.actor = TanhGaussianActor(self.seeds, observation_dim, action_dim, hidden, "cql/actor")
        self.critic = QEnsemble(self.seeds, observation_dim, action_dim, hidden, "cql/critic")
        self.target_critic = hard_copy(self.critic)
        self.log_temperature = nn.Parameter(torch.full((num_seeds,), math.log(config.initial_temperature)))
        self.log_lagrange = nn.Parameter(torch.full((num_seeds,), math.log(config.initial_lagrange)))
        self.target_entropy = -float(action_dim) if config.target_entropy is None else config.target_entropy
        # Importance weight of a uniform action on [-1, 1]^|A|: log density = |A| * log(0.5).
        self.uniform_log_density = action_dim * math.log(0.5)
        groups = [
            {"params": self.actor.parameters(), "lr": config.actor_lr},
            {"params": self.critic.parameters(), "lr": config.critic_lr},
            {"params": [self.log_temperature], "lr": config.temperature_lr},
        ]
        if config.lagrange:
            groups.append({"params": [self.log_lagrange], "lr": config.lagrange_lr})
        self.optimizers["all"] = make_adam(groups)

    def update(self, batch: Batch) -> UpdateOutput:
        cfg: CQLConfig = self.config  # type: ignore[assignment]
        obs, actions = batch.observations, batch.actions
        s, b, _ = obs.shape
        n = cfg.num_sampled_actions
        temperature = self.log_temperature.exp()

        # Policy samples for the regulariser (current and next state) and the TD target: no grad.
        with torch.no_grad():
            obs_rep = repeat_per_sample(obs, n)
            sampled, sampled_log_prob = self.actor.sample(torch.cat([obs, batch.next_observations], 1), n)
            current_actions, next_actions = sampled.split(b * n, dim=1)
            current_log_prob, next_log_prob = sampled_log_prob.split(b * n, dim=1)
            if cfg.target_action == "mean":
                target_actions = self.actor.mode(batch.next_observations)
            else:
                target_actions = next_actions.view(s, b, n, -1)[:, :, 0]
            target_q = self.target_critic(batch.next_observations, target_actions).amin(dim=1)
            if cfg.backup_entropy:
                target_q = target_q - temperature[:, None] * next_log_prob.view(s, b, n)[:, :, 0]
            td_target = batch.rewards + cfg.discount * (1.0 - batch.terminals) * target_q
            random_actions = torch.empty_like(current_actions).uniform_(-1.0, 1.0)

        # One critic pass over dataset, uniform, pi(s) and pi(s') actions, all at s: [S, 2, B + 3BN].
        q_all = self.critic(
            torch.cat([obs, obs_rep, obs_rep, obs_rep], 1),
            torch.cat([actions, random_actions, current_actions, next_actions], 1),
        )
        q_data = q_all[..., :b]
        q_random, q_current, q_next = q_all[..., b:].view(s, 2, 3, b, n).unbind(2)
        importance_weighted = torch.cat(
            [
                q_random - self.uniform_log_density,
                q_current - current_log_prob.view(s, 1, b, n),
                q_next - next_log_prob.view(s, 1, b, n),
            ],
            dim=-1,
        )
        tau_lse = cfg.logsumexp_temperature
        logsumexp = torch.logsumexp(importance_weighted / tau_lse, dim=-1) * tau_lse  # [S, 2, B]
        gap = logsumexp - q_data  # what the regulariser minimises, per critic and sample
        td = q_data - td_target.unsqueeze(1)

        weights = batch.weights
        td_loss = seed_mean(td.square().sum(1), weights)  # sum over the twin critics, as CORL
        gap_per_critic = gap.mean(-1) if weights is None else (gap * weights.unsqueeze(1)).mean(-1)  # [S, 2]
        lagrange = self.log_lagrange.exp().clamp(0.0, 1e6)
        if cfg.lagrange:
            conservative = (
                lagrange.detach()[:, None]
                * cfg.conservative_weight
                * (gap_per_critic - cfg.lagrange_threshold)
            ).sum(1)
            lagrange_loss = -(
                lagrange
                * cfg.conservative_weight
                * (gap_per_critic.detach().mean(1) - cfg.lagrange_threshold)
            )
        else:
            conservative = cfg.conservative_weight * gap_per_critic.sum(1)
            lagrange_loss = torch.zeros_like(conservative)
        critic_loss = td_loss + conservative

        # Actor and temperature (SAC), against the same critic snapshot with its weights detached.
        pi_actions, pi_log_prob = self.actor.sample(obs)
        q_pi = self.critic(obs, pi_actions, detach_params=True).amin(dim=1)
        actor_loss = (temperature.detach()[:, None] * pi_log_prob - q_pi).mean(-1)
        temperature_loss = -(
            self.log_temperature[:, None] * (pi_log_prob.detach() + self.target_entropy)
        ).mean(-1)

        total = (critic_loss + actor_loss + temperature_loss + lagrange_loss).sum()
        self._step(self.optimizers["all"], total)
        polyak_update(self.target_critic.parameters(), self.critic.parameters(), cfg.tau)
        self.num_updates += 1

        metrics = {
            "critic_loss": critic_loss.detach(),
            "td_loss": td_loss.detach(),
            "conservative_gap": gap_per_critic.detach().mean(1),
            "actor_loss": actor_loss.detach(),
            "temperature": temperature.detach(),
            "entropy": -pi_log_prob.detach().mean(-1),
            "q_data": q_data.detach().mean(dim=(1, 2)),
        }
        if cfg.lagrange:
            metrics["lagrange"] = lagrange.detach()
        return UpdateOutput(metrics=metrics, td_error=td.detach().abs().mean(1))

    @torch.no_grad()
    def act(self, observations: Tensor) -> Tensor:
        return self.actor.mode(observations)

    def policy_for_export(self, seed_index: int) -> nn.Module:
        """tanh of the Gaussian mean of this seed's actor."""
        return export_eval(self.actor.export(seed_index))
