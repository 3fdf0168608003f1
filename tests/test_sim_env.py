"""ArmReach-v0 (real MuJoCo): API and limits, determinism, expert vs random, reward from data, task names."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np
import pytest

from offrl_robot.errors import ConfigError
from offrl_robot.sim import ARM_REACH_ID, known_tasks, make_env, task_info
from offrl_robot.sim.arm_reach import ArmReachEnv
from offrl_robot.sim.experts import ArmReachExpert, RandomPolicy
from offrl_robot.sim.rewards import arm_reach_reward


def rollout(env: ArmReachEnv, policy, seed: int) -> dict[str, np.ndarray]:
    obs, _ = env.reset(seed=seed)
    observations, actions, rewards, infos = [obs], [], [], []
    done = False
    while not done:
        action = policy(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
        infos.append(info)
        done = terminated or truncated
    return {
        "observations": np.array(observations),
        "actions": np.array(actions),
        "rewards": np.array(rewards),
        "final_distance": infos[-1]["distance"],
        "success": infos[-1]["is_success"],
        "steps": len(actions),
    }


@pytest.fixture(scope="module")
def env() -> ArmReachEnv:
    return ArmReachEnv()


def test_api_names_limits_and_rate(env: ArmReachEnv) -> None:
    assert env.joint_names == tuple(f"joint_{i}" for i in range(1, 7))
    assert len(env.observation_names) == 15 == env.observation_space.shape[0]
    assert env.observation_names[0] == "joint_1.position" and env.observation_names[6] == "joint_1.velocity"
    assert env.observation_names[-3:] == ("goal.x", "goal.y", "goal.z")
    assert env.action_names == tuple(f"joint_{i}.velocity_cmd" for i in range(1, 7))
    assert env.control_rate_hz == pytest.approx(50.0)
    np.testing.assert_allclose(env.action_space.low, env.action_low)
    np.testing.assert_allclose(env.action_space.high, env.action_high)
    assert np.all(env.action_low < 0) and np.all(env.action_high > 0) and np.all(env.action_high <= 2.0)
    low, high = env.joint_limits
    assert low.shape == high.shape == (6,) and np.all(low < high)
    info = task_info("ArmReach-v0")
    assert info.observation_names == env.observation_names and info.action_names == env.action_names
    np.testing.assert_allclose(info.action_low, env.action_low)
    assert info.is_arm_task and info.max_episode_steps == 150
    assert info.ref_min_return < info.ref_max_return < 0


def test_zero_command_holds_the_arm_still(env: ArmReachEnv) -> None:
    obs, _ = env.reset(seed=3)
    for _ in range(100):  # 2 s
        obs2, *_ = env.step(np.zeros(6))
    assert np.max(np.abs(obs2[:6] - obs[:6])) < 1e-4, (
        "gravity compensation + velocity servo must hold the pose"
    )
    assert np.max(np.abs(obs2[6:12])) < 1e-4


def test_commands_are_clipped_to_the_limits_and_tracked(env: ArmReachEnv) -> None:
    env.reset(seed=1)
    state = env.unwrapped.data.qpos.copy()
    env.step(np.full(6, 10.0))
    over = env.observation()
    env.set_state(state, np.zeros(6))
    env.step(env.action_high)
    np.testing.assert_array_equal(over, env.observation())
    env.reset(seed=1)
    for _ in range(10):
        obs, *_ = env.step(env.action_high * 0.8)
    # velocity servo tracks the command (within 5 %) and never exceeds the limit
    np.testing.assert_allclose(obs[6:12], env.action_high * 0.8, rtol=0.05)
    with pytest.raises(ValueError):
        env.step(np.full(6, np.nan))


def test_same_seed_same_episode_other_seed_other_goal() -> None:
    a, b = ArmReachEnv(), ArmReachEnv()
    ra = rollout(a, RandomPolicy(a.action_low, a.action_high, seed=7), seed=11)
    rb = rollout(b, RandomPolicy(b.action_low, b.action_high, seed=7), seed=11)
    np.testing.assert_array_equal(ra["observations"], rb["observations"])
    np.testing.assert_array_equal(ra["rewards"], rb["rewards"])
    other, _ = a.reset(seed=12)
    assert not np.allclose(other[-3:], ra["observations"][0, -3:])


def test_goal_sampling_is_inside_the_reachable_region(env: ArmReachEnv) -> None:
    goals = np.array([env.reset(seed=s)[0][-3:] for s in range(200)])
    radius = np.linalg.norm(goals[:, :2], axis=1)
    assert radius.min() >= 0.25 - 1e-9 and radius.max() <= 0.55 + 1e-9
    assert goals[:, 2].min() >= 0.08 and goals[:, 2].max() <= 0.55
    assert np.all(np.linalg.norm(goals - [0, 0, 0.16], axis=1) <= 0.6 + 1e-9)


def test_scripted_expert_reaches_within_2cm_and_random_does_not(env: ArmReachEnv) -> None:
    expert = [rollout(env, ArmReachExpert(), seed=100 + s) for s in range(20)]
    success = np.mean([r["success"] for r in expert])
    print(
        f"expert success {success:.2f}, worst final distance {max(r['final_distance'] for r in expert):.4f} m"
    )
    assert success >= 0.95
    assert all(r["steps"] == 150 for r in expert)
    rand = RandomPolicy(env.action_low, env.action_high, seed=0)
    random_runs = [rollout(env, rand, seed=100 + s) for s in range(20)]
    assert np.mean([r["success"] for r in random_runs]) <= 0.1
    assert (
        np.mean([r["rewards"].sum() for r in expert])
        > np.mean([r["rewards"].sum() for r in random_runs]) + 30
    )


def test_reward_function_from_data_equals_env_reward(env: ArmReachEnv) -> None:
    run = rollout(env, RandomPolicy(env.action_low, env.action_high, seed=3), seed=5)
    obs = run["observations"].astype(np.float32)  # what a dataset stores
    recomputed = arm_reach_reward(obs[:-1], run["actions"].astype(np.float32), obs[1:])
    assert recomputed.shape == (150,)
    np.testing.assert_allclose(recomputed, run["rewards"], atol=2e-5)
    # and it is not trivially constant: the reward varies with the state
    assert np.ptp(recomputed) > 0.05


def test_vectorised_kinematics_match_mujoco(env: ArmReachEnv) -> None:
    low, high = env.joint_limits
    qs = np.random.default_rng(0).uniform(low, high, size=(64, 6))
    fk = env.kinematics.site_position(qs)
    data = mujoco.MjData(env.model)
    for q, ee in zip(qs, fk, strict=True):
        data.qpos[:] = q
        mujoco.mj_kinematics(env.model, data)
        np.testing.assert_allclose(ee, data.site("ee").xpos, atol=1e-12)


def test_set_goal_and_apply_control(env: ArmReachEnv) -> None:
    env.reset(seed=0)
    env.set_goal([0.3, -0.2, 0.4])
    np.testing.assert_array_equal(env.observation()[-3:], [0.3, -0.2, 0.4])
    before = env.data.time
    env.apply_control(np.array([0.5, 0, 0, 0, 0, 0]))
    assert env.data.time == pytest.approx(before + 0.02)
    assert env.observation()[6] > 0.3
    with pytest.raises(ValueError):
        env.set_goal([0, np.inf, 0])


def test_registered_env_truncates_and_reports_success() -> None:
    env = gym.make(ARM_REACH_ID)
    env.reset(seed=0)
    steps, truncated, terminated = 0, False, False
    while not (terminated or truncated):
        _, _, terminated, truncated, info = env.step(np.zeros(6))
        steps += 1
    assert steps == 150 and truncated and not terminated
    assert set(info) >= {"distance", "is_success"} and info["is_success"] is False


@pytest.mark.parametrize(
    "name",
    ["ArmReach-v0", ARM_REACH_ID, "Hopper-v5", "HalfCheetah-v5", "Walker2d-v5", "Reacher-v5", "Pusher-v5"],
)
def test_tasks_resolve_by_name_and_match_task_info(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # MuJoCo writes deprecation warnings of gymnasium's XML to ./MUJOCO_LOG.TXT
    env = make_env(name)
    info = task_info(name)
    assert env.observation_space.shape == (len(info.observation_names),)
    assert env.action_space.shape == (len(info.action_names),)
    np.testing.assert_allclose(env.action_space.low, info.action_low)
    np.testing.assert_allclose(env.action_space.high, info.action_high)
    assert 1.0 / env.unwrapped.dt == pytest.approx(info.control_rate_hz)
    assert env.spec.max_episode_steps == info.max_episode_steps
    obs, _ = env.reset(seed=0)
    assert np.all(np.isfinite(obs))
    env.close()
    if name in ("Hopper-v5", "HalfCheetah-v5", "Walker2d-v5"):
        assert info.normalized_score(info.ref_max_return) == pytest.approx(100.0)


def test_unknown_task_is_one_line_listing_known_ones() -> None:
    with pytest.raises(ConfigError) as err:
        make_env("Hoper-v5")
    message = str(err.value)
    assert "\n" not in message and "Hoper-v5" in message
    assert all(name in message for name in known_tasks())
