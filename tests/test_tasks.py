"""Task definitions as data (issue 15 §1, §4): task files and installed tasks wherever a task name goes.

Real parts only: the Menagerie arms in ../shared/data/robots (skipped without it), real MuJoCo,
the real gate loop with its SafetyFilter, the real report renderer in its child process, a real
entry point read by importlib.metadata from a dist-info folder on sys.path.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO
from PIL import Image

from offrl_robot import cli
from offrl_robot.data.ingest_spec import load_spec
from offrl_robot.data.minari_io import load_dataset
from offrl_robot.errors import ConfigError
from offrl_robot.registry import resolve_reward, resolve_success
from offrl_robot.ros.sim_backend import TaskBackend, make_backend
from offrl_robot.safety import hold_indices, resolve_safe_action
from offrl_robot.sim import make_env, task_info
from offrl_robot.sim.experts import ReachExpert
from offrl_robot.sim.report import VIDEO_NAME, write_report
from offrl_robot.sim.tasks import known_tasks, resolve_task
from offrl_robot.sim.validate import load_gate_config, run_gate

TASKS = REPO / "config" / "tasks"
ARMS = {
    "vx300s_reach": ("trossen_vx300s", 6, 8),  # folder, actions, named 1-DoF joints in the MJCF
    "kinova_gen3_reach": ("kinova_gen3", 7, 7),
    "xarm7_reach": ("ufactory_xarm7", 7, 13),
}
VX = TASKS / "vx300s_reach.yaml"


@pytest.fixture
def robots(shared_data: Path) -> Path:
    return shared_data / "robots"


def _task_copy(tmp_path: Path, robots: Path, **changes: object) -> Path:
    """The shipped vx300s task file, elsewhere, with an absolute MJCF and `changes` applied."""
    data = yaml.safe_load(VX.read_text())
    data["mjcf"] = str(robots / "trossen_vx300s" / "scene.xml")
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ---------------------------------------------------------------------------------- resolving
@pytest.mark.parametrize("name", list(ARMS))
def test_shipped_task_files_resolve_by_path_and_name_from_any_directory(
    name: str, robots: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, actions, joints = ARMS[name]
    monkeypatch.chdir(tmp_path)  # the MJCF is found relative to the task file, not the cwd
    path = TASKS / f"{name}.yaml"
    by_path, by_name = task_info(str(path)), task_info(name)
    assert by_path.name == str(path.resolve()) and by_name.name == name
    assert by_path.definition == by_name.definition
    assert by_path.definition.mjcf == str((robots / folder / "scene.xml").resolve())
    assert len(by_path.action_names) == actions and by_path.control_rate_hz == 50.0
    assert all(a.endswith(".position_cmd") for a in by_path.action_names)
    assert np.all(np.isfinite(by_path.action_low)) and np.all(np.isfinite(by_path.action_high))
    assert by_path.is_arm_task and by_path.max_episode_steps == 150
    env = make_env(str(path))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (len(by_path.observation_names),) and np.isfinite(obs).all()
    assert len(make_backend(str(path), 0.0, None).joint_names) == joints
    assert name in known_tasks()


def test_kinova_unlimited_joints_take_their_limits_from_the_task_file(robots: Path, tmp_path: Path) -> None:
    info = task_info("kinova_gen3_reach")
    assert info.action_low[0] == -2.5 and info.action_high[2] == 5.3  # command_limits
    assert info.action_low[1] == pytest.approx(-2.2497294058206907)  # its own ctrlrange
    data = yaml.safe_load((TASKS / "kinova_gen3_reach.yaml").read_text())
    data.pop("command_limits")
    data["mjcf"] = str(robots / "kinova_gen3" / "scene.xml")
    (tmp_path / "k.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"joint_1.*command_limits") as err:
        task_info(str(tmp_path / "k.yaml"))
    assert "\n" not in str(err.value)


def test_mjcf_path_is_relative_to_the_task_file_or_comes_from_a_variable(
    robots: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    moved = tmp_path / "elsewhere" / "vx.yaml"
    moved.parent.mkdir()
    shutil.copy(VX, moved)  # ../../../shared from here does not exist
    monkeypatch.delenv("OFFRL_ROBOTS", raising=False)
    with pytest.raises(ConfigError, match="not found; a relative mjcf is relative to the task file"):
        task_info(str(moved))
    monkeypatch.setenv("OFFRL_ROBOTS", str(robots))  # e.g. a mujoco_menagerie checkout
    assert task_info(str(moved)).definition.mjcf == str((robots / "trossen_vx300s" / "scene.xml").resolve())
    data = yaml.safe_load(VX.read_text())
    data["mjcf"] = "${MY_ARM_DIR}/scene.xml"
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"MY_ARM_DIR is not set"):
        task_info(str(tmp_path / "mine.yaml"))
    monkeypatch.setenv("MY_ARM_DIR", str(robots / "trossen_vx300s"))
    assert task_info(str(tmp_path / "mine.yaml")).definition.name == "vx300s_reach"


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"mjcf_file": "x"}, "unknown keys ['mjcf_file']"),
        ({"joints": ["waist", "wrist"]}, "joints entry 'wrist' is not a joint"),
        (
            {"command": "velocity"},
            "actuator 'waist' takes a position command but the task says command: velocity",
        ),
        (
            {"actuators": ["waist", "gripper"]},
            "actuator 'gripper' drives joint 'left_finger', which is not in joints",
        ),
        ({"observations": ["waist.position", "goal.x"]}, "must hold all of goal.x, goal.y, goal.z"),
        ({"observations": ["waist.torque"]}, "observation 'waist.torque' is not"),
        ({"goal": {"site": "tip", "low": [0, 0, 0], "high": [1, 1, 1]}}, "goal.site 'tip' is not a site"),
        ({"goal": {"site": "pinch", "low": [0, 0, 1], "high": [1, 1, 0]}}, "goal.low must be <= goal.high"),
        ({"control_rate_hz": 30}, "not a whole number of MJCF timesteps"),
        ({"start": {"keyframe": "rest"}}, "start.keyframe 'rest' is not in the MJCF"),
        ({"reward": None}, "missing required keys ['reward']"),
    ],
)
def test_bad_task_files_are_one_line_errors_naming_the_field(
    changes: dict, needle: str, robots: Path, tmp_path: Path
) -> None:
    path = _task_copy(tmp_path, robots, **changes)
    with pytest.raises(ConfigError) as err:
        task_info(str(path))
    assert needle in str(err.value) and "\n" not in str(err.value) and str(path) in str(err.value)


def test_unknown_task_names_task_files_in_the_message() -> None:
    with pytest.raises(ConfigError) as err:
        resolve_task("vx301_reach")
    assert "task file path" in str(err.value) and "vx300s_reach" in str(err.value)
    with pytest.raises(ConfigError, match=r"task file /nowhere/arm\.yaml not found"):
        task_info("/nowhere/arm.yaml")


# ---------------------------------------------------------------------------------- the env and its functions
def test_reach_reward_and_success_from_data_equal_the_env(robots: Path) -> None:
    env = make_env(str(VX)).unwrapped
    expert = ReachExpert(env.definition)
    reward = resolve_reward("reach", task=env.definition)
    success = resolve_success("reach", task=env.definition)
    obs, _ = env.reset(seed=3)
    rows = []
    for _ in range(60):
        action = expert(obs)
        next_obs, r, _, _, info = env.step(action)
        rows.append((obs, action, next_obs, r, info["distance"], info["is_success"]))
        obs = next_obs
    o, a, n = (np.stack([row[k] for row in rows]) for k in range(3))
    env_reward = np.array([row[3] for row in rows])
    # forward kinematics of the logged joint positions == MuJoCo's site (the env measures it directly)
    np.testing.assert_allclose(reward(o, a, n), env_reward, atol=1e-6)
    np.testing.assert_allclose(-reward(o, a, n), [row[4] for row in rows], atol=1e-6)
    assert list(success(o, a, n)) == [row[5] for row in rows]
    assert rows[-1][5] and not rows[0][5]  # it got there, and did not start there
    with pytest.raises(ConfigError, match="no task was given"):
        resolve_reward("reach")


@pytest.mark.parametrize("name", list(ARMS))
def test_scripted_expert_passes_the_shipped_gate_on_every_arm(name: str, robots: Path) -> None:
    """The gate's thresholds (config/validate.yaml) are achievable on each shipped task, through the
    SafetyFilter with safe_action auto (= hold the measured pose, position commands)."""
    info = task_info(name)
    config = load_gate_config()
    assert resolve_safe_action(config.safe_action, info.action_names, "gate") == "hold"
    assert hold_indices(info.action_names, info.observation_names) == list(range(len(info.action_names)))
    result = run_gate(
        ReachExpert(info.definition), name, info.action_low, info.action_high, config, episodes=20
    )
    assert result.passed, result.failure_line()
    assert result.metrics["success_rate"] >= 0.95 and result.metrics["final_distance_mean"] < 0.01
    assert result.metrics["intervention_rate"] <= 0.01 and result.metrics["nan_events"] == 0


def test_joint_limit_margin_is_a_fraction_of_each_joints_range(robots: Path, tmp_path: Path) -> None:
    """The ViperX's finger slides span 36 mm and sit 3 mm above their lower stop: an absolute
    0.02 margin counted them "at a limit" on every tick; a fraction of the range does not."""
    info = task_info(str(VX))
    config = load_gate_config()
    result = run_gate(
        ReachExpert(info.definition), str(VX), info.action_low, info.action_high, config, episodes=2
    )
    ranges = np.array(result.joint_high) - np.array(result.joint_low)
    np.testing.assert_allclose(result.joint_margin, config.joint_limit_margin_fraction * ranges)
    finger = result.joint_names.index("left_finger")
    assert result.joint_margin[finger] < 0.001
    assert result.metrics["joint_limit_ticks"] == 0
    # a margin that reaches the fingers' pose (3 mm above the stop: 9 % of 36 mm) counts every tick
    wide = run_gate(
        ReachExpert(info.definition),
        str(VX),
        info.action_low,
        info.action_high,
        replace(config, joint_limit_margin_fraction=0.1),
        episodes=2,
    )
    assert wide.metrics["joint_limit_rate"] == 1.0
    old = tmp_path / "old.yaml"
    old.write_text(Path(REPO / "config/validate.yaml").read_text() + "joint_limit_margin: 0.02\n")
    with pytest.raises(ConfigError, match="replaced by joint_limit_margin_fraction"):
        load_gate_config(old)


def test_report_video_of_a_task_file_renders_in_the_child_process(robots: Path, tmp_path: Path) -> None:
    info = task_info(str(VX))
    result = run_gate(
        ReachExpert(info.definition),
        str(VX),
        info.action_low,
        info.action_high,
        load_gate_config(),
        episodes=2,
    )
    report = write_report(result, tmp_path / "report")
    assert report.video_note == "", report.video_note
    with Image.open(tmp_path / "report" / VIDEO_NAME) as gif:
        assert 20 < gif.n_frames <= 2 * 76  # 151 states per episode, every 2nd (still frames merge)
        first = np.asarray(gif.convert("RGB"))
        gif.seek(60)
        later = np.asarray(gif.convert("RGB"))
    assert first.std() > 5 and np.abs(first.astype(int) - later.astype(int)).mean() > 0.5  # the arm moved
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    assert summary["task"] == str(VX.resolve()) and summary["metrics"]["success_rate"] == 1.0


# ---------------------------------------------------------------------------------- collect, ingest spec, sim
def test_collect_with_a_task_file_and_the_scripted_expert(
    robots: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cli.main(
        ["collect", "--task", str(VX), "--policy", "scripted-expert", "--episodes", "3", "--out", "vx/expert"]
    )
    assert rc == 0
    assert "success rate 1.00" in capsys.readouterr().out
    dataset = load_dataset("vx/expert-v0")
    assert dataset.metadata.task == str(VX.resolve()) and dataset.metadata.reward == "reach"
    assert dataset.metadata.action_names == list(task_info(str(VX)).action_names)
    assert cli.main(["dataset-info", "vx/expert-v0"]) == 0
    assert "success rate 1.00" in capsys.readouterr().out
    assert cli.main(["collect", "--task", str(VX), "--policy", "random", "--bag", "b", "--out", "x"]) == 2
    assert "offrl-robot record" in capsys.readouterr().err


def test_ingest_spec_names_a_registered_task_reward_and_a_task_file_relative_to_it(robots: Path) -> None:
    spec = load_spec(REPO / "config/ingest/vx300s_reach.yaml")
    assert spec.task == str(VX.resolve())
    info = task_info(spec.task)
    assert spec.action.names == list(info.action_names)
    np.testing.assert_allclose(spec.action.low, info.action_low)
    np.testing.assert_allclose(spec.action.high, info.action_high)
    assert spec.observations[0].joints == list(info.definition.joints)
    from offrl_robot.data.rosbag_ingest import load_reward_function

    with pytest.raises(ConfigError, match="set task: to the task file"):
        load_reward_function("reach", None)
    reward = load_reward_function("reach", spec.task)
    obs = make_env(spec.task).reset(seed=0)[0][None]
    assert reward(obs, np.zeros((1, 6)), obs)[0] < 0


def test_sim_backend_for_a_task_file_holds_position_servos_and_takes_task_actions(robots: Path) -> None:
    backend = make_backend(str(VX), 0.0, None)
    assert isinstance(backend, TaskBackend) and backend.num_commands == 6
    assert backend.joint_names[-2:] == ["left_finger", "right_finger"]  # the driver publishes the gripper too
    backend.reset(0)
    start, _, _ = backend.joint_state()
    goal = backend.goal()
    assert goal is not None and np.all(np.asarray(task_info(str(VX)).definition.goal.low) <= goal)
    for _ in range(100):  # no /cmd for 2 s: the servos hold the start pose (a target of 0 would swing
        metrics = backend.step(None)  # the shoulder from -0.98 to 0); they sag a little under gravity
    held, velocity, _ = backend.joint_state()
    assert np.max(np.abs(held[:6] - start[:6])) < 0.1 and np.max(np.abs(velocity)) < 0.05
    expert = ReachExpert(backend.task.definition)
    for _ in range(100):
        metrics = backend.step(expert(backend.task.observation()))
    assert metrics.success == 1.0 and metrics.distance_to_goal < 0.02


# ---------------------------------------------------------------------------------- installed tasks
def test_an_installed_package_registers_a_task_and_its_success_function(
    robots: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    (site / "my_arm_pkg").mkdir(parents=True)
    (site / "my_arm_pkg" / "__init__.py").write_text(
        textwrap.dedent(
            f"""
            import numpy as np
            import yaml
            from pathlib import Path
            from offrl_robot.sim.task_file import definition_from_dict

            def task():
                data = yaml.safe_load(Path({str(VX)!r}).read_text())
                data["mjcf"] = {str(robots / "trossen_vx300s" / "scene.xml")!r}
                data["success"] = "always"
                return definition_from_dict(data, Path("."), "my_arm_pkg:task")

            def always(obs, act, next_obs):
                return np.ones(len(obs), dtype=bool)
            """
        )
    )
    dist = site / "my_arm_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-arm-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[offrl_robot.tasks]\nmy_arm = my_arm_pkg:task\n\n[offrl_robot.success]\nalways = my_arm_pkg:always\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "my_arm_pkg", raising=False)
    info = task_info("my_arm")
    assert info.name == "my_arm" and "my_arm" in known_tasks()
    _, reset_info = make_env("my_arm").reset(seed=0)
    assert reset_info["is_success"] is True and reset_info["distance"] > 0.02  # its own success function
    with pytest.raises(ConfigError, match="not a registered success function"):
        resolve_success("sometimes")


def test_expert_command_refuses_bad_input_in_one_line(
    robots: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`offrl-robot expert` checks its arguments before starting ROS (models run in policy_node)."""
    for argv, needle in (
        (["--task", str(VX), "--policy", "model.onnx"], "--policy 'model.onnx'"),
        (["--task", str(VX), "--noise", "-1"], "--noise -1"),
        (["--task", "nowhere.yaml"], "task file"),
    ):
        assert cli.main(["expert", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("offrl-robot expert: error:") and "\n" not in err and needle in err, err
