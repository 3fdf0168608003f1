"""Helpers for the rosbag tests: small arm bags written with the project's RobotLogWriter.

`write_arm_bag` logs ticks the way `collect --bag` does (joint state at a jittered tick time,
the command a little later, a goal and an episode marker at each episode start, and the final
joint state after the last command) and returns the transitions a correct ingest must produce.
"""

from __future__ import annotations

from collections.abc import Callable
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


# ------------------------------------------------------------------------- Franka FR3 + gripper
FR3_ARM = [f"fr3_joint{i}" for i in range(1, 8)]
FR3_FINGERS = ["fr3_finger_joint1", "fr3_finger_joint2"]
# FR3 joint position limits (rad), franka_description's fr3 joint_limits.yaml
FR3_LOW = np.array([-2.7437, -1.7837, -2.9007, -3.0421, -2.8065, 0.5445, -3.0159])
FR3_HIGH = np.array([2.7437, 1.7837, 2.9007, -0.1518, 2.8065, 4.5169, 3.0159])


@dataclass
class JointMessage:
    """One logged JointState message as written (names in the order they were published)."""

    receive_ns: int
    header_ns: int
    names: list[str]
    position: np.ndarray
    velocity: np.ndarray  # empty when the publisher sends none
    effort: np.ndarray


@dataclass
class Fr3Log:
    joint_messages: list[JointMessage]  # in receive order
    command_times: list[int]
    commands: np.ndarray
    episode_starts: list[int]


def write_fr3_bag(
    path: Path,
    storage: str = "mcap",
    episodes: int = 2,
    seconds: float = 0.5,
    seed: int = 0,
    shuffle: bool = False,
    arm_hz: float = 1000.0,
    gripper_hz: float = 30.0,
    command_hz: float = 100.0,
    edit: Callable[[JointMessage], None] | None = None,
) -> Fr3Log:
    """A franka_ros2-like log: one /joint_states topic fed by two publishers.

    - the arm's joint_state_broadcaster: fr3_joint1..7 with position, velocity and effort at
      `arm_hz`, header stamped at the sample, received 0.1-0.5 ms later;
    - the gripper node: fr3_finger_joint1/2 with positions only (velocity and effort empty) at
      `gripper_hz`, header stamped at its sample, received 3-8 ms later (so in header-stamp
      order the topic goes backwards whenever a gripper message overtakes arm samples);
    - joint position setpoints (7) on /cmd at `command_hz` from 50 ms into each episode, an
      /episode marker at each episode start; the arm keeps publishing 30 ms past the last command.

    `shuffle`: every message lists its joints in a fresh random order (values follow the names).
    `edit`: called on every joint message before it is written (e.g. to poison one value).
    """
    rng = np.random.default_rng(seed)
    messages: list[JointMessage] = []
    commands: list[tuple[int, np.ndarray]] = []
    starts: list[int] = []
    t0 = EPOCH_NS
    arm_period, cmd_period = round(1e9 / arm_hz), round(1e9 / command_hz)
    grip_period = round(1e9 / gripper_hz) if gripper_hz else 0  # 0 Hz: no gripper publisher
    centre = (FR3_LOW + FR3_HIGH) / 2
    for _ in range(episodes):
        starts.append(t0)
        n_cmd = round(seconds * command_hz)
        end = t0 + 50_000_000 + n_cmd * cmd_period + 30_000_000
        for k in range(int((end - t0) // arm_period)):
            sample = t0 + 1_000_000 + k * arm_period
            q = centre + rng.uniform(-0.5, 0.5, 7)
            messages.append(
                JointMessage(
                    sample + int(rng.integers(100_000, 500_000)),
                    sample,
                    list(FR3_ARM),
                    q,
                    rng.normal(0, 0.3, 7),
                    rng.normal(0, 5.0, 7),
                )
            )
        for k in range(int((end - t0) // grip_period) + 1 if grip_period else 0):
            sample = t0 + 2_000_000 + k * grip_period
            width = rng.uniform(0.0, 0.04)
            messages.append(
                JointMessage(
                    sample + int(rng.integers(3_000_000, 8_000_000)),
                    sample,
                    list(FR3_FINGERS),
                    np.array([width, width + rng.uniform(-1e-4, 1e-4)]),
                    np.zeros(0),
                    np.zeros(0),
                )
            )
        for k in range(n_cmd):
            commands.append((t0 + 50_000_000 + k * cmd_period, centre + rng.uniform(-0.5, 0.5, 7)))
        t0 = end + 1_000_000_000
    messages.sort(key=lambda m: m.receive_ns)
    if shuffle:
        for m in messages:
            order = rng.permutation(len(m.names))
            m.names = [m.names[i] for i in order]
            m.position = m.position[order]
            m.velocity = m.velocity[order] if m.velocity.size else m.velocity
            m.effort = m.effort[order] if m.effort.size else m.effort
    if edit is not None:
        for m in messages:
            edit(m)
    with RobotLogWriter(path, storage=storage) as log:
        events: list[tuple[int, int, object]] = [(t, 0, k) for k, t in enumerate(starts)]
        events += [(m.receive_ns, 1, m) for m in messages]
        events += [(t, 2, a) for t, a in commands]
        for stamp, kind, item in sorted(events, key=lambda e: (e[0], e[1])):
            if kind == 0:
                log.episode(stamp, int(item))  # type: ignore[arg-type]
            elif kind == 1:
                m = item
                assert isinstance(m, JointMessage)
                log.joint_state(stamp, m.names, m.position, m.velocity, m.effort, header_ns=m.header_ns)
            else:
                log.command(stamp, item)
    return Fr3Log(messages, [t for t, _ in commands], np.array([a for _, a in commands]), starts)
