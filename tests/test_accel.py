"""offrl_robot.accel on the CPU: the fallback, the mode check, and the exactness machinery the
CUDA capture relies on (snapshot -> warm-up -> restore must leave no trace). The CUDA graph path
itself is checked on a GPU machine by benchmarks/accel_check.py (bit-equal to eager there)."""

from __future__ import annotations

import math

import pytest
import torch

from offrl_robot.accel import (
    EagerStep,
    LearningState,
    gather_batch,
    make_update_step,
    update_period,
)
from offrl_robot.algos import REGISTRY
from offrl_robot.errors import ConfigError
from offrl_robot.replay import UniformSampler

OBS, ACT, N = 5, 2, 400


def _data() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "observations": torch.randn(N, OBS, generator=gen),
        "actions": torch.rand(N, ACT, generator=gen) * 2 - 1,
        "rewards": torch.randn(N, generator=gen),
        "next_observations": torch.randn(N, OBS, generator=gen),
        "terminals": (torch.rand(N, generator=gen) < 0.05).float(),
    }


def _algo(name: str, seeds: int = 2, **extra) -> torch.nn.Module:
    cls = REGISTRY[name]
    if name == "bcq":
        extra.setdefault("vae_hidden_sizes", (16, 16))
    if name == "iql":  # its default cosine actor-lr decay: over 6 updates, so it moves in these tests
        extra.setdefault("actor_lr_schedule_steps", 6)
    return cls(OBS, ACT, seeds, cls.config_class(batch_size=8, hidden_sizes=(16, 16), **extra))


def _train(step_fn, steps: int) -> None:
    for step in range(1, steps + 1):
        step_fn(step)


def _weights(algo: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in algo.state_dict().items()}


def test_unknown_mode_is_a_config_error() -> None:
    algo = _algo("bc")
    with pytest.raises(ConfigError, match="accelerate"):
        make_update_step(algo, UniformSampler(N, 8, [0, 1]), _data(), "fast")


@pytest.mark.parametrize("mode", ["none", "graph"])
def test_cpu_falls_back_to_eager_and_matches_plain_updates(mode: str) -> None:
    torch.manual_seed(0)
    algo = _algo("td3bc")
    step_fn = make_update_step(algo, UniformSampler(N, 8, [0, 1]), _data(), mode)
    assert isinstance(step_fn, EagerStep)
    _train(step_fn, 4)

    torch.manual_seed(0)
    reference = _algo("td3bc")
    sampler, data = UniformSampler(N, 8, [0, 1]), _data()
    for step in range(1, 5):
        indices, weights = sampler.sample(step)
        reference.update(gather_batch(data, indices, weights))
    got, want = _weights(algo), _weights(reference)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert algo.num_updates == 4


def test_cpu_compile_is_deterministic_and_close_to_eager() -> None:
    """`compile` on a CPU runs the Inductor-compiled update: two runs from the same seed agree
    bit for bit, and they track eager within float rounding (fused kernels round differently).
    TD3+BC's delayed actor step checks that both phases of its period are compiled."""
    runs = []
    for mode in ("compile", "compile", "none"):
        torch.manual_seed(0)
        algo = _algo("td3bc")
        step_fn = make_update_step(algo, UniformSampler(N, 8, [0, 1]), _data(), mode)
        assert step_fn.mode == mode
        _train(step_fn, 6)
        runs.append(_weights(algo))
    first, second, eager = runs
    assert all(torch.equal(first[k], second[k]) for k in first)
    # Adam divides by sqrt(v): a weight whose gradient is ~0 moves by up to lr per step either
    # way, so rounding differences can reach 6 steps x lr 3e-4; a real error would be far larger.
    assert all(torch.allclose(first[k], eager[k], atol=2e-3) for k in first)


@pytest.mark.parametrize("name", ["iql", "bc"])
def test_cpu_compile_follows_the_lr_schedule(name: str) -> None:
    """The schedule is a tensor updated by the step itself, so a compiled update follows it
    (it was refused before): after k updates the actor's rate is the cosine's value at k, the
    weights track eager's, and two compiled runs agree bit for bit."""
    extra = {"lr_schedule_steps": 6} if name == "bc" else {}
    runs, rates = [], []
    for mode in ("compile", "compile", "none"):
        torch.manual_seed(0)
        algo = _algo(name, **extra)
        step_fn = make_update_step(algo, UniformSampler(N, 8, [0, 1]), _data(), mode)
        assert step_fn.mode == mode
        seen = []
        for step in range(1, 7):
            step_fn(step)
            seen.append(float(next(iter(algo.optimizers.values())).param_groups[0]["lr"]))
        runs.append(_weights(algo))
        rates.append(seen)
    base = 3e-4 if name == "iql" else algo.config.learning_rate
    expected = [base * 0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(1, 7)]
    assert rates[0] == rates[1] == rates[2] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert rates[0][-1] == 0.0
    first, second, eager = runs
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert all(torch.allclose(first[k], eager[k], atol=2e-3) for k in first)


def test_update_period_follows_td3bc_policy_freq() -> None:
    assert update_period(_algo("td3bc")) == 2
    assert update_period(_algo("cql")) == 1


@pytest.mark.parametrize("name", ["bc", "iql", "td3bc", "cql", "bcq"])
def test_warmup_then_restore_leaves_no_trace(name: str) -> None:
    """What GraphStep does around capture: snapshot, run real warm-up steps, restore in place.
    Training afterwards must equal training an untouched model, bit for bit."""
    data = _data()
    torch.manual_seed(1)
    algo = _algo(name)
    sampler = UniformSampler(N, 8, [0, 1])
    snapshot = LearningState(algo, [torch.default_generator, *sampler.generators])
    _train(EagerStep(algo, sampler, data), 3)  # warm-up: weights, Adam moments, RNG all move
    snapshot.restore()
    _train(EagerStep(algo, sampler, data), 5)

    torch.manual_seed(1)
    fresh = _algo(name)
    _train(EagerStep(fresh, UniformSampler(N, 8, [0, 1]), data), 5)
    got, want = _weights(algo), _weights(fresh)
    assert all(torch.equal(got[k], want[k]) for k in want), name
    assert algo.num_updates == fresh.num_updates == 5


# ------------------------------------------------------------------------------ Trainer wiring
def _synthetic_dataset(n: int = 300):
    import numpy as np

    from offrl_robot.data.dataset import Dataset, DatasetMetadata

    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, OBS)).astype(np.float32)
    starts = np.zeros(n, bool)
    starts[::50] = True
    meta = DatasetMetadata(
        [f"o{i}" for i in range(OBS)], [f"a{i}" for i in range(ACT)], [-2.0] * ACT, [2.0] * ACT, 50.0
    )
    return Dataset(
        obs,
        rng.uniform(-2, 2, (n, ACT)),
        rng.normal(size=n),
        obs + 0.01,
        np.zeros(n),
        np.zeros(n),
        starts,
        meta,
    )


def _train_config(**overrides):
    from offrl_robot.train import TrainConfig

    values = dict(
        algo="td3bc",
        algo_config={"hidden_sizes": [16, 16]},
        steps=6,
        seeds=[0, 1],
        batch_size=8,
        eval_every=0,
        log_every=3,
        checkpoint_every=0,
        progress=False,
        threads=1,
    )
    return TrainConfig(**(values | overrides))


def test_train_config_rejects_an_unknown_accelerate_mode() -> None:
    with pytest.raises(ConfigError, match="accelerate"):
        _train_config(accelerate="turbo")


def test_trainer_on_cpu_with_graph_requested_trains_exactly_like_eager(tmp_path) -> None:
    """accelerate: graph on a CPU device falls back to eager: same weights, bit for bit, and
    the summary says which mode actually ran."""
    from offrl_robot.train import Trainer

    data = _synthetic_dataset()
    runs = {}
    for mode in ("none", "graph"):
        trainer = Trainer(_train_config(accelerate=mode), dataset=data, run_dir=tmp_path / mode)
        summary = trainer.fit()
        assert summary["accelerate"] == "none"
        runs[mode] = _weights(trainer.algo)
    assert all(torch.equal(runs["none"][k], runs["graph"][k]) for k in runs["none"])


def test_trainer_compile_on_cpu_resumes_bit_identically(tmp_path) -> None:
    """A compiled CPU run stopped at a checkpoint and resumed ends with the same weights as an
    uninterrupted compiled run (the resumed process compiles again: same kernels, same numbers)."""
    from offrl_robot.train import Trainer

    data = _synthetic_dataset()
    whole = Trainer(
        _train_config(accelerate="compile", steps=8, checkpoint_every=4),
        dataset=data,
        run_dir=tmp_path / "whole",
    )
    summary = whole.fit()
    assert summary["accelerate"] == "compile"
    first_half = Trainer(
        _train_config(accelerate="compile", steps=4, checkpoint_every=4),
        dataset=data,
        run_dir=tmp_path / "split",
    )
    first_half.fit()
    resumed = Trainer(
        _train_config(accelerate="compile", steps=8, checkpoint_every=4),
        dataset=data,
        run_dir=tmp_path / "split",
        resume=True,
    )
    resumed.fit()
    want, got = _weights(whole.algo), _weights(resumed.algo)
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_precision_other_than_fp32_is_refused_on_the_cpu() -> None:
    from offrl_robot.train import TrainConfig

    with pytest.raises(ConfigError, match=r"precision.*needs device: cuda"):
        TrainConfig(device="cpu", precision="bf16")
    with pytest.raises(ConfigError, match="'precision' is 'fp16'"):
        TrainConfig(device="cuda", precision="fp16")


def test_mixed_precision_keeps_every_output_layer_in_fp32() -> None:
    """Under bf16 autocast the hidden layers run in bfloat16 but the output layer does not:
    Q-values / means come out fp32 and within bf16 rounding of the fp32 forward pass."""
    from offrl_robot.nets import EnsembleMLP

    torch.manual_seed(0)
    net = EnsembleMLP([0, 1], 2, 14, [64, 64], 1, tag="q")
    x = torch.randn(4, 32, 14)
    exact = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = net(x)
        hidden = torch.relu(net.layers[0](x))
    assert hidden.dtype == torch.bfloat16  # autocast is really on for the hidden layers
    assert mixed.dtype == torch.float32
    assert not torch.equal(mixed, exact)
    torch.testing.assert_close(mixed, exact, atol=0.05, rtol=0.05)


def test_cpu_compile_with_compiled_autograd_switched_on_by_another_library() -> None:
    """Importing d3rlpy sets `torch._dynamo.config.compiled_autograd = True` for the whole
    process (issue 17: our compiled update then crashed in the fused Adam kernel on CUDA). Our
    compiled update keeps compiled autograd off for itself: it still runs compiled and tracks eager.
    On the CPU the kernel did not crash even before (the CUDA case is `benchmarks/accel_check.py
    --matrix --import-d3rlpy`); here this guards the CPU path against the same setting."""
    runs = []
    with torch._dynamo.config.patch(compiled_autograd=True):
        for mode in ("compile", "none"):
            torch.manual_seed(0)
            algo = _algo("td3bc")
            step_fn = make_update_step(algo, UniformSampler(N, 8, [0, 1]), _data(), mode)
            _train(step_fn, 4)
            assert step_fn.mode == mode
            runs.append(_weights(algo))
    compiled, eager = runs
    assert all(torch.isfinite(v).all() for v in compiled.values())
    assert all(torch.allclose(compiled[k], eager[k], atol=2e-3) for k in compiled)


def test_a_compile_that_fails_falls_back_to_eager_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where torch cannot compile the update, training goes on without it: one RuntimeWarning
    naming the cause, `mode` says what runs, and the failed attempt leaves no trace (the run
    equals an eager run bit for bit: same weights, same sampled batches)."""

    def broken_compile(function):  # what an Inductor failure looks like from the caller
        def call(*args, **kwargs):
            raise RuntimeError("PassManager::run failed\nlong compiler log")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    torch.manual_seed(0)
    algo = _algo("td3bc")
    step_fn = make_update_step(algo, UniformSampler(N, 8, [0, 1]), _data(), "compile")
    with pytest.warns(RuntimeWarning, match=r"compile failed on cpu \(RuntimeError: PassManager::run failed\)") as caught:
        _train(step_fn, 6)
    assert len([w for w in caught if "compile failed" in str(w.message)]) == 1
    assert step_fn.mode == "none"

    torch.manual_seed(0)
    reference = _algo("td3bc")
    _train(make_update_step(reference, UniformSampler(N, 8, [0, 1]), _data(), "none"), 6)
    got, want = _weights(algo), _weights(reference)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert algo.num_updates == reference.num_updates == 6
