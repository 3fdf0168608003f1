"""Configure-time rules of policy_node, without DDS: which model may run, with which limits.

Real ONNX models and cards (written by `offrl_robot.ros.linear_policy` through the card module)
loaded by the real PolicyRuntime; the node runs exactly `load_policy_setup`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from offrl_robot.card import card_path_for
from offrl_robot.errors import ConfigError, ModelError
from offrl_robot.ros.linear_policy import write_linear_policy
from offrl_robot.ros.policy_setup import load_policy_setup

OBS = ["a.position", "b.position", "a.velocity", "b.velocity"]
ACT = ["a.velocity_cmd", "b.velocity_cmd"]
PASSED = {
    "passed": True,
    "task": "ArmReach-v0",
    "episodes": 5,
    "metrics": {"success_rate": 1.0},
    "thresholds": {"success_rate": {"min": 0.8}},
    "date": "2026-11-26T00:00:00Z",
}


def _model(tmp_path: Path, validation: dict[str, Any] | None = PASSED, name: str = "m") -> Path:
    weights = np.array([[-2.0, 0.0, 0.0, 0.0], [0.0, -2.0, 0.0, 0.0]])
    return write_linear_policy(
        tmp_path / f"{name}.onnx",
        observation_names=OBS,
        action_names=ACT,
        weights=weights,
        bias=np.array([0.2, -0.2]),
        action_low=[-1.0, -1.0],
        action_high=[1.0, 1.0],
        control_rate_hz=50.0,
        validation=validation,
    )


def policy_params(model: Path, **overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "model_path": str(model),
        "card_path": "",
        "allow_unvalidated": False,
        "joint_names": [],
        "extra_topics": {},
        "control_rate_hz": 0.0,
        "tick_source": "timer",
        "watchdog_timeout": 0.2,
        "safe_action": "zero",
        "safe_action_vector": [],
        "action_low": [],
        "action_high": [],
        "max_slew_rate": [math.inf],
        "blend_in_ticks": 0,
        "command_type": "float64_multi_array",
        "min_thresholds": [],
        "max_inference_s": 0.0,
        "estop_heartbeat_timeout": 0.0,
        "use_header_stamp": "auto",
    }
    params.update(overrides)
    return params


def test_validated_model_loads_and_acts(tmp_path: Path) -> None:
    setup = load_policy_setup(policy_params(_model(tmp_path), joint_names=["a", "b", "c"]))
    assert setup.control_rate_hz == 50.0 and setup.period == pytest.approx(0.02)
    assert setup.action_joints == ["a", "b"] and setup.action_field == "velocity"
    assert setup.validation_summary.startswith("passed")
    action = setup.runtime.act(np.array([0.0, 0.1, 0.0, 0.0], dtype=np.float32))
    np.testing.assert_allclose(action, [0.2, -0.4], rtol=1e-6)
    # With a fresh observation the filter passes the action through (inside the limits, no slew set).
    command = setup.safety.step(np.asarray(action, dtype=np.float64), np.zeros(4), 0.0)
    np.testing.assert_allclose(command, [0.2, -0.4], rtol=1e-6)
    np.testing.assert_array_equal(setup.safe_command(), [0.0, 0.0])


@pytest.mark.parametrize(
    "validation",
    [None, {**PASSED, "passed": False, "metrics": {"success_rate": 0.1}}],
    ids=["no_block", "failed_gate"],
)
def test_unvalidated_model_refused_unless_allowed(tmp_path: Path, validation: dict[str, Any] | None) -> None:
    model = _model(tmp_path, validation)
    with pytest.raises(ModelError, match="validation") as info:
        load_policy_setup(policy_params(model))
    assert str(card_path_for(model)) in str(info.value) and "allow_unvalidated" in str(info.value)
    assert "\n" not in str(info.value)
    setup = load_policy_setup(policy_params(model, allow_unvalidated=True))
    assert setup.validation_summary.startswith("UNVALIDATED")


def test_model_for_another_robot_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"joints \['b'\] that are not in joint_names"):
        load_policy_setup(policy_params(_model(tmp_path), joint_names=["a", "c"]))


def test_limit_overrides_only_tighten_and_slew_is_per_second(tmp_path: Path) -> None:
    model = _model(tmp_path)
    setup = load_policy_setup(policy_params(model, action_low=[-0.5], action_high=[0.5, 0.25], max_slew_rate=[5.0]))
    assert setup.safety.config.low == [-0.5, -0.5] and setup.safety.config.high == [0.5, 0.25]
    assert setup.safety.config.max_rate == [5.0, 5.0]  # per second, applied as rate x dt
    assert setup.safety.config.control_period_s == pytest.approx(0.02)
    with pytest.raises(ConfigError, match="widens"):
        load_policy_setup(policy_params(model, action_high=[2.0, 1.0]))
    with pytest.raises(ConfigError, match="one per action"):
        load_policy_setup(policy_params(model, action_low=[-0.5, -0.5, -0.5]))


@pytest.mark.parametrize(
    ("override", "error", "needle"),
    [
        ({"tick_source": "sometimes"}, ConfigError, "tick_source"),
        ({"command_type": "twist"}, ConfigError, "command_type"),
        ({"model_path": ""}, ConfigError, "model_path is empty"),
        ({"safe_action": "brake"}, ConfigError, "safe_action"),
        ({"safe_action_vector": [5.0, 0.0]}, ConfigError, "outside"),
        # safety parameters are checked at load (fault injection found each accepted before)
        ({"max_slew_rate": [0.0]}, ConfigError, "max_slew_rate .* must be > 0"),
        ({"max_slew_rate": [-1.0, 2.0]}, ConfigError, "max_slew_rate .* must be > 0"),
        ({"max_slew_rate": [math.nan]}, ConfigError, "max_slew_rate .* must be > 0"),
        ({"max_slew_rate": []}, ConfigError, "max_slew_rate is not set"),
        ({"watchdog_timeout": math.inf}, ConfigError, "watchdog_timeout .* must be a finite number"),
        ({"watchdog_timeout": math.nan}, ConfigError, "watchdog_timeout .* must be a finite number"),
        ({"watchdog_timeout": 0.0}, ConfigError, "watchdog_timeout"),
        ({"control_rate_hz": 0.5}, ConfigError, r"control_rate_hz = 0.5 must be 0 .* or in \[1, 2000\]"),
        ({"control_rate_hz": 5000.0}, ConfigError, "control_rate_hz"),
        ({"control_rate_hz": math.nan}, ConfigError, "control_rate_hz"),
        ({"max_inference_s": -1.0}, ConfigError, "max_inference_s"),
        ({"estop_heartbeat_timeout": math.inf}, ConfigError, "estop_heartbeat_timeout"),
        ({"estop_discovery_s": -0.5}, ConfigError, "estop_discovery_s"),
        ({"estop_discovery_s": 3600.0}, ConfigError, "estop_discovery_s"),
        ({"blend_in_ticks": -3}, ConfigError, "blend_in_ticks"),
        ({"use_header_stamp": "maybe"}, ConfigError, "use_header_stamp"),
        ({"safe_action": "hold"}, ConfigError, "hold on velocity commands"),
        ({"min_thresholds": ["success_rate=0.8"]}, ModelError, "must look like 'metric>=number'"),
    ],
)
def test_bad_parameters_are_one_line_errors(tmp_path: Path, override, error, needle) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=needle) as info:
        load_policy_setup(policy_params(_model(tmp_path), **override))
    assert "\n" not in str(info.value)


def test_missing_model_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError):
        load_policy_setup(policy_params(tmp_path / "nope.onnx"))


def _validated(tmp_path: Path, **changes: Any) -> Path:
    """A model whose verdict is changed after the fact (the attacks the node must refuse)."""
    return _model(tmp_path, {**FULL_VERDICT, **changes})


FULL_VERDICT = {
    "passed": True,
    "task": "ArmReach-v0",
    "episodes": 20,
    "metrics": {"success_rate": 0.95, "nan_events": 0.0, "intervention_rate": 0.0},
    "thresholds": {
        "success_rate": {"min": 0.9},
        "nan_events": {"max": 0.0},
        "intervention_rate": {"max": 0.01},
    },
    "date": "2026-12-04T00:00:00Z",
}


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"model_sha256": "0" * 64}, "validation was made for another model file"),
        ({"model_sha256": ""}, "not bound to a model file"),
        (
            {"metrics": {**FULL_VERDICT["metrics"], "success_rate": 0.1}},
            "says passed but its own thresholds fail",
        ),
        (
            {"thresholds": {**FULL_VERDICT["thresholds"], "success_rate": {"min": 0.1}}},
            "weaker than the floor 0.8",
        ),
        (
            {"thresholds": {**FULL_VERDICT["thresholds"], "nan_events": {"max": 5.0}}},
            "nan_events max 5.0 is weaker",
        ),
        (
            {"thresholds": {"success_rate": {"min": 0.9}, "nan_events": {"max": 0.0}}},
            "did not check intervention_rate",
        ),
    ],
    ids=["stale_sha", "unbound", "passed_flipped", "weak_success", "weak_nan", "floor_metric_unchecked"],
)
def test_forged_or_weak_verdict_is_refused(tmp_path: Path, changes: dict[str, Any], needle: str) -> None:
    with pytest.raises(ModelError, match=needle) as info:
        load_policy_setup(policy_params(_validated(tmp_path, **changes)))
    assert "\n" not in str(info.value) and "allow_unvalidated" in str(info.value)


def test_verdict_floor_is_configurable(tmp_path: Path) -> None:
    model = _validated(tmp_path, thresholds={**FULL_VERDICT["thresholds"], "success_rate": {"min": 0.85}})
    assert load_policy_setup(policy_params(model)).validation_summary.startswith("passed")  # default floor 0.8
    with pytest.raises(ModelError, match=r"success_rate min 0\.85 is weaker than the floor 0\.9"):
        load_policy_setup(policy_params(model, min_thresholds=["success_rate>=0.9"]))


def test_position_commands_hold_the_measured_position(tmp_path: Path) -> None:
    model = write_linear_policy(
        tmp_path / "pos.onnx",
        observation_names=OBS,
        action_names=["a.position_cmd", "b.position_cmd"],
        weights=np.eye(2, 4),
        bias=np.zeros(2),
        action_low=[-2.0, -2.0],
        action_high=[2.0, 2.0],
        control_rate_hz=50.0,
        validation=PASSED,
    )
    setup = load_policy_setup(policy_params(model, safe_action="auto"))
    assert setup.safety.config.safe_action == "hold" and setup.hold_joints == ["a", "b"]
    np.testing.assert_array_equal(setup.safe_command(hold_reference=np.array([0.7, -0.3])), [0.7, -0.3])
    with pytest.raises(ConfigError, match="would drive every joint to 0"):
        load_policy_setup(policy_params(model, safe_action="zero"))
