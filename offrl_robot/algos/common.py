"""Plumbing shared by the five algorithms: optimiser construction, per-seed loss reduction,
checkpointable learning state.

Per-seed reduction is what keeps vectorised seeds independent: every loss is first reduced to
one value per seed ([S]) and the optimised objective is the SUM over seeds, so the gradient a
seed's weights receive is exactly the gradient of its own single-seed loss.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from offrl_robot.algos.base import AlgoConfig, Algorithm


def make_adam(param_groups: list[dict[str, Any]]) -> torch.optim.Adam:
    """Adam with the fused kernel (one kernel for all tensors: ~4x faster than foreach on this
    CPU, and on CUDA it is capturable in a CUDA graph). Param groups carry their own lr."""
    return torch.optim.Adam(param_groups, fused=True)


def cosine_decay(horizon: int) -> Callable[[int], float]:
    """CORL's cosine learning-rate decay to 0 over `horizon` updates (then held at 0).

    Why: with a decaying rate the last updates average out label noise instead of chasing it,
    which is what a policy that must stop within 2 cm of a goal needs."""

    def factor(step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(step, horizon) / horizon))

    return factor


class CosineLR:
    """`cosine_decay` of some param groups' learning rates, held as tensors so that a captured
    CUDA graph (`accelerate: graph|compile`) follows it.

    Why tensors: a Python-float learning rate is baked into a CUDA graph at capture (and into
    a compiled update as a guard), so the decay would stop at its first value. Here each
    scheduled group's `lr` is a 1-element tensor on the optimiser's device (fused Adam accepts
    one), and after every optimiser step the schedule advances its own update counter
    (`position`, an int64 device tensor) and copies row `min(position, horizon)` of a
    precomputed table of every rate of the run into those tensors, in place: device work only,
    captured and replayed like the rest of the step.

    The table holds base_lr * cosine_decay(horizon)(k), computed in Python float64 exactly as
    LambdaLR computed each step's rate. Its dtype follows what the fused kernel reads: float64
    on the CPU (the fused CPU Adam reads `lr.item<double>()`, so a CPU run gets the float
    schedule's numbers bit for bit), float32 on CUDA (the fused CUDA kernel reads the tensor as
    float; a float64 lr raises "expected scalar type Float"). The tensors move to the device of
    the parameters on first use (`bind`), since algorithms are built on the CPU and moved after.

    Checkpoint state: the update counter (`last_epoch`, LambdaLR's name, so checkpoints written
    with LambdaLR resume) and the horizon; on load the rates are recomputed from the counter
    and THIS run's horizon (`--resume --steps N` stretches the decay from the next update on).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, groups: Sequence[int], horizon: int) -> None:
        self.optimizer = optimizer
        self.groups = list(groups)
        self.horizon = int(horizon)
        self.base_lrs = [float(optimizer.param_groups[i]["lr"]) for i in self.groups]
        factor = cosine_decay(self.horizon)
        self._table64 = torch.tensor(
            [[base * factor(k) for k in range(self.horizon + 1)] for base in self.base_lrs],
            dtype=torch.float64,
        )
        self.device: torch.device | None = None
        self.position = torch.zeros(1, dtype=torch.int64)
        self.bind()

    def bind(self) -> None:
        """Hold the state on the parameters' device and make each scheduled group's `lr` this
        schedule's tensor (again after `optimizer.load_state_dict`, which replaces it)."""
        device = self.optimizer.param_groups[self.groups[0]]["params"][0].device
        if device != self.device:
            dtype = torch.float32 if device.type == "cuda" else torch.float64
            self.table = self._table64.to(device, dtype)
            self.position = self.position.to(device)
            self.lrs = self.table.index_select(1, self.position.clamp(max=self.horizon))  # [G, 1]
            self._views = [self.lrs[k, 0] for k in range(len(self.groups))]
            self.device = device
        for view, index in zip(self._views, self.groups, strict=True):
            group = self.optimizer.param_groups[index]
            if group["lr"] is not view:
                group["lr"] = view

    def step(self) -> None:
        """After an optimiser step: count it and load the rates of the next one (device ops only)."""
        self.position.add_(1)
        self.lrs.copy_(self.table.index_select(1, self.position.clamp(max=self.horizon)))

    def state_tensors(self) -> list[Tensor]:
        """What a step changes (for the CUDA-graph warm-up's snapshot/restore, `offrl_robot.accel`)."""
        self.bind()
        return [self.position, self.lrs]

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": int(self.position.item()), "horizon": self.horizon, "base_lrs": self.base_lrs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bind()
        self.position.fill_(int(state["last_epoch"]))
        self.lrs.copy_(self.table.index_select(1, self.position.clamp(max=self.horizon)))


def _match_capturable_to_device(optimizer: torch.optim.Optimizer) -> None:
    """Algorithms build their optimisers on the CPU and the Trainer moves them afterwards; on
    CUDA the step must be `capturable` (state on the device, no host sync) so a whole update can
    be captured in a CUDA graph. A dict write per group per step: negligible."""
    for group in optimizer.param_groups:
        group["capturable"] = group["params"][0].is_cuda


# Optimisers whose gradients may come from a compiled backward (`accel.compile_update`).
_RELAYOUT_GRADS: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()


def match_grad_layout(optimizer: torch.optim.Optimizer) -> None:
    """Mark `optimizer` so that each step first gives every gradient its parameter's strides.

    Why: the fused Adam kernel needs params, grads and moments of one layout; eager autograd
    guarantees it, a compiled backward (compiled autograd in particular) may not. Only compiled
    updates pay for the check (a stride comparison per tensor; on CUDA it runs at capture only)."""
    _RELAYOUT_GRADS.add(optimizer)


def _relayout_grads(optimizer: torch.optim.Optimizer) -> None:
    for group in optimizer.param_groups:
        for p in group["params"]:
            grad = p.grad
            if grad is not None and grad.stride() != p.stride():
                p.grad = torch.empty_strided(p.shape, p.stride(), dtype=grad.dtype, device=grad.device).copy_(grad)


@torch._dynamo.disable
def _optimizer_step(optimizer: torch.optim.Optimizer, schedules: Sequence[CosineLR] = ()) -> None:
    """optimizer.step() and the advance of its learning-rate schedules, never traced by
    torch.compile (`accelerate: compile`).

    Why: traced, dynamo rebuilds the fused Adam kernel as Inductor code once per param group
    (several compiles, each with its own guards); the native fused kernel is already one kernel
    for all tensors, so tracing it only adds compiles at start and guard checks per call. Speed
    is the same either way (H100, 8 CQL seeds, compile + bf16: 5,453 traced vs 5,464
    seed-updates/s). Left out of the trace, the step runs the native kernel, which a CUDA graph
    captures like any other. The schedules' tensors (`CosineLR`) are updated in place here too,
    so a compiled update sees no Python value change from step to step."""
    for schedule in schedules:
        schedule.bind()
    _match_capturable_to_device(optimizer)
    if optimizer in _RELAYOUT_GRADS:
        _relayout_grads(optimizer)
    optimizer.step()
    for schedule in schedules:
        schedule.step()


def seed_mean(values: Tensor, weights: Tensor | None = None) -> Tensor:
    """[S, B] -> [S]: mean over the batch, importance-weighted when PER weights are given."""
    if weights is not None:
        values = values * weights
    return values.mean(dim=-1)


class EnsembleAlgorithm(Algorithm):
    """Base of the concrete algorithms: keeps optimisers, LR schedulers and the update counter
    in one place so checkpoints capture all non-parameter learning state.

    `num_updates` is a plain Python int (not a tensor) on purpose: periodic work such as TD3's
    delayed actor step branches on it without a host sync and without a data-dependent branch.
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        num_seeds: int,
        config: AlgoConfig,
        seeds: Sequence[int] | None = None,
    ) -> None:
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}"
            )
        super().__init__(observation_dim, action_dim, num_seeds, config, seeds)
        self.num_updates = 0
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        # Learning-rate schedules, keyed by the name of the optimiser they drive.
        self.schedulers: dict[str, CosineLR] = {}

    def optimizer_state_dict(self) -> dict[str, Any]:
        optimizers = {}
        for name, opt in self.optimizers.items():
            state = opt.state_dict()
            for group in state["param_groups"]:  # a scheduled lr is a device tensor: save its value
                if torch.is_tensor(group["lr"]):
                    group["lr"] = float(group["lr"])
            optimizers[name] = state
        return {
            "optimizers": optimizers,
            "schedulers": {name: sched.state_dict() for name, sched in self.schedulers.items()},
            "num_updates": self.num_updates,
        }

    def load_optimizer_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["optimizers"]) != set(self.optimizers):
            raise ValueError(
                f"optimiser state holds {sorted(state['optimizers'])}, {self.name} needs {sorted(self.optimizers)}"
            )
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, sched in self.schedulers.items():
            saved = state["schedulers"].get(name)
            if saved is None:
                raise ValueError(
                    f"optimiser state holds no learning-rate schedule for {name!r}, {self.name} has one"
                )
            # The schedule spans this run's steps, which `--resume --steps N` may have changed:
            # the next update already follows it. Same steps -> the saved value, bit for bit.
            sched.load_state_dict(saved)
        self.num_updates = int(state["num_updates"])

    def _step(self, optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
        """zero_grad (to None: no memset) -> backward -> step, and advance any schedule of it."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        schedules = [sched for sched in self.schedulers.values() if sched.optimizer is optimizer]
        _optimizer_step(optimizer, schedules)


def export_eval(module: nn.Module) -> nn.Module:
    """Export modules are inference-only copies: eval mode, no grads."""
    module.requires_grad_(False)
    return module.eval()
