"""Learning-rate schedules span the run's `steps` (issue 15 item 5).

Before: `lr_schedule_steps: 20000` with `--steps 60000` decayed to 0 at update 20k and trained
the last 40k updates at lr 0 without a word. Now `lr_schedule: cosine` always decays over the
run's steps (also when `--steps` or `--resume --steps` changes them), and an explicit length that
differs from steps is refused in one line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import offrl_robot.algos  # noqa: F401  (fills the registry)
from offrl_robot import cli
from offrl_robot.algos import REGISTRY
from offrl_robot.data.collect import collect
from offrl_robot.data.dataset import Dataset
from offrl_robot.errors import ConfigError
from offrl_robot.train import TrainConfig, Trainer, build_algo_config, list_checkpoints, load_checkpoint

LR = 1e-3


@pytest.fixture(scope="module")
def arm_data() -> Dataset:
    return collect("ArmReach-v0", "scripted-expert", episodes=2, seed=5, noise=0.1).dataset


def config(steps: int, algo: str = "bc", **algo_config: Any) -> TrainConfig:
    lr_key = "learning_rate" if algo == "bc" else "actor_lr"
    return TrainConfig(
        algo=algo,
        algo_config={"hidden_sizes": [16, 16], lr_key: LR, **algo_config},
        steps=steps,
        seeds=[0],
        batch_size=16,
        eval_every=0,
        eval_episodes=1,  # the final evaluation is not what is tested here
        log_every=10,
        checkpoint_every=10,
        keep_checkpoints=100,
        progress=False,
        threads=1,
    )


def lr_at_checkpoints(run_dir: Path, optimizer: str = "actor") -> dict[int, float]:
    """The learning rate the next update would use, as saved at every checkpoint (first group)."""
    out = {}
    for path in list_checkpoints(run_dir):
        state = load_checkpoint(path)
        out[state["step"]] = float(state["optimizer_state"]["optimizers"][optimizer]["param_groups"][0]["lr"])
    return out


def cosine(step: int, horizon: int) -> float:
    return LR * 0.5 * (1.0 + math.cos(math.pi * min(step, horizon) / horizon))


def test_cosine_decays_over_the_runs_steps_whatever_they_are(arm_data: Dataset, tmp_path: Path) -> None:
    for steps in (30, 60):  # `--steps` changes the run's length: the schedule follows it
        run = tmp_path / f"run{steps}"
        Trainer(config(steps, lr_schedule="cosine"), dataset=arm_data, run_dir=run).fit()
        lrs = lr_at_checkpoints(run)
        assert sorted(lrs) == list(range(10, steps + 1, 10))
        for step, lr in lrs.items():
            assert lr == pytest.approx(cosine(step, steps), abs=1e-12), (steps, step)
        assert lrs[steps] == pytest.approx(0.0, abs=1e-12)
        assert all(lr > 1e-6 for step, lr in lrs.items() if step < steps), lrs  # never 0 before the end


def test_iql_actor_schedule_follows_steps_and_leaves_critics_constant(
    arm_data: Dataset, tmp_path: Path
) -> None:
    Trainer(config(40, "iql", actor_lr_schedule="cosine"), dataset=arm_data, run_dir=tmp_path / "iql").fit()
    state = load_checkpoint(list_checkpoints(tmp_path / "iql")[-2])  # step 30
    groups = state["optimizer_state"]["optimizers"]["all"]["param_groups"]
    assert state["step"] == 30
    assert groups[0]["lr"] == pytest.approx(cosine(30, 40), abs=1e-12)
    assert [g["lr"] for g in groups[1:]] == [3e-4, 3e-4]  # critic, value: unscheduled


@pytest.mark.parametrize(
    ("algo", "key", "length", "steps", "effect"),
    [
        ("bc", "lr_schedule_steps", 20, 60, "the last 40 would run at lr 0"),
        ("bc", "lr_schedule_steps", 90, 60, "before the decay does"),
        ("iql", "actor_lr_schedule_steps", 20000, 60000, "the last 40000 would run at lr 0"),
    ],
)
def test_a_schedule_length_that_differs_from_steps_is_refused(
    algo: str, key: str, length: int, steps: int, effect: str
) -> None:
    with pytest.raises(ConfigError) as err:
        Trainer(config(steps, algo, **{key: length}), dataset=None)  # fails before any dataset loads
    message = str(err.value)
    assert "\n" not in message
    assert f"algo_config.{key} {length} differs from steps {steps}" in message and effect in message
    assert "cosine" in message  # names the fix


def test_cli_refuses_the_issue_example_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bc.yaml"
    shipped = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "config/train/arm_reach_bc.yaml").read_text()
    )
    shipped["algo_config"].pop("lr_schedule")
    shipped["algo_config"]["lr_schedule_steps"] = 20000
    path.write_text(yaml.safe_dump(shipped))
    out = tmp_path / "run"
    rc = cli.main(["train", "--config", str(path), "--steps", "60000", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "lr_schedule_steps 20000 differs from steps 60000" in err[0]
    assert not out.exists()


def test_an_explicit_length_equal_to_steps_is_the_same_run_as_cosine(
    arm_data: Dataset, tmp_path: Path
) -> None:
    """Older configs (`lr_schedule_steps: N` with `steps: N`) keep training exactly as before."""
    Trainer(config(20, lr_schedule="cosine"), dataset=arm_data, run_dir=tmp_path / "a").fit()
    Trainer(config(20, lr_schedule_steps=20), dataset=arm_data, run_dir=tmp_path / "b").fit()
    a = load_checkpoint(list_checkpoints(tmp_path / "a")[-1])
    b = load_checkpoint(list_checkpoints(tmp_path / "b")[-1])
    for name, tensor in a["algo_state"].items():
        assert torch.equal(tensor, b["algo_state"][name]), name
    assert a["algo_config"]["lr_schedule_steps"] == b["algo_config"]["lr_schedule_steps"] == 20


def test_bad_schedule_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"algo_config.lr_schedule 'linear': choose one of none, cosine"):
        build_algo_config(REGISTRY["bc"], {"lr_schedule": "linear"}, 16, 100)
    with pytest.raises(ConfigError, match=r"algo_config.lr_schedule_steps 0: must be a positive integer"):
        build_algo_config(REGISTRY["bc"], {"lr_schedule_steps": 0}, 16, 100)
    cfg = build_algo_config(REGISTRY["bc"], {"lr_schedule": "cosine"}, 16)  # no run length known
    with pytest.raises(ConfigError, match="cosine decays over the run's steps"):
        REGISTRY["bc"](4, 2, 1, cfg)


class Crash(Exception):
    pass


def _crash_at(step: int):  # type: ignore[no-untyped-def]
    def hook(at: int, path: Path, evaluation: object) -> None:
        if at == step:
            raise Crash

    return hook


def test_resume_with_a_schedule_is_bit_identical_and_extending_stretches_it(
    arm_data: Dataset, tmp_path: Path
) -> None:
    whole = tmp_path / "whole"
    Trainer(config(40, lr_schedule="cosine"), dataset=arm_data, run_dir=whole).fit()
    broken = tmp_path / "broken"
    with pytest.raises(Crash):
        Trainer(
            config(40, lr_schedule="cosine"), dataset=arm_data, run_dir=broken, on_checkpoint=_crash_at(20)
        ).fit()
    Trainer(config(40, lr_schedule="cosine"), dataset=arm_data, run_dir=broken, resume=True).fit()
    a, b = (load_checkpoint(list_checkpoints(run)[-1]) for run in (whole, broken))
    for name, tensor in a["algo_state"].items():
        assert torch.equal(tensor, b["algo_state"][name]), name
    assert lr_at_checkpoints(whole) == lr_at_checkpoints(broken)

    # A finished 20-step run (lr decayed to 0) extended with `--resume --steps 40`: the decay
    # now spans 40 steps from the very next update, instead of 20 more updates at lr 0.
    short = tmp_path / "short"
    Trainer(config(20, lr_schedule="cosine"), dataset=arm_data, run_dir=short).fit()
    assert lr_at_checkpoints(short)[20] == pytest.approx(0.0, abs=1e-12)
    saved = load_checkpoint(list_checkpoints(short)[-1])
    before = saved["algo_state"]
    # Restoring the step-20 optimiser state into the 40-step schedule: update 21 already uses it.
    params = {k: v for k, v in saved["algo_config"].items() if k not in ("batch_size", "lr_schedule_steps")}
    algo = REGISTRY["bc"](
        saved["observation_dim"], saved["action_dim"], 1, build_algo_config(REGISTRY["bc"], params, 16, 40)
    )
    algo.load_optimizer_state_dict(saved["optimizer_state"])
    assert algo.optimizers["actor"].param_groups[0]["lr"] == pytest.approx(cosine(20, 40), abs=1e-12)
    Trainer(config(40, lr_schedule="cosine"), dataset=arm_data, run_dir=short, resume=True).fit()
    lrs = lr_at_checkpoints(short)
    assert lrs[30] == pytest.approx(cosine(30, 40), abs=1e-12) and lrs[30] > 1e-4
    state = load_checkpoint(list_checkpoints(short)[-2])  # step 30: the weights moved again
    assert state["step"] == 30
    assert any(not torch.equal(t, state["algo_state"][n]) for n, t in before.items() if t.is_floating_point())


# ------------------------------------------------------------------ the schedule as a tensor (issue 17)
def _iql_batch(step: int) -> Any:
    from offrl_robot.algos import Batch

    g = torch.Generator().manual_seed(step)
    obs = torch.randn(2, 16, 4, generator=g)
    return Batch(
        obs,
        torch.rand(2, 16, 2, generator=g) * 2 - 1,
        torch.randn(2, 16, generator=g),
        torch.randn(2, 16, 4, generator=g),
        torch.zeros(2, 16),
    )


def test_tensor_lr_schedule_gives_the_float_schedules_numbers_on_cpu() -> None:
    """The graph-compatible schedule (rates in a device tensor, advanced by the step itself)
    against the float schedule LambdaLR used to set (base * cosine(k), a Python float written
    into the param group before each step): the same weights, bit for bit, through the end of
    the decay and past it."""
    horizon = 12
    cls = REGISTRY["iql"]
    scheduled = cls(4, 2, 2, build_algo_config(cls, {"hidden_sizes": [16, 16], "actor_lr": LR}, 16, horizon))
    floats = cls(
        4,
        2,
        2,
        build_algo_config(cls, {"hidden_sizes": [16, 16], "actor_lr": LR, "actor_lr_schedule": "none"}, 16),
    )
    floats.load_state_dict(scheduled.state_dict())
    group = scheduled.optimizers["all"].param_groups[0]
    lr_tensor = group["lr"]
    assert torch.is_tensor(lr_tensor) and lr_tensor.dtype == torch.float64  # what the CPU kernel reads
    for step in range(horizon + 3):
        floats.optimizers["all"].param_groups[0]["lr"] = cosine(step, horizon)
        torch.manual_seed(step)
        scheduled.update(_iql_batch(step))
        torch.manual_seed(step)
        floats.update(_iql_batch(step))
        assert group["lr"] is lr_tensor  # updated in place: a CUDA graph keeps reading this tensor
        assert float(lr_tensor) == cosine(step + 1, horizon)
    for name, value in floats.state_dict().items():
        assert torch.equal(scheduled.state_dict()[name], value), name
    assert [g["lr"] for g in scheduled.optimizers["all"].param_groups[1:]] == [3e-4, 3e-4]  # V, Q: constant


def test_iql_decays_its_actor_lr_by_default(arm_data: Dataset, tmp_path: Path) -> None:
    """No actor_lr_schedule in the config: IQL decays the actor's rate over the run (the authors'
    and CORL's recipe), saved in the checkpoint as a plain float."""
    Trainer(config(40, "iql"), dataset=arm_data, run_dir=tmp_path / "iql").fit()
    lrs = lr_at_checkpoints(tmp_path / "iql", "all")
    for step, lr in lrs.items():
        assert lr == pytest.approx(cosine(step, 40), abs=1e-12), step
    state = load_checkpoint(list_checkpoints(tmp_path / "iql")[-1])
    assert state["algo_config"]["actor_lr_schedule"] == "cosine"
    assert isinstance(state["optimizer_state"]["optimizers"]["all"]["param_groups"][0]["lr"], float)


def test_iql_default_resume_is_bit_identical(arm_data: Dataset, tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    Trainer(config(40, "iql"), dataset=arm_data, run_dir=whole).fit()
    broken = tmp_path / "broken"
    with pytest.raises(Crash):
        Trainer(config(40, "iql"), dataset=arm_data, run_dir=broken, on_checkpoint=_crash_at(20)).fit()
    Trainer(config(40, "iql"), dataset=arm_data, run_dir=broken, resume=True).fit()
    a, b = (load_checkpoint(list_checkpoints(run)[-1]) for run in (whole, broken))
    for name, tensor in a["algo_state"].items():
        assert torch.equal(tensor, b["algo_state"][name]), name
    assert lr_at_checkpoints(whole, "all") == lr_at_checkpoints(broken, "all")


def test_resuming_a_run_from_before_the_default_changed_is_refused_in_one_line(
    arm_data: Dataset, tmp_path: Path
) -> None:
    """An IQL run started when the actor lr was constant by default has no actor_lr_schedule in
    its config; resumed now, the same config would resolve to cosine. Refused, naming the fix;
    with the fix it continues."""
    run = tmp_path / "old"
    Trainer(config(20, "iql", actor_lr_schedule="none"), dataset=arm_data, run_dir=run).fit()
    for path in list_checkpoints(run):  # what the run looked like: no actor_lr_schedule key
        state = torch.load(path, weights_only=True)
        del state["config"]["algo_config"]["actor_lr_schedule"]
        torch.save(state, path)
    with pytest.raises(ConfigError) as err:
        Trainer(config(40, "iql"), dataset=arm_data, run_dir=run, resume=True)
    message = str(err.value)
    assert "\n" not in message
    assert "actor_lr_schedule: 'none'" in message and "actor_lr_schedule: 'cosine'" in message
    fixed = config(40, "iql", actor_lr_schedule="none")  # what the message says to write
    assert Trainer(fixed, dataset=arm_data, run_dir=run, resume=True).fit()["resumed_from_step"] == 20
    assert lr_at_checkpoints(run, "all")[40] == LR  # constant, as the run was
