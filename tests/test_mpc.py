"""CEM and MPPI find the optimum of a known quadratic, warm start and rate limits behave, and
MPC over an ensemble trained on scripted-expert data reaches goals on ArmReach through the
real validation gate (PolicyRuntime's place, SafetyFilter included)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from offrl_robot.errors import ConfigError
from offrl_robot.mpc import CEMPlanner, MPCConfig, MPPIPlanner, load_controller, make_planner
from offrl_robot.registry import register_reward

REPO = Path(__file__).resolve().parents[1]
HORIZON, ACT_DIM = 5, 3
LOW, HIGH = [-1.0] * ACT_DIM, [1.0] * ACT_DIM


def quadratic(target: np.ndarray) -> tuple[Callable[[np.ndarray], np.ndarray], np.ndarray]:
    """J(seq) = -sum (seq - target)^2: the unique maximiser is `target` (inside the box)."""

    def objective(sequences: np.ndarray) -> np.ndarray:
        return -np.square(sequences - target).sum(axis=(1, 2))

    return objective, target


@pytest.fixture
def target() -> np.ndarray:
    return np.random.default_rng(5).uniform(-0.7, 0.7, (HORIZON, ACT_DIM))


def test_cem_finds_the_optimum_of_a_quadratic(target: np.ndarray) -> None:
    objective, _ = quadratic(target)
    planner = make_planner(MPCConfig(method="cem", horizon=HORIZON, samples=256, iterations=10), LOW, HIGH)
    assert isinstance(planner, CEMPlanner)
    plan = planner.plan(objective)
    assert plan.shape == (HORIZON, ACT_DIM)
    assert np.abs(plan - target).max() < 0.05


def test_mppi_finds_the_optimum_of_a_quadratic(target: np.ndarray) -> None:
    objective, _ = quadratic(target)
    config = MPCConfig(
        method="mppi", horizon=HORIZON, samples=256, iterations=40, temperature=1.0, init_std=0.2
    )
    planner = make_planner(config, LOW, HIGH)
    assert isinstance(planner, MPPIPlanner)
    start_error = np.abs(planner.mean - target).max()
    plan = planner.plan(objective)
    assert np.abs(plan - target).max() < 0.1 < start_error


def test_same_seed_same_plan_and_reset_restarts_the_stream(target: np.ndarray) -> None:
    objective, _ = quadratic(target)
    config = MPCConfig(method="mppi", horizon=HORIZON, samples=64, seed=3)
    first, second = make_planner(config, LOW, HIGH), make_planner(config, LOW, HIGH)
    np.testing.assert_array_equal(first.plan(objective), second.plan(objective))
    first.reset()
    again = first.plan(objective)
    np.testing.assert_array_equal(again, make_planner(config, LOW, HIGH).plan(objective))
    other = make_planner(MPCConfig(method="mppi", horizon=HORIZON, samples=64, seed=4), LOW, HIGH)
    assert not np.array_equal(other.plan(objective), again)


def test_warm_start_shifts_the_plan_and_beats_a_cold_start(target: np.ndarray) -> None:
    # a time-invariant optimum: after a tick the shifted plan is still (nearly) optimal
    still = np.tile(target[0], (HORIZON, 1))
    objective, _ = quadratic(still)
    config = MPCConfig(method="cem", horizon=HORIZON, samples=64, iterations=6)
    warm = make_planner(config, LOW, HIGH)
    plan = warm.plan(objective)
    warm.advance()
    np.testing.assert_array_equal(warm.mean[:-1], plan[1:])
    np.testing.assert_array_equal(warm.mean[-1], plan[-1])
    np.testing.assert_array_equal(warm.previous, plan[0])
    one_round = MPCConfig(method="cem", horizon=HORIZON, samples=64, iterations=1)
    warm.config = one_round
    cold = make_planner(one_round, LOW, HIGH)
    warm_score = objective(warm.plan(objective)[None])[0]
    cold_score = objective(cold.plan(objective)[None])[0]
    assert warm_score > cold_score


def test_rate_limit_holds_for_every_candidate_and_the_plan() -> None:
    far = np.full((HORIZON, ACT_DIM), 0.9)
    objective, _ = quadratic(far)
    config = MPCConfig(method="cem", horizon=HORIZON, samples=128, iterations=5, max_action_change=0.1)
    planner = make_planner(config, LOW, HIGH)
    seen: list[np.ndarray] = []

    def recording(sequences: np.ndarray) -> np.ndarray:
        seen.append(sequences.copy())
        return objective(sequences)

    plan = planner.plan(recording)
    for sequences in [*seen, plan[None]]:
        steps = np.diff(np.concatenate([np.zeros((len(sequences), 1, ACT_DIM)), sequences], axis=1), axis=1)
        assert np.abs(steps).max() <= 0.1 + 1e-12
    # it still heads for the far target, as fast as the limit allows at the first tick
    assert plan[0].min() > 0.05 and plan[-1].min() > 0.15
    assert objective(plan[None])[0] > objective(np.zeros((1, HORIZON, ACT_DIM)))[0]


def test_planner_config_errors_are_one_line() -> None:
    with pytest.raises(ConfigError, match="unknown planner key"):
        MPCConfig.from_dict({"horizn": 3})
    with pytest.raises(ConfigError, match="method 'ilqr'"):
        MPCConfig.from_dict({"method": "ilqr"})
    with pytest.raises(ConfigError, match="horizon must be an integer"):
        MPCConfig.from_dict({"horizon": 0})
    with pytest.raises(ConfigError, match="'learned' or a registered reward function"):
        MPCConfig.from_dict({"reward": "distance"})
    # never an import of whatever a card names (that would run code at configure time)
    with pytest.raises(ConfigError, match="registered reward function"):
        MPCConfig.from_dict({"reward": "os:getcwd"})
    with pytest.raises(ConfigError, match="one value or one per action"):
        make_planner(MPCConfig(max_action_change=[0.1, 0.2]), LOW, HIGH)


def linear_reward(obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    """A named reward (`test_mpc:linear_reward`) for the unrolled-graph test: row-wise."""
    return -np.square(next_obs).sum(-1) - 0.1 * np.square(act).sum(-1) + 0.01 * obs[:, 0]


register_reward("test_mpc:linear_reward", linear_reward)  # this process's allow-list


@pytest.mark.parametrize("reward", ["learned", "test_mpc:linear_reward"])
def test_horizon_graph_scores_exactly_like_stepping_the_exported_model(tmp_path: Path, reward: str) -> None:
    """One call of the horizon-unrolled graph == H calls of the deployed one-step graph, state fed
    back as the ensemble mean, reward + disagreement penalty discounted (float32 rounding)."""
    import onnxruntime as ort
    from test_dynamics import linear_dataset

    from offrl_robot.algos.dynamics import fit_dynamics
    from offrl_robot.export.dynamics import export_dynamics
    from offrl_robot.mpc import MPCController
    from offrl_robot.train import TrainConfig

    dataset = linear_dataset(600)
    config = TrainConfig(
        algo="dynamics",
        steps=30,
        threads=1,
        progress=False,
        algo_config={"members": 3, "hidden_sizes": [16, 16]},
    )
    model = tmp_path / "linear.onnx"
    export_dynamics(
        fit_dynamics(config, dataset, run_dir=tmp_path / "run").checkpoint, model, dataset=dataset
    )
    samples, horizon, discount, penalty = 32, 6, 0.9, 0.7
    planner = MPCConfig(samples=samples, horizon=horizon, reward=reward, discount=discount, penalty=penalty)
    controller = MPCController(model, config=planner)
    start = dataset.observations[5]
    sequences = np.random.default_rng(0).uniform(-1.0, 1.0, (samples, horizon, 2))
    controller._objective.observation[...] = start
    got = controller._objective(sequences)

    step = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    state = np.tile(start, (samples, 1)).astype(np.float32)
    expected, weight = np.zeros(samples), 1.0
    for t in range(horizon):
        action = sequences[:, t].astype(np.float32)
        nxt, r, d = step.run(
            ["next_observation", "reward", "disagreement"], {"observation": state, "action": action}
        )
        if reward != "learned":
            r = linear_reward(state, action, nxt)
        expected += weight * (r - penalty * d)
        weight *= discount
        state = nxt
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert controller.act(start).shape == (2,)


# The fixture's recipe, measured (AMD EPYC, 1 thread; collect seed = fit seed = s, the gate's seed
# 0 and 20 episodes, success rate):
#   20 expert episodes, patience 5 (the old recipe):   0.6, 0.75, 0.5          (s = 0..2)
#   100 episodes, patience 5:                          1, 1, 1, 0.7, 1, 0.9    (s = 0..5)
#   100 episodes, patience 20, cap 8,000 (this one):   1, 0.95, 1, 1, 1, 1, 1, 1  (s = 0..7)
#   ... and 30 more episodes each (gate seed 100) for s = 0, 1, 3, 6: 1, 1, 1, 1
# The ensemble needs goals all over the workspace (100 episodes), and enough updates: with
# ~50 updates per epoch, patience 5 can stop at ~1,600 updates (s = 3: held-out error 0.044 vs
# 0.041, yet 0.7 success: far goals behind the base are missed). Patience 20 (~1,000 updates
# without a 1 % gain) ran 4,800-8,000. Cost: collect ~3 s, fit ~10-22 s, gate ~31 s.
EXPERT_EPISODES = 100
GATE_EPISODES = 20  # config/validate.yaml's own count: the gate as `offrl-robot validate` runs it


@pytest.fixture(scope="module")
def validated_mpc_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """collect (scripted expert + noise) -> fit -> export -> validation gate, all real; the card
    keeps the gate's verdict, as a deployed model's would."""
    from offrl_robot.algos.dynamics import fit_dynamics
    from offrl_robot.data.collect import collect
    from offrl_robot.export.dynamics import export_dynamics
    from offrl_robot.sim.validate import validate_model
    from offrl_robot.train import TrainConfig

    folder = tmp_path_factory.mktemp("mpc")
    dataset = collect("ArmReach-v0", "scripted-expert", episodes=EXPERT_EPISODES, seed=0, noise=0.3).dataset
    shipped = TrainConfig.from_yaml(REPO / "config/dynamics/arm_reach.yaml").algo_config
    config = TrainConfig(
        algo="dynamics",
        steps=8000,  # a cap (held-out early stopping ended 2 of the 8 measured fits before it)
        batch_size=256,
        threads=1,
        progress=False,
        # the shipped ensemble shape and planner: the gate validates what deploys
        algo_config={**{k: shipped[k] for k in ("members", "hidden_sizes", "mpc")}, "patience": 20},
    )
    fit = fit_dynamics(config, dataset, run_dir=folder / "run")
    model = folder / "arm_reach_mpc.onnx"
    export_dynamics(fit.checkpoint, model, dataset=dataset)
    return model, validate_model(model, task="ArmReach-v0", episodes=GATE_EPISODES, seed=0)


def _per_episode(result: object) -> str:
    return " ".join(f"{e.index}:{int(bool(e.success))}/{e.final_distance:.3f}m" for e in result.per_episode)


@pytest.mark.slow
def test_mpc_trained_on_expert_data_reaches_the_goal_through_the_gate(
    validated_mpc_model: tuple[Path, object],
) -> None:
    from offrl_robot.mpc import MPCController

    model, result = validated_mpc_model
    controller = load_controller(model)
    assert isinstance(controller, MPCController) and controller.config.horizon == 20
    metrics = result.metrics
    assert result.episodes == GATE_EPISODES
    # The shipped gate's bar (success >= 0.9 over 20 episodes): measured 279 of 280 episodes
    # over eight data/fit seeds (see above), so two unlucky episodes out of 20 still pass.
    assert result.passed, f"{result.failure_line()}; per episode {_per_episode(result)}"
    assert metrics["success_rate"] >= 0.9, _per_episode(result)
    assert metrics["final_distance_mean"] < 0.02, _per_episode(result)  # measured 4-7 mm
    assert metrics["nan_events"] == 0
    # the planner respects the slew limit itself: the filter never has to cut its commands
    assert metrics["interventions_slew_limited"] == 0


@pytest.mark.slow
@pytest.mark.ros
def test_mpc_through_policy_node_reaches_the_goal_over_dds(
    validated_mpc_model: tuple[Path, object], ros_env: dict[str, str], run_child: object
) -> None:
    """sim_node + policy_node (config/policy.yaml, model_path = the MPC model) as two processes.

    The episode is one the gate itself ran and saw reached: sim_node's episode 1 resets with
    seed + 1, so `seed:=k-1` replays gate episode k (same start posture, same goal). What is
    tested is then the deployment path (DDS, sim time, policy.yaml's filter), not whether this
    model happens to reach one more random goal; the gate's success rate is asserted above.
    """
    pytest.importorskip("rclpy", reason="ROS 2 rclpy is not installed")
    from offrl_robot.ros.probe import RosProbe
    from offrl_robot.sim.tasks import make_env

    model, result = validated_mpc_model
    assert result.passed  # policy_node refuses a model without a passing validation block
    env = make_env("ArmReach-v0")
    reached_in_gate = []
    for episode in result.per_episode:
        env.reset(seed=episode.env_seed)
        if episode.env_seed >= 1 and episode.success and env.unwrapped.distance() > 0.15:
            reached_in_gate.append(episode.env_seed)
    env.close()
    assert reached_in_gate, (
        f"no gate episode with env seed >= 1 started > 15 cm away and was reached: {_per_episode(result)}"
    )
    sim_seed = reached_in_gate[0] - 1
    bin_dir = Path(sys.executable).parent
    sim = run_child.start(
        [
            *(str(bin_dir / "sim_node"), "--ros-args", "--params-file", str(REPO / "config/sim.yaml")),
            *("-p", f"seed:={sim_seed}", "-p", "real_time_factor:=0.5"),
        ],
        env=ros_env,
    )
    policy = run_child.start(
        [
            *(str(bin_dir / "policy_node"), "--ros-args", "--params-file", str(REPO / "config/policy.yaml")),
            *("-p", f"model_path:={model}", "-p", "use_sim_time:=true"),
        ],
        env=ros_env,
    )

    def output(proc: object) -> str:
        run_child.kill(proc)
        return proc.communicate(timeout=10)[0] or ""

    with RosProbe(int(ros_env["ROS_DOMAIN_ID"])) as probe:
        up = probe.spin_until(lambda: len(probe.metrics) > 2 and len(probe.cmds) > 2, timeout=60.0)
        assert up, f"sim:\n{output(sim)}\npolicy:\n{output(policy)}"
        response = probe.trigger("/sim_node/reset")
        assert response is not None and response.success, response
        assert f"seed {sim_seed + 1}" in response.message, response.message
        # 40 s wall at half real time = 1,000 ticks, 6.7x the gate's 150-tick episode: room for a
        # slow, shared CI machine; a planner that cannot reach the goal never gets within 2 cm.
        reached = probe.spin_until(
            lambda: any(m.data["success"] == 1.0 and m.data["episode"] == 1.0 for m in probe.metrics),
            timeout=40.0,
        )
        episode = [m.data for m in probe.metrics if m.data["episode"] == 1.0]
        assert reached, f"MPC did not reach the goal; last metrics {episode[-1:]}\npolicy:\n{output(policy)}"
        assert episode[0]["distance_to_goal"] > 0.05, "the episode must start away from the goal"
        assert any(any(v != 0.0 for v in c.data) for c in probe.cmds), "MPC must have moved the arm"
