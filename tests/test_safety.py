"""SafetyFilter: example tests for every stage and counter, plus hypothesis property tests.

The property tests drive a filter through generated tick sequences (NaN, ±inf, ±1e30 and
ordinary values in observations and actions; random limits, slew limits, blend lengths, safe
actions, observation ages, e-stops and resets) and check, on every tick:
finite, within limits, latched after e-stop until reset, the safe action whenever the input
is stale or bad (on that tick with `safe_action_at_once`, else reached at the slew limit),
independent of the policy action, and every other output within the slew limit. A "twin" filter gets a different, arbitrary action on every tick where
the action must not matter; the two outputs must be identical.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offrl_robot.errors import ConfigError
from offrl_robot.safety import (
    COUNTER_NAMES,
    Intervention,
    SafetyConfig,
    SafetyFilter,
    hold_indices,
    intervention_names,
    resolve_safe_action,
)

# ---------------------------------------------------------------------------------- examples


def make_config(**overrides: object) -> SafetyConfig:
    base: dict[str, object] = {
        "low": [-1.0, -2.0, 0.5],
        "high": [1.0, 2.0, 1.5],
        "max_rate": [0.1, 0.5, 1.0],  # per second; with a 1 s period the numbers are per tick too
        "safe_action": "hold",
        "max_observation_age_s": 0.05,
        "control_period_s": 1.0,
        "blend_ticks": 0,
    }
    base.update(overrides)
    return SafetyConfig(**base)  # type: ignore[arg-type]


OBS = np.zeros(4, dtype=np.float32)


def test_nominal_action_passes_unchanged() -> None:
    flt = SafetyFilter(make_config(), initial_command=[0.0, 0.0, 1.0])
    out = flt.step(np.array([0.05, -0.3, 1.2], dtype=np.float32), OBS, 0.01)
    np.testing.assert_array_equal(out, np.array([0.05, -0.3, 1.2], dtype=np.float32).astype(np.float64))
    assert flt.last_flags == 0 and flt.last_interventions == Intervention.NONE
    assert flt.counters == {**dict.fromkeys(COUNTER_NAMES, 0), "ticks": 1}


@pytest.mark.parametrize(
    ("observation", "age"),
    [
        (np.array([0.0, np.nan, 0.0, 0.0]), 0.01),
        (np.array([0.0, np.inf, 0.0, 0.0], dtype=np.float32), 0.01),
        (None, 0.01),
        (OBS, 0.051),  # older than max_observation_age_s
        (OBS, -0.001),  # stamp from the future
        (OBS, math.nan),
    ],
)
def test_stale_or_bad_observation_gives_safe_action(observation: np.ndarray | None, age: float) -> None:
    flt = SafetyFilter(make_config(safe_action="hold"), initial_command=[0.2, 0.3, 0.9])
    out = flt.step(np.array([0.25, 0.35, 0.95]), observation, age)
    np.testing.assert_array_equal(out, [0.2, 0.3, 0.9])  # hold: frozen
    assert flt.last_flags == Intervention.STALE_OR_BAD_OBSERVATION
    assert flt.counters["stale_or_bad_observation"] == 1


@pytest.mark.parametrize(
    "action", [[np.nan, 0.0, 1.0], [0.0, -np.inf, 1.0], [0.0, 0.0], np.zeros((3, 1)), 0.5, ["a", "b", "c"]]
)
def test_bad_action_gives_safe_action(action: object) -> None:
    flt = SafetyFilter(make_config(safe_action=[0.0, 0.0, 1.0]), initial_command=[0.0, 0.1, 1.0])
    out = flt.step(action, OBS, 0.0)  # type: ignore[arg-type]
    np.testing.assert_array_equal(out, [0.0, 0.0, 1.0])
    assert flt.last_interventions == Intervention.BAD_ACTION
    assert flt.counters["bad_action"] == 1


def test_huge_action_is_clamped_then_slew_limited() -> None:
    flt = SafetyFilter(make_config(), initial_command=[0.95, -1.9, 1.0])
    out = flt.step(np.array([1e30, -1e30, 1.2]), OBS, 0.0)
    np.testing.assert_array_equal(out, [1.0, -2.0, 1.2])
    assert flt.last_interventions == Intervention.CLAMPED
    out = flt.step(np.array([-1e30, 0.0, 1.2]), OBS, 0.0)
    np.testing.assert_allclose(out, [0.9, -1.5, 1.2])
    assert flt.last_interventions == Intervention.CLAMPED | Intervention.SLEW_LIMITED
    assert flt.counters["clamped"] == 2 and flt.counters["slew_limited"] == 1


def test_zero_safe_action_outside_limits_is_clamped_and_reached_at_slew_rate() -> None:
    # joint 2 has limits [0.5, 1.5]: "zero" means 0.5 there. Start far away: slew applies.
    cfg = make_config(safe_action="zero", safe_action_at_once=False)
    flt = SafetyFilter(cfg, initial_command=[0.35, 1.0, 1.5])
    outs = [flt.step(np.zeros(3), OBS, 1.0) for _ in range(5)]  # stale every tick
    np.testing.assert_allclose(outs[0], [0.25, 0.5, 0.5])
    np.testing.assert_allclose(outs[1], [0.15, 0.0, 0.5])
    np.testing.assert_allclose(outs[-1], [0.0, 0.0, 0.5], atol=1e-12)
    assert flt.counters["stale_or_bad_observation"] == 5
    # joint 0: 0.35 -> 0.25 -> 0.15 -> 0.05 are slew-limited, the 4th tick reaches 0.0
    assert flt.counters["slew_limited"] == 3


def test_blend_in_ramps_from_safe_action_after_start_and_reset() -> None:
    cfg = make_config(safe_action=[0.0, 0.0, 1.0], blend_ticks=4, max_rate=10.0)
    flt = SafetyFilter(cfg)
    action = np.array([0.8, 1.6, 1.4])
    outs = [flt.step(action, OBS, 0.0) for _ in range(6)]
    for k in range(4):
        np.testing.assert_allclose(outs[k], [0.8 * k / 4, 1.6 * k / 4, 1.0 + 0.4 * k / 4])
    np.testing.assert_allclose(outs[4], action)
    assert flt.counters["blending"] == 4
    flt.reset()
    np.testing.assert_allclose(flt.step(action, OBS, 0.0), [0.0, 0.0, 1.0])
    assert flt.last_interventions == Intervention.BLENDING
    assert flt.counters["blending"] == 5


def test_estop_latches_until_reset() -> None:
    flt = SafetyFilter(make_config(safe_action="hold"), initial_command=[0.1, 0.2, 1.0])
    flt.step(np.array([0.15, 0.25, 1.05]), OBS, 0.0)
    flt.estop()
    for _ in range(3):
        out = flt.step(np.array([0.9, 1.9, 1.4]), OBS, 0.0)
        np.testing.assert_array_equal(out, [0.15, 0.25, 1.05])
        assert flt.latched and flt.last_interventions == Intervention.ESTOP
    flt.reset()
    assert not flt.latched
    np.testing.assert_allclose(flt.step(np.array([0.2, 0.3, 1.1]), OBS, 0.0), [0.2, 0.3, 1.1])
    assert flt.counters["estop"] == 3 and flt.counters["ticks"] == 5


def test_estop_with_zero_safe_action_respects_slew_limit_when_asked() -> None:
    cfg = make_config(safe_action="zero", safe_action_at_once=False)
    flt = SafetyFilter(cfg, initial_command=[0.5, 0.0, 1.0])
    flt.estop()
    np.testing.assert_allclose(flt.step(np.array([0.5, 0.0, 1.0]), OBS, 0.0), [0.4, 0.0, 0.5])


def test_estop_and_stale_give_the_safe_action_on_that_tick_by_default() -> None:
    flt = SafetyFilter(make_config(safe_action="zero"), initial_command=[0.5, 0.0, 1.0])
    np.testing.assert_array_equal(flt.step(np.array([0.9, 1.0, 1.2]), OBS, 1.0), [0.0, 0.0, 0.5])  # stale
    assert flt.last_interventions == Intervention.STALE_OR_BAD_OBSERVATION
    # recovery ramps back from the safe action at the slew limit
    np.testing.assert_allclose(flt.step(np.array([0.9, 1.0, 1.2]), OBS, 0.0), [0.1, 0.5, 1.2])
    flt.estop()
    np.testing.assert_array_equal(flt.step(np.array([0.9, 1.0, 1.2]), OBS, 0.0), [0.0, 0.0, 0.5])
    assert flt.last_interventions == Intervention.ESTOP


def test_returned_command_is_a_copy_and_intervention_names() -> None:
    flt = SafetyFilter(make_config(), initial_command=[0.0, 0.0, 1.0])
    out = flt.step(np.array([0.0, 0.0, 1.0]), OBS, 0.0)
    out[:] = 99.0
    np.testing.assert_array_equal(flt.last_command, [0.0, 0.0, 1.0])
    assert intervention_names(int(Intervention.CLAMPED | Intervention.ESTOP)) == ["clamped", "estop"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"low": [1.5, -2.0, 0.5]}, "joint 0 has low 1.5 > high 1.0"),
        ({"high": [1.0, 2.0]}, "high has 2 values but low/high have 3"),
        ({"low": [np.nan, -2.0, 0.5]}, "low contains NaN at index 0"),
        ({"high": [np.inf, 2.0, 1.5]}, "high must be finite"),
        ({"max_rate": [0.1, 0.0, 1.0]}, "max_rate must be > 0"),
        ({"max_rate": [0.1, 0.1]}, "max_rate has 2 values"),
        ({"max_rate": [0.1, np.nan, 1.0]}, "max_rate contains NaN"),
        ({"low": [-1e308, -2.0, 0.5], "high": [1e308, 2.0, 1.5]}, "span more than float64 can hold"),
        ({"control_period_s": 0.0}, "control_period_s must be a number > 0"),
        ({"control_period_s": math.inf}, "control_period_s must be finite"),
        ({"safe_action": [0.0, 0.0, 0.0]}, "safe_action[2] = 0.0 is outside [0.5, 1.5]"),
        ({"safe_action": "brake"}, "safe_action 'brake' is not 'zero', 'hold'"),
        ({"max_observation_age_s": 0.0}, "max_observation_age_s must be a number > 0"),
        ({"blend_ticks": -1}, "blend_ticks must be an integer >= 0"),
    ],
)
def test_config_errors_are_one_line(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        make_config(**overrides)
    assert "\n" not in str(info.value) and str(info.value).startswith("safety config:")


def test_config_from_mapping_names_source_and_keys() -> None:
    data = make_config().to_mapping()
    assert SafetyConfig.from_mapping(data).to_mapping() == data
    with pytest.raises(ConfigError, match=r"policy.yaml: unknown safety keys \['lo'\]"):
        SafetyConfig.from_mapping({**data, "lo": [0.0]}, source="policy.yaml")
    with pytest.raises(ConfigError, match=r"missing safety keys \['safe_action'\]"):
        SafetyConfig.from_mapping({k: v for k, v in data.items() if k != "safe_action"})
    with pytest.raises(ConfigError, match="initial command must be 3 finite numbers"):
        SafetyFilter(make_config(), initial_command=[0.0, np.nan, 1.0])


def test_slew_limit_is_per_second_whatever_the_tick_rate() -> None:
    """15 /s configured at a 50 Hz nominal period; ticked at 1 kHz (tick_source joint_states) the
    command may still only move 15 per second (it moved 1,135 /s when the limit was per tick)."""
    cfg = make_config(low=[-100.0], high=[100.0], max_rate=15.0, safe_action="zero", control_period_s=0.02)
    flt = SafetyFilter(cfg, initial_command=[0.0])
    for _ in range(1000):  # one second of 1 kHz ticks, the policy asking for +100 every tick
        out = flt.step(np.array([100.0]), OBS, 0.0, dt=0.001)
    assert out[0] == pytest.approx(15.0, rel=1e-9)
    # a late tick does not earn a bigger step (dt capped at the nominal period)
    late = flt.step(np.array([100.0]), OBS, 0.0, dt=5.0)
    assert late[0] - out[0] == pytest.approx(15.0 * 0.02)
    # no dt given: the nominal period
    assert flt.step(np.array([100.0]), OBS, 0.0)[0] - late[0] == pytest.approx(15.0 * 0.02)


@pytest.mark.parametrize("dt", [math.nan, 0.0, -0.01, -math.inf])
def test_a_bad_dt_allows_no_change(dt: float) -> None:
    flt = SafetyFilter(make_config(safe_action="zero"), initial_command=[0.5, 0.0, 1.0])
    np.testing.assert_array_equal(flt.step(np.array([0.9, 1.0, 1.2]), OBS, 0.0, dt=dt), [0.5, 0.0, 1.0])
    assert flt.last_interventions == Intervention.SLEW_LIMITED


def test_hold_holds_the_measured_position_when_given() -> None:
    """Position commands: a fault freezes the arm where it IS (clamped into the limits), not where
    the last command sent it; a non-finite measurement falls back to the last command."""
    flt = SafetyFilter(make_config(safe_action="hold"), initial_command=[0.1, 0.2, 1.0])
    flt.step(np.array([0.15, 0.25, 1.05]), OBS, 0.0)
    out = flt.step(np.array([0.9, 0.9, 0.9]), None, 0.0, hold_reference=[0.12, 5.0, 1.01])
    np.testing.assert_array_equal(out, [0.12, 2.0, 1.01])
    assert flt.last_interventions == Intervention.STALE_OR_BAD_OBSERVATION
    out = flt.step(np.array([0.9, 0.9, 0.9]), None, 0.0, hold_reference=[np.nan, 0.0, 1.0])
    np.testing.assert_array_equal(out, [0.12, 2.0, 1.01])


def test_blend_in_starts_from_the_measured_position() -> None:
    cfg = make_config(safe_action="hold", blend_ticks=2, max_rate=10.0)
    flt = SafetyFilter(cfg, initial_command=[0.0, 0.0, 1.0])
    flt.reset(initial_command=[0.4, -1.0, 1.2])  # where the arm is at activation
    first = flt.step(np.array([0.8, 1.0, 1.4]), OBS, 0.0, hold_reference=[0.4, -1.0, 1.2])
    np.testing.assert_array_equal(first, [0.4, -1.0, 1.2])  # never a jump to 0


def test_overflowing_limits_are_refused_not_nan() -> None:
    """The issue's repro: [-1e308, 1e308] limits, unlimited rate, blend-in -> it returned NaN."""
    with pytest.raises(ConfigError, match="span more than float64"):
        SafetyConfig([-1e308], [1e308], [math.inf], "hold", 1.0, 0.02, blend_ticks=1)
    # the widest span that float64 holds works, and never yields NaN
    flt = SafetyFilter(
        SafetyConfig([-8e307], [8e307], [math.inf], "hold", 1.0, 0.02, blend_ticks=3),
        initial_command=[-8e307],
    )
    for action in ([8e307], [1e308], [-1e308], [0.0]):
        out = flt.step(action, [0.0], 0.0)
        assert np.isfinite(out).all() and -8e307 <= out[0] <= 8e307


@pytest.mark.parametrize(
    ("mode", "names", "expected"),
    [
        ("auto", ["a.position_cmd", "b.position_cmd"], "hold"),
        ("auto", ["a.velocity_cmd"], "zero"),
        ("auto", ["a.effort"], "zero"),
        ("hold", ["a.position_cmd"], "hold"),
        ([0.1, 0.2], ["a.position_cmd", "b.velocity_cmd"], [0.1, 0.2]),
    ],
)
def test_safe_action_fits_the_command_kind(mode: object, names: list[str], expected: object) -> None:
    assert resolve_safe_action(mode, names, "cfg") == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mode", "names", "needle"),
    [
        ("zero", ["a.position_cmd"], "would drive every joint to 0"),
        ("hold", ["a.velocity_cmd"], "keep the last velocity going"),
        ("auto", ["a.position_cmd", "b.velocity_cmd"], "needs actions of one kind"),
    ],
)
def test_safe_action_that_would_move_the_robot_is_refused(mode: str, names: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        resolve_safe_action(mode, names, "cfg")


def test_hold_indices_find_the_measured_positions() -> None:
    obs = ["b.position", "a.position", "a.velocity"]
    assert hold_indices(["a.position_cmd", "b.position_cmd"], obs) == [1, 0]
    assert hold_indices(["a.velocity_cmd"], obs) is None
    assert hold_indices(["c.position_cmd"], obs) is None


# ---------------------------------------------------------------------------------- properties
#
# Cost on this 2-core machine: an EMPTY hypothesis test costs ~1.1 ms per example under the
# usual load, so 100,000 examples alone would exceed the whole area's 100 s test budget.
# Each example is therefore a generated config plus a sequence of TICKS generated ticks,
# decoded from hypothesis bytes (so hypothesis still explores and shrinks every value); the
# case count asserted below is the number of generated ticks, each checked for every invariant.

SPECIAL = (math.nan, math.inf, -math.inf, 1e30, -1e30, 3.0e38, -0.0, 5e-324)
SPECIAL_AGES = (math.nan, math.inf, -math.inf, -1e-3, 0.0)
TICKS = 100
EXAMPLES = 1_050
SPECIAL_DTS = (math.nan, 0.0, -1.0, math.inf, 5e-324)
BYTES_PER_TICK = 3 + 2 * 7 + 2 * 3  # event, age, dt, 7 action values, 3 observation values


def decode_value(b0: int, b1: int, lo: float, hi: float) -> float:
    """Two bytes -> a float: 1 in 32 a special value, else spread over [lo, hi] +-25% (clamping happens)."""
    if b0 >= 248:
        return SPECIAL[b0 - 248]
    return lo + (hi - lo) * (-0.25 + 1.5 * b1 / 255.0)


def decode_ticks(
    blob: bytes, cfg: SafetyConfig
) -> list[tuple[str, list[float], list[float], float, bool, float]]:
    n, out = cfg.num_joints, []
    for t in range(TICKS):
        chunk = blob[t * BYTES_PER_TICK : (t + 1) * BYTES_PER_TICK]
        ev, age_byte = chunk[0], chunk[1]
        event = "estop" if ev >= 248 else ("reset" if ev >= 224 else "")
        if age_byte >= 256 - len(SPECIAL_AGES):
            age = SPECIAL_AGES[age_byte - (256 - len(SPECIAL_AGES))]
        else:
            age = cfg.max_observation_age_s * 1.25 * age_byte / 250.0  # ~20% of ticks too old
        dt_byte = chunk[22]
        if dt_byte >= 256 - len(SPECIAL_DTS):
            dt = SPECIAL_DTS[dt_byte - (256 - len(SPECIAL_DTS))]
        else:  # jitter of +-80 % around the nominal period
            dt = cfg.control_period_s * (0.2 + 1.6 * dt_byte / 250.0)
        values = [decode_value(chunk[2 + 2 * j], chunk[3 + 2 * j], cfg.low[j], cfg.high[j]) for j in range(n)]
        obs = [decode_value(chunk[16 + 2 * j], chunk[17 + 2 * j], -1.0, 1.0) for j in range(3)]
        out.append((event, values, obs, age, bool(ev & 1), dt))
    return out


@st.composite
def configs(draw: st.DrawFn) -> SafetyConfig:
    n = draw(st.integers(1, 7))
    scale = draw(st.sampled_from([1.0, 1e-3, 1e3, 1e6]))
    bounds = [
        sorted((draw(st.floats(-10.0, 10.0)) * scale, draw(st.floats(-10.0, 10.0)) * scale)) for _ in range(n)
    ]
    slew = [
        draw(st.one_of(st.floats(1e-9, 20.0).map(lambda x: x * scale), st.just(math.inf))) for _ in range(n)
    ]
    kind = draw(st.sampled_from(["zero", "hold", "fixed"]))
    safe: str | list[float] = kind
    if kind == "fixed":
        fractions = draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n))
        safe = [min(max(lo + f * (hi - lo), lo), hi) for (lo, hi), f in zip(bounds, fractions, strict=True)]
    period = draw(st.sampled_from([1.0, 0.02, 0.001]))
    return SafetyConfig(
        low=[lo for lo, _ in bounds],
        high=[hi for _, hi in bounds],
        max_rate=[rate / period for rate in slew],  # per second: the same steps per nominal tick
        safe_action=safe,
        max_observation_age_s=draw(st.floats(1e-3, 0.1)),
        control_period_s=period,
        blend_ticks=draw(st.integers(0, 6)),
        safe_action_at_once=draw(st.booleans()),
    )


def check_tick(
    flt: SafetyFilter, twin: SafetyFilter, prev: np.ndarray, tick: tuple, latched: bool
) -> tuple[np.ndarray, bool]:
    """One tick through `flt` and `twin`; assert every invariant; return (output, latched)."""
    event, action, observation, age, as_float32, dt = tick
    if event == "estop":
        flt.estop()
        twin.estop()
        latched = True
    elif event == "reset":
        flt.reset()
        twin.reset()
        latched = False
    dtype = np.float32 if as_float32 else np.float64
    with np.errstate(over="ignore"):
        act = np.array(action, dtype=dtype)  # 3e38 and 1e30 stay finite in float32 (3.4e38 would not)
        obs = np.array(observation, dtype=dtype)
    cfg = flt.config
    low, high = np.array(cfg.low), np.array(cfg.high)
    # the step this tick may take: rate x dt, dt capped at the nominal period, none for a bad dt
    used = (dt if dt < cfg.control_period_s else cfg.control_period_s) if dt > 0.0 else 0.0
    slew = np.array([r if r == math.inf else r * used for r in cfg.max_rate])
    stale = not (0.0 <= age <= cfg.max_observation_age_s) or not np.isfinite(obs).all()
    bad = not np.isfinite(act).all()
    # Where the action must not matter the twin gets a different one of the same kind
    # (finite when only the observation is stale, non-finite when only the action is bad).
    if latched or stale:
        twin_action = low + 0.37 * (high - low)
    elif bad:
        twin_action = np.where(np.isfinite(act), 0.5 * (low + high), np.nan)
    else:
        twin_action = act
    out = flt.step(act, obs, age, dt=dt)
    twin_out = twin.step(twin_action, obs, age, dt=dt)

    assert out.dtype == np.float64 and out.shape == low.shape
    assert np.isfinite(out).all(), out
    assert (out >= low).all() and (out <= high).all(), (out, low, high)
    untrusted = latched or stale or bad
    if not (untrusted and cfg.safe_action_at_once):
        assert (np.abs(out - prev) <= slew).all(), (out, prev, slew)
    flags = flt.last_flags
    assert bool(flags & Intervention.ESTOP) == latched
    if untrusted:
        assert np.array_equal(out, twin_out), (out, twin_out)  # independent of the policy action
        safe = prev if cfg.safe_action == "hold" else np.array(flt._safe_vector)
        if cfg.safe_action_at_once:
            assert np.array_equal(out, safe), (out, safe)  # the safe action on this very tick
        else:
            # reached at the slew limit: moves toward the safe action, never away, never past it
            assert (np.abs(out - safe) <= np.abs(prev - safe)).all(), (out, safe, prev)
            reachable = np.abs(safe - prev) <= slew
            assert np.array_equal(out[reachable], safe[reachable]), (out, safe)
        if not latched:
            kind = Intervention.STALE_OR_BAD_OBSERVATION if stale else Intervention.BAD_ACTION
            assert flags & kind, flt.last_interventions
    else:
        assert not flags & (Intervention.STALE_OR_BAD_OBSERVATION | Intervention.BAD_ACTION)
        if not flags:
            assert np.array_equal(out, act.astype(np.float64)), (out, act)  # untouched
    return out, latched


def test_property_budget_is_at_least_100k_cases() -> None:
    assert EXAMPLES * TICKS >= 100_000


@pytest.mark.slow
def test_property_every_output_is_finite_in_limits_slew_limited_and_latched() -> None:
    seen = {"examples": 0, "ticks": 0}
    fired = dict.fromkeys(COUNTER_NAMES, 0)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same cases every run: a CI failure reproduces locally
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        cfg=configs(),
        start=st.lists(st.floats(0.0, 1.0), min_size=7, max_size=7),
        blob=st.binary(min_size=TICKS * BYTES_PER_TICK, max_size=TICKS * BYTES_PER_TICK),
    )
    def prop(cfg: SafetyConfig, start: list[float], blob: bytes) -> None:
        seen["examples"] += 1
        initial = [lo + f * (hi - lo) for lo, hi, f in zip(cfg.low, cfg.high, start, strict=False)]
        flt, twin = SafetyFilter(cfg, initial_command=initial), SafetyFilter(cfg, initial_command=initial)
        prev, latched = flt.last_command, False
        for tick in decode_ticks(blob, cfg):
            prev, latched = check_tick(flt, twin, prev, tick, latched)
            seen["ticks"] += 1
        counters = flt.counters
        assert counters["ticks"] == TICKS
        for name in COUNTER_NAMES:
            assert 0 <= counters[name] <= TICKS
            fired[name] += counters[name]

    prop()
    print(
        f"\nSafetyFilter property: {seen['examples']} hypothesis examples, {seen['ticks']} generated ticks checked"
    )
    print(f"ticks per intervention: {fired}")
    assert seen["examples"] >= EXAMPLES
    assert seen["ticks"] >= 100_000
    # the generator reaches every stage often, so the invariants were checked where they matter
    assert all(count >= 1_000 for count in fired.values()), fired


def test_property_random_configs_either_raise_one_line_config_error_or_work() -> None:
    """Garbage limits (NaN, inf, low > high, wrong lengths) never get past SafetyConfig."""

    @settings(max_examples=600, deadline=None, database=None, derandomize=True)
    @given(
        low=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=4),
        high=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=4),
        slew=st.one_of(st.floats(allow_nan=True), st.lists(st.floats(allow_nan=True), max_size=4)),
        safe=st.one_of(
            st.sampled_from(["zero", "hold", "nope"]), st.lists(st.floats(allow_nan=True), max_size=4)
        ),
        age=st.floats(allow_nan=True),
        blend=st.integers(-2, 5),
    )
    def prop(low: list, high: list, slew: object, safe: object, age: float, blend: int) -> None:
        try:
            cfg = SafetyConfig(low, high, slew, safe, age, 0.02, blend)  # type: ignore[arg-type]
        except ConfigError as err:
            assert "\n" not in str(err) and str(err).startswith("safety config: ")
            return
        lo, hi = np.array(cfg.low), np.array(cfg.high)
        assert np.isfinite(lo).all() and np.isfinite(hi).all() and (lo <= hi).all()
        out = SafetyFilter(cfg).step(np.full(lo.size, 1e30), np.zeros(2), 0.0)
        assert np.isfinite(out).all() and (out >= lo).all() and (out <= hi).all()

    prop()
