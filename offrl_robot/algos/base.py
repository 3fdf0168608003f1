"""The contract between the Trainer and every algorithm.

Shapes: every algorithm trains S independent seeds at once (S = 1 for a plain run). Nets are
ensemble-shaped (weights [S*k, in, out], see `offrl_robot.nets`) so one optimiser step updates
all seeds. A batch therefore carries a leading seed axis: each seed samples its own indices.

Spaces: the Trainer normalises observations (dataset mean/std) and scales actions to [-1, 1]
(from the dataset's action_low/high) once, on the device, before training. Algorithms only
ever see normalised observations and actions in [-1, 1]; export puts the inverse maps inside
the ONNX graph, so a deployed model takes and returns physical units.

Hot loop rules (needed for GPU speed and CUDA-graph capture): `update` returns tensors, never
calls `.item()`/`.cpu()`, never branches on tensor values, allocates nothing that depends on data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from offrl_robot.errors import ConfigError

LR_SCHEDULES = ("none", "cosine")


@dataclass
class Batch:
    """One sampled batch. All tensors are on the training device.

    observations / next_observations: [S, B, O] normalised; actions: [S, B, A] in [-1, 1];
    rewards, terminals: [S, B] float (terminals 1.0 = true end of task, no bootstrap);
    weights: [S, B] prioritised-replay importance weights, or None for uniform sampling.
    """

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    next_observations: Tensor
    terminals: Tensor
    weights: Tensor | None = None


@dataclass
class UpdateOutput:
    """What one update step reports.

    metrics: name -> tensor [S] (per-seed scalars; the Trainer syncs them to host only when logging).
    td_error: [S, B] absolute TD errors for prioritised replay, or None for algorithms without a critic.
    """

    metrics: dict[str, Tensor]
    td_error: Tensor | None = None


@dataclass
class AlgoConfig:
    """Fields every algorithm config has. Subclasses add their own, with D4RL-style defaults."""

    batch_size: int = 256
    hidden_sizes: tuple[int, ...] = (256, 256)
    discount: float = 0.99
    extra: dict[str, Any] = field(default_factory=dict)

    # Learning-rate schedules of the subclass: switch field ("none" | "cosine") -> horizon field
    # (updates). A schedule spans the whole run: the Trainer calls `follow_steps(steps)`, which
    # sets the horizon to the run's `steps`, so `--steps 60000` can never leave 40k updates at lr 0.
    lr_schedules: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        for switch, horizon_field in self.lr_schedules.items():
            if getattr(self, switch) not in LR_SCHEDULES:
                raise ConfigError(
                    f"algo_config.{switch} {getattr(self, switch)!r}: choose one of {', '.join(LR_SCHEDULES)}"
                )
            horizon = getattr(self, horizon_field)
            if horizon is not None and (
                isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1
            ):
                raise ConfigError(f"algo_config.{horizon_field} {horizon!r}: must be a positive integer")

    def follow_steps(self, steps: int) -> None:
        """Make every schedule span `steps` updates. An explicit horizon (the older
        `*_schedule_steps` form) is kept only when it equals `steps`; otherwise it is refused."""
        for switch, horizon_field in self.lr_schedules.items():
            horizon = getattr(self, horizon_field)
            if horizon is not None and horizon != steps:
                effect = (
                    f"the decay would end at update {horizon} and the last {steps - horizon} would run at lr 0"
                    if horizon < steps
                    else f"the run would end at update {steps}, before the decay does"
                )
                raise ConfigError(
                    f"algo_config.{horizon_field} {horizon} differs from steps {steps} ({effect}); "
                    f"remove it and set {switch}: cosine, which always decays over the run's steps"
                )
            if horizon is not None or getattr(self, switch) == "cosine":
                setattr(self, switch, "cosine")
                setattr(self, horizon_field, steps)

    def schedule_horizon(self, switch: str) -> int | None:
        """Updates the cosine schedule `switch` decays over; None = constant learning rate."""
        horizon = getattr(self, self.lr_schedules[switch])
        if horizon is None and getattr(self, switch) == "cosine":
            raise ConfigError(
                f"algo_config.{switch}: cosine decays over the run's steps, which only the Trainer "
                f"knows; train through it, or when building the algorithm directly set "
                f"{self.lr_schedules[switch]} (or {switch}: none)"
            )
        return horizon


class Algorithm(nn.Module):
    """Base class. Subclasses live one per file in `offrl_robot/algos/` and set:

    name: registry key used by configs and `--algo` (e.g. "cql").
    config_class: the dataclass of its hyper-parameters.
    value_based: True if `update` returns td_error (so prioritised replay may be switched on).
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[AlgoConfig]] = AlgoConfig
    value_based: ClassVar[bool] = False

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        num_seeds: int,
        config: AlgoConfig,
        seeds: Sequence[int] | None = None,
    ) -> None:
        """`seeds`: the run's seed values (default 0..S-1). Seed s's ensemble members are
        initialised from a generator seeded with s, so seed 2 of `--seeds 0,1,2` starts from
        exactly the weights of a single-seed run with `--seeds 2`."""
        super().__init__()
        self.observation_dim = observation_dim
        self.action_dim = action_dim
        self.num_seeds = num_seeds
        self.config = config
        self.seeds = list(range(num_seeds)) if seeds is None else [int(s) for s in seeds]
        if len(self.seeds) != num_seeds:
            raise ValueError(f"got {len(self.seeds)} seed values for num_seeds={num_seeds}")

    def prepare(self, dataset: Any) -> None:
        """Called by the Trainer once on a fresh run, after construction and before the first
        update, with the run's dataset (physical units), inside the run's thread setting; not
        called on resume (the checkpoint's module state already holds whatever this built).

        Why: some learners need a model of the data before their first step (MOPO fits its
        dynamics ensemble here, `offrl_robot.algos.mopo`). Default: nothing."""

    def update(self, batch: Batch) -> UpdateOutput:
        """One gradient step for all seeds (critic, actor, target nets, temperature...)."""
        raise NotImplementedError

    @torch.no_grad()
    def act(self, observations: Tensor) -> Tensor:
        """Deterministic action in [-1, 1]: observations [S, B, O] normalised -> [S, B, A]."""
        raise NotImplementedError

    def policy_for_export(self, seed_index: int) -> nn.Module:
        """A plain module mapping normalised observations [B, O] -> actions in [-1, 1] [B, A]
        for one seed, deterministic (stochastic policies: the mean; BCQ: decoder + perturbation
        + argmax-Q over candidates). Export wraps it with the normaliser and action scaling."""
        raise NotImplementedError

    def optimizer_state_dict(self) -> dict[str, Any]:
        """State of every optimiser (and any non-parameter learning state), for checkpoints."""
        raise NotImplementedError

    def load_optimizer_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


REGISTRY: dict[str, type[Algorithm]] = {}


def register(cls: type[Algorithm]) -> type[Algorithm]:
    """Class decorator: make an algorithm available by `cls.name`."""
    REGISTRY[cls.name] = cls
    return cls
