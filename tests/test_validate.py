"""The MuJoCo validation gate (`offrl-robot validate`) and its reports, on real parts only.

A small BC policy is trained once per session on scripted-expert ArmReach data through the
Trainer and exported with the real exporter; the gate runs it through PolicyRuntime (real
onnxruntime) and the SafetyFilter in real MuJoCo. A random-weights ONNX policy must fail.

Why the "good policy" test uses its own thresholds: a BC policy trained within this test budget
(~1,500 updates of a 64x64 net) gets a normalised score of ~70-75 but rarely meets ArmReach's
strict 2 cm success criterion (tests/test_train_learns.py documents the same limit). The shipped
thresholds (success_rate >= 0.9, ...) are checked against the scripted expert instead, which
shows they are achievable through the same SafetyFilter, with and without randomisation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from onnx_fixtures import write_policy
from PIL import Image

from offrl_robot import cli
from offrl_robot.card import ModelCard, ModelMetadata, file_sha256
from offrl_robot.data.collect import collect
from offrl_robot.errors import ConfigError, ModelError
from offrl_robot.export import export_checkpoint
from offrl_robot.runtime import PolicyRuntime
from offrl_robot.sim import make_env, task_info
from offrl_robot.sim import report as report_module
from offrl_robot.sim.experts import ArmReachExpert
from offrl_robot.sim.report import plot_learning_curves, write_report
from offrl_robot.sim.validate import (
    GATE_FAILED_EXIT,
    DomainRandomizer,
    GateConfig,
    default_config_path,
    load_gate_config,
    run_gate,
    validate_model,
)
from offrl_robot.train import TrainConfig, Trainer

TASK = "ArmReach-v0"
INFO = task_info(TASK)


@dataclass
class TrainedModel:
    onnx_path: Path
    run_dir: Path


@pytest.fixture(scope="session")
def bc_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainedModel]:
    """Scripted expert -> Dataset -> Trainer (BC) -> export: the user's path, sized for a test."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("bc_model")
        data = collect(TASK, "scripted-expert", episodes=25, seed=0, noise=0.1).dataset
        config = TrainConfig(
            algo="bc",
            algo_config={"hidden_sizes": [64, 64]},
            task=TASK,
            steps=1500,
            seeds=[0],
            batch_size=256,
            eval_every=0,
            eval_episodes=1,
            log_every=250,
            checkpoint_every=0,
            progress=False,
            threads=1,
        )
        summary = Trainer(config, dataset=data, run_dir=root / "run").fit()
        result = export_checkpoint(summary["checkpoint"], root / "models" / "arm_reach_bc.onnx", dataset=data)
        yield TrainedModel(result.model_path, root / "run")
    finally:
        torch.set_num_threads(previous)


@pytest.fixture
def model_copy(bc_model: TrainedModel, tmp_path: Path) -> Path:
    """A private copy of the exported model + card (the gate writes into the card)."""
    folder = tmp_path / "models"
    folder.mkdir()
    for src in (bc_model.onnx_path, bc_model.onnx_path.with_name("arm_reach_bc.card.yaml")):
        (folder / src.name).write_bytes(src.read_bytes())
    return folder / bc_model.onnx_path.name


def score_gate_config(tmp_path: Path) -> Path:
    """The shipped config with thresholds a test-sized BC policy can meet (see the module docstring).

    Measured on this policy: normalised score ~71-76, success rate 0-0.05, and ~1.1-1.3 % of ticks
    slew-limited (its command swings by > 0.2 rad/s per tick near some goals) - a real finding the
    shipped 1 % limit rejects, so the test allows 5 %.
    """
    data = yaml.safe_load(default_config_path().read_text())
    data["thresholds"] = {
        "normalized_score": {"min": 50.0},
        "nan_events": {"max": 0},
        "intervention_rate": {"max": 0.05},
    }
    path = tmp_path / "gate.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def random_policy(folder: Path) -> Path:
    """A real ONNX policy for ArmReach's names and bounds with untrained random weights."""
    metadata = ModelMetadata(
        observation_names=list(INFO.observation_names),
        action_names=list(INFO.action_names),
        action_low=list(INFO.action_low),
        action_high=list(INFO.action_high),
        control_rate_hz=INFO.control_rate_hz,
        algorithm="random-weights",
        train_config={"task": TASK},
    )
    return write_policy(folder, name="random_arm", metadata=metadata, hidden=(32, 32), seed=3).onnx_path


def assert_real_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= 200 and image.height >= 150
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 5, f"{path.name} looks blank"


# ---------------------------------------------------------------------------------- the gate
def test_good_policy_passes_and_card_gets_a_passing_block(model_copy: Path, tmp_path: Path) -> None:
    config = load_gate_config(score_gate_config(tmp_path))
    result = validate_model(model_copy, TASK, episodes=8, seed=0, config=config)
    assert result.passed, result.failure_line()
    assert result.metrics["normalized_score"] >= 50.0
    assert result.metrics["nan_events"] == 0
    assert result.metrics["ticks"] == 8 * 150
    # blend-in fires on the first 10 ticks of every episode and is reported, but not counted
    assert result.metrics["interventions_blending"] == 8 * 10
    assert result.metrics["intervention_rate"] <= 0.05

    card = ModelCard.read(result.card_path)
    assert card.validation is not None and card.validation.passed is True
    assert card.validation.task == TASK and card.validation.episodes == 8
    assert card.validation.metrics == pytest.approx(result.metrics)
    assert card.validation.thresholds == config.thresholds
    assert card.validation.model_sha256 == file_sha256(model_copy) == card.sha256  # bound to the bytes run
    # what the ROS node checks, with a floor matching this score-based gate config (the default
    # floor would also want success_rate, which this config does not test)
    floor = {"nan_events": {"max": 0.0}, "intervention_rate": {"max": 0.05}}
    card.require_passing_validation(result.card_path, file_sha256(model_copy), floor)
    PolicyRuntime(model_copy)  # the card still matches the model (sha256, metadata)


def test_random_weights_policy_fails_from_the_cli_naming_the_metric(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Also the no-rendering path: a GL backend that cannot work, and no fallback to try.
    monkeypatch.setenv("MUJOCO_GL", "no_such_gl")
    monkeypatch.setattr(report_module, "GL_BACKENDS", ())
    model = random_policy(tmp_path / "models")
    code = cli.main(["validate", str(model), "--episodes", "3", "--reports", str(tmp_path / "reports")])
    out, err = capsys.readouterr()
    assert code == GATE_FAILED_EXIT
    failure = [line for line in err.splitlines() if "FAILED" in line]
    assert len(failure) == 1, err
    assert "success_rate = 0 < min 0.9" in failure[0]
    card = ModelCard.read(model.with_name("random_arm.card.yaml"))
    assert card.validation is not None and card.validation.passed is False
    assert card.validation.metrics["success_rate"] == 0.0
    with pytest.raises(ModelError, match="FAILED validation"):
        card.require_passing_validation(model.with_name("random_arm.card.yaml"), card.sha256)
    folder = tmp_path / "reports" / "random_arm"
    report = json.loads((folder / "report.json").read_text())
    assert report["passed"] is False and report["failures"] == card_failures(card)
    assert "success_rate" in out  # the printed table
    # rendering failed: the report says why, everything else is there
    assert report["video"] is None and report["video_note"].startswith(
        "offscreen rendering unavailable (no_such_gl"
    )
    assert "No video: offscreen rendering unavailable" in (folder / "report.md").read_text()
    assert not (folder / "episodes.gif").exists()
    for name in ("returns.png", "joints.png", "actions.png"):
        assert_real_png(folder / name)


def card_failures(card: ModelCard) -> list[str]:
    from offrl_robot.card import ValidationRecord

    assert card.validation is not None
    return ValidationRecord.failures(card.validation.metrics, card.validation.thresholds)


def test_nan_actions_are_counted_replaced_by_the_safe_action_and_fail_the_gate() -> None:
    expert = ArmReachExpert()
    calls = {"n": 0}

    def sometimes_nan(obs: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        action = expert(obs)
        return np.full_like(action, np.nan) if calls["n"] % 50 == 0 else action

    config = load_gate_config()
    result = run_gate(sometimes_nan, TASK, INFO.action_low, INFO.action_high, config, episodes=2, seed=0)
    assert result.metrics["nan_events"] == 6  # 300 ticks, every 50th
    returns = [episode.episode_return for episode in result.per_episode]
    assert returns[0] != returns[1]
    assert result.metrics["return_std"] == pytest.approx(np.std(returns, ddof=1))  # the sample std
    assert result.metrics["interventions_bad_action"] == 6
    assert not result.passed
    assert any(f.startswith("nan_events = 6 > max 0") for f in result.failures)
    assert all(np.isfinite(trace.command).all() for trace in result.traces)


def test_shipped_thresholds_are_met_by_the_scripted_expert_even_randomised() -> None:
    config = load_gate_config()
    assert config.thresholds["success_rate"] == {"min": 0.9}
    for randomize in (False, True):
        result = run_gate(
            ArmReachExpert(), TASK, INFO.action_low, INFO.action_high, config, 6, 0, randomize=randomize
        )
        assert result.passed, (randomize, result.failures)
        # A scripted controller, not a learned policy: 200 of 200 episodes nominal and 200 of 200
        # randomised (worst final distance 1.6 mm of the 20 mm radius), so 6 at 1.0 is not luck.
        assert result.metrics["success_rate"] == 1.0


def test_randomisation_is_seeded_and_changes_the_physics(bc_model: TrainedModel) -> None:
    runtime = PolicyRuntime(bc_model.onnx_path)
    config = load_gate_config()
    low, high = runtime.metadata.action_low, runtime.metadata.action_high

    def run(seed: int, randomize: bool = True):
        return run_gate(runtime.act, TASK, low, high, config, episodes=3, seed=seed, randomize=randomize)

    first, again, other, nominal = run(7), run(7), run(8), run(7, randomize=False)
    assert first.metrics == again.metrics
    assert [e.conditions for e in first.per_episode] == [e.conditions for e in again.per_episode]
    assert [e.conditions.mass_scale for e in first.per_episode] != [
        e.conditions.mass_scale for e in other.per_episode
    ]
    for episode in first.per_episode:
        c = episode.conditions
        assert c.action_delay_ticks in (1, 2)
        assert all(0.8 <= m <= 1.2 for m in c.mass_scale)
        assert all(0.7 <= f <= 1.3 for f in c.friction_scale)
        assert max(c.observation_noise_std) == 0.02 and min(c.observation_noise_std) == 0.0
    assert nominal.per_episode[0].conditions.action_delay_ticks == 0
    assert first.metrics["return_mean"] != nominal.metrics["return_mean"]
    assert first.metrics["randomized"] == 1.0 and nominal.metrics["randomized"] == 0.0
    # the delay is real: the actuators get the filter's command d ticks late
    for trace, episode in zip(first.traces, first.per_episode, strict=False):
        d = episode.conditions.action_delay_ticks
        np.testing.assert_array_equal(trace.applied[d:], trace.command[:-d])
        assert np.all(trace.applied[:d] == 0.0)  # the filter's start command ("zero")
    np.testing.assert_array_equal(nominal.traces[0].applied, nominal.traces[0].command)


def test_randomizer_scales_from_nominal_and_restores_it() -> None:
    env = make_env(TASK)
    model = env.unwrapped.model
    nominal_mass, nominal_damping = model.body_mass.copy(), model.dof_damping.copy()
    randomizer = DomainRandomizer(model, INFO.observation_names, load_gate_config().randomization)
    for seed in (0, 1, 2):  # scales apply to the nominal values, never compound
        conditions = randomizer.apply(np.random.default_rng(seed))
        np.testing.assert_allclose(model.body_mass, nominal_mass * conditions.mass_scale)
        np.testing.assert_allclose(model.dof_damping, nominal_damping * conditions.damping_scale)
    randomizer.restore()
    np.testing.assert_array_equal(model.body_mass, nominal_mass)
    np.testing.assert_array_equal(model.dof_damping, nominal_damping)
    env.close()


# ---------------------------------------------------------------------------------- reports
def test_report_folder_has_markdown_json_real_pngs_and_a_video(model_copy: Path, tmp_path: Path) -> None:
    config = load_gate_config(score_gate_config(tmp_path))
    result = validate_model(model_copy, TASK, episodes=4, seed=1, config=config, write_card=False)
    # every 5th tick instead of every 2nd: same code path, less rendering time
    report = write_report(result, tmp_path / "reports" / "arm_reach_bc", video_frame_every=5)
    folder = tmp_path / "reports" / "arm_reach_bc"
    assert report.folder == folder
    for name in ("report.md", "report.json", "returns.png", "joints.png", "actions.png"):
        assert (folder / name).is_file(), name
    for name in ("returns.png", "joints.png", "actions.png"):
        assert_real_png(folder / name)
    data = json.loads((folder / "report.json").read_text())
    assert data["passed"] is True and data["metrics"]["ticks"] == 600
    assert len(data["per_episode"]) == 4 and data["joints"]["names"][0] == "joint_1"
    markdown = (folder / "report.md").read_text()
    assert "**PASSED**" in markdown and "| normalized_score |" in markdown and "![" in markdown
    assert not list(tmp_path.joinpath("reports").glob(".*tmp")), "temp folder left behind"
    if report.video_note:
        assert f"No video: {report.video_note}" in markdown
        pytest.skip(f"offscreen rendering unavailable here: {report.video_note}")
    import imageio.v3 as iio

    frames = iio.imread(folder / "episodes.gif", index=None)
    assert frames.shape[0] == 2 * math.ceil(151 / 5)
    assert frames.shape[1:3] == (240, 320)
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 0.5, "the arm never moved"
    assert "episodes.gif" in markdown


def test_learning_curves_from_a_real_training_run(bc_model: TrainedModel) -> None:
    for png in bc_model.run_dir.glob("*.png"):
        png.unlink()
    written = plot_learning_curves(bc_model.run_dir)
    assert sorted(p.name for p in written) == ["eval_curves.png", "learning_curves.png"]
    for path in written:
        assert_real_png(path)


# ---------------------------------------------------------------------------------- bad input
def test_bad_config_and_bad_input_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = yaml.safe_load(default_config_path().read_text())
    data["thresholds"] = {"succes_rate": {"min": 0.9}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"thresholds\.succes_rate is not a gate metric"):
        load_gate_config(bad)
    code = cli.main(["validate", str(tmp_path / "missing.onnx"), "--task", TASK])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "model file not found" in err[0]
    model = random_policy(tmp_path / "models")
    code = cli.main(["validate", str(model), "--task", "Hopper-v5", "--no-report"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Hopper" in err[0]
    assert ModelCard.read(model.with_name("random_arm.card.yaml")).validation is None


def test_gate_config_slew_is_per_second_at_the_model_rate() -> None:
    config = replace(load_gate_config(), max_slew_rate=[10.0, math.inf])
    safety = GateConfig.safety_config(
        config, [-1.0, -1.0], [1.0, 1.0], 50.0, ["a.velocity_cmd", "b.velocity_cmd"]
    )
    assert safety.max_rate == [10.0, math.inf] and safety.control_period_s == pytest.approx(0.02)
    assert safety.safe_action == "zero"  # auto, velocity commands
    position = GateConfig.safety_config(config, [-1.0, -1.0], [1.0, 1.0], 50.0, ["a.position", "b.position"])
    assert position.safe_action == "hold"  # auto, position commands: hold where the arm is


def test_swapping_the_model_during_the_gate_never_yields_a_passing_card_for_the_swap(
    model_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attacker replaces the validated model AND its card while the gate runs. The gate judged
    the bytes it loaded; it must not stamp its verdict onto the replacement, and the replacement
    must not run on a robot."""
    from test_ros_policy_setup import policy_params

    from offrl_robot.ros.policy_setup import load_policy_setup
    from offrl_robot.sim import validate as validate_module

    evil = random_policy(tmp_path / "evil")
    card_file = model_copy.with_name(model_copy.stem + ".card.yaml")
    real_gate = validate_module.run_gate

    def gate_then_swap(*args: object, **kwargs: object) -> object:
        result = real_gate(*args, **kwargs)  # the good model passes...
        model_copy.write_bytes(evil.read_bytes())  # ...and the files are replaced before the verdict lands
        card_file.write_bytes(evil.with_name("random_arm.card.yaml").read_bytes())
        return result

    monkeypatch.setattr(validate_module, "run_gate", gate_then_swap)
    config = load_gate_config(score_gate_config(tmp_path))
    with pytest.raises(ModelError, match="model changed during validation, nothing was written"):
        validate_model(model_copy, TASK, episodes=2, seed=0, config=config)
    assert ModelCard.read(card_file).validation is None  # no verdict on the replacement
    params = policy_params(model_copy, max_slew_rate=[15.0], safe_action="auto")
    with pytest.raises(ModelError, match="no validation block"):
        load_policy_setup(params)
