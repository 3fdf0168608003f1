"""SafetyFilter fuzz: random configs, random ticks, every output checked (issue 14 §3).

    .venv/bin/python benchmarks/safety_fuzz.py [--ticks 300000] [--seed 0]

Seeded numpy generator, no hypothesis (hypothesis costs ~1 ms per example here; this checks
tens of thousands of ticks per second). The property test in tests/test_safety.py explores
and shrinks; this one goes wide: limits from 1e-6 up to +-1e300 (and spans that overflow
float64, which SafetyConfig must refuse), rates from 5e-324 to inf, every safe-action mode,
blend-in, both `safe_action_at_once` choices, and ticks with NaN/+-inf/huge/normal actions and
observations, float32 and float64 inputs, wrong lengths, observation ages negative/NaN/inf/too
old, dt jittered +-80 % around the period plus NaN/0/negative/inf/None, measured positions for
"hold" (some NaN, some of the wrong length), e-stops and resets (some to a measured command).

Invariants, checked on EVERY tick (a violation is counted per invariant; exit status 1 if any):

- config verdict   a config is refused with a one-line ConfigError iff a joint's span
                   high - low overflows float64; every other generated config is accepted
- no exception     step() returns; it never raises
- shape            a float64 array of one value per joint
- finite           every value finite
- within limits    low <= value <= high per joint
- slew (rate x dt) |out - prev| <= rate * dt_eff on every tick whose command is derived from the
                   policy (with safe_action_at_once False: on every tick), where dt_eff is what
                   SafetyFilter documents: dt None -> the period; dt > 0 -> min(dt, period);
                   NaN / <= 0 -> 0; and an inf rate is unlimited whatever dt
- latch held       after estop() and until reset(): ESTOP flag set on every tick and the output
                   is the safe action (at once, or approached at the slew limit and reached
                   once within reach); never the ESTOP flag when not latched
- untrusted        a stale/bad observation or a bad action gives the safe action (same rule)
                   with the right flag: STALE_OR_BAD_OBSERVATION / BAD_ACTION
- action-indep.    on every untrusted tick (stale, bad action, latched) a twin filter fed a
                   different action returns the identical command
- pass-through     a trusted tick on which no stage fired returns the action unchanged

The safe action is computed here independently: "zero" = 0 clamped into the limits, fixed = the
vector, "hold" = the measured position (clamped) when a finite one of the right length is
given, else the previous command. Also counted: how many ticks took each path, so a reader sees
the fuzz reached them.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from offrl_robot.errors import ConfigError
from offrl_robot.safety import Intervention, SafetyConfig, SafetyFilter

FMAX = sys.float_info.max
INF, NAN = math.inf, math.nan
_STALE = int(Intervention.STALE_OR_BAD_OBSERVATION)
_BAD = int(Intervention.BAD_ACTION)
_ESTOP = int(Intervention.ESTOP)
_CLAMPED = int(Intervention.CLAMPED)
_SLEW = int(Intervention.SLEW_LIMITED)
_BLEND = int(Intervention.BLENDING)

INVARIANTS = (
    "config verdict",
    "no exception",
    "shape",
    "finite",
    "within limits",
    "slew (rate x dt)",
    "latch held",
    "untrusted -> safe action",
    "action-independent",
    "pass-through",
)
PATHS = (
    "stale or bad observation",
    "bad action",
    "estop latched",
    "clamp",
    "slew limited",
    "blend-in",
    "hold_reference used",
    "untouched (no stage fired)",
    "safe action at slew limit",
    "bad dt (NaN, <= 0)",
    "dt capped (> period)",
    "dt None (nominal)",
    "float32 inputs",
    "reset",
    "reset to measured",
)
# Special values in actions / measured positions (finite ones are clamped, the rest are "bad").
SPECIAL_VALUES = np.array([NAN, INF, -INF, 1e300, -1e300, FMAX, -FMAX, 5e-324, -0.0, 3.5e38, -3.5e38])
SPECIAL_AGES = (NAN, INF, -INF, -1e-3, -5e-324, 0.0)


@dataclass
class FuzzResult:
    """Counts of one fuzz run."""

    seed: int
    ticks: int = 0
    configs: int = 0
    refused: int = 0
    seconds: float = 0.0
    checked: dict[str, int] = field(default_factory=lambda: dict.fromkeys(INVARIANTS, 0))
    violations: dict[str, int] = field(default_factory=lambda: dict.fromkeys(INVARIANTS, 0))
    paths: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PATHS, 0))
    examples: dict[str, str] = field(default_factory=dict)
    # the reach of the accepted configs: smallest / largest |limit| (nonzero), widest span, and
    # how many configs had a limit of magnitude >= 1e300
    limit_abs_min: float = math.inf
    limit_abs_max: float = 0.0
    span_max: float = 0.0
    configs_1e300: int = 0

    @property
    def total_violations(self) -> int:
        return sum(self.violations.values())

    def fail(self, invariant: str, where: str) -> None:
        self.violations[invariant] += 1
        self.examples.setdefault(invariant, where)


# ----------------------------------------------------------------------------- configs


def _mix(lo: np.ndarray, hi: np.ndarray, f: np.ndarray) -> np.ndarray:
    """lo + f * (hi - lo) for a finite span, kept finite when f leaves [0, 1] near FMAX."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.clip(lo + f * (hi - lo), -FMAX, FMAX)


def random_limits(rng: np.random.Generator) -> tuple[float, float]:
    """One joint's [low, high]: robot-sized, log-uniform up to 1e300, offset, degenerate, or
    near the float64 edge (where the span may overflow: the config must then be refused)."""
    kind = rng.random()
    if kind < 0.30:
        return -float(rng.uniform(0.05, 3.5)), float(rng.uniform(0.05, 3.5))
    if kind < 0.62:
        scale = 10.0 ** rng.uniform(-6.0, 300.0)
        a, b = sorted(scale * rng.uniform(-1.0, 1.0, 2))
        return float(a), float(b)
    if kind < 0.85:  # both limits of one sign: 0 is outside, "zero" must clamp
        center = float(rng.choice([-1.0, 1.0]) * 10.0 ** rng.uniform(-6.0, 300.0))
        width = abs(center) * 10.0 ** rng.uniform(-17.0, 0.0)  # below an ulp: low == high
        return center, center + width
    if kind < 0.96:
        value = float(rng.choice([0.0, 1.0, -1e300, 1e-6, 1e300]))
        return value, value
    return -float(rng.uniform(0.3, 0.7)) * FMAX, float(rng.uniform(0.3, 0.7)) * FMAX


def random_rate(rng: np.random.Generator, span: float, period: float) -> float:
    """Per-second slew rate: inf, tiny, huge, or a fraction/multiple of span per period."""
    kind = rng.random()
    if kind < 0.12:
        return INF
    if kind < 0.20:
        return float(rng.choice([5e-324, 1e-300, 1e-12]))
    if kind < 0.25:
        return float(rng.choice([1e300, FMAX]))
    base = span if 0.0 < span < INF else 1.0
    with np.errstate(over="ignore"):
        rate = base * 10.0 ** rng.uniform(-4.0, 1.0) / period
    return float(rate) if rate > 0.0 else 5e-324


def random_config(rng: np.random.Generator) -> dict[str, Any]:
    n = int(rng.integers(1, 9))
    limits = [random_limits(rng) for _ in range(n)]
    low = np.array([lo for lo, _ in limits])
    high = np.array([hi for _, hi in limits])
    period = float(10.0 ** rng.uniform(-3.5, 0.0))
    with np.errstate(over="ignore"):
        span = high - low
    rates: list[float] | float = [random_rate(rng, float(s), period) for s in span]
    if rng.random() < 0.1:
        rates = rates[0]  # a scalar rate for every joint
    mode = str(rng.choice(["zero", "hold", "fixed"]))
    safe: str | list[float] = mode
    if mode == "fixed":
        f = rng.uniform(0.0, 1.0, n)
        with np.errstate(over="ignore"):
            fixed = low * (1.0 - f) + high * f  # no hi - lo: that may overflow here
        safe = np.clip(fixed, low, high).tolist()
    blend = rng.random()
    return {
        "low": low.tolist(),
        "high": high.tolist(),
        "max_rate": rates,
        "safe_action": safe,
        "max_observation_age_s": period * float(rng.uniform(0.5, 10.0)),
        "control_period_s": period,
        "blend_ticks": 0
        if blend < 0.4
        else int(rng.integers(1, 11) if blend < 0.9 else rng.integers(11, 200)),
        "safe_action_at_once": bool(rng.random() < 0.5),
    }


# ----------------------------------------------------------------------------- ticks


@dataclass
class Ticks:
    """Pre-generated inputs for `count` ticks of one config (vectorised: generating per tick
    with numpy would cost more than the filter)."""

    actions: list[Any]
    twin_finite: list[list[float]]
    observations: list[Any]
    ages: list[float]
    dts: list[float | None]
    hold_refs: list[Any]
    events: list[str]
    reset_to: list[list[float]]


def random_ticks(rng: np.random.Generator, cfg: SafetyConfig, count: int, start: list[float]) -> Ticks:
    """Inputs for `count` ticks; a random walk of actions begins at `start` (the first command)."""
    n = cfg.num_joints
    low, high = np.array(cfg.low), np.array(cfg.high)
    period, max_age = cfg.control_period_s, cfg.max_observation_age_s

    # actions: within the limits +-25 % of the span, a random walk, or pinned at a limit
    style = rng.random()
    if style < 0.4:  # a walk within the slew step of the shortest tick: many untouched ticks
        rate = np.array(cfg.max_rate)
        step = np.where(np.isfinite(rate), rate * period * 0.15, (high - low) * 0.01)
        with np.errstate(over="ignore", invalid="ignore"):
            walk = np.cumsum(rng.uniform(-1.0, 1.0, (count, n)) * step, axis=0)
            walk = np.nan_to_num(walk, nan=0.0, posinf=FMAX, neginf=-FMAX)
        with np.errstate(over="ignore"):
            actions = np.clip(np.array(start) + walk, low, high)
    else:
        actions = _mix(low, high, rng.uniform(-0.25, 1.25, (count, n)))
    special = rng.random((count, n)) < 0.03
    actions[special] = rng.choice(SPECIAL_VALUES, int(special.sum()))
    with np.errstate(over="ignore"):
        actions32 = actions.astype(np.float32)  # 1e300 -> inf: a bad action in float32
    as32 = rng.random(count) < 0.3
    as_list = rng.random(count) < 0.1
    wrong_len = rng.random(count) < 0.01

    dim = int(rng.integers(1, 25))
    obs = rng.normal(size=(count, dim))
    special = rng.random((count, dim)) < 0.004
    obs[special] = rng.choice(np.array([NAN, INF, -INF, 1e300, -1e300]), int(special.sum()))
    with np.errstate(over="ignore"):
        obs32 = obs.astype(np.float32)
    obs_none = rng.random(count) < 0.02

    ages = rng.uniform(0.0, 1.25 * max_age, count)
    special_age = rng.random(count) < 0.04
    ages[special_age] = rng.choice(np.array(SPECIAL_AGES), int(special_age.sum()))

    dts: list[float | None] = (period * rng.uniform(0.2, 1.8, count)).tolist()
    kinds = rng.random(count)
    special_dts = np.array([NAN, 0.0, -0.0, -period, -INF, INF, 5e-324, 100.0 * period])
    for i in np.flatnonzero(kinds < 0.15):
        dts[i] = None if kinds[i] < 0.05 else float(rng.choice(special_dts))

    refs = _mix(low, high, rng.uniform(-0.25, 1.25, (count, n)))
    ref_kind = rng.random(count)
    ref_nan = rng.random((count, n)) < 0.5
    events_draw = rng.random(count)
    reset_to = _mix(low, high, rng.uniform(-0.25, 1.25, (count, n))).tolist()
    twin_finite = _mix(low, high, rng.uniform(0.0, 1.0, (count, n))).tolist()

    act_rows, obs_rows, ref_rows, events = [], [], [], []
    for i in range(count):
        row: Any = actions32[i] if as32[i] else actions[i]
        if wrong_len[i]:
            row = row[: n - 1] if n > 1 and i % 2 else np.append(row, 0.0)
        act_rows.append(row.tolist() if as_list[i] else row)
        obs_rows.append(None if obs_none[i] else (obs32[i] if as32[i] else obs[i]))
        k = ref_kind[i]
        if k < 0.3:
            ref_rows.append(None)
        elif k < 0.85:
            ref_rows.append(refs[i] if k < 0.7 else refs[i].tolist())
        elif k < 0.95:
            ref_rows.append(np.where(ref_nan[i], NAN, refs[i]))
        else:
            ref_rows.append(refs[i][:-1])
        e = events_draw[i]
        events.append("estop" if e < 0.006 else ("reset" if e < 0.016 else ("reset_to" if e < 0.021 else "")))
    return Ticks(act_rows, twin_finite, obs_rows, ages.tolist(), dts, ref_rows, events, reset_to)


# ----------------------------------------------------------------------------- checks


def _finite_values(values: Any, n: int | None) -> list[float] | None:
    """`values` as floats when every one is finite (and there are n of them), else None."""
    if values is None:
        return None
    out = values.ravel().tolist() if isinstance(values, np.ndarray) else [float(v) for v in values]
    if (n is not None and len(out) != n) or not all(map(math.isfinite, out)):
        return None
    return out


def fuzz_config(
    rng: np.random.Generator,
    cfg: SafetyConfig,
    count: int,
    result: FuzzResult,
    filter_cls: Callable[..., SafetyFilter],
    label: str,
) -> None:
    """Drive one filter (and its twin) through `count` random ticks, checking every invariant."""
    n = cfg.num_joints
    low, high, rates = cfg.low, cfg.high, cfg.max_rate
    lims = list(zip(low, high, strict=True))
    period, max_age, at_once = cfg.control_period_s, cfg.max_observation_age_s, cfg.safe_action_at_once
    mode = cfg.safe_action if isinstance(cfg.safe_action, str) else "fixed"
    if mode == "zero":
        fixed_safe = [min(max(0.0, lo), hi) for lo, hi in lims]
    elif mode == "fixed":
        fixed_safe = [float(v) for v in cfg.safe_action]
    else:
        fixed_safe = [min(max(0.0, lo), hi) for lo, hi in lims]  # "hold" starts here without a command
    start_kind = rng.random()
    if start_kind < 0.2:
        initial = None
        prev = list(fixed_safe)
    else:
        f = rng.uniform(-0.25, 1.25, n) if start_kind < 0.9 else rng.choice([-1.0, 1.0], n) * 1e300
        initial = _mix(np.array(low), np.array(high), f).tolist() if start_kind < 0.9 else f.tolist()
        prev = [min(max(x, lo), hi) for x, (lo, hi) in zip(initial, lims, strict=True)]
    flt = filter_cls(cfg, initial_command=initial)
    twin = filter_cls(cfg, initial_command=initial)
    ticks = random_ticks(rng, cfg, count, prev)
    latched = False
    checked, paths, fail = result.checked, result.paths, result.fail
    for i in range(count):
        event = ticks.events[i]
        if event == "estop":
            flt.estop()
            twin.estop()
            latched = True
        elif event:
            to = ticks.reset_to[i] if event == "reset_to" else None
            flt.reset(initial_command=to)
            twin.reset(initial_command=to)
            latched = False
            paths["reset"] += 1
            if to is not None:
                paths["reset to measured"] += 1
                prev = [min(max(x, lo), hi) for x, (lo, hi) in zip(to, lims, strict=True)]
        action, obs, age, dt, ref = (
            ticks.actions[i],
            ticks.observations[i],
            ticks.ages[i],
            ticks.dts[i],
            ticks.hold_refs[i],
        )
        where = f"{label} tick {i}"

        # what the filter must see, computed here independently
        obs_values = _finite_values(obs, None)
        stale = obs_values is None or not (0.0 <= age <= max_age)
        act_values = None if stale else _finite_values(action, n)
        bad = not stale and act_values is None
        untrusted = latched or stale or bad
        if dt is None:
            dt_eff = period
            paths["dt None (nominal)"] += 1
        elif dt > 0.0:
            dt_eff = dt if dt < period else period
            if dt > period:
                paths["dt capped (> period)"] += 1
        else:
            dt_eff = 0.0
            paths["bad dt (NaN, <= 0)"] += 1
        slew = [r if r == INF else r * dt_eff for r in rates]
        safe = fixed_safe
        if mode == "hold":
            measured = _finite_values(ref, n) if ref is not None else None
            if measured is not None:
                safe = [min(max(x, lo), hi) for x, (lo, hi) in zip(measured, lims, strict=True)]
                if untrusted:
                    paths["hold_reference used"] += 1
            else:
                safe = prev
        if isinstance(action, np.ndarray) and action.dtype == np.float32:
            paths["float32 inputs"] += 1

        if untrusted:  # the twin gets another action of the same class: it must not matter
            if latched or stale:
                twin_action: Any = ticks.twin_finite[i]
            else:
                twin_action = np.full(n, NAN) if i % 2 else [*ticks.twin_finite[i][:-1], INF]
        else:
            twin_action = action
        try:
            out_arr = flt.step(action, obs, age, dt, hold_reference=ref)
            twin_arr = twin.step(twin_action, obs, age, dt, hold_reference=ref)
        except Exception as err:  # any exception is a violation, counted
            fail("no exception", f"{where}: {type(err).__name__}: {err}")
            checked["no exception"] += 1
            result.ticks += 1
            return  # the filter's state is unknown now: next config
        checked["no exception"] += 1
        flags = flt.last_flags

        checked["shape"] += 1
        if not (isinstance(out_arr, np.ndarray) and out_arr.dtype == np.float64 and out_arr.shape == (n,)):
            fail("shape", f"{where}: got {type(out_arr).__name__} {getattr(out_arr, 'shape', '?')}")
            result.ticks += 1
            return
        out = out_arr.tolist()
        checked["finite"] += 1
        if not all(map(math.isfinite, out)):
            fail("finite", f"{where}: {out}")
        checked["within limits"] += 1
        if not all(lo <= o <= hi for o, (lo, hi) in zip(out, lims, strict=True)):
            fail("within limits", f"{where}: {out} not in {lims}")
        if not (untrusted and at_once):
            checked["slew (rate x dt)"] += 1
            if not all(abs(o - p) <= s for o, p, s in zip(out, prev, slew, strict=True)):
                fail("slew (rate x dt)", f"{where}: prev {prev} -> {out}, dt {dt!r}, allowed {slew}")

        if untrusted:
            # the safe action: at once, or approached at the slew limit and reached within reach
            if at_once:
                reached = out == safe
            else:
                paths["safe action at slew limit"] += 1
                reached = all(
                    abs(o - s) <= abs(p - s) and (abs(s - p) > sl or o == s)
                    for o, s, p, sl in zip(out, safe, prev, slew, strict=True)
                )
            invariant = "latch held" if latched else "untrusted -> safe action"
            checked[invariant] += 1
            flag_ok = bool(flags & _ESTOP) if latched else bool(flags & (_STALE if stale else _BAD))
            if not (reached and flag_ok and flt.latched == latched):
                fail(invariant, f"{where}: out {out}, safe {safe}, prev {prev}, flags {flags}")
            checked["action-independent"] += 1
            if twin_arr.tolist() != out:
                fail("action-independent", f"{where}: {out} vs twin {twin_arr.tolist()}")
        else:
            checked["latch held"] += 1
            checked["untrusted -> safe action"] += 1
            if flags & _ESTOP or flt.latched:
                fail("latch held", f"{where}: ESTOP flag without an e-stop (flags {flags})")
            if flags & (_STALE | _BAD):
                fail("untrusted -> safe action", f"{where}: trusted tick flagged {flags}")
            if not flags:
                checked["pass-through"] += 1
                if out != act_values:
                    fail("pass-through", f"{where}: {act_values} -> {out} with no stage fired")

        if flags & _STALE:
            paths["stale or bad observation"] += 1
        if flags & _BAD:
            paths["bad action"] += 1
        if flags & _ESTOP:
            paths["estop latched"] += 1
        if flags & _CLAMPED:
            paths["clamp"] += 1
        if flags & _SLEW:
            paths["slew limited"] += 1
        if flags & _BLEND:
            paths["blend-in"] += 1
        if not flags:
            paths["untouched (no stage fired)"] += 1
        result.ticks += 1
        prev = out


def run(ticks: int, seed: int, filter_cls: Callable[..., SafetyFilter] | None = None) -> FuzzResult:
    """Fuzz `filter_cls` (default SafetyFilter; a broken variant proves the checks can fail)."""
    filter_cls = filter_cls or SafetyFilter
    rng = np.random.default_rng(seed)
    result = FuzzResult(seed=seed)
    t0 = time.perf_counter()
    max_configs = 100 + ticks // 10  # ~1 in 200 at the usual mix: a bound if every config were refused
    while result.ticks < ticks and result.configs < max_configs:
        kwargs = random_config(rng)
        result.configs += 1
        label = f"config {result.configs} {kwargs}"
        with np.errstate(over="ignore"):
            overflow = any(
                not math.isfinite(h - lo) for lo, h in zip(kwargs["low"], kwargs["high"], strict=True)
            )
        result.checked["config verdict"] += 1
        try:
            cfg = SafetyConfig(**kwargs)
        except ConfigError as err:
            if not overflow or "\n" in str(err) or "span" not in str(err):
                result.fail("config verdict", f"{label}: refused: {err}")
            result.refused += 1
            continue
        if overflow:
            result.fail("config verdict", f"{label}: accepted limits whose span overflows float64")
            continue
        magnitudes = [abs(v) for v in (*cfg.low, *cfg.high) if v != 0.0]
        if magnitudes:
            result.limit_abs_min = min(result.limit_abs_min, *magnitudes)
            result.limit_abs_max = max(result.limit_abs_max, *magnitudes)
            result.configs_1e300 += max(magnitudes) >= 1e300
        result.span_max = max(result.span_max, *(hi - lo for lo, hi in zip(cfg.low, cfg.high, strict=True)))
        count = min(int(rng.integers(20, 400)), ticks - result.ticks)
        fuzz_config(rng, cfg, count, result, filter_cls, label)
    result.seconds = time.perf_counter() - t0
    return result


def report(result: FuzzResult) -> str:
    """The printed table."""
    lines = [
        f"# safety_fuzz: seed {result.seed}: {result.ticks:,} ticks over {result.configs:,} random configs "
        f"({result.refused:,} refused with ConfigError: span overflows float64), "
        f"{result.seconds:.1f} s, {result.ticks / max(result.seconds, 1e-9):,.0f} ticks/s (filter + twin + checks)",
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
        f"python {platform.python_version()}, numpy {np.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"# accepted limits: |value| from {result.limit_abs_min:.3g} to {result.limit_abs_max:.4g} "
        f"({result.configs_1e300:,} configs with a limit >= 1e300 in magnitude), widest span {result.span_max:.4g}",
        "",
        "| invariant                  |   checked | violations |",
        "|----------------------------|----------:|-----------:|",
    ]
    for name in INVARIANTS:
        lines.append(f"| {name:<26} | {result.checked[name]:>9,} | {result.violations[name]:>10,} |")
    lines += ["", "| path exercised             |     ticks |", "|----------------------------|----------:|"]
    for name in PATHS:
        lines.append(f"| {name:<26} | {result.paths[name]:>9,} |")
    for name, example in result.examples.items():
        lines.append(f"first {name} violation: {example[:600]}")
    total = result.total_violations
    lines.append(f"{'FAIL' if total else 'OK'}: {total:,} violations in {result.ticks:,} ticks")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ticks", type=int, default=300_000, help="ticks to check (default 300,000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.ticks < 1:
        parser.error("--ticks must be >= 1")
    result = run(args.ticks, args.seed)
    print(report(result))
    return 1 if result.total_violations else 0


if __name__ == "__main__":
    sys.exit(main())
