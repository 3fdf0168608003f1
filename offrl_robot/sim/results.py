"""What the validation gate measured: per-episode traces and numbers, and the whole result.

Plain data, apart from the gate (`offrl_robot.sim.validate`, which produces it) and the report
(`offrl_robot.sim.report`, which draws it), so that neither of those imports the other's module
for its types.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from offrl_robot.card import ValidationRecord


@dataclass
class EpisodeConditions:
    """What one episode was run under (nominal: every scale 1, no noise, no delay)."""

    mass_scale: list[float] = field(default_factory=list)
    friction_scale: list[float] = field(default_factory=list)
    damping_scale: list[float] = field(default_factory=list)
    action_delay_ticks: int = 0
    observation_noise_std: list[float] = field(default_factory=list)


@dataclass
class EpisodeTrace:
    """One episode tick by tick, for plots and the video (rows = ticks; qpos/qvel include t=0)."""

    qpos: np.ndarray  # [T + 1, nq]
    qvel: np.ndarray  # [T + 1, nv]
    mocap_pos: np.ndarray  # [T + 1, nmocap, 3] (the goal marker on ArmReach)
    policy_action: np.ndarray  # [T, A] what the policy asked for
    command: np.ndarray  # [T, A] what the SafetyFilter sent
    applied: np.ndarray  # [T, A] what reached the actuators (= command d ticks earlier under a delay)
    flags: np.ndarray  # [T] Intervention bits per tick
    reward: np.ndarray  # [T]


@dataclass
class EpisodeStats:
    """Per-episode numbers (report.json lists them all)."""

    index: int
    env_seed: int
    episode_return: float
    length: int
    success: bool | None
    final_distance: float | None
    interventions: int
    interventions_by_kind: dict[str, int]
    joint_limit_ticks: int
    nan_events: int
    peak_joint_velocity: float
    peak_actuator_force: float
    peak_joint_torque: float
    conditions: EpisodeConditions


@dataclass
class ValidationResult:
    """Everything the gate measured; `record` is what goes into the card."""

    task: str
    episodes: int
    seed: int
    randomized: bool
    metrics: dict[str, float]
    thresholds: dict[str, dict[str, float]]
    skipped_thresholds: list[str]
    failures: list[str]
    passed: bool
    per_episode: list[EpisodeStats]
    traces: list[EpisodeTrace]
    joint_names: list[str]
    joint_qpos_addresses: list[int]
    joint_low: list[float]
    joint_high: list[float]
    joint_margin: list[float]
    action_names: list[str]
    action_low: list[float]
    action_high: list[float]
    control_rate_hz: float
    config: dict[str, Any]
    model_path: Path | None = None
    card_path: Path | None = None
    record: ValidationRecord | None = None

    def failure_line(self) -> str:
        """One line naming every failing metric and its value ('' when the gate passed)."""
        if self.passed:
            return ""
        return f"gate FAILED on {self.task}: " + "; ".join(self.failures)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly summary (no trajectories): what report.json holds."""
        return {
            "task": self.task,
            "episodes": self.episodes,
            "seed": self.seed,
            "randomized": self.randomized,
            "passed": self.passed,
            "failures": self.failures,
            "metrics": self.metrics,
            "thresholds": self.thresholds,
            "skipped_thresholds": self.skipped_thresholds,
            "model": str(self.model_path) if self.model_path else None,
            "card": str(self.card_path) if self.card_path else None,
            "date": self.record.date if self.record else None,
            "joints": {
                "names": self.joint_names,
                "low": self.joint_low,
                "high": self.joint_high,
                "limit_margin": self.joint_margin,
            },
            "actions": {"names": self.action_names, "low": self.action_low, "high": self.action_high},
            "control_rate_hz": self.control_rate_hz,
            "config": self.config,
            "per_episode": [asdict(stats) for stats in self.per_episode],
        }
