"""Which transitions each update sees: uniform sampling and prioritised replay (sum-tree).

Both samplers serve S independent seeds at once and hand the Trainer index tensors [S, B]
(plus importance weights for prioritised replay) on the training device. Each seed draws from
its own random stream, seeded from that seed's number alone, so seed s of a vectorised run
draws exactly the indices a single-seed run with seed s draws.

- `UniformSampler` keeps everything on the device (one `torch.Generator` per seed): sampling
  never synchronises host and device, so the update loop stays asynchronous / graph-capturable.
- `PrioritizedSampler` (Schaul et al. 2016, proportional variant) keeps one sum-tree per seed on
  the host in numpy (float64). P(i) = p_i^α / Σ_k p_k^α with p_i = |δ_i| + ε; batches are drawn
  stratified (one uniform draw in each of B equal slices of the total mass, which leaves every
  draw's marginal exactly P(i)); importance weights w_i = (N·P(i))^-β / max_k w_k, where the max
  is over the whole dataset (a min-tree gives it in O(1)), so weights lie in (0, 1]; β is
  annealed linearly from β0 to 1 over the run. Priority updates recompute only the touched
  leaves' ancestors: O(B log N) per seed. **The one documented host sync of the training loop**
  is `update_priorities` reading the TD errors back to the host; uniform sampling has none.
  New transitions enter at the current maximum priority (the paper's rule: a transition
  without a TD error yet is sure to be replayed at least once soon), see `add_transitions`.

State (trees, RNG states) goes into checkpoints via `state_dict()` so a resumed run draws the
same indices an uninterrupted one would. All state values are tensors or plain Python values so
checkpoints load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from offrl_robot.errors import ConfigError

# Stream ids keep the sampler's random numbers independent of anything else seeded with the
# same seed number (the algorithm seeds its weight init with the plain seed).
_UNIFORM_STREAM = 0x5A3D1E
_PRIORITY_STREAM = 0x9E3779


def stream_seed(seed: int, stream: int) -> int:
    """A 63-bit seed for (seed, stream): decorrelated streams from one user-facing seed."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, stream]).generate_state(2, np.uint64)[0] >> 1)


class Sampler(Protocol):
    """What the Trainer needs from a sampler."""

    def sample(self, step: int) -> tuple[Tensor, Tensor | None]:
        """Indices [S, B] (int64, on the device) and importance weights [S, B] or None."""
        ...

    def update_priorities(self, indices: Tensor, td_error: Tensor) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _check_sizes(num_transitions: int, batch_size: int, seeds: Sequence[int]) -> None:
    if num_transitions <= 0:
        raise ConfigError("sampler: the dataset holds no transitions")
    if batch_size <= 0:
        raise ConfigError(f"sampler: batch_size must be positive, got {batch_size}")
    if not seeds:
        raise ConfigError("sampler: give at least one seed")


class UniformSampler:
    """Uniform sampling with replacement, on the device, one generator per seed (no host sync)."""

    def __init__(
        self, num_transitions: int, batch_size: int, seeds: Sequence[int], device: torch.device | str = "cpu"
    ) -> None:
        _check_sizes(num_transitions, batch_size, seeds)
        self.num_transitions = int(num_transitions)
        self.batch_size = int(batch_size)
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.generators = []
        for seed in self.seeds:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(stream_seed(seed, _UNIFORM_STREAM))
            self.generators.append(gen)
        # Preallocated so sampling allocates nothing per step.
        self._indices = torch.empty((len(self.seeds), self.batch_size), dtype=torch.int64, device=self.device)

    def sample(self, step: int) -> tuple[Tensor, None]:
        """Indices [S, B]. The returned tensor is reused by the next call: consume it before then."""
        for row, gen in enumerate(self.generators):
            torch.randint(0, self.num_transitions, (self.batch_size,), generator=gen, out=self._indices[row])
        return self._indices, None

    def update_priorities(self, indices: Tensor, td_error: Tensor) -> None:
        """Uniform sampling ignores TD errors."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "uniform",
            "seeds": list(self.seeds),
            "num_transitions": self.num_transitions,
            "generators": [gen.get_state() for gen in self.generators],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state(state, "uniform", self.seeds, self.num_transitions)
        for gen, gen_state in zip(self.generators, state["generators"], strict=True):
            gen.set_state(gen_state)


class PrioritizedSampler:
    """Proportional prioritised replay with one sum-tree (and min-tree) per seed, on the host.

    Trees are 1-based heaps of size 2·C (C = next power of two ≥ N): node k has children 2k and
    2k+1, leaf i sits at C + i, padding leaves hold 0 (sum) / +inf (min) so they are never drawn.
    Every transition enters at the current maximum priority p^α (Schaul et al.: new transitions
    have no TD error yet): 1 for the transitions given at construction, i.e. uniform until TD
    errors arrive; `add_transitions` applies the same rule to transitions that come later.
    """

    def __init__(
        self,
        num_transitions: int,
        batch_size: int,
        seeds: Sequence[int],
        device: torch.device | str = "cpu",
        *,
        alpha: float = 0.6,
        beta: float = 0.4,
        total_steps: int = 1,
        eps: float = 1e-6,
    ) -> None:
        _check_sizes(num_transitions, batch_size, seeds)
        if alpha < 0:
            raise ConfigError(f"prioritized replay: per_alpha must be >= 0, got {alpha}")
        if not 0 <= beta <= 1:
            raise ConfigError(f"prioritized replay: per_beta must be in [0, 1], got {beta}")
        if eps <= 0:
            raise ConfigError(f"prioritized replay: per_eps must be > 0, got {eps}")
        self.num_transitions = int(num_transitions)
        self.batch_size = int(batch_size)
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.alpha = float(alpha)
        self.beta0 = float(beta)
        self.total_steps = max(1, int(total_steps))
        self.eps = float(eps)
        self.capacity = 1 << max(0, (self.num_transitions - 1).bit_length())
        self.depth = self.capacity.bit_length() - 1  # levels between the root and the leaves
        num_seeds = len(self.seeds)
        self.sum_tree = np.zeros((num_seeds, 2 * self.capacity), dtype=np.float64)
        self.min_tree = np.full((num_seeds, 2 * self.capacity), np.inf, dtype=np.float64)
        self.max_priority = np.ones(num_seeds, dtype=np.float64)
        leaves = slice(self.capacity, self.capacity + self.num_transitions)
        self.sum_tree[:, leaves] = 1.0
        self.min_tree[:, leaves] = 1.0
        self._rebuild()
        self.rngs = [
            np.random.Generator(np.random.PCG64(stream_seed(s, _PRIORITY_STREAM))) for s in self.seeds
        ]
        self._seed_rows = np.arange(num_seeds)[:, None]

    # ------------------------------------------------------------------ tree maintenance
    def _rebuild(self) -> None:
        """Recompute every internal node from the leaves (init and load only)."""
        for node_start in (1 << level for level in range(self.depth - 1, -1, -1)):
            nodes = np.arange(node_start, 2 * node_start)
            self.sum_tree[:, nodes] = self.sum_tree[:, 2 * nodes] + self.sum_tree[:, 2 * nodes + 1]
            self.min_tree[:, nodes] = np.minimum(self.min_tree[:, 2 * nodes], self.min_tree[:, 2 * nodes + 1])

    def beta(self, step: int) -> float:
        """β annealed linearly from β0 at step 0 to 1 at the last step."""
        return self.beta0 + (1.0 - self.beta0) * min(1.0, step / self.total_steps)

    def probabilities(self) -> np.ndarray:
        """Exact sampling probabilities P(i) [S, N] implied by the trees (for tests and logs)."""
        leaves = self.sum_tree[:, self.capacity : self.capacity + self.num_transitions]
        return leaves / self.sum_tree[:, 1:2]

    def add_transitions(self, count: int) -> np.ndarray:
        """Append `count` transitions (indices N..N+count-1, returned) at each seed's current
        maximum priority, growing the trees when the capacity is reached; return their indices.

        No training path calls this today: a run's dataset is fixed when its sampler is built
        (the Trainer samples `len(dataset)` rows, and `--resume` refuses a dataset whose sha256
        changed), and MOPO's model buffer is sampled uniformly (MOPO has no per-row TD error, so
        prioritised replay is refused for it). It is the one way to grow a prioritised sampler,
        so a growing dataset or buffer gets the paper's rule rather than priority 1.
        """
        if count < 1:
            raise ValueError(f"add_transitions: count must be >= 1, got {count}")
        old_n = self.num_transitions
        new_n = old_n + int(count)
        if new_n > self.capacity:
            leaves = self.sum_tree[:, self.capacity : self.capacity + old_n].copy()
            self.capacity = 1 << (new_n - 1).bit_length()
            self.depth = self.capacity.bit_length() - 1
            num_seeds = len(self.seeds)
            self.sum_tree = np.zeros((num_seeds, 2 * self.capacity), dtype=np.float64)
            self.min_tree = np.full((num_seeds, 2 * self.capacity), np.inf, dtype=np.float64)
            self.sum_tree[:, self.capacity : self.capacity + old_n] = leaves
            self.min_tree[:, self.capacity : self.capacity + old_n] = leaves
            self._rebuild()
        self.num_transitions = new_n
        indices = np.arange(old_n, new_n)
        rows = np.broadcast_to(indices, (len(self.seeds), count))
        self.update_leaf_priorities(rows, np.broadcast_to(self.max_priority[:, None], rows.shape).copy())
        return indices

    # ------------------------------------------------------------------ sampling
    def sample_numpy(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices [S, B] (int64) and importance weights [S, B] (float64) as numpy arrays."""
        num_seeds, batch = len(self.seeds), self.batch_size
        total = self.sum_tree[:, 1]
        uniforms = np.stack([rng.random(batch) for rng in self.rngs])
        # Stratified: one draw in each of B equal slices of the mass.
        mass = (np.arange(batch)[None, :] + uniforms) * (total[:, None] / batch)
        mass = np.minimum(mass, np.nextafter(total, 0.0)[:, None])
        node = np.ones((num_seeds, batch), dtype=np.int64)
        rows = np.broadcast_to(self._seed_rows, node.shape)
        for _ in range(self.depth):
            left = 2 * node
            left_sum = self.sum_tree[rows, left]
            go_right = mass >= left_sum
            mass = np.where(go_right, mass - left_sum, mass)
            node = left + go_right
        indices = node - self.capacity
        # Float rounding can in principle step onto a padding leaf past the end: stay in range.
        np.minimum(indices, self.num_transitions - 1, out=indices)
        leaf_priority = self.sum_tree[rows, indices + self.capacity]
        min_priority = self.min_tree[:, 1:2]
        # w_i / max_k w_k = (P(i) / min_k P(k))^-β = (p_i / p_min)^-β
        weights = (leaf_priority / min_priority) ** (-self.beta(step))
        return indices, weights

    def sample(self, step: int) -> tuple[Tensor, Tensor]:
        indices, weights = self.sample_numpy(step)
        return (
            torch.from_numpy(indices).to(self.device, non_blocking=True),
            torch.from_numpy(weights.astype(np.float32)).to(self.device, non_blocking=True),
        )

    # ------------------------------------------------------------------ priority updates
    def update_priorities(self, indices: Tensor, td_error: Tensor) -> None:
        """Set p_i = (|δ_i| + ε)^α for the sampled indices [S, B]. Host sync: reads δ back.

        Non-finite TD errors (a diverging critic) get the current maximum priority instead, so
        one bad batch cannot poison the tree; the diverging loss itself shows in the logs.
        """
        idx = indices.detach().to("cpu", torch.int64).numpy()
        td = np.abs(td_error.detach().to("cpu", torch.float64).numpy())
        if idx.shape != (len(self.seeds), self.batch_size) or td.shape != idx.shape:
            raise ValueError(f"update_priorities: expected [S, B] = {idx.shape}, got td_error {td.shape}")
        priority = (td + self.eps) ** self.alpha
        finite = np.isfinite(priority)
        if not finite.all():
            priority = np.where(finite, priority, self.max_priority[:, None])
        self.update_leaf_priorities(idx, priority)

    def update_leaf_priorities(self, indices: np.ndarray, priority: np.ndarray) -> None:
        """Write already-exponentiated priorities p^α at leaves [S, B] and fix their ancestors.

        Duplicate indices within a seed keep the last value written. Internal nodes are
        recomputed from their children (not incremented), so no float drift accumulates.
        """
        rows = np.broadcast_to(self._seed_rows, indices.shape)
        leaf = indices + self.capacity
        self.sum_tree[rows, leaf] = priority
        self.min_tree[rows, leaf] = priority
        np.maximum(self.max_priority, priority.max(axis=1), out=self.max_priority)
        width = 2 * self.capacity
        keys = np.unique(rows * width + leaf)  # one entry per touched (seed, node)
        for _ in range(self.depth):
            key_rows, nodes = keys // width, (keys % width) // 2  # parents, same seed row
            keys = np.unique(key_rows * width + nodes)
            key_rows, nodes = keys // width, keys % width
            self.sum_tree[key_rows, nodes] = (
                self.sum_tree[key_rows, 2 * nodes] + self.sum_tree[key_rows, 2 * nodes + 1]
            )
            self.min_tree[key_rows, nodes] = np.minimum(
                self.min_tree[key_rows, 2 * nodes], self.min_tree[key_rows, 2 * nodes + 1]
            )

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        leaves = slice(self.capacity, self.capacity + self.num_transitions)
        return {
            "kind": "prioritized",
            "seeds": list(self.seeds),
            "num_transitions": self.num_transitions,
            "leaf_priorities": torch.from_numpy(self.sum_tree[:, leaves].copy()),
            "max_priority": torch.from_numpy(self.max_priority.copy()),
            "rngs": [rng.bit_generator.state for rng in self.rngs],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state(state, "prioritized", self.seeds, self.num_transitions)
        leaves = slice(self.capacity, self.capacity + self.num_transitions)
        priorities = state["leaf_priorities"].numpy()
        self.sum_tree[:] = 0.0
        self.min_tree[:] = np.inf
        self.sum_tree[:, leaves] = priorities
        self.min_tree[:, leaves] = priorities
        self._rebuild()
        self.max_priority[:] = state["max_priority"].numpy()
        for rng, rng_state in zip(self.rngs, state["rngs"], strict=True):
            rng.bit_generator.state = rng_state


def _check_state(state: dict[str, Any], kind: str, seeds: list[int], num_transitions: int) -> None:
    """A checkpoint's sampler must match this run's sampler kind, seeds and dataset size."""
    if state.get("kind") != kind:
        raise ConfigError(
            f"checkpoint sampler is {state.get('kind')!r} but this run uses {kind!r}; "
            "resume with the same `prioritized` setting"
        )
    if list(state.get("seeds", [])) != seeds or state.get("num_transitions") != num_transitions:
        raise ConfigError(
            f"checkpoint sampler was built for seeds {state.get('seeds')} over {state.get('num_transitions')} "
            f"transitions, this run has seeds {seeds} over {num_transitions}; resume with the same seeds and dataset"
        )


def make_sampler(
    num_transitions: int,
    batch_size: int,
    seeds: Sequence[int],
    device: torch.device | str,
    *,
    prioritized: bool = False,
    alpha: float = 0.6,
    beta: float = 0.4,
    eps: float = 1e-6,
    total_steps: int = 1,
) -> UniformSampler | PrioritizedSampler:
    """The one config switch: uniform by default, prioritised when asked."""
    if prioritized:
        return PrioritizedSampler(
            num_transitions,
            batch_size,
            seeds,
            device,
            alpha=alpha,
            beta=beta,
            eps=eps,
            total_steps=total_steps,
        )
    return UniformSampler(num_transitions, batch_size, seeds, device)
