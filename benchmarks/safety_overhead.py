"""SafetyFilter overhead per control tick (7 joints), by scenario, in one run.

    .venv/bin/python benchmarks/safety_overhead.py [--ticks 20000] [--rounds 10] [--joints 7]

Scenarios (each a stream of 1024 pre-generated float32 actions and 24-d observations):

- nominal      — every action inside the limits and within the slew limit: nothing fires
- nominal, position arm — the same, with the measured positions passed as `hold_reference`
               (what policy_node does for position commands on every tick)
- clamp+slew   — actions far outside the limits: every joint clamped and slew-limited
- blending     — blend_ticks larger than the run: the blend-in stage runs on every tick
- stale        — observation older than max_observation_age_s: safe action every tick
- stale, hold measured — position arm: the safe action is the measured position (clamped)
- bad action   — NaN in the action: safe action every tick
- e-stop       — latched: safe action every tick

Every tick passes its measured dt (jittered +-20 % around the 50 Hz period, as policy_node
does): the slew limit is per second, max_rate x dt (2.5 /s here = 0.05 per nominal tick).

Side by side, the peers a node would otherwise use per tick: `np.clip(action, low, high)`
alone (clamping only, no freshness/finite checks, slew, blend, latch or counters), and
PolicyRuntime.act on the 256x256 policy the filter guards (what the filter adds to a tick).
Target (export/safety issue): <= 10 µs per tick. Rounds alternate between rows so that load
from other processes on this shared machine hits all of them alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the fixture writer: one place that builds test/bench models

from onnx_fixtures import default_metadata, write_policy  # noqa: E402

from offrl_robot.runtime import PolicyRuntime  # noqa: E402
from offrl_robot.safety import SafetyConfig, SafetyFilter  # noqa: E402


def time_ticks(step: Callable[[int], object], ticks: int) -> np.ndarray:
    """Per-call latencies in µs; `step(i)` does one tick on pre-generated input i."""
    out = np.empty(ticks)
    clock = time.perf_counter_ns
    for i in range(ticks):
        t0 = clock()
        step(i & 1023)
        out[i] = clock() - t0
    return out / 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ticks", type=int, default=20_000, help="timed ticks per row per round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--joints", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    n = args.joints
    rng = np.random.default_rng(args.seed)
    low, high = -np.linspace(1.0, 2.0, n), np.linspace(1.0, 2.0, n)
    period = 0.02  # 50 Hz, config/policy.yaml's control rate
    rate = np.full(n, 0.05 / period)  # per second: 0.05 per nominal tick

    def make(safe_action: str = "hold", blend_ticks: int = 0) -> SafetyFilter:
        cfg = SafetyConfig(
            low=low.tolist(),
            high=high.tolist(),
            max_rate=rate.tolist(),
            safe_action=safe_action,
            max_observation_age_s=0.05,
            control_period_s=period,
            blend_ticks=blend_ticks,
        )
        return SafetyFilter(cfg, initial_command=np.zeros(n))

    small = (rng.uniform(-0.01, 0.01, size=(1024, n))).astype(np.float32)  # random walk around 0
    huge = (rng.choice([-1e3, 1e3], size=(1024, n))).astype(np.float32)
    nan_actions = small.copy()
    nan_actions[:, n // 2] = np.nan
    obs = rng.normal(size=(1024, 24)).astype(np.float32)
    measured = rng.uniform(-0.5, 0.5, size=(1024, n))  # float64, as the node's hold_positions
    dts = (period * rng.uniform(0.8, 1.2, 1024)).tolist()  # the node's measured tick interval

    # name -> (filter, actions, observation age, pass hold_reference)
    filters = {
        "nominal": (make(), small, 0.01, False),
        "nominal, position arm": (make(), small, 0.01, True),
        "clamp+slew": (make(), huge, 0.01, False),
        "blending": (make(blend_ticks=10**9), small, 0.01, False),
        "stale": (make("zero"), small, 0.2, False),
        "stale, hold measured": (make("hold"), small, 0.2, True),
        "bad action": (make("zero"), nan_actions, 0.01, False),
        "e-stop": (make("zero"), small, 0.01, False),
    }
    filters["e-stop"][0].estop()
    rows: dict[str, Callable[[int], object]] = {}
    for name, (flt, actions, age, hold) in filters.items():
        if hold:
            rows[f"SafetyFilter.step {name}"] = lambda i, f=flt, a=actions, g=age: f.step(
                a[i], obs[i], g, dts[i], measured[i]
            )
        else:
            rows[f"SafetyFilter.step {name}"] = lambda i, f=flt, a=actions, g=age: f.step(
                a[i], obs[i], g, dts[i]
            )
    rows["peer: np.clip only"] = lambda i: np.clip(small[i], low, high)

    meta = default_metadata(obs_dim=24, act_dim=n)
    with tempfile.TemporaryDirectory() as tmp:
        runtime = PolicyRuntime(write_policy(Path(tmp), metadata=meta, hidden=(256, 256)).onnx_path)
    rows["peer: PolicyRuntime.act 256x256"] = lambda i: runtime.act(obs[i])

    for step in rows.values():
        time_ticks(step, 2_000)  # warm-up
    samples: dict[str, list[np.ndarray]] = {name: [] for name in rows}
    for _ in range(args.rounds):
        for name, step in rows.items():
            samples[name].append(time_ticks(step, args.ticks))

    expected = {
        "nominal": 0,
        "nominal, position arm": 0,
        "clamp+slew": 2,
        "blending": 1,
        "stale": 1,
        "stale, hold measured": 1,
        "bad action": 1,
        "e-stop": 1,
    }
    for name, (flt, *_) in filters.items():
        fired = [k for k, v in flt.counters.items() if v and k != "ticks"]
        assert len(fired) == expected[name], f"{name}: unexpected interventions {flt.counters}"

    print(f"# safety_overhead: {n} joints, {args.rounds} rounds x {args.ticks} ticks per row")
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
        f"python {platform.python_version()}, numpy {np.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(f"| {'row':<40} | p50 µs | p99 µs | mean µs |")
    print(f"|{'-' * 42}|-------:|-------:|--------:|")
    worst_p50 = 0.0
    for name, parts in samples.items():
        lat = np.concatenate(parts)
        p50, p99 = np.percentile(lat, [50, 99])
        if name.startswith("SafetyFilter"):
            worst_p50 = max(worst_p50, p50)
        print(f"| {name:<40} | {p50:6.1f} | {p99:6.1f} | {lat.mean():7.1f} |")
    verdict = "meets" if worst_p50 <= 10 else "MISSES"
    print(f"SafetyFilter {verdict} the target <= 10 µs per tick (worst scenario p50 {worst_p50:.1f} µs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
