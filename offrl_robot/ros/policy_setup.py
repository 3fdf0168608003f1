"""Everything `policy_node` decides at *configure* time, without ROS: model, card gate, limits, safety.

Separated from the node so that the rules that protect the robot (which model may run, which
limits apply, what the safe action is) are plain functions, tested without DDS, and shared by
the ROS node and the in-process deploy runner.

Rules:
- The model is loaded through `PolicyRuntime`, which checks the ONNX file against its card
  (sha256, names, sizes); any problem is a one-line `ModelError`.
- A model whose card has no verdict licensing *these exact bytes* is refused unless
  `allow_unvalidated` is true: the verdict must record the loaded file's sha256, its own
  thresholds must hold for its metrics (`passed` is re-derived, never trusted), and they must be
  at least as strict as `min_thresholds` (card.verdict_problems). An unvalidated policy must never
  move a robot by accident.
- `joint_names` (the robot's joints), when given, must contain every joint the model observes
  and commands, so a model trained on another robot is refused at configure, not at run time.
- Limit overrides may only *tighten* the model's action bounds: the card's bounds are what the
  policy was trained and validated for.
- Slew rates are per second (robot units); the SafetyFilter applies rate x measured dt per tick.
- Every safety parameter is checked at load: slew rates > 0 (.inf = explicitly unlimited),
  finite watchdog, control rate in [1, 2000] Hz, and so on; a bad value is a one-line ConfigError.
- The safe action fits the command kind (`safe_action: auto`: hold the measured position for
  position commands, zero for velocity/effort; the mismatched choices are refused).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from offrl_robot.card import DEFAULT_THRESHOLD_FLOOR, ModelCard, parse_threshold_floor
from offrl_robot.errors import ConfigError, ModelError
from offrl_robot.mpc import MPCController, load_controller
from offrl_robot.ros.observation import split_name
from offrl_robot.runtime import PolicyRuntime
from offrl_robot.safety import SafetyConfig, SafetyFilter, command_kind, resolve_safe_action

TICK_SOURCES = ("timer", "joint_states")
COMMAND_TYPES = ("float64_multi_array", "joint_trajectory")
HEADER_STAMP_MODES = ("auto", "true", "false")
CONTROL_RATE_RANGE_HZ = (1.0, 2000.0)
# Parameters a caller of `load_policy_setup` may leave out (the node always passes every one).
OPTIONAL_DEFAULTS: dict[str, float] = {
    "control_rate_hz": 0.0,
    "max_inference_s": 0.0,
    "estop_heartbeat_timeout": 0.0,
    "estop_discovery_s": 1.0,
}
ESTOP_DISCOVERY_MAX_S = 60.0


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
    # joints whose *measured* position is the safe command ("hold" on position commands), else None
    hold_joints: list[str] | None = None
    max_inference_s: float = 0.0
    use_header_stamp: str = "auto"
    estop_heartbeat_timeout: float = 0.0
    estop_discovery_s: float = 1.0

    @property
    def period(self) -> float:
        return 1.0 / self.control_rate_hz

    def safe_command(self, hold_reference: np.ndarray | None = None) -> np.ndarray:
        """One tick with no usable observation: the SafetyFilter moves to the safe action.

        Used on deactivate and shutdown, so the last thing on /cmd is never a policy action.
        It goes through the filter (not around it) so the slew limit still holds.
        """
        return self.safety.step(
            np.full(len(self.action_names), np.nan), None, float("inf"), hold_reference=hold_reference
        )


def validation_summary(card: ModelCard) -> str:
    """One line on a card's `validation:` block, for logs and /diagnostics."""
    record = card.validation
    if record is None:
        return "no validation block"
    return f"{'passed' if record.passed else 'FAILED'} on {record.task} ({record.date})"


def _per_action(values: Sequence[float], count: int, name: str) -> np.ndarray | None:
    if not values:
        return None
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ConfigError(
            f"policy parameter {name} must be a list of numbers, got {list(values)!r}"
        ) from None
    if arr.size == 1:
        arr = np.full(count, float(arr[0]))
    if arr.size != count:
        raise ConfigError(
            f"policy parameter {name} has {arr.size} values for {count} actions; give one per action"
        )
    return arr


def _number(
    params: dict[str, Any], name: str, low: float, high: float = math.inf, *, low_open: bool = False
) -> float:
    """A finite number parameter in [low, high] (or (low, high] with `low_open`); one-line ConfigError."""
    value = params.get(name, OPTIONAL_DEFAULTS.get(name))
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"policy parameter {name} must be a number, got {value!r}") from None
    below = number <= low if low_open else number < low
    if not math.isfinite(number) or below or number > high:
        span = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ConfigError(f"policy parameter {name} = {value!r} must be a finite number in {span}")
    return number


def check_slew_rates(values: Any, count: int) -> list[float]:
    """max_slew_rate: one value or one per action, each > 0 (.inf = explicitly unlimited); required."""
    rates = _per_action(values or [], count, "max_slew_rate")
    if rates is None:
        raise ConfigError(
            "policy parameter max_slew_rate is not set; give the largest command change per second "
            "(one value or one per action; .inf disables the limit explicitly)"
        )
    if not np.all(rates > 0):  # NaN compares false: refused too
        raise ConfigError(
            f"policy parameter max_slew_rate {rates.tolist()} must be > 0 per action (.inf = no limit); "
            "0, negative and NaN are refused"
        )
    return rates.tolist()


def load_policy_setup(params: dict[str, Any]) -> PolicySetup:
    """Build a `PolicySetup` from node parameters (see policy_node.PARAMETERS); one-line errors."""
    model_path = Path(str(params["model_path"])).expanduser()
    if not str(params["model_path"]):
        raise ConfigError(
            "policy parameter model_path is empty; set it in config/policy.yaml or with model:="
        )
    # Plain parameter checks first: a bad params file is reported before any model is loaded.
    watchdog = _number(params, "watchdog_timeout", 0.0, low_open=True)
    requested_rate = _number(params, "control_rate_hz", 0.0, CONTROL_RATE_RANGE_HZ[1])
    if 0.0 < requested_rate < CONTROL_RATE_RANGE_HZ[0]:
        raise ConfigError(
            f"policy parameter control_rate_hz = {requested_rate:g} must be 0 (the model's rate) or in "
            f"[{CONTROL_RATE_RANGE_HZ[0]:g}, {CONTROL_RATE_RANGE_HZ[1]:g}] Hz"
        )
    max_inference = _number(params, "max_inference_s", 0.0)
    heartbeat = _number(params, "estop_heartbeat_timeout", 0.0)
    estop_discovery = _number(params, "estop_discovery_s", 0.0, ESTOP_DISCOVERY_MAX_S)
    blend = params.get("blend_in_ticks", 0)
    if isinstance(blend, bool) or not isinstance(blend, int) or blend < 0:
        raise ConfigError(f"policy parameter blend_in_ticks must be an integer >= 0, got {blend!r}")
    header_mode = str(params.get("use_header_stamp", "auto")).lower()  # a YAML bool reads as True/False
    if header_mode not in HEADER_STAMP_MODES:
        raise ConfigError(
            f"policy parameter use_header_stamp {header_mode!r} must be one of {HEADER_STAMP_MODES}"
        )
    floor_entries = params.get("min_thresholds") or []
    floor = (
        parse_threshold_floor(floor_entries, "policy parameter min_thresholds")
        if floor_entries
        else DEFAULT_THRESHOLD_FLOOR
    )
    card_path = Path(params["card_path"]).expanduser() if params.get("card_path") else None
    # a policy -> PolicyRuntime; a dynamics ensemble (card algorithm: dynamics) -> MPCController
    runtime = load_controller(model_path, card_path=card_path)
    meta = runtime.metadata
    summary = validation_summary(runtime.card)
    try:
        # runtime.card.sha256 was checked against the bytes loaded: the verdict must be for them
        runtime.card.require_passing_validation(runtime.card_path, runtime.card.sha256, floor)
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
    rate = requested_rate or float(meta.control_rate_hz)
    if not CONTROL_RATE_RANGE_HZ[0] <= rate <= CONTROL_RATE_RANGE_HZ[1]:
        raise ConfigError(
            f"control rate {rate:g} Hz (model {model_path}) is outside [{CONTROL_RATE_RANGE_HZ[0]:g}, "
            f"{CONTROL_RATE_RANGE_HZ[1]:g}] Hz; set control_rate_hz"
        )
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
    rates = check_slew_rates(params.get("max_slew_rate"), n)
    safe_vector = params.get("safe_action_vector") or []
    safe_action = resolve_safe_action(
        list(map(float, safe_vector)) if safe_vector else str(params["safe_action"]),
        action_names,
        "policy parameter safe_action",
    )
    safety = SafetyFilter(
        SafetyConfig(
            low=low.tolist(),
            high=high.tolist(),
            max_rate=rates,
            safe_action=safe_action,
            max_observation_age_s=watchdog,
            control_period_s=1.0 / rate,
            blend_ticks=blend,
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
        hold_joints=list(action_joints) if safe_action == "hold" and action_field == "position" else None,
        # default: two control periods (a late action is stale by the time it would go out)
        max_inference_s=max_inference or 2.0 / rate,
        use_header_stamp=header_mode,
        estop_heartbeat_timeout=heartbeat,
        estop_discovery_s=estop_discovery,
    )


def _action_joints_and_field(action_names: Sequence[str]) -> tuple[list[str], str]:
    """`joint_1.velocity_cmd`... -> (["joint_1", ...], "velocity"); kind "" when not one shared kind."""
    return [split_name(name)[0] for name in action_names], command_kind(action_names)
