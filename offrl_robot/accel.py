"""Run `Algorithm.update` fast on CUDA: one training step (sample -> gather -> update) as a
replayed CUDA graph.

Why: with 256x256 nets and batch 256 an update is ~100-300 small kernels of a few microseconds
each. Launched eagerly from Python the GPU idles between them and an H100 does no better than a
laptop. Captured once in a CUDA graph, the whole step is ONE launch: the kernels run back to
back and the Python interpreter is out of the loop. This is possible because the algorithms
keep the hot-loop rules of `offrl_robot.algos.base` (no `.item()`, no data-dependent branch, no
data-dependent allocation) and the uniform sampler draws its indices on the device.

Modes (`accelerate:` in a train config, `--accel` in benchmarks):
  none     eager, on any device; the reference semantics.
  graph    CUDA graph of sample + gather + update (falls back to eager on the CPU).
  compile  on CUDA the same capture, with `update` first passed through `torch.compile` (kernel
           fusion on top of the graph); on the CPU `update` compiled by Inductor and called
           eagerly (C++/OpenMP kernels that fuse the element-wise work around the matmuls:
           bias, ReLU and its backward, the losses; CQL 1.0-1.5x eager on a 2-core CPU, run to run).
           Costs a compile at start (5-30 s on a 2-core CPU). A compiled CPU run is
           deterministic (same seed, same numbers, resume included) but not bit-equal to eager:
           fused kernels round differently.

How the capture stays exact:
  * Capturing executes nothing, but building a graph needs warm-up steps that DO run (they create
    Adam's state and cuBLAS workspaces). The warm-up therefore starts from a snapshot of every
    learning state (weights, optimiser moments, update counter, RNG streams) that is restored
    afterwards, so the graph's first replay is the run's first real update.
  * Algorithms whose update branches on the Python counter `num_updates` (TD3+BC's delayed actor
    step, period `config.policy_freq`) get one graph per phase of the period; replays alternate.
  * Prioritised replay samples on the host: then only gather + update are captured, fed through
    static index/weight buffers that each step refreshes with one copy.
  * Graph outputs (metrics, td_error) are static buffers overwritten by the next replay: the
    Trainer consumes them before the next step, as it already must with the sampler's indices.

  * Learning-rate schedules are device tensors (`offrl_robot.algos.common.CosineLR`): the rate
    and its update counter are updated in place by the step itself, so a replayed graph follows
    the decay (a Python-float rate would be frozen into the capture). They are part of the
    snapshot the warm-up is undone from.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from offrl_robot.algos.base import Algorithm, Batch, UpdateOutput
from offrl_robot.algos.common import match_grad_layout
from offrl_robot.errors import ConfigError
from offrl_robot.replay import PrioritizedSampler, UniformSampler

ACCEL_MODES = ("none", "graph", "compile")
# Matmul precision of the update on CUDA. fp32: exact fp32 (the reference). tf32: fp32 tensors,
# TensorFloat-32 tensor-core matmuls (10-bit mantissa inputs, fp32 accumulation). bf16: autocast
# hidden layers to bfloat16 (matmuls AND their activations: half the memory traffic of the
# element-wise ops that dominate big-batch critics); every network's output layer stays fp32
# (`nets.EnsembleMLP`), so Q-values, log-probs and losses keep fp32 precision; weights and Adam
# state stay fp32. Only CUDA: a CPU has no fast path for either, and CPU runs stay exact.
PRECISIONS = ("fp32", "tf32", "bf16")
DATA_KEYS = ("observations", "actions", "rewards", "next_observations", "terminals")

# Eager warm-up steps per phase before capture: the first creates optimiser state, the others
# let cuBLAS/cuDNN settle their workspaces (PyTorch's own advice is "a few").
WARMUP_STEPS_PER_PHASE = 2


def gather_batch(data: Mapping[str, Tensor], indices: Tensor, weights: Tensor | None) -> Batch:
    """Rows `indices` [S, B] of the device-resident dataset as a Batch of [S, B, ...] tensors."""
    return Batch(
        data["observations"][indices],
        data["actions"][indices],
        data["rewards"][indices],
        data["next_observations"][indices],
        data["terminals"][indices],
        weights,
    )


@contextlib.contextmanager
def matmul_precision(precision: str, device: torch.device) -> Iterator[None]:
    """Run the enclosed update at `precision` (see PRECISIONS); a no-op off CUDA.

    A captured CUDA graph bakes in the math mode that was active at capture, so wrapping the
    capture is enough; eager steps wrap every call. fp32 means exact fp32 even where the process
    turned TF32 on (importing d3rlpy sets `torch.set_float32_matmul_precision("high")` for the
    whole process); bf16's fp32 output layers likewise."""
    if precision not in PRECISIONS:
        raise ConfigError(f"config field 'precision' is {precision!r}; use one of {', '.join(PRECISIONS)}")
    if device.type != "cuda":
        yield
        return
    wanted = "high" if precision == "tf32" else "highest"  # "high" = TF32 tensor cores for fp32 matmuls
    previous = torch.get_float32_matmul_precision()
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    )
    if previous != wanted:
        torch.set_float32_matmul_precision(wanted)
    try:
        with autocast:
            yield
    finally:
        if previous != wanted:
            torch.set_float32_matmul_precision(previous)


def update_period(algo: Algorithm) -> int:
    """How many consecutive updates make one repeating program (TD3+BC: policy_freq, else 1)."""
    return max(1, int(getattr(algo.config, "policy_freq", 1)))


class EagerStep:
    """One training step as plain PyTorch: what every mode must reproduce."""

    mode = "none"

    def __init__(
        self, algo: Algorithm, sampler: Any, data: Mapping[str, Tensor], precision: str = "fp32"
    ) -> None:
        self.algo, self.sampler, self.data = algo, sampler, data
        self.precision = precision
        self._update: Callable[[Batch], UpdateOutput] = algo.update
        self._device = data["observations"].device
        # fp32 at the process's exact fp32 (and any CPU run) needs no context: keep the
        # per-update hot path free of it.
        self._plain = self._device.type != "cuda" or (
            precision == "fp32" and torch.get_float32_matmul_precision() == "highest"
        )
        if not self._plain:
            with matmul_precision(precision, self._device):  # an unknown precision fails here
                pass

    def __call__(self, step: int) -> tuple[Tensor, UpdateOutput]:
        """Run update number `step` (1-based); return the sampled indices and the update's output."""
        indices, weights = self.sampler.sample(step)
        if self._plain:
            return indices, self._update(gather_batch(self.data, indices, weights))
        with matmul_precision(self.precision, self._device):
            return indices, self._update(gather_batch(self.data, indices, weights))


def compile_update(algo: Algorithm) -> Callable[[Batch], UpdateOutput]:
    """`algo.update` through torch.compile. The update counter is a Python int on the module:
    dynamo treats it as a symbolic int instead of recompiling for each of its values (periodic
    branches such as TD3+BC's delayed actor step still get one compiled variant per phase).

    Compiled autograd stays off for our update whatever the process set: importing d3rlpy turns
    `torch._dynamo.config.compiled_autograd` on for the whole process, and a backward traced by
    compiled autograd hands the fused Adam kernel gradients whose strides differ from their
    parameters' ("params, grads, exp_avgs, and exp_avg_sqs must have same dtype, device, and
    layout"). The optimisers of a compiled update also re-lay such gradients out before the step
    (`common.match_grad_layout`), as a second guard."""
    torch._dynamo.config.allow_unspec_int_on_nn_module = True
    # backward() and the optimiser step break the graph, and the frames around them get a
    # compiled variant per phase and per guard: in these tests one frame passed the default
    # limit of 8, past which dynamo silently runs it eager for the rest of the run.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for optimizer in getattr(algo, "optimizers", {}).values():
        match_grad_layout(optimizer)
    with torch._dynamo.config.patch(compiled_autograd=False):
        compiled = torch.compile(algo.update)

    def update(batch: Batch) -> UpdateOutput:
        with torch._dynamo.config.patch(compiled_autograd=False):
            return compiled(batch)

    return update


def _fallback_warning(device: torch.device, err: BaseException) -> None:
    """The one warning of a compile that could not be used (first line of the cause)."""
    cause = (str(err).strip().splitlines() or [""])[0][:300]
    warnings.warn(
        f"accelerate: compile failed on {device.type} ({type(err).__name__}: {cause}); "
        f"training continues with accelerate: {'graph' if device.type == 'cuda' else 'none'}",
        RuntimeWarning,
        stacklevel=3,
    )


class CompiledCPUStep(EagerStep):
    """`compile` on the CPU: the eager step with `update` compiled by Inductor (see the module
    docstring); sampling and gathering stay eager (they are index ops, nothing to fuse).

    The compile happens in the first call (of each phase of the update period). If it fails (a missing C++ compiler, an Inductor
    bug), the learning state that call touched is restored, one warning names the cause, and
    the run continues eagerly (`mode` then says "none")."""

    mode = "compile"

    def __init__(self, algo: Algorithm, sampler: Any, data: Mapping[str, Tensor]) -> None:
        super().__init__(algo, sampler, data)  # fp32: the CPU has no other precision
        self._update = compile_update(algo)
        # each phase of the update period compiles in its own first call
        self._guarded_calls = update_period(algo)

    def __call__(self, step: int) -> tuple[Tensor, UpdateOutput]:
        if self._guarded_calls <= 0:
            return super().__call__(step)
        self._guarded_calls -= 1
        snapshot = LearningState(self.algo, list(getattr(self.sampler, "generators", [])))
        try:
            return super().__call__(step)
        except Exception as err:  # any compiler failure falls back, named once
            snapshot.restore()
            _fallback_warning(self._device, err)
            self._update, self.mode, self._guarded_calls = self.algo.update, "none", 0
            return super().__call__(step)


class LearningState:
    """A snapshot of everything a warm-up step changes, restorable IN PLACE (graphs keep pointers)."""

    def __init__(self, algo: Algorithm, generators: list[torch.Generator]) -> None:
        self.algo = algo
        self.generators = generators
        self.tensors = {name: t.detach().clone() for name, t in algo.state_dict(keep_vars=True).items()}
        self.optim_state: dict[int, dict[str, Any]] = {}
        for opt in getattr(algo, "optimizers", {}).values():
            for group in opt.param_groups:
                for p in group["params"]:
                    state = opt.state.get(p)
                    if state:
                        self.optim_state[id(p)] = {
                            k: v.detach().clone() if torch.is_tensor(v) else v for k, v in state.items()
                        }
        self.num_updates = getattr(algo, "num_updates", 0)
        self.rng = [g.get_state() for g in generators]
        # LR schedules: their counter and current rates (on the device from here on: `bind`).
        self.schedules = list(getattr(algo, "schedulers", {}).values())
        self.schedule_state = [[t.detach().clone() for t in s.state_tensors()] for s in self.schedules]

    @torch.no_grad()
    def restore(self) -> None:
        for name, t in self.algo.state_dict(keep_vars=True).items():
            t.detach().copy_(self.tensors[name])
        for opt in getattr(self.algo, "optimizers", {}).values():
            for group in opt.param_groups:
                for p in group["params"]:
                    state = opt.state.get(p)
                    if not state:
                        continue
                    saved = self.optim_state.get(id(p))
                    for k, v in state.items():
                        if not torch.is_tensor(v):
                            continue
                        # A fresh Adam state is all zeros (step 0, zero moments): zeroing the
                        # warm-up's state reproduces an optimiser that has never stepped.
                        if saved is None:
                            v.zero_()
                        else:
                            v.copy_(saved[k])
        for schedule, saved in zip(self.schedules, self.schedule_state, strict=True):
            for tensor, value in zip(schedule.state_tensors(), saved, strict=True):
                tensor.copy_(value)
        if hasattr(self.algo, "num_updates"):
            self.algo.num_updates = self.num_updates
        for g, state in zip(self.generators, self.rng, strict=True):
            g.set_state(state)


class GraphStep:
    """sample + gather + update replayed from CUDA graphs, one graph per phase of the update period."""

    def __init__(
        self,
        algo: Algorithm,
        sampler: Any,
        data: Mapping[str, Tensor],
        *,
        compiled: bool = False,
        precision: str = "fp32",
    ) -> None:
        device = data["observations"].device
        self.precision = precision
        if device.type != "cuda":
            raise ValueError("GraphStep needs the data on a CUDA device")
        self.algo, self.sampler, self.data = algo, sampler, data
        self.mode = "compile" if compiled else "graph"
        self.period = update_period(algo)
        self.device_sampling = isinstance(sampler, UniformSampler)
        self._update = compile_update(algo) if compiled else algo.update
        s, b = len(sampler.seeds), sampler.batch_size
        self._static_indices = torch.zeros((s, b), dtype=torch.int64, device=device)
        self._static_weights = (
            torch.ones((s, b), dtype=torch.float32, device=device)
            if isinstance(sampler, PrioritizedSampler)
            else None
        )
        generators = [torch.cuda.default_generators[device.index or 0]]
        if self.device_sampling:
            generators += list(sampler.generators)
        self._generators = generators
        self.graphs: list[torch.cuda.CUDAGraph] = []
        self.outputs: list[tuple[Tensor, UpdateOutput]] = []
        self._capture()

    def _body(self) -> tuple[Tensor, UpdateOutput]:
        """What one graph holds. Device sampling writes the sampler's own static index buffer."""
        if self.device_sampling:
            indices, weights = self.sampler.sample(0)
        else:
            indices, weights = self._static_indices, self._static_weights
        return indices, self._update(gather_batch(self.data, indices, weights))

    def _capture(self) -> None:
        with matmul_precision(self.precision, self.data["observations"].device):
            self._capture_at_precision()

    def _capture_at_precision(self) -> None:
        snapshot = LearningState(self.algo, self._generators)
        try:
            self._warm_up_and_capture(snapshot)
        except BaseException:
            torch.cuda.synchronize()
            snapshot.restore()  # a failed compile/capture leaves no trace in the learning state
            raise

    def _warm_up_and_capture(self, snapshot: LearningState) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS_PER_PHASE * self.period):
                self._body()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        snapshot.restore()
        pool = None
        for phase in range(self.period):
            self.algo.num_updates = snapshot.num_updates + phase  # type: ignore[attr-defined]
            graph = torch.cuda.CUDAGraph()
            if self.device_sampling:
                for g in self._generators[1:]:
                    graph.register_generator_state(g)
            with torch.cuda.graph(graph, pool=pool):
                self.outputs.append(self._body())
            pool = graph.pool()
            self.graphs.append(graph)
        torch.cuda.synchronize()
        snapshot.restore()
        self._base_update = snapshot.num_updates

    def __call__(self, step: int) -> tuple[Tensor, UpdateOutput]:
        """Replay the graph of this update's phase; outputs are static buffers (consume them now)."""
        if not self.device_sampling:
            indices, weights = self.sampler.sample(step)
            self._static_indices.copy_(indices, non_blocking=True)
            if weights is not None and self._static_weights is not None:
                self._static_weights.copy_(weights, non_blocking=True)
        phase = (self.algo.num_updates - self._base_update) % self.period  # type: ignore[attr-defined]
        self.graphs[phase].replay()
        self.algo.num_updates += 1  # type: ignore[attr-defined]
        if not self.device_sampling:
            return self._static_indices, self.outputs[phase][1]
        return self.outputs[phase]


def make_update_step(
    algo: Algorithm, sampler: Any, data: Mapping[str, Tensor], mode: str = "none", precision: str = "fp32"
) -> EagerStep | GraphStep:
    """The step function the Trainer and the benchmarks loop over.

    On a CPU device `graph` falls back to eager (a CPU has no launch overhead to hide) and
    `compile` compiles the update without a graph (`CompiledCPUStep`). Where torch cannot
    compile the update (an Inductor or Triton failure), `compile` falls back to `graph` on CUDA
    and to eager on the CPU with one RuntimeWarning naming the cause, never a crash; the step's
    `mode` says what runs."""
    if mode not in ACCEL_MODES:
        raise ConfigError(f"config field 'accelerate' is {mode!r}; use one of {', '.join(ACCEL_MODES)}")
    on_cuda = data["observations"].device.type == "cuda"
    if mode == "compile" and not on_cuda:
        return CompiledCPUStep(algo, sampler, data)
    if mode == "none" or not on_cuda:
        return EagerStep(algo, sampler, data, precision)
    if mode == "compile":
        try:
            return GraphStep(algo, sampler, data, compiled=True, precision=precision)
        except Exception as err:  # torch cannot compile this update here: say so, go on
            torch._dynamo.reset()
            _fallback_warning(data["observations"].device, err)
    return GraphStep(algo, sampler, data, compiled=False, precision=precision)
