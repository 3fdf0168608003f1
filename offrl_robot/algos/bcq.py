"""Batch-Constrained deep Q-learning, continuous BCQ (Fujimoto, Meger & Precup, 2019)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from offrl_robot.algos.base import AlgoConfig, Batch, UpdateOutput, register
from offrl_robot.algos.common import EnsembleAlgorithm, export_eval, make_adam, seed_mean
from offrl_robot.errors import ConfigError
from offrl_robot.nets import (
    ConditionalVAE,
    EnsembleMLP,
    QEnsemble,
    hard_copy,
    member_generator,
    polyak_update,
    repeat_per_sample,
)


@dataclass
class BCQConfig(AlgoConfig):
    """Defaults of the authors' code: phi 0.05, lambda 0.75, latent 2*|A| (None), KL weight 0.5,
    VAE 750x750, all lrs 1e-3 (Adam default there), tau 5e-3, 10 sampled next actions in the
    target, 100 candidates at act time. Actor/critic use `hidden_sizes` (the authors used 400x300).

    Why 100 act-time candidates: with 10, Hopper random ended at 178 ± 33 against 217 ± 9 with
    100 (H200, 20k updates, 3 seeds; other datasets within one std: BENCHMARKS.md). The cost is
    at act time only: ~1.1 ms per observation for the exported policy in onnxruntime on one CPU
    thread, ~0.27 ms with 10 (`num_act_candidates: 10` for a tight control loop)."""

    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    vae_lr: float = 1e-3
    phi: float = 0.05
    lmbda: float = 0.75
    latent_dim: int | None = None
    vae_hidden_sizes: tuple[int, ...] = (750, 750)
    kl_weight: float = 0.5
    tau: float = 5e-3
    num_target_samples: int = 10
    num_act_candidates: int = 100

    def __post_init__(self) -> None:
        if self.num_target_samples < 1 or self.num_act_candidates < 1:
            raise ConfigError("algo_config.num_target_samples and num_act_candidates must be >= 1")
        if not 0.0 <= self.lmbda <= 1.0:
            raise ConfigError(f"algo_config.lmbda {self.lmbda}: must lie in [0, 1]")


class PerturbationActor(nn.Module):
    """xi_phi(s, a) in [-phi, phi]: a small learned correction of a generated action,
    returning clip(a + phi * tanh(f(s, a)), -1, 1). [S, N, O], [S, N, A] -> [S, N, A]."""

    def __init__(
        self, seeds: Sequence[int], obs_dim: int, act_dim: int, hidden: Sequence[int], phi: float, tag: str
    ) -> None:
        super().__init__()
        self.phi = phi
        self.net = EnsembleMLP(seeds, 1, obs_dim + act_dim, hidden, act_dim, tag)

    def forward(self, obs: Tensor, actions: Tensor) -> Tensor:
        return (actions + self.phi * torch.tanh(self.net(torch.cat([obs, actions], -1)))).clamp(-1.0, 1.0)


class BCQExportPolicy(nn.Module):
    """One seed's deterministic BCQ policy as plain layers: [B, O] -> [B, A].

    Candidates: the decoder at N FIXED latents (row 0 = the zero latent, i.e. the decoder's mode;
    the others fixed draws of the clipped N(0, I) prior, stored in `latents` [N, L]), each
    perturbed by the actor; the output is the candidate with the largest Q1. Every op (Linear,
    ReLU, Tanh, Clip, ArgMax, Gather) maps to standard ONNX, and the latents are a constant of the
    graph, so an exported model reproduces `BCQ.act` exactly.
    """

    def __init__(
        self, decoder: nn.Module, perturbation: nn.Module, q1: nn.Module, latents: Tensor, phi: float
    ) -> None:
        super().__init__()
        self.decoder, self.perturbation, self.q1 = decoder, perturbation, q1
        self.register_buffer("latents", latents.clone())
        self.phi = phi

    def forward(self, obs: Tensor) -> Tensor:
        n, latent_dim = self.latents.shape
        batch, obs_dim = obs.shape
        obs_rep = obs.unsqueeze(1).expand(batch, n, obs_dim).reshape(batch * n, obs_dim)
        z = self.latents.unsqueeze(0).expand(batch, n, latent_dim).reshape(batch * n, latent_dim)
        generated = torch.tanh(self.decoder(torch.cat([obs_rep, z], -1)))
        correction = self.phi * torch.tanh(self.perturbation(torch.cat([obs_rep, generated], -1)))
        candidates = (generated + correction).clamp(-1.0, 1.0)
        q = self.q1(torch.cat([obs_rep, candidates], -1)).view(batch, n)
        best = q.argmax(dim=1)
        candidates = candidates.view(batch, n, -1)
        index = best.view(batch, 1, 1).expand(batch, 1, candidates.shape[-1])
        return candidates.gather(1, index).squeeze(1)

    def argmax_tie_rows(
        self, run_forward: Callable[[], object], onnx_unit: np.ndarray, tolerance: float
    ) -> np.ndarray:
        """Rows where another runtime legitimately picked another candidate (the export parity hook).

        We choose the best of N candidate actions by Q1. When two candidates' Q values differ by
        less than the float32 rounding difference of two GEMM implementations, torch and
        onnxruntime may pick different (both correct) candidates: a large action difference that
        is no export bug (about 1 row in 50,000 for a BCQ trained 500 steps). A row counts as such
        a tie only if the ONNX action `onnx_unit` [rows, A] (in [-1, 1] units) equals, within
        `tolerance`, a torch candidate whose Q is within a relative 1e-4 of torch's best.
        `run_forward` runs the exported module (which calls this policy once) on those rows.
        Returns a bool mask over the rows.
        """
        captured: dict[str, Tensor] = {}

        def keep_q_inputs(_module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            captured["inputs"], captured["q"] = inputs[0], output

        handle = self.q1.register_forward_hook(keep_q_inputs)
        try:
            with torch.no_grad():
                run_forward()
        finally:
            handle.remove()
        rows, action_dim = onnx_unit.shape
        num_candidates = self.latents.shape[0]
        q = captured["q"].reshape(rows, num_candidates).numpy().astype(np.float64)
        candidates = captured["inputs"][:, -action_dim:].reshape(rows, num_candidates, action_dim).numpy()
        best = q.max(axis=1, keepdims=True)
        near_best = q >= best - 1e-4 * (1.0 + np.abs(best))
        matches = np.abs(candidates - onnx_unit[:, None, :]).max(axis=2) <= tolerance
        return (near_best & matches).any(axis=1)


@register
class BCQ(EnsembleAlgorithm):
    """BCQ: act only with actions a generative model of the data finds likely, nudged within phi.

        VAE:    L_G = E_D[ ||D(s, z) - a||^2 ] + 0.5 * KL(N(mu(s,a), sigma(s,a)) || N(0, I)),  z ~ N(mu, sigma)
        Target: a'_j = xi'(s', D(s', z_j)), z_j ~ clip(N(0, I), -0.5, 0.5), j = 1..10
                y = r + gamma (1 - done) max_j [ lambda min_i Q'_i(s', a'_j) + (1 - lambda) max_i Q'_i(s', a'_j) ]
        Critic: L_Q = sum_i E_D[(Q_i(s, a) - y)^2]
        Actor:  L_xi = -E_s[ Q_1(s, xi(s, D(s, z))) ],  z ~ clip(N(0, I), -0.5, 0.5)
        Targets (critics and actor) soft-updated with tau.

    Difference from the authors' `BCQ.py`: they step VAE, critic and actor one after another, so
    the critic target uses the just-updated VAE and the actor the just-updated critic. Here all
    three losses come from one snapshot and one backward with one fused Adam (param groups per
    network) — a one-step lag that saves two backward passes. PER weights multiply the critic loss.

    Acting (`act`, export) is deterministic: see `BCQExportPolicy` (fixed latents, argmax Q1).
    """

    name = "bcq"
    config_class = BCQConfig
    value_based = True

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        num_seeds: int,
        config: BCQConfig,
        seeds: Sequence[int] | None = None,
    ) -> None:
        super().__init__(observation_dim, action_dim, num_seeds, config, seeds)
        hidden = config.hidden_sizes
        self.latent_dim = config.latent_dim or 2 * action_dim
        self.vae = ConditionalVAE(
            self.seeds, observation_dim, action_dim, self.latent_dim, config.vae_hidden_sizes, "bcq/vae"
        )
        self.actor = PerturbationActor(
            self.seeds, observation_dim, action_dim, hidden, config.phi, "bcq/actor"
        )
        self.target_actor = hard_copy(self.actor)
        self.critic = QEnsemble(self.seeds, observation_dim, action_dim, hidden, "bcq/critic")
        self.target_critic = hard_copy(self.critic)
        self.register_buffer("act_latents", self._fixed_latents(config.num_act_candidates))
        self.optimizers["all"] = make_adam(
            [
                {"params": self.vae.parameters(), "lr": config.vae_lr},
                {"params": self.critic.parameters(), "lr": config.critic_lr},
                {"params": self.actor.parameters(), "lr": config.actor_lr},
            ]
        )

    def _fixed_latents(self, n: int) -> Tensor:
        """[S, n, L]: per seed, the zero latent then n-1 clipped prior draws from the seed's generator."""
        rows = []
        for seed in self.seeds:
            draws = torch.randn(n, self.latent_dim, generator=member_generator(seed, "bcq/act_latents"))
            draws[0] = 0.0
            rows.append(draws.clamp(-ConditionalVAE.LATENT_CLIP, ConditionalVAE.LATENT_CLIP))
        return torch.stack(rows)

    def update(self, batch: Batch) -> UpdateOutput:
        cfg: BCQConfig = self.config  # type: ignore[assignment]
        obs, actions = batch.observations, batch.actions
        s, b, _ = obs.shape

        reconstruction, mean, std = self.vae(obs, actions)
        reconstruction_loss = (reconstruction - actions).square().mean(dim=(-2, -1))
        kl = (-0.5 * (1.0 + torch.log(std.square()) - mean.square() - std.square())).mean(dim=(-2, -1))
        vae_loss = reconstruction_loss + cfg.kl_weight * kl

        with torch.no_grad():
            n = cfg.num_target_samples
            next_obs = repeat_per_sample(batch.next_observations, n)
            target_q = self.target_critic(next_obs, self.target_actor(next_obs, self.vae.decode(next_obs)))
            target_q = cfg.lmbda * target_q.amin(1) + (1.0 - cfg.lmbda) * target_q.amax(1)
            target_q = target_q.view(s, b, n).amax(-1)
            td_target = batch.rewards + cfg.discount * (1.0 - batch.terminals) * target_q
            generated = self.vae.decode(obs)
        td = self.critic(obs, actions) - td_target.unsqueeze(1)
        critic_loss = seed_mean(td.square().sum(1), batch.weights)

        q1 = self.critic(obs, self.actor(obs, generated), detach_params=True)[:, 0]
        actor_loss = -q1.mean(-1)

        self._step(self.optimizers["all"], (vae_loss + critic_loss + actor_loss).sum())
        polyak_update(
            [*self.target_critic.parameters(), *self.target_actor.parameters()],
            [*self.critic.parameters(), *self.actor.parameters()],
            cfg.tau,
        )
        self.num_updates += 1
        return UpdateOutput(
            metrics={
                "vae_loss": vae_loss.detach(),
                "reconstruction_loss": reconstruction_loss.detach(),
                "critic_loss": critic_loss.detach(),
                "actor_loss": actor_loss.detach(),
            },
            td_error=td.detach().abs().mean(1),
        )

    @torch.no_grad()
    def act(self, observations: Tensor) -> Tensor:
        """Deterministic: the best-Q1 of the fixed-latent candidates (same maths as the export)."""
        s, b, _ = observations.shape
        n, latent_dim = self.act_latents.shape[1:]
        obs_rep = repeat_per_sample(observations, n)
        z = self.act_latents.unsqueeze(1).expand(s, b, n, latent_dim).reshape(s, b * n, latent_dim)
        candidates = self.actor(obs_rep, self.vae.decode(obs_rep, z))
        q1 = self.critic(obs_rep, candidates)[:, 0].view(s, b, n)
        candidates = candidates.view(s, b, n, -1)
        index = q1.argmax(-1).view(s, b, 1, 1).expand(s, b, 1, candidates.shape[-1])
        return candidates.gather(2, index).squeeze(2)

    def policy_for_export(self, seed_index: int) -> nn.Module:
        return export_eval(
            BCQExportPolicy(
                decoder=self.vae.decoder.member_module(seed_index),
                perturbation=self.actor.net.member_module(seed_index),
                q1=self.critic.export_member(seed_index, critic=0),
                latents=self.act_latents[seed_index],
                phi=self.config.phi,  # type: ignore[attr-defined]
            )
        )
