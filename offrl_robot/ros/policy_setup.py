"""Everything `policy_node` decides at *configure* time, without ROS: model, card gate, limits, safety.

Separated from the node so that the rules that protect the robot (which model may run, which
limits apply, what the safe action is) are plain functions, tested without DDS, and shared by
the ROS node and the in-process deploy runner.

Rules:
- The model is loaded through `PolicyRuntime`, which checks the ONNX file against its card
  (sha256, names, sizes); any problem is a one-line `ModelError`.
- A model whose card has no *passing* `validation:` block (the MuJoCo gate) is refused unless
  `allow_unvalidated` is true: an unvalidated policy must never move a robot by accident.
- `joint_names` (the robot's joints), when given, must contain every joint the model observes
  and commands, so a model trained on another robot is refused at configure, not at run time.
- Limit overrides may only *tighten* the model's action bounds: the card's bounds are what the
  policy was trained and validated for.
- Slew rates are given per second in the params file (robot units) and converted to the
  per-tick limit the SafetyFilter applies at the model's control rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from offrl_robot.card import ModelCard
from offrl_robot.errors import ConfigError, ModelError
from offrl_robot.mpc import MPCController, load_controller
from offrl_robot.ros.observation import split_name
from offrl_robot.runtime import PolicyRuntime
from offrl_robot.safety import SafetyConfig, SafetyFilter

TICK_SOURCES = ("timer", "joint_states")
COMMAND_TYPES = ("float64_multi_array", "joint_trajectory")


@dataclass
class PolicySetup:
    """A configured policy: the runtime, the filter, and the facts the node needs every tick."""

    model_path: Path
    runtime: PolicyRuntime | MPCController
    safety: SafetyFilter
    observation_names: list[str]
    action_names: list[str]
    action_joints: list[str]
    action_field: str
    control_rate_hz: float
    tick_source: str
    command_type: str
    watchdog_timeout: float
    validation_summary: str
    extra_topics: dict[str, str] = field(default_factory=dict)

    @property
    def period(self) -> float:
        return 1.0 / self.control_rate_hz

    def safe_command(self) -> np.ndarray:
        """One tick with no usable observation: the SafetyFilter moves to the safe action.

        Used on deactivate and shutdown, so the last thing on /cmd is never a policy action.
        It goes through the filter (not around it) so the slew limit still holds.
        """
        return self.safety.step(np.full(len(self.action_names), np.nan), None, float("inf"))


def validation_summary(card: ModelCard) -> str:
    """One line on a card's `validation:` block, for logs and /diagnostics."""
    record = card.validation
    if record is None:
        return "no validation block"
    return f"{'passed' if record.passed else 'FAILED'} on {record.task} ({record.date})"


def _per_action(values: Sequence[float], count: int, name: str) -> np.ndarray | None:
    if not values:
        return None
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 1:
        arr = np.full(count, float(arr[0]))
    if arr.size != count:
        raise ConfigError(
            f"policy parameter {name} has {arr.size} values for {count} actions; give one per action"
        )
    return arr


def load_policy_setup(params: dict[str, Any]) -> PolicySetup:
    """Build a `PolicySetup` from node parameters (see policy_node.PARAMETERS); one-line errors."""
    model_path = Path(str(params["model_path"])).expanduser()
    if not str(params["model_path"]):
        raise ConfigError(
            "policy parameter model_path is empty; set it in config/policy.yaml or with model:="
        )
    card_path = Path(params["card_path"]).expanduser() if params.get("card_path") else None
    # a policy -> PolicyRuntime; a dynamics ensemble (card algorithm: dynamics) -> MPCController
    runtime = load_controller(model_path, card_path=card_path)
    meta = runtime.metadata
    summary = validation_summary(runtime.card)
    try:
        runtime.card.require_passing_validation(runtime.card_path)
    except ModelError as err:
        if not params["allow_unvalidated"]:
            raise ModelError(
                f"{err}; policy parameter allow_unvalidated: true overrides this (supervised tests only)"
            ) from None
        summary = f"UNVALIDATED ({summary}), allowed by allow_unvalidated"
    observation_names = list(meta.observation_names)
    action_names = list(meta.action_names)
    action_joints, action_field = _action_joints_and_field(action_names)
    extra_topics: dict[str, str] = dict(params.get("extra_topics", {}))
    robot_joints = list(params.get("joint_names") or [])
    if robot_joints:
        observed = {split_name(n)[0] for n in observation_names} - set(extra_topics)
        unknown = sorted((observed | set(action_joints)) - set(robot_joints))
        if unknown:
            raise ModelError(
                f"{model_path}: model uses joints {unknown} that are not in joint_names {robot_joints}; "
                "wrong model for this robot?"
            )
    rate = float(params.get("control_rate_hz") or 0.0) or float(meta.control_rate_hz)
    if rate <= 0:
        raise ConfigError(f"control rate must be > 0 Hz, got {rate} (model {model_path})")
    tick_source = str(params["tick_source"])
    if tick_source not in TICK_SOURCES:
        raise ConfigError(f"policy parameter tick_source {tick_source!r} must be one of {TICK_SOURCES}")
    command_type = str(params["command_type"])
    if command_type not in COMMAND_TYPES:
        raise ConfigError(f"policy parameter command_type {command_type!r} must be one of {COMMAND_TYPES}")
    if command_type == "joint_trajectory" and not action_field:
        raise ModelError(
            f"{model_path}: action names {action_names} do not share one position/velocity/effort kind; "
            "a JointTrajectory needs one (use command_type float64_multi_array)"
        )
    n = len(action_names)
    low = np.asarray(meta.action_low, dtype=np.float64)
    high = np.asarray(meta.action_high, dtype=np.float64)
    for name, override, bound, tighter in (
        ("action_low", params.get("action_low"), low, np.greater_equal),
        ("action_high", params.get("action_high"), high, np.less_equal),
    ):
        values = _per_action(override or [], n, name)
        if values is None:
            continue
        if not tighter(values, bound).all():
            raise ConfigError(
                f"policy parameter {name} {values.tolist()} widens the model's bounds {bound.tolist()}; "
                "overrides may only tighten them"
            )
        bound[:] = values
    slew = _per_action(params.get("max_slew_rate") or [], n, "max_slew_rate")
    per_tick = np.full(n, np.inf) if slew is None else np.where(slew > 0, slew / rate, np.inf)
    safe_vector = params.get("safe_action_vector") or []
    safe_action: str | list[float] = (
        list(map(float, safe_vector)) if safe_vector else str(params["safe_action"])
    )
    watchdog = float(params["watchdog_timeout"])
    safety = SafetyFilter(
        SafetyConfig(
            low=low.tolist(),
            high=high.tolist(),
            max_delta_per_tick=per_tick.tolist(),
            safe_action=safe_action,
            max_observation_age_s=watchdog,
            blend_ticks=int(params["blend_in_ticks"]),
            source="policy parameters",
        )
    )
    return PolicySetup(
        model_path=model_path,
        runtime=runtime,
        safety=safety,
        observation_names=observation_names,
        action_names=action_names,
        action_joints=action_joints,
        action_field=action_field,
        control_rate_hz=rate,
        tick_source=tick_source,
        command_type=command_type,
        watchdog_timeout=watchdog,
        validation_summary=summary,
        extra_topics=extra_topics,
    )


def _action_joints_and_field(action_names: Sequence[str]) -> tuple[list[str], str]:
    """`joint_1.velocity_cmd`... -> (["joint_1", ...], "velocity"); kind "" when not one shared kind."""
    parts = [split_name(name) for name in action_names]
    kinds = {
        next((k for k in ("position", "velocity", "effort") if suffix.startswith(k)), "")
        for _, suffix in parts
    }
    return [joint for joint, _ in parts], kinds.pop() if len(kinds) == 1 else ""
