"""Ensemble-shaped networks: one tensor holds the weights of every seed (and every twin critic).

Why ensembles: training S seeds as S separate programs pays S times the Python and kernel-launch
overhead. Here a layer's weight is [E, in, out] (E = S * members-per-seed) and the forward pass
is one `torch.baddbmm` over inputs [E, B, in], so one backward and one optimiser step serve all
seeds and both critics. Members never mix: every op is per-member (no norms, no reductions
across E), and Adam is element-wise, so a member evolves exactly as it would alone.

Why per-member seeded init: seed s's members are drawn from a generator seeded with
(s, network tag), never from the global RNG, so slice s of a vectorised model equals the
single-seed model of seed s bit for bit, whatever S and whatever other seeds share the run.

Member layout is seed-major: member `s * k + j` is copy j (e.g. critic j) of seed index s, so a
seed's members are one contiguous slice.
"""

from __future__ import annotations

import copy
import itertools
import math
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Log-std bounds of Gaussian policy heads (CORL and d3rlpy use the same).
LOG_STD_MIN = -20.0
LOG_STD_MAX = 2.0
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def repeat_per_sample(x: Tensor, n: int) -> Tensor:
    """[S, B, D] -> [S, B*n, D], each row repeated n times consecutively (row b*n + i is x[:, b]),
    so a [S, B*n] result views back as [S, B, n]."""
    s, b, d = x.shape
    return x.unsqueeze(2).expand(s, b, n, d).reshape(s, b * n, d)


def member_generator(seed: int, tag: str) -> torch.Generator:
    """A CPU generator for the weights of network `tag` of seed `seed`.

    Mixing in the tag keeps an actor and a critic of the same seed from starting with
    identical draws; SeedSequence makes the mix collision-free and platform independent.
    """
    state = np.random.SeedSequence([int(seed), zlib.crc32(tag.encode())]).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


class EnsembleAffine(torch.autograd.Function):
    """baddbmm(b, x, W) whose weight gradient is computed split-K.

    Why: the weight gradient x^T @ grad is a [in, N] x [N, out] product per member with a long
    N (CQL: B * (3 * 10 + 1) = 7,936 rows) and a small output (256 x 256). cuBLAS then runs few
    thread blocks that each walk all of N; on an H100 this one kernel was ~40% of a CQL update.
    Splitting N into chunks of 256-1024 rows, multiplying the chunks as extra batch entries and
    summing them gives the same gradient with enough parallelism (CQL: 735 -> 1,059 updates/s,
    fp32, CUDA graph). Used on CUDA only; on the CPU, MKL handles long N well.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias, x, weight)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")  # the backward matmuls at the forward's autocast dtype
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = torch.bmm(grad, weight.transpose(1, 2)) if need_x else None
        grad_w = None
        if need_w:
            members, rows, fan_in = x.shape
            fan_out = grad.shape[-1]
            chunk = next((c for c in (256, 512, 1024) if rows % c == 0 and rows >= 4 * c), None)
            if chunk is None:
                grad_w = torch.bmm(x.transpose(1, 2), grad)
            else:
                splits = rows // chunk
                grad_w = (
                    torch.bmm(
                        x.reshape(members * splits, chunk, fan_in).transpose(1, 2),
                        grad.reshape(members * splits, chunk, fan_out),
                    )
                    .view(members, splits, fan_in, fan_out)
                    .sum(1)
                )
        grad_b = grad.sum(1, keepdim=True) if need_b else None
        # Under bf16 autocast the products above are bf16; hand back each gradient in its
        # input's dtype (fp32 weights get fp32 gradients; torch.compile insists on it).
        if grad_x is not None:
            grad_x = grad_x.to(x.dtype)
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        if grad_b is not None:
            grad_b = grad_b.to(weight.dtype)
        return grad_x, grad_w, grad_b


class EnsembleLinear(nn.Module):
    """E independent affine maps applied as one batched matmul: [E, B, in] -> [E, B, out]."""

    def __init__(self, num_members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(num_members, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(num_members, 1, out_features))

    def forward(self, x: Tensor, detach_params: bool = False) -> Tensor:
        weight, bias = (
            (self.weight.detach(), self.bias.detach()) if detach_params else (self.weight, self.bias)
        )
        # Static checks, not data-dependent branches. Under torch.compile with bf16 autocast,
        # Inductor plans the matmuls itself and the custom Function only blocks its fusions:
        # 8 CQL seeds, compile + bf16 on an H200: 6,027 seed-updates/s with the Function,
        # 6,852 without; in fp32 the split-K weight gradient still wins (2,968 vs 2,745).
        if x.is_cuda and not (torch.compiler.is_compiling() and torch.is_autocast_enabled("cuda")):
            return EnsembleAffine.apply(x, weight, bias)
        return torch.baddbmm(bias, x, weight)

    @torch.no_grad()
    def reset_member(self, member: int, generator: torch.Generator) -> None:
        """nn.Linear's default init (U(±1/sqrt(in)) for weight and bias), so ensembles start
        like the plain MLPs d3rlpy and CORL use."""
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight[member].uniform_(-bound, bound, generator=generator)
        self.bias[member].uniform_(-bound, bound, generator=generator)


class EnsembleMLP(nn.Module):
    """ReLU MLP over E members; input [E, B, in] -> output [E, B, out] (no output activation)."""

    def __init__(
        self,
        seeds: Sequence[int],
        members_per_seed: int,
        in_features: int,
        hidden_sizes: Sequence[int],
        out_features: int,
        tag: str,
    ) -> None:
        super().__init__()
        self.num_seeds = len(seeds)
        self.members_per_seed = members_per_seed
        self.num_members = self.num_seeds * members_per_seed
        sizes = [in_features, *hidden_sizes, out_features]
        self.layers = nn.ModuleList(
            EnsembleLinear(self.num_members, fan_in, fan_out) for fan_in, fan_out in itertools.pairwise(sizes)
        )
        self.reset_parameters(seeds, tag)

    def reset_parameters(self, seeds: Sequence[int], tag: str) -> None:
        """Draw each seed's members from that seed's own generator, member by member, layer by layer."""
        for seed_index, seed in enumerate(seeds):
            generator = member_generator(seed, tag)
            for j in range(self.members_per_seed):
                for layer in self.layers:
                    layer.reset_member(seed_index * self.members_per_seed + j, generator)

    def forward(self, x: Tensor, detach_params: bool = False) -> Tensor:
        """detach_params=True lets a loss (e.g. the actor's -Q) flow into the input but not the weights."""
        *hidden, last = self.layers
        for layer in hidden:
            x = torch.relu(layer(x, detach_params))
        if torch.is_autocast_enabled(x.device.type):
            # Mixed precision (accel.PRECISIONS "bf16"): hidden layers may run in bfloat16, but
            # the output layer stays fp32 so Q-values, means and log-stds keep fp32 precision
            # (a bf16 Q of magnitude 100 would be quantised in steps of 0.5).
            with torch.autocast(x.device.type, enabled=False):
                return last(x.float(), detach_params)
        return last(x, detach_params)

    def member_module(self, member: int, out_rows: slice | None = None) -> nn.Sequential:
        """A plain nn.Sequential(Linear, ReLU, ...) copy of one member, for ONNX export.

        out_rows keeps only some outputs of the last layer (e.g. the mean half of a Gaussian head).
        """
        modules: list[nn.Module] = []
        for i, layer in enumerate(self.layers):
            weight = layer.weight[member].detach().t()
            bias = layer.bias[member, 0].detach()
            if i == len(self.layers) - 1 and out_rows is not None:
                weight, bias = weight[out_rows], bias[out_rows]
            linear = nn.Linear(weight.shape[1], weight.shape[0])
            with torch.no_grad():
                linear.weight.copy_(weight)
                linear.bias.copy_(bias)
            modules.append(linear)
            if i < len(self.layers) - 1:
                modules.append(nn.ReLU())
        return nn.Sequential(*modules).eval()


class DeterministicActor(nn.Module):
    """tanh(MLP(obs)): a deterministic policy in [-1, 1] (TD3+BC, BC-MSE). [S, B, O] -> [S, B, A]."""

    def __init__(
        self, seeds: Sequence[int], obs_dim: int, act_dim: int, hidden: Sequence[int], tag: str
    ) -> None:
        super().__init__()
        self.net = EnsembleMLP(seeds, 1, obs_dim, hidden, act_dim, tag)

    def forward(self, obs: Tensor, detach_params: bool = False) -> Tensor:
        return torch.tanh(self.net(obs, detach_params))

    def mode(self, obs: Tensor) -> Tensor:
        """The action `act` and export use (same interface as the stochastic heads)."""
        return self(obs)

    def export(self, seed_index: int) -> nn.Module:
        return nn.Sequential(*self.net.member_module(seed_index), nn.Tanh()).eval()


class TanhGaussianActor(nn.Module):
    """SAC's squashed Gaussian: a = tanh(u), u ~ N(mu(obs), sigma(obs)), state-dependent log-std.

    The log-prob includes the tanh change of variables, computed as
    2 * (log 2 - u - softplus(-2u)) for numerical stability (as in SAC, CORL and d3rlpy).
    """

    def __init__(
        self, seeds: Sequence[int], obs_dim: int, act_dim: int, hidden: Sequence[int], tag: str
    ) -> None:
        super().__init__()
        self.act_dim = act_dim
        self.net = EnsembleMLP(seeds, 1, obs_dim, hidden, 2 * act_dim, tag)

    def _mean_log_std(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.net(obs).split(self.act_dim, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs: Tensor, n: int = 1) -> tuple[Tensor, Tensor]:
        """Reparameterised samples and their log-probs: obs [S, B, O] -> actions [S, B*n, A],
        log_prob [S, B*n]; row b*n + i is sample i at state b. The network runs once per state
        and only the Gaussian noise is drawn n times (CQL's 10 samples cost one policy pass)."""
        mean, log_std = self._mean_log_std(obs)
        if n > 1:
            mean, log_std = repeat_per_sample(mean, n), repeat_per_sample(log_std, n)
        noise = torch.randn_like(mean)
        pre_tanh = mean + log_std.exp() * noise
        gaussian_log_prob = (-0.5 * noise.square() - log_std - _HALF_LOG_2PI).sum(-1)
        squash_correction = (2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1)
        return torch.tanh(pre_tanh), gaussian_log_prob - squash_correction

    def mode(self, obs: Tensor) -> Tensor:
        """The deterministic action tanh(mu): what `act` and export use."""
        return torch.tanh(self._mean_log_std(obs)[0])

    def export(self, seed_index: int) -> nn.Module:
        return nn.Sequential(*self.net.member_module(seed_index, slice(0, self.act_dim)), nn.Tanh()).eval()


class GaussianActor(nn.Module):
    """N(tanh(MLP(obs)), exp(log_std)) with a state-independent log-std (CORL's IQL policy).

    The mean is tanh-bounded but the distribution is not squashed, so dataset actions at exactly
    ±1 keep a finite log-likelihood (a squashed Gaussian would need atanh(±1) = inf). Used by
    IQL's advantage-weighted regression and by BC's Gaussian-NLL variant.
    """

    def __init__(
        self, seeds: Sequence[int], obs_dim: int, act_dim: int, hidden: Sequence[int], tag: str
    ) -> None:
        super().__init__()
        self.net = EnsembleMLP(seeds, 1, obs_dim, hidden, act_dim, tag)
        self.log_std = nn.Parameter(torch.zeros(len(seeds), 1, act_dim))

    def mode(self, obs: Tensor) -> Tensor:
        return torch.tanh(self.net(obs))

    def log_prob(self, obs: Tensor, actions: Tensor) -> Tensor:
        """log N(actions | mean(obs), std) summed over action dims: [S, B, O], [S, B, A] -> [S, B]."""
        mean = self.mode(obs)
        log_std = self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z.square() - log_std - _HALF_LOG_2PI).sum(-1)

    def export(self, seed_index: int) -> nn.Module:
        return nn.Sequential(*self.net.member_module(seed_index), nn.Tanh()).eval()


class QEnsemble(nn.Module):
    """k critics per seed (twin Q: k = 2) as one EnsembleMLP of S*k members.

    forward(obs [S, N, O], actions [S, N, A]) -> Q [S, k, N]: the state-action input is
    replicated to the k critics of its seed and all S*k critics run as one batched matmul.
    """

    def __init__(
        self, seeds: Sequence[int], obs_dim: int, act_dim: int, hidden: Sequence[int], tag: str, k: int = 2
    ) -> None:
        super().__init__()
        self.k = k
        self.net = EnsembleMLP(seeds, k, obs_dim + act_dim, hidden, 1, tag)

    def forward(self, obs: Tensor, actions: Tensor, detach_params: bool = False) -> Tensor:
        x = torch.cat([obs, actions], dim=-1)
        s, n, d = x.shape
        x = x.unsqueeze(1).expand(s, self.k, n, d).reshape(s * self.k, n, d)
        return self.net(x, detach_params).view(s, self.k, n)

    def export_member(self, seed_index: int, critic: int = 0) -> nn.Sequential:
        """Plain module of one critic of one seed: cat([obs, action]) [B, O+A] -> [B, 1]."""
        return self.net.member_module(seed_index * self.k + critic)


class ValueEnsemble(nn.Module):
    """State-value V(obs): [S, N, O] -> [S, N] (IQL)."""

    def __init__(self, seeds: Sequence[int], obs_dim: int, hidden: Sequence[int], tag: str) -> None:
        super().__init__()
        self.net = EnsembleMLP(seeds, 1, obs_dim, hidden, 1, tag)

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs).squeeze(-1)


class ConditionalVAE(nn.Module):
    """BCQ's generative model of the behaviour policy, p(a | s) = ∫ decoder(s, z) p(z) dz.

    Encoder (s, a) -> (mu, log_std) of z (log_std clamped to [-4, 15] as in Fujimoto's code);
    decoder (s, z) -> tanh(...) in [-1, 1]. Sampling clips z ~ N(0, I) to [-0.5, 0.5] so the
    decoder stays where the encoder put mass (the paper's trick against out-of-support actions).
    """

    LATENT_CLIP = 0.5

    def __init__(
        self,
        seeds: Sequence[int],
        obs_dim: int,
        act_dim: int,
        latent_dim: int,
        hidden: Sequence[int],
        tag: str,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = EnsembleMLP(seeds, 1, obs_dim + act_dim, hidden, 2 * latent_dim, f"{tag}/encoder")
        self.decoder = EnsembleMLP(seeds, 1, obs_dim + latent_dim, hidden, act_dim, f"{tag}/decoder")

    def forward(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Reconstruct: returns (reconstruction [S, B, A], mu [S, B, L], std [S, B, L])."""
        mean, log_std = self.encoder(torch.cat([obs, actions], dim=-1)).split(self.latent_dim, dim=-1)
        std = log_std.clamp(-4.0, 15.0).exp()
        z = mean + std * torch.randn_like(std)
        return self.decode(obs, z), mean, std

    def decode(self, obs: Tensor, z: Tensor | None = None) -> Tensor:
        """Decode given latents, or sample clipped latents when z is None."""
        if z is None:
            shape = (*obs.shape[:-1], self.latent_dim)
            z = torch.randn(shape, device=obs.device, dtype=obs.dtype).clamp(
                -self.LATENT_CLIP, self.LATENT_CLIP
            )
        return torch.tanh(self.decoder(torch.cat([obs, z], dim=-1)))


def polyak_update(target: Iterable[Tensor], online: Iterable[Tensor], tau: float) -> None:
    """target <- (1 - tau) * target + tau * online, for all tensors in one foreach kernel."""
    with torch.no_grad():
        torch._foreach_lerp_(list(target), list(online), tau)


def hard_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of `module` to serve as its target network."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target
