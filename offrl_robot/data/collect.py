"""`offrl-robot collect`: roll out a policy in MuJoCo, save a Minari dataset (and a rosbag2 log).

    offrl-robot collect --task ArmReach-v0|config/tasks/NAME.yaml --policy scripted-expert|random|FILE.onnx \
        --noise SIGMA --episodes N --seed S --out NAME [--bag DIR --storage mcap|sqlite3]

Why a bag too: a robot has no Minari writer, it has rosbag2. Writing the same run as a robot
would have logged it (JointState at the control rate with timestamp jitter, the command a
little later, the goal, episode markers) lets the rosbag ingestion path be tested against a
known dataset: ingesting the bag must reproduce what `collect` saved.

Determinism: one `--seed` drives the env (first reset; later resets continue its RNG), the
action noise, the random policy and the bag's timestamp jitter, each from its own stream.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from offrl_robot.data.dataset import Dataset, DatasetMetadata
from offrl_robot.errors import ConfigError, ModelError, OffrlError
from offrl_robot.sim.experts import ArmReachExpert, GaussianNoise, Policy, RandomPolicy, ReachExpert
from offrl_robot.sim.tasks import TaskInfo, make_env, task_info

BUILTIN_POLICIES = ("scripted-expert", "random")
STORAGES = ("mcap", "sqlite3")
# Bag clock: a fixed, realistic wall-clock start so the log looks like (and sorts like) a robot log.
BAG_EPOCH_NS = int(datetime(2026, 1, 15, 9, 0, 0, tzinfo=timezone.utc).timestamp()) * 1_000_000_000
EPISODE_GAP_NS = 1_000_000_000  # robots pause between episodes (reset, new goal)
JITTER_STD_NS = 1_000_000  # JointState stamp jitter around the nominal tick (std), ...
JITTER_MAX_NS = 3_000_000  # ... clipped to +-3 ms, far below half a 20 ms tick, so stamps stay ordered
LATENCY_RANGE_NS = (1_000_000, 6_000_000)  # compute latency: /cmd follows /joint_states by 1-6 ms


@dataclass
class CollectResult:
    """What a collection run produced (the dataset is not yet saved)."""

    dataset: Dataset
    episode_returns: list[float]
    episode_successes: list[bool] = field(default_factory=list)
    bag_path: Path | None = None

    @property
    def success_rate(self) -> float | None:
        return float(np.mean(self.episode_successes)) if self.episode_successes else None

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.episode_returns))


def bag_sha256(path: str | os.PathLike[str]) -> str:
    """Content hash of a rosbag2 directory (every file, by relative path, in sorted order)."""
    root = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    for file in files:
        digest.update(file.relative_to(root).as_posix().encode() if root.is_dir() else file.name.encode())
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _seed_streams(seed: int) -> tuple[int, int, int]:
    """Independent seeds for the random policy, the action noise and the bag jitter, from one --seed."""
    children = np.random.SeedSequence(seed).spawn(3)
    return tuple(int(child.generate_state(1)[0]) for child in children)  # type: ignore[return-value]


def make_policy(policy: str, info: TaskInfo, noise: float, seed: int) -> Policy:
    """Resolve `--policy` (+ `--noise`) to `obs -> action`, each random stream seeded from `seed`."""
    policy_seed, noise_seed, _ = _seed_streams(seed)
    low, high = np.asarray(info.action_low), np.asarray(info.action_high)
    base: Policy
    if policy == "scripted-expert":
        if info.definition is not None:  # a task file: the DLS reach expert on its site and joints
            base = ReachExpert(info.definition)
        elif info.name == "ArmReach-v0":
            base = ArmReachExpert()
        else:
            raise ConfigError(
                f"--policy scripted-expert exists only for ArmReach-v0 and task files, not {info.name}; "
                "use random or a .onnx model"
            )
    elif policy == "random":
        base = RandomPolicy(low, high, seed=policy_seed)
    elif policy.endswith(".onnx"):
        base = _onnx_policy(policy, info)
    else:
        raise ConfigError(f"--policy {policy!r}: choose scripted-expert, random, or a path to a .onnx model")
    if not (np.isfinite(noise) and noise >= 0):
        raise ConfigError(f"--noise {noise}: must be a finite number >= 0 (a fraction of the action range)")
    return GaussianNoise(base, noise, low, high, seed=noise_seed)


def _onnx_policy(path: str, info: TaskInfo) -> Policy:
    if not Path(path).is_file():
        raise ModelError(f"--policy {path}: file not found")
    from offrl_robot.runtime import PolicyRuntime  # lazy: onnxruntime only when a model is used

    runtime = PolicyRuntime(
        path,
        expected_observation_names=list(info.observation_names),
        expected_action_names=list(info.action_names),
    )
    return lambda obs: np.asarray(runtime.act(np.asarray(obs, dtype=np.float32)), dtype=np.float64)


class _BagLog:
    """Writes one collection run to a rosbag2 log with a robot-like clock (see module docstring)."""

    def __init__(self, writer: Any, joint_names: list[str], period_ns: int, seed: int) -> None:
        self.writer, self.joint_names, self.period_ns = writer, joint_names, period_ns
        self.rng = np.random.default_rng(seed)
        self.cursor = BAG_EPOCH_NS
        self.episode_start = BAG_EPOCH_NS
        self.last_tick_ns = BAG_EPOCH_NS

    def start_episode(self, index: int, goal: np.ndarray) -> None:
        self.episode_start = self.cursor
        self.writer.episode(self.episode_start, index)
        self.writer.goal(self.episode_start + 1_000_000, goal)

    def tick(self, k: int, obs: np.ndarray, effort: np.ndarray, goal: np.ndarray) -> int:
        """JointState (+ the goal, re-published) of tick k; returns its stamp."""
        nominal = self.episode_start + 5_000_000 + k * self.period_ns
        jitter = int(np.clip(self.rng.normal(0.0, JITTER_STD_NS), -JITTER_MAX_NS, JITTER_MAX_NS))
        stamp = nominal + jitter
        n = len(self.joint_names)
        self.writer.goal(stamp - 100_000, goal)
        self.writer.joint_state(stamp, self.joint_names, obs[:n], obs[n : 2 * n], effort)
        self.last_tick_ns = stamp
        return stamp

    def command(self, tick_stamp: int, action: np.ndarray) -> None:
        self.writer.command(tick_stamp + int(self.rng.integers(*LATENCY_RANGE_NS)), action)

    def end_episode(self) -> None:
        self.cursor = self.last_tick_ns + EPISODE_GAP_NS


def collect(
    task: str,
    policy: str,
    episodes: int,
    seed: int = 0,
    noise: float = 0.0,
    bag: str | os.PathLike[str] | None = None,
    storage: str = "mcap",
) -> CollectResult:
    """Roll out `policy` for `episodes` episodes; return the dataset (+ write the bag if asked)."""
    info = task_info(task)
    if episodes < 1:
        raise ConfigError(f"--episodes {episodes}: must be at least 1")
    if storage not in STORAGES:
        raise ConfigError(f"--storage {storage!r}: choose one of {', '.join(STORAGES)}")
    if bag is not None and info.name != "ArmReach-v0":
        raise ConfigError(
            f"--bag: only ArmReach-v0 is written as a robot log here, not {info.name}; for a task file run "
            "sim_node with model: TASK_FILE and log it with offrl-robot record"
        )
    act = make_policy(policy, info, noise, seed)
    env = make_env(info.name)
    jitter_seed = _seed_streams(seed)[2]
    low, high = np.asarray(info.action_low), np.asarray(info.action_high)
    try:
        if bag is None:
            return rollouts(env, info, act, episodes, seed, low, high, None, policy, noise)
        from offrl_robot.data.rosbag_write import RobotLogWriter

        with RobotLogWriter(bag, storage=storage) as writer:
            log = _BagLog(
                writer, list(env.unwrapped.joint_names), round(1e9 / info.control_rate_hz), jitter_seed
            )
            result = rollouts(env, info, act, episodes, seed, low, high, log, policy, noise)
        result.bag_path = Path(bag)
        result.dataset.metadata.source["bag"] = {
            "path": str(Path(bag).resolve()),
            "sha256": bag_sha256(bag),
            "storage": storage,
        }
        return result
    finally:
        env.close()


def rollouts(
    env: Any,
    info: TaskInfo,
    act: Policy,
    episodes: int,
    seed: int,
    low: np.ndarray,
    high: np.ndarray,
    log: _BagLog | None,
    policy: str,
    noise: float,
) -> CollectResult:
    """`episodes` seeded episodes of `act` in `env` as a dataset: the loop of `collect`, public for
    callers that build their own policy (benchmarks/hopper_behaviour.py rolls out its SAC actor)."""
    records: list[dict[str, np.ndarray]] = []
    returns: list[float] = []
    successes: list[bool] = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed if episode == 0 else None)
        observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
        goal = obs[-3:].copy() if log is not None else None
        if log is not None:
            log.start_episode(episode, goal)
        done, step, info_step = False, 0, {}
        while not done:
            action = np.asarray(act(obs), dtype=np.float64).reshape(-1)
            if action.shape != low.shape or not np.all(np.isfinite(action)):
                raise ModelError(
                    f"--policy {policy}: episode {episode} step {step} gave action {action!r}; expected {low.size} finite values"
                )
            action = np.clip(action, low, high)
            if log is not None:
                stamp = log.tick(step, obs, env.unwrapped.data.actuator_force.copy(), goal)
                log.command(stamp, action)
            obs, reward, terminated, truncated, info_step = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            terminations.append(terminated)
            truncations.append(truncated)
            done = terminated or truncated
            step += 1
        if log is not None:  # the state after the last command, so ingest sees the final next_observation
            log.tick(step, obs, env.unwrapped.data.actuator_force.copy(), goal)
            log.end_episode()
        records.append(
            {
                "observations": np.asarray(observations),
                "actions": np.asarray(actions),
                "rewards": np.asarray(rewards),
                "terminations": np.asarray(terminations),
                "truncations": np.asarray(truncations),
            }
        )
        returns.append(float(np.sum(rewards)))
        if info.is_arm_task:
            successes.append(bool(info_step.get("is_success", False)))
    metadata = DatasetMetadata(
        observation_names=list(info.observation_names),
        action_names=list(info.action_names),
        action_low=list(info.action_low),
        action_high=list(info.action_high),
        control_rate_hz=info.control_rate_hz,
        source={"kind": "env", "env_id": info.env_id, "policy": policy, "noise": noise, "seed": seed},
        reward=info.reward,
        task=info.name,
    )
    dataset = Dataset.from_episodes(records, metadata).validate("collected dataset")
    return CollectResult(dataset=dataset, episode_returns=returns, episode_successes=successes)


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--task",
        default="ArmReach-v0",
        help="task name (ArmReach-v0, Hopper-v5, ...) or task file (config/tasks/NAME.yaml)",
    )
    parser.add_argument(
        "--policy",
        required=True,
        help="scripted-expert (ArmReach and task files), random, or a path to a .onnx model",
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="Gaussian action noise std as a fraction of each action's range; ArmReach expert success "
        "measured at 0 / 0.1 / 0.2 / 0.3: 1.00 / 1.00 / 0.77 / 0.59",
    )
    parser.add_argument("--episodes", type=int, default=10, help="number of episodes (default 10)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for env, noise, random policy and bag jitter"
    )
    parser.add_argument(
        "--out", required=True, help="dataset name, e.g. arm_reach/expert-v0 (-v0 added if missing)"
    )
    parser.add_argument(
        "--root", default=None, help="datasets root (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    parser.add_argument(
        "--bag", default=None, help="also write the run as a rosbag2 log into this new directory"
    )
    parser.add_argument(
        "--storage", default="mcap", help="rosbag2 storage for --bag: mcap (default) or sqlite3"
    )


def run(args: argparse.Namespace) -> int:
    from offrl_robot.data.minari_io import dataset_id_from_name, datasets_root, save_dataset

    dataset_id = dataset_id_from_name(args.out)  # fail on a bad name before minutes of rollouts
    target = datasets_root(args.root) / dataset_id
    if target.exists() and not args.overwrite:
        raise OffrlError(
            f"--out {dataset_id}: already exists at {target}; choose another name or pass --overwrite"
        )
    result = collect(
        task=args.task,
        policy=args.policy,
        episodes=args.episodes,
        seed=args.seed,
        noise=args.noise,
        bag=args.bag,
        storage=args.storage,
    )
    path = save_dataset(result.dataset, dataset_id, root=args.root, overwrite=args.overwrite)
    ds = result.dataset
    success = f"{result.success_rate:.2f}" if result.success_rate is not None else "n/a"
    print(
        f"collected {ds.num_episodes} episodes, {len(ds)} transitions of {ds.metadata.task} "
        f"with {args.policy} (noise {args.noise:g}, seed {args.seed}): "
        f"success rate {success}, mean return {result.mean_return:.3f}"
    )
    print(f"dataset {dataset_id} -> {path}")
    if result.bag_path is not None:
        print(f"rosbag2 ({args.storage}) -> {result.bag_path}")
    return 0
