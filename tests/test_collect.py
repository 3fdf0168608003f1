"""`offrl-robot collect` (real MuJoCo, real Minari files, real rosbag2 via rosbags): end to end and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import offrl_cli

from offrl_robot import cli
from offrl_robot.data.collect import BAG_EPOCH_NS, EPISODE_GAP_NS, bag_sha256, collect
from offrl_robot.data.minari_io import load_dataset, save_dataset


def test_cli_end_to_end_writes_dataset_and_summary(run_child, minari_root: Path) -> None:
    done = run_child.run(
        [*offrl_cli(), "collect", "--task", "ArmReach-v0", "--policy", "scripted-expert", "--noise", "0.05",
         "--episodes", "2", "--seed", "3", "--out", "arm_reach/tiny"],
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout
    # the scripted expert at noise 0.05 succeeds in 200 of 200 episodes: 2 at 1.00 is not luck
    assert "collected 2 episodes, 300 transitions" in done.stdout and "success rate 1.00" in done.stdout
    assert str(minari_root / "arm_reach" / "tiny-v0") in done.stdout
    ds = load_dataset("arm_reach/tiny-v0")
    assert ds.num_episodes == 2 and len(ds) == 300
    assert ds.metadata.source == {
        "kind": "env",
        "env_id": "offrl_robot/ArmReach-v0",
        "policy": "scripted-expert",
        "noise": 0.05,
        "seed": 3,
    }
    assert (
        ds.metadata.reward == "offrl_robot.sim.rewards:arm_reach_reward" and ds.metadata.task == "ArmReach-v0"
    )
    assert ds.metadata.control_rate_hz == 50.0 and ds.timeouts.sum() == 2 and not ds.terminals.any()
    # the same run in-process gives the same data: one seed drives everything
    again = collect("ArmReach-v0", "scripted-expert", episodes=2, seed=3, noise=0.05).dataset
    assert again.sha256() == ds.sha256()
    # dataset-info reads it back
    info = run_child.run([*offrl_cli(), "dataset-info", "arm_reach/tiny", "--json"], timeout=60)
    assert info.returncode == 0, info.stdout
    summary = json.loads(info.stdout)
    assert summary["episodes"] == 2 and summary["transitions"] == 300 and summary["success_rate"] == 1.0
    assert summary["observation_names"][-1] == "goal.z" and summary["sha256"] == ds.sha256()


def test_noise_changes_actions_by_the_requested_amount() -> None:
    clean = collect("ArmReach-v0", "scripted-expert", episodes=3, seed=1, noise=0.0).dataset
    noisy = collect("ArmReach-v0", "scripted-expert", episodes=3, seed=1, noise=0.1).dataset
    starts = np.flatnonzero(clean.episode_starts)
    # env resets do not depend on the noise stream: each episode starts in the same state ...
    np.testing.assert_array_equal(clean.observations[starts], noisy.observations[starts])
    # ... and there only the noise differs: std ~ 0.1 * range per joint
    low, high = np.array(clean.metadata.action_low), np.array(clean.metadata.action_high)
    scaled = (noisy.actions[starts] - clean.actions[starts]) / (0.1 * (high - low))
    assert 0.3 < np.std(scaled) < 2.0 and np.all(noisy.actions >= low) and np.all(noisy.actions <= high)
    assert not np.array_equal(clean.actions, noisy.actions)
    other_seed = collect("ArmReach-v0", "scripted-expert", episodes=3, seed=2, noise=0.1).dataset
    assert not np.array_equal(other_seed.observations[0], noisy.observations[0])


def test_random_policy_and_other_tasks() -> None:
    result = collect("ArmReach-v0", "random", episodes=3, seed=0)
    assert result.success_rate == 0.0 and result.mean_return < -40
    actions = result.dataset.actions
    assert actions.min(axis=0).tolist() < [-1.0] * 6 and actions.max(axis=0).tolist() > [1.0] * 6
    reacher = collect("Reacher-v5", "random", episodes=2, seed=0)
    assert reacher.success_rate is None and len(reacher.dataset) == 100
    assert (
        reacher.dataset.metadata.observation_names[0] == "obs_0"
        and reacher.dataset.metadata.task == "Reacher-v5"
    )


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_is_the_same_run_as_a_robot_would_log_it(tmp_path: Path, storage: str) -> None:
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    bag = tmp_path / f"run_{storage}"
    result = collect(
        "ArmReach-v0", "scripted-expert", episodes=2, seed=0, noise=0.1, bag=bag, storage=storage
    )
    ds = result.dataset
    assert ds.metadata.source["bag"] == {
        "path": str(bag.resolve()),
        "sha256": bag_sha256(bag),
        "storage": storage,
    }
    stamps: dict[str, list[int]] = {}
    msgs: dict[str, list] = {}
    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
        for conn, stamp, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            stamps.setdefault(conn.topic, []).append(stamp)
            msgs.setdefault(conn.topic, []).append(msg)
    assert {t: len(v) for t, v in stamps.items()} == {
        "/episode": 2,
        "/goal": 2 * (1 + 151),
        "/joint_states": 2 * 151,  # one per tick + the state after the last command
        "/cmd": 2 * 150,
    }
    js = np.array(stamps["/joint_states"]).reshape(2, 151)
    cmd = np.array(stamps["/cmd"]).reshape(2, 150)
    assert js[0, 0] > BAG_EPOCH_NS and np.all(np.diff(js, axis=1) > 0)
    periods = np.diff(js, axis=1) / 1e6
    assert abs(periods.mean() - 20.0) < 0.2 and 0.3 < periods.std() < 3.0  # 50 Hz with jitter
    assert np.all(cmd > js[:, :150]) and np.all(cmd < js[:, 1:])  # command after its tick, before the next
    assert js[1, 0] - js[0, -1] >= EPISODE_GAP_NS
    # header stamps agree with the log time
    header = msgs["/joint_states"][5].header.stamp
    assert header.sec * 1_000_000_000 + header.nanosec == stamps["/joint_states"][5]
    # tick k's JointState is exactly the observation the policy acted on; /cmd is its action
    positions = np.array([m.position for m in msgs["/joint_states"]]).reshape(2, 151, 6)
    velocities = np.array([m.velocity for m in msgs["/joint_states"]]).reshape(2, 151, 6)
    for e, (start, stop) in enumerate(ds.episode_bounds()):
        np.testing.assert_array_equal(positions[e, :150].astype(np.float32), ds.observations[start:stop, :6])
        np.testing.assert_array_equal(
            velocities[e, :150].astype(np.float32), ds.observations[start:stop, 6:12]
        )
        np.testing.assert_array_equal(
            positions[e, 150].astype(np.float32), ds.next_observations[stop - 1, :6]
        )
        commands = np.array([m.data for m in msgs["/cmd"][e * 150 : (e + 1) * 150]])
        np.testing.assert_array_equal(commands.astype(np.float32), ds.actions[start:stop])
        goal = msgs["/goal"][e * 152].point
        np.testing.assert_array_equal(np.float32([goal.x, goal.y, goal.z]), ds.observations[start, 12:])
    assert [m.data for m in msgs["/episode"]] == [0, 1]
    assert list(msgs["/joint_states"][0].name) == [f"joint_{i}" for i in range(1, 7)]
    assert len(msgs["/joint_states"][0].effort) == 6


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--task", "Hoper-v5", "--policy", "random"], "unknown task 'Hoper-v5'"),
        (["--policy", "expert"], "--policy 'expert'"),
        (["--policy", "missing.onnx"], "missing.onnx: file not found"),
        (["--policy", "random", "--noise", "-0.5"], "--noise -0.5"),
        (["--policy", "random", "--episodes", "0"], "--episodes 0"),
        (["--task", "Hopper-v5", "--policy", "scripted-expert"], "only for ArmReach-v0"),
        (["--policy", "random", "--storage", "rosbag"], "--storage 'rosbag'"),
        (["--task", "Reacher-v5", "--policy", "random", "--bag", "somewhere"], "--bag"),
        (["--policy", "random", "--out", "bad name"], "dataset name 'bad name' is not valid"),
    ],
)
def test_bad_arguments_give_one_line_errors(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str], minari_root: Path
) -> None:
    full = ["collect", *argv] + ([] if "--out" in argv else ["--out", "x"])
    assert cli.main(full) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("offrl-robot collect: error:") and "\n" not in err and expected in err, err
    assert not any(minari_root.iterdir())  # nothing written


def test_existing_outputs_are_not_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], minari_root: Path
) -> None:
    ds = collect("ArmReach-v0", "random", episodes=1, seed=0).dataset
    save_dataset(ds, "taken")
    assert cli.main(["collect", "--policy", "random", "--episodes", "1", "--out", "taken"]) == 2
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "bag").mkdir()
    args = [
        "collect",
        "--policy",
        "random",
        "--episodes",
        "1",
        "--out",
        "fresh",
        "--bag",
        str(tmp_path / "bag"),
    ]
    assert cli.main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert not (minari_root / "fresh-v0").exists()
    assert (
        cli.main(["collect", "--policy", "random", "--episodes", "1", "--out", "taken", "--overwrite"]) == 0
    )
    assert len(load_dataset("taken")) == 150


def test_onnx_policy_rollout_uses_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dataclasses import replace

    from onnx_fixtures import default_metadata, torch_reference, write_policy

    from offrl_robot.sim import task_info

    info = task_info("ArmReach-v0")
    meta = replace(
        default_metadata(15, 6),
        observation_names=list(info.observation_names),
        action_names=list(info.action_names),
        action_low=list(info.action_low),
        action_high=list(info.action_high),
    )
    files = write_policy(tmp_path, "arm_policy", metadata=meta)
    ds = collect("ArmReach-v0", str(files.onnx_path), episodes=1, seed=0).dataset
    # every recorded action is what the model says for the recorded observation (via onnxruntime)
    np.testing.assert_allclose(ds.actions, torch_reference(files, ds.observations), atol=1e-5)
    assert np.ptp(ds.actions, axis=0).min() > 0 and ds.metadata.source["policy"] == str(files.onnx_path)
    # a model for another robot (names differ) is refused with one line, before any rollout
    other = write_policy(tmp_path, "other_robot", metadata=default_metadata(15, 6))
    assert cli.main(["collect", "--policy", str(other.onnx_path), "--episodes", "1", "--out", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "other_robot.onnx" in err, err
