"""Is the CUDA-graph step the same training as the eager step? (run on a CUDA machine)

For each algorithm, from identical initial weights and sampler seeds: N eager steps vs N steps
replayed from `offrl_robot.accel` graphs (and `compile`), then the largest weight difference,
the last metrics, and a second graph run to check run-to-run determinism. Also checks that the
warm-up needed for capture left no trace (the first replay starts from the initial weights).

IQL runs its default cosine actor-lr decay with a horizon of `--steps`, so the rate falls to 0
within the check: a graph that froze the rate would end far from eager. The "lr schedule" table
(`--schedule-steps`, on by default) checks the schedule itself under each mode (IQL default and
BC with `lr_schedule: cosine`): the actor's rate after k updates against the cosine's value
(float32 on CUDA: |rel err| <= 6e-8), and the weights against eager.

    python3 benchmarks/accel_check.py --steps 50 --seeds 2 --trainer-steps 300

The "compile matrix" (`--matrix`) is issue 17's acceptance check of `accelerate: compile` on
CUDA: every algorithm × {1, 8 vectorised seeds} × {fp32, bf16}, in a process where d3rlpy was
imported first (`--import-d3rlpy`: it turns compiled autograd and TF32 on process-wide) or not.
Each row says which mode actually ran (compile, or graph after a fallback warning), the weights
against an eager run at the same precision, whether every metric is finite, and updates/s of
the compiled step next to the graph step (timed after the capture, on whatever else shares the
GPU: compare rows of one run, not across runs).

    python3 benchmarks/accel_check.py --matrix --algos bc,iql,td3bc,cql,bcq [--import-d3rlpy]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from offrl_robot.accel import DATA_KEYS, make_update_step  # noqa: E402
from offrl_robot.algos import REGISTRY  # noqa: E402
from offrl_robot.replay import make_sampler  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import ACT_DIM, OBS_DIM, OURS_OVERRIDES, synthetic_data  # noqa: E402


def schedule_overrides(name: str, horizon: int) -> dict:
    """The cosine lr decay over `horizon` updates: IQL's default, BC's `lr_schedule: cosine`."""
    key = {"iql": "actor_lr_schedule_steps", "bc": "lr_schedule_steps"}.get(name)
    return {key: horizon} if key else {}


def train(
    name: str,
    mode: str,
    steps: int,
    seeds: int,
    prioritized: bool,
    overrides: dict | None = None,
    precision: str = "fp32",
    timing: dict | None = None,
) -> tuple[dict, dict]:
    """`steps` updates from fixed initial weights. `timing`, when given, receives the mode that
    ran, the fallback warnings and updates/s over the steps after the first 10 (capture and
    compile excluded)."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    torch.cuda.manual_seed(0)
    cls = REGISTRY[name]
    values = dict(OURS_OVERRIDES[name])
    values |= schedule_overrides(name, steps) if name == "iql" else {}  # IQL's default: decays
    values |= overrides or {}
    algo = cls(OBS_DIM, ACT_DIM, seeds, cls.config_class(**values), seeds=list(range(seeds)))
    algo = algo.to(device).train()
    arrays = synthetic_data(20_000)
    data = {k: torch.from_numpy(arrays[k]).to(device) for k in DATA_KEYS}
    sampler = make_sampler(
        20_000, 256, list(range(seeds)), device, prioritized=prioritized, total_steps=steps
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step_fn = make_update_step(algo, sampler, data, mode, precision)
        t0 = None
        for step in range(1, steps + 1):
            if step == 11:
                torch.cuda.synchronize()
                t0 = time.perf_counter()
            indices, out = step_fn(step)
            if prioritized:
                sampler.update_priorities(indices, out.td_error)
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0 if t0 is not None else float("nan")
        # the last update's metrics, copied once (a copy per step would time host syncs)
        metrics = {k: v.detach().cpu().clone() for k, v in out.metrics.items()}
    if timing is not None:
        timing["mode"] = step_fn.mode
        timing["warnings"] = [str(w.message) for w in caught if "accelerate" in str(w.message)]
        timing["updates_per_s"] = (steps - 10) / elapsed
    state = {k: v.detach().cpu().clone() for k, v in algo.state_dict().items()}
    assert algo.num_updates == steps, (algo.num_updates, steps)
    lr = float(next(iter(algo.optimizers.values())).param_groups[0]["lr"])
    metrics["_actor_lr"] = torch.tensor(lr, dtype=torch.float64)
    return state, metrics


def compile_matrix(algos: list[str], steps: int, seed_counts: list[int], precisions: list[str]) -> None:
    """`accelerate: compile` on CUDA for every algorithm x seeds x precision (module docstring)."""
    import_state = "d3rlpy imported" if "d3rlpy" in sys.modules else "no d3rlpy"
    print(f"\n### compile matrix ({import_state}; {steps} updates per run)")
    print("| algo | seeds | precision | mode ran | max abs dW vs eager | finite | upd/s compile | upd/s graph | fallback warning |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in algos:
        for seeds in seed_counts:
            for precision in precisions:
                try:
                    ref, _ = train(name, "none", steps, seeds, False, precision=precision)
                    graph_timing: dict = {}
                    train(name, "graph", steps, seeds, False, precision=precision, timing=graph_timing)
                    timing: dict = {}
                    state, metrics = train(name, "compile", steps, seeds, False, precision=precision, timing=timing)
                    finite = all(torch.isfinite(v).all().item() for k, v in metrics.items() if k[0] != "_")
                    warning = "; ".join(timing["warnings"])[:160] or "-"
                    print(
                        f"| {name} | {seeds} | {precision} | {timing['mode']} | {max_diff(ref, state):.2e} | "
                        f"{finite} | {timing['updates_per_s']:.0f} | {graph_timing['updates_per_s']:.0f} | {warning} |",
                        flush=True,
                    )
                except Exception as exc:  # a crash is what this check exists to find: report it
                    print(f"| {name} | {seeds} | {precision} | CRASHED {type(exc).__name__}: {str(exc)[:200]} | | | | | |")


def schedule_check(steps: int, seeds: int) -> None:
    """The lr schedule under graph/compile: the rate after `steps` of a 2*steps cosine (half way:
    base/2) and the weights against eager, for IQL (default) and BC (`lr_schedule: cosine`)."""
    import math

    print("\n| lr schedule | mode | actor lr after k | cosine(k) | rel err | max abs dW vs eager |")
    print("|---|---|---|---|---|---|")
    for name in ("iql", "bc"):
        overrides = schedule_overrides(name, 2 * steps)
        base = 3e-4
        want = base * 0.5 * (1.0 + math.cos(math.pi * steps / (2 * steps)))
        ref, ref_metrics = train(name, "none", steps, seeds, False, overrides)
        rows = [("none", ref, ref_metrics)]
        for mode in ("graph", "compile"):
            try:
                state, metrics = train(name, mode, steps, seeds, False, overrides)
                rows.append((mode, state, metrics))
            except Exception as exc:
                print(f"| {name} | {mode} | FAILED {type(exc).__name__}: {str(exc)[:200]} | | | |")
        for mode, state, metrics in rows:
            got = float(metrics["_actor_lr"])
            print(
                f"| {name} | {mode} | {got:.9e} | {want:.9e} | {abs(got - want) / want:.1e} | "
                f"{max_diff(ref, state):.2e} |",
                flush=True,
            )


def max_diff(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())


def trainer_check(steps: int) -> None:
    """The Trainer's `accelerate: graph` against `none`: same weights, and its updates/s."""
    import dataclasses
    import tempfile

    from offrl_robot.data.collect import collect
    from offrl_robot.train import TrainConfig, Trainer

    if "accelerate" not in {f.name for f in dataclasses.fields(TrainConfig)}:
        print("trainer: TrainConfig has no `accelerate` field yet; skipped")
        return
    # Real ArmReach data with periodic evaluation, so the eval's RNG fork runs between replays.
    data = collect("ArmReach-v0", "scripted-expert", episodes=40, seed=0, noise=0.1).dataset
    print("| trainer algo | seeds | max abs dW graph vs none | updates/s none | updates/s graph | mode ran |")
    print("|---|---|---|---|---|---|")
    for algo, seeds in (("td3bc", [0]), ("cql", [0]), ("iql", [0, 1, 2])):
        states, rates, modes = {}, {}, {}
        for mode in ("none", "graph"):
            with tempfile.TemporaryDirectory() as tmp:
                config = TrainConfig(
                    algo=algo,
                    steps=steps,
                    seeds=seeds,
                    eval_every=0,
                    log_every=steps,
                    checkpoint_every=0,
                    progress=False,
                    device="cuda",
                    accelerate=mode,
                )
                trainer = Trainer(config, dataset=data, run_dir=Path(tmp) / "run")
                summary = trainer.fit()
                states[mode] = {k: v.detach().cpu() for k, v in trainer.algo.state_dict().items()}
                rates[mode], modes[mode] = summary["updates_per_s"], summary["accelerate"]
        print(
            f"| {algo} | {len(seeds)} | {max_diff(states['none'], states['graph']):.2e} | {rates['none']:.0f} | "
            f"{rates['graph']:.0f} | {modes['graph']} |",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--algos", default="bc,iql,td3bc,cql,bcq")
    parser.add_argument("--modes", default="graph,compile")
    parser.add_argument("--trainer-steps", type=int, default=0, help="also check the Trainer (0 = skip)")
    parser.add_argument("--schedule-steps", type=int, default=50, help="lr-schedule check length (0 = skip)")
    parser.add_argument("--matrix", action="store_true", help="only the compile matrix (see the docstring)")
    parser.add_argument("--matrix-steps", type=int, default=110)
    parser.add_argument("--matrix-seeds", default="1,8")
    parser.add_argument("--matrix-precisions", default="fp32,bf16")
    parser.add_argument(
        "--import-d3rlpy", action="store_true", help="import d3rlpy first, as a benchmark process does"
    )
    parser.add_argument(
        "--inductor",
        action="append",
        default=[],
        help="set a torch._inductor.config option for this process, e.g. triton.persistent_reductions=False "
        "(repeatable; to find a setting under which a failing compile works)",
    )
    args = parser.parse_args()
    for option in args.inductor:
        import torch._inductor.config as inductor_config
        import yaml

        key, _, value = option.partition("=")
        target = inductor_config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, leaf, yaml.safe_load(value))
        print(f"# inductor {key} = {getattr(target, leaf)!r}")
    if args.import_d3rlpy:
        import d3rlpy  # noqa: F401  (its import turns compiled autograd and TF32 on process-wide)
    if args.matrix:
        compile_matrix(
            args.algos.split(","),
            args.matrix_steps,
            [int(n) for n in args.matrix_seeds.split(",")],
            args.matrix_precisions.split(","),
        )
        return 0
    if not args.import_d3rlpy:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    print("| algo | mode | PER | max abs dW vs eager | max abs dW graph run 1 vs 2 | finite |")
    print("|---|---|---|---|---|---|")
    for name in args.algos.split(","):
        for prioritized in (False, True) if REGISTRY[name].value_based else (False,):
            ref, _ = train(name, "none", args.steps, args.seeds, prioritized)
            for mode in args.modes.split(","):
                if prioritized and mode == "compile":
                    continue
                try:
                    a, metrics = train(name, mode, args.steps, args.seeds, prioritized)
                    b, _ = train(name, mode, args.steps, args.seeds, prioritized)
                    finite = all(torch.isfinite(v).all().item() for k, v in metrics.items() if k[0] != "_")
                    print(
                        f"| {name} | {mode} | {prioritized} | {max_diff(ref, a):.2e} | {max_diff(a, b):.2e} | {finite} |",
                        flush=True,
                    )
                except Exception as exc:
                    print(
                        f"| {name} | {mode} | {prioritized} | FAILED {type(exc).__name__}: {str(exc)[:200]} | | |"
                    )
    if args.schedule_steps:
        schedule_check(args.schedule_steps, args.seeds)
    if args.trainer_steps:
        trainer_check(args.trainer_steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
