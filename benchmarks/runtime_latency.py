"""Single-observation policy latency: PolicyRuntime (onnxruntime) vs torch eager, same net, same run.

    .venv/bin/python benchmarks/runtime_latency.py [--iters 20000] [--rounds 10] [--hidden 256 256]

The net is the exported-policy shape: observation normaliser -> MLP (default 256x256, ReLU) ->
tanh -> action scaling, 24 observations -> 7 actions, written as a real ONNX file + card (the
test fixture writer, tests/onnx_fixtures.py, so the file follows the documented format).
Contenders, each numpy [O] in -> numpy [A] out, one thread each:

- PolicyRuntime.act   — what the ROS node calls: preallocated input, io_binding, copy out
- ort session.run     — the same onnxruntime session called the plain way (a dict, new output)
- ort io_binding + RunOptions — PolicyRuntime's path but passing a RunOptions (shows why act doesn't)
- torch eager         — the torch module under inference_mode, torch.set_num_threads(1)

Rounds alternate between contenders so that load from other processes on this shared machine
hits all of them alike. Reports p50 / p99 / mean in µs and checks the outputs agree.
Target (export/safety issue) on this CPU for the 256x256 MLP: p50 <= 15 µs, p99 <= 40 µs.
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
import onnxruntime as ort
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the fixture writer: one place that builds test/bench models

from onnx_fixtures import default_metadata, write_policy  # noqa: E402

from offrl_robot.runtime import PolicyRuntime  # noqa: E402


def time_calls(fn: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, iters: int) -> np.ndarray:
    """Per-call latencies in µs (perf_counter_ns around each call)."""
    out = np.empty(iters)
    clock = time.perf_counter_ns
    n = len(inputs)
    for i in range(iters):
        obs = inputs[i % n]
        t0 = clock()
        fn(obs)
        out[i] = clock() - t0
    return out / 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iters", type=int, default=20_000, help="timed calls per contender per round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    meta = default_metadata(obs_dim=24, act_dim=7)
    with tempfile.TemporaryDirectory() as tmp:
        files = write_policy(Path(tmp), metadata=meta, hidden=tuple(args.hidden), seed=args.seed)
        runtime = PolicyRuntime(files.onnx_path)
    module = files.module.eval()
    session = runtime._session  # the same session, called the plain way
    rng = np.random.default_rng(args.seed)
    inputs = rng.normal(size=(1024, meta.observation_dim)).astype(np.float32)

    def torch_eager(obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(obs).unsqueeze(0))[0].numpy()

    def ort_run(obs: np.ndarray) -> np.ndarray:
        return session.run(None, {"observation": obs[None]})[0][0]

    run_options = ort.RunOptions()

    def ort_binding_with_run_options(obs: np.ndarray) -> np.ndarray:
        np.copyto(runtime._input_row, obs)
        session.run_with_iobinding(runtime._binding, run_options)
        return runtime._output_row.copy()

    contenders: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "PolicyRuntime.act (io_binding)": runtime.act,
        "ort session.run (plain)": ort_run,
        "ort io_binding + RunOptions": ort_binding_with_run_options,
        "torch eager (inference_mode)": torch_eager,
    }
    reference = np.stack([torch_eager(o) for o in inputs[:64]])
    for name, fn in contenders.items():
        got = np.stack([fn(o) for o in inputs[:64]])
        err = float(np.abs(got - reference).max())
        assert err < 1e-4, f"{name} disagrees with torch by {err}"
        time_calls(fn, inputs, 2_000)  # warm-up
    samples: dict[str, list[np.ndarray]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            samples[name].append(time_calls(fn, inputs, args.iters))

    print(
        f"# runtime_latency: MLP {meta.observation_dim}->{'x'.join(map(str, args.hidden))}->{meta.action_dim}, "
        f"single observation, {args.rounds} rounds x {args.iters} calls each, 1 thread"
    )
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
        f"python {platform.python_version()}, onnxruntime {ort.__version__}, torch {torch.__version__}, "
        f"numpy {np.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(f"| {'contender':<32} | p50 µs | p99 µs | mean µs | vs torch p50 |")
    print(f"|{'-' * 34}|-------:|-------:|--------:|-------------:|")
    torch_p50 = float(np.percentile(np.concatenate(samples["torch eager (inference_mode)"]), 50))
    for name, parts in samples.items():
        lat = np.concatenate(parts)
        p50, p99 = np.percentile(lat, [50, 99])
        print(f"| {name:<32} | {p50:6.1f} | {p99:6.1f} | {lat.mean():7.1f} | {torch_p50 / p50:11.1f}x |")
    act = np.concatenate(samples["PolicyRuntime.act (io_binding)"])
    p50, p99 = np.percentile(act, [50, 99])
    verdict = "meets" if p50 <= 15 and p99 <= 40 else "MISSES"
    print(f"PolicyRuntime.act {verdict} the target p50 <= 15 µs, p99 <= 40 µs (p50 {p50:.1f}, p99 {p99:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
