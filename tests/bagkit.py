"""Helpers for the rosbag tests: small arm bags written with the project's RobotLogWriter.

`write_arm_bag` logs ticks the way `collect --bag` does (joint state at a jittered tick time,
the command a little later, a goal and an episode marker at each episode start, and the final
joint state after the last command) and returns the transitions a correct ingest must produce.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from offrl_robot.data.rosbag_write import RobotLogWriter

JOINTS = [f"joint_{i}" for i in range(1, 7)]
PERIOD_NS = 20_000_000
EPOCH_NS = 1_767_225_600 * 1_000_000_000  # 2026-01-01, a realistic robot clock


@dataclass
class ArmLog:
    observations: np.ndarray
    actions: np.ndarray
    next_observations: np.ndarray
    episode_lengths: list[int]
    joint_times: list[int]
    command_times: list[int]


def write_arm_bag(
    path: Path,
    storage: str = "mcap",
    episodes: int = 2,
    steps: int = 15,
    seed: int = 0,
    jitter_ns: int = 3_000_000,
    latency_ns: int = 6_000_000,
    compression: str | None = None,
    skip_joint_ticks: frozenset[tuple[int, int]] = frozenset(),
    start_ns: int = EPOCH_NS,
    first_episode: int = 0,
) -> ArmLog:
    """Write a bag; `skip_joint_ticks` = {(episode, tick)} whose joint state is not logged."""
    rng = np.random.default_rng(seed)
    obs, act, nxt, lengths, jt, ct = [], [], [], [], [], []
    t0 = start_ns
    with RobotLogWriter(path, storage=storage, compression=compression) as log:
        for ep in range(first_episode, first_episode + episodes):
            goal = rng.uniform(-0.5, 0.5, size=3)
            log.episode(t0, ep)
            log.goal(t0, goal)
            states = []
            for k in range(steps + 1):
                stamp = t0 + 1_000_000 + k * PERIOD_NS + int(rng.integers(-jitter_ns, jitter_ns + 1))
                q, v = rng.normal(size=6), rng.normal(size=6)
                states.append(np.concatenate([q, v, goal]))
                if (ep, k) not in skip_joint_ticks:
                    log.joint_state(stamp, JOINTS, q, v)
                    jt.append(stamp)
                if k < steps:
                    a = rng.uniform(-1.5, 1.5, size=6)
                    log.command(stamp + latency_ns, a)
                    ct.append(stamp + latency_ns)
                    act.append(a)
            obs.extend(states[:-1])
            nxt.extend(states[1:])
            lengths.append(steps)
            t0 += (steps + 1) * PERIOD_NS + 1_000_000_000
    f32 = np.float32
    return ArmLog(np.array(obs, f32), np.array(act, f32), np.array(nxt, f32), lengths, jt, ct)
