"""Training throughput, offrl_robot vs d3rlpy 2.8.0, side by side in one run on one machine.

Both train on the SAME synthetic Hopper-shaped data (obs 11, act 3, 100k transitions in
episodes of 1,000 steps), batch 256, 256x256 actor/critic nets, and the hyper-parameters that
change the cost of an update set equal (twin critics, CQL's 10 sampled actions and no Lagrange
step, TD3+BC's actor every 2nd update, BCQ's 10 target candidates and 750x750 VAE).

What is timed is one training-loop step as each library's own `fit` runs it, logging excluded:
  ours    sample indices on the device -> gather -> `update` -> add metrics to on-device sums
          (`offrl_robot.accel.make_update_step`, exactly the Trainer's hot path)
  d3rlpy  `sample_transition_batch` -> `update` (which converts the batch to tensors and returns
          float metrics), i.e. the body of `d3rlpy ... fit()`
plus, for reference, d3rlpy's `update` alone on pre-sampled batches ("d3rlpy upd-only").
Ours runs eager and with `accelerate: compile` (on CUDA also `graph`); on a CPU `compile` is
Inductor's C++ kernels with no graph. d3rlpy's `compile_graph` is CUDA-only (d3rlpy ignores it
on a CPU), so on a CPU its eager step is the whole peer.
Warm-up steps (and any graph capture / torch.compile) are excluded. On a shared CPU the two
libraries are measured in alternating rounds and the median round is reported, so a load
spike from another job hits both columns alike. Importing d3rlpy on a CUDA machine turns on
dynamo's compiled autograd for the whole process, under which our compile + bf16 update fails
in torch 2.11: measure the vectorised compile-bf16 row with --no-peer.

    .venv/bin/python benchmarks/train_throughput.py --device cpu --steps 300
    python3 benchmarks/train_throughput.py --device cuda --steps 2000   # on the GPU machine
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from offrl_robot.accel import DATA_KEYS, make_update_step  # noqa: E402
from offrl_robot.algos import REGISTRY  # noqa: E402
from offrl_robot.replay import UniformSampler  # noqa: E402

ALGOS = ("bc", "iql", "td3bc", "cql", "bcq")
OBS_DIM, ACT_DIM, BATCH, HIDDEN = 11, 3, 256, (256, 256)
BCQ_VAE_HIDDEN = (750, 750)
EPISODE_LENGTH = 1000

# Cost-relevant hyper-parameters, equal on both sides (see the module docstring).
OURS_OVERRIDES: dict[str, dict[str, Any]] = {
    "bc": {"loss": "mse"},
    # IQL's default cosine actor-lr decay (a device tensor advanced by each step): its length only
    # sets the values, not the cost; 1M updates, CORL's run length.
    "iql": {"actor_lr_schedule_steps": 1_000_000},
    "td3bc": {"policy_freq": 2},
    "cql": {"num_sampled_actions": 10, "lagrange": False},
    "bcq": {"num_target_samples": 10, "vae_hidden_sizes": BCQ_VAE_HIDDEN},
}


def synthetic_data(num_transitions: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Hopper-shaped random transitions: standard-normal observations, actions in [-1, 1],
    episodes of EPISODE_LENGTH steps, every 4th episode ending in a true terminal."""
    rng = np.random.default_rng(seed)
    n = num_transitions
    obs = rng.standard_normal((n + 1, OBS_DIM)).astype(np.float32)
    ends = np.zeros(n, dtype=np.float32)
    ends[EPISODE_LENGTH - 1 :: EPISODE_LENGTH] = 1.0
    ends[-1] = 1.0
    terminals = np.zeros(n, dtype=np.float32)
    end_index = np.flatnonzero(ends)
    terminals[end_index[::4]] = 1.0
    return {
        "observations": obs[:-1],
        "next_observations": obs[1:],
        "actions": rng.uniform(-1.0, 1.0, (n, ACT_DIM)).astype(np.float32),
        "rewards": rng.standard_normal(n).astype(np.float32),
        "terminals": terminals,
        "timeouts": ends * (1.0 - terminals),
    }


# ------------------------------------------------------------------------------------- ours
def make_ours(
    algo_name: str,
    arrays: dict[str, np.ndarray],
    device: torch.device,
    seeds: int,
    accel: str,
    precision: str = "fp32",
) -> Callable[[], None]:
    """One Trainer-style step of our algorithm (S = `seeds` vectorised seeds)."""
    cls = REGISTRY[algo_name]
    config = cls.config_class(batch_size=BATCH, hidden_sizes=HIDDEN, **OURS_OVERRIDES[algo_name])
    algo = cls(OBS_DIM, ACT_DIM, seeds, config, seeds=list(range(seeds))).to(device)
    algo.train()
    data = {k: torch.from_numpy(arrays[k]).to(device) for k in DATA_KEYS}
    sampler = UniformSampler(len(arrays["rewards"]), BATCH, list(range(seeds)), device)
    step_fn = make_update_step(algo, sampler, data, accel, precision)
    sums: dict[str, torch.Tensor] = {}
    counter = [0]

    def step() -> None:
        counter[0] += 1
        _, out = step_fn(counter[0])
        for name, value in out.metrics.items():  # the Trainer's on-device metric sums
            if name in sums:
                sums[name] += value
            else:
                sums[name] = value.clone()

    return step


# ----------------------------------------------------------------------------------- d3rlpy
def make_d3rlpy(
    algo_name: str, arrays: dict[str, np.ndarray], device: torch.device, compile_graph: bool
) -> tuple[Callable[[], None], Callable[[], None]]:
    """(fit-loop step, update-only step) of d3rlpy's same algorithm with matched cost knobs."""
    import d3rlpy
    from d3rlpy.models.encoders import VectorEncoderFactory

    d3rlpy.seed(0)
    dataset = d3rlpy.dataset.MDPDataset(
        observations=arrays["observations"],
        actions=arrays["actions"],
        rewards=arrays["rewards"],
        terminals=arrays["terminals"],
        timeouts=arrays["timeouts"],
    )
    enc = VectorEncoderFactory(hidden_units=list(HIDDEN))
    common = {"batch_size": BATCH, "compile_graph": compile_graph}
    algos = d3rlpy.algos
    if algo_name == "bc":
        config: Any = algos.BCConfig(policy_type="deterministic", encoder_factory=enc, **common)
    elif algo_name == "iql":
        config = algos.IQLConfig(
            n_critics=2,
            actor_encoder_factory=enc,
            critic_encoder_factory=enc,
            value_encoder_factory=enc,
            **common,
        )
    elif algo_name == "td3bc":
        config = algos.TD3PlusBCConfig(
            n_critics=2,
            update_actor_interval=2,
            actor_encoder_factory=enc,
            critic_encoder_factory=enc,
            **common,
        )
    elif algo_name == "cql":
        config = algos.CQLConfig(
            n_critics=2,
            n_action_samples=10,
            alpha_learning_rate=0.0,  # ours runs without the Lagrange step by default
            actor_encoder_factory=enc,
            critic_encoder_factory=enc,
            **common,
        )
    elif algo_name == "bcq":
        config = algos.BCQConfig(
            n_critics=2,
            n_action_samples=10,
            actor_encoder_factory=enc,
            critic_encoder_factory=enc,
            imitator_encoder_factory=VectorEncoderFactory(hidden_units=list(BCQ_VAE_HIDDEN)),
            **common,
        )
    else:
        raise ValueError(algo_name)
    d3_device = f"cuda:{device.index or 0}" if device.type == "cuda" else "cpu:0"
    algo = config.create(device=d3_device)
    algo.build_with_dataset(dataset)
    presampled = [dataset.sample_transition_batch(BATCH) for _ in range(16)]
    counter = [0]

    def fit_step() -> None:
        algo.update(dataset.sample_transition_batch(BATCH))

    def update_only() -> None:
        counter[0] += 1
        algo.update(presampled[counter[0] % len(presampled)])

    return fit_step, update_only


# ------------------------------------------------------------------------------------ timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Contender:
    label: str
    build: Callable[[], Callable[[], None]]
    step: Callable[[], None] | None = None
    rates: list[float] = field(default_factory=list)
    cpu_rates: list[float] = field(default_factory=list)  # updates per CPU-second of this process
    setup_s: float = 0.0
    error: str | None = None


def _error_text(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def _time_round(step: Callable[[], None], count: int, max_round_s: float) -> tuple[int, float, float]:
    """Run up to `count` steps, stopping early at the per-round time cap (checked every 10
    steps); return (steps done, wall seconds, CPU seconds of this process). The host clock needs
    no sync on CUDA: the launch queue bounds how far the host runs ahead of the GPU."""
    t0, c0 = time.perf_counter(), time.process_time()
    done = 0
    while done < count and (done % 10 or time.perf_counter() - t0 < max_round_s):
        step()
        done += 1
    return done, time.perf_counter() - t0, time.process_time() - c0


def run_rounds(
    contenders: list[Contender],
    device: torch.device,
    steps: int,
    warmup: int,
    rounds: int,
    max_round_s: float,
) -> None:
    """Build + warm up each contender, then time `rounds` alternating rounds of steps/rounds each."""
    for c in contenders:
        try:
            t0 = time.perf_counter()
            c.step = c.build()
            for _ in range(warmup):
                c.step()
            _sync(device)
            c.setup_s = time.perf_counter() - t0
        except Exception as exc:  # a peer failing must not hide the other numbers
            c.error = _error_text(exc)
            print(f"  {c.label}: FAILED {c.error}", flush=True)
    per_round = max(1, steps // rounds)
    for _ in range(rounds):
        for c in contenders:
            if c.step is None:
                continue
            _sync(device)
            t0 = time.perf_counter()
            done, _, cpu = _time_round(c.step, per_round, max_round_s)
            _sync(device)
            c.rates.append(done / (time.perf_counter() - t0))
            c.cpu_rates.append(done / max(cpu, 1e-9))


# ------------------------------------------------------------------ one process per contender
ISOLATED_KINDS = ("ours none", "ours compile", "d3rlpy eager", "d3rlpy upd-only")


def _isolated_child(conn: Any, kind: str, algo: str, transitions: int, threads: int, warmup: int) -> None:
    """Build one CPU contender alone in this process, warm it up, then time rounds on request."""
    if threads:  # 0 keeps torch's default (all cores), as in the parent process
        torch.set_num_threads(threads)
    arrays = synthetic_data(transitions)
    try:
        if kind.startswith("ours "):
            step = make_ours(algo, arrays, torch.device("cpu"), 1, kind.removeprefix("ours "))
        else:
            fit_step, update_step = make_d3rlpy(algo, arrays, torch.device("cpu"), False)
            step = fit_step if kind == "d3rlpy eager" else update_step
        for _ in range(warmup):
            step()
    except Exception as exc:
        conn.send(("error", _error_text(exc)))
        return
    conn.send(("ready", None))
    while (request := conn.recv()) is not None:
        conn.send(_time_round(step, *request))


def run_rounds_isolated(
    algo: str,
    transitions: int,
    threads: int,
    steps: int,
    warmup: int,
    rounds: int,
    max_round_s: float,
    kinds: tuple[str, ...] = ISOLATED_KINDS,
) -> list[Contender]:
    """CPU only: each contender lives in its own process (no shared caches, allocator or library
    state with the other library), and the rounds still alternate between them, so a change in
    the machine's load hits every contender alike."""
    ctx = multiprocessing.get_context("spawn")
    contenders, children = [], []
    for kind in kinds:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_isolated_child, args=(child, kind, algo, transitions, threads, warmup))
        t0 = time.perf_counter()
        proc.start()
        status, detail = parent.recv()
        contender = Contender(kind, build=lambda: lambda: None, setup_s=time.perf_counter() - t0)
        if status == "error":
            contender.error = detail
            print(f"  {kind}: FAILED {detail}", flush=True)
        contenders.append(contender)
        children.append((parent, proc, status == "ready"))
    per_round = max(1, steps // rounds)
    try:
        for _ in range(rounds):
            for contender, (conn, _, ready) in zip(contenders, children, strict=True):
                if ready:
                    conn.send((per_round, max_round_s))
                    done, wall, cpu = conn.recv()
                    contender.rates.append(done / wall)
                    contender.cpu_rates.append(done / max(cpu, 1e-9))
    finally:
        for conn, proc, ready in children:
            if ready:
                conn.send(None)
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    return contenders


def build_contenders(
    name: str, arrays: dict[str, np.ndarray], device: torch.device, *, peer: bool, compiled: bool
) -> list[Contender]:
    """Ours (eager, compile; on CUDA also graph) and d3rlpy (eager, update-only; on CUDA
    compile_graph, which d3rlpy ignores on a CPU)."""
    cuda = device.type == "cuda"
    modes = ["none", *(["graph"] if cuda else []), *(["compile"] if compiled else [])]
    contenders = [
        Contender(f"ours {m}", functools.partial(make_ours, name, arrays, device, 1, m)) for m in modes
    ]
    if not peer:
        return contenders
    update_only: dict[str, Callable[[], None]] = {}

    def build_peer(compile_graph: bool) -> Callable[[], None]:
        fit_step, update_step = make_d3rlpy(name, arrays, device, compile_graph)
        update_only[str(compile_graph)] = update_step
        return fit_step

    contenders.append(Contender("d3rlpy eager", functools.partial(build_peer, False)))
    contenders.append(Contender("d3rlpy upd-only", lambda: update_only["False"]))
    if cuda and compiled:
        contenders.append(Contender("d3rlpy compile_graph", functools.partial(build_peer, True)))
    return contenders


def median(c: Contender) -> float | None:
    return statistics.median(c.rates) if c.rates else None


def fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=300, help="timed updates per contender")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed updates first (default 10 cpu / 50 cuda)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds (median reported)")
    parser.add_argument("--max-round-s", type=float, default=20.0, help="stop a slow contender's round early")
    parser.add_argument("--algos", default=",".join(ALGOS))
    parser.add_argument("--vector-seeds", type=int, default=8, help="S of the vectorised CQL row (0 = skip)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads, same for both (0 = default)"
    )
    parser.add_argument("--transitions", type=int, default=100_000)
    parser.add_argument("--no-peer", action="store_true", help="skip d3rlpy (ours only)")
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the compile rows (ours and, on CUDA, d3rlpy)"
    )
    parser.add_argument(
        "--tf32", action="store_true", help="cuda: TF32 matmuls for BOTH libraries (default fp32)"
    )
    parser.add_argument(
        "--vector-precisions",
        default="fp32,bf16",
        help="cuda: ours' precisions (offrl_robot.accel.PRECISIONS) for the vectorised CQL row",
    )
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="cpu: each contender (ours eager, d3rlpy eager, d3rlpy upd-only) in its own process, "
        "rounds still alternating; without it all share this process",
    )
    parser.add_argument("--json", type=Path, help="also write all numbers here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.isolate and (device.type != "cpu" or args.no_peer):
        parser.error("--isolate is for CPU runs against d3rlpy (--device cpu, without --no-peer)")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available here", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    warmup = args.warmup if args.warmup is not None else (50 if device.type == "cuda" else 10)
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    unknown = sorted(set(algos) - set(ALGOS))
    if unknown:
        print(f"error: unknown --algos {unknown}; choose from {', '.join(ALGOS)}", file=sys.stderr)
        return 2
    arrays = synthetic_data(args.transitions)
    cuda = device.type == "cuda"
    d3_version = "not run"
    if not args.no_peer:
        import d3rlpy

        d3_version = d3rlpy.__version__
    # After importing d3rlpy: on a CUDA machine its import switches the whole process to TF32
    # matmuls (torch.set_float32_matmul_precision("high")). Set the precision both libraries run
    # at explicitly, so the default really is exact fp32 and --tf32 really is TF32 for both.
    torch.set_float32_matmul_precision("high" if args.tf32 else "highest")
    machine = torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine())
    header = (
        f"# {machine}; torch {torch.__version__}; python {platform.python_version()}; d3rlpy {d3_version}; "
        f"threads {torch.get_num_threads()}; {'TF32' if args.tf32 else 'fp32'} matmuls; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
        f"# obs {OBS_DIM}, act {ACT_DIM}, batch {BATCH}, nets {HIDDEN[0]}x{HIDDEN[1]}, "
        f"{args.transitions} transitions; {args.steps} timed updates in {args.rounds} rounds, {warmup} warm-up"
    )
    print(header, flush=True)

    rows: list[dict[str, Any]] = []
    for name in algos:
        print(f"{name} ...", flush=True)
        if args.isolate:
            kinds = tuple(k for k in ISOLATED_KINDS if not (args.no_compile and k == "ours compile"))
            contenders = run_rounds_isolated(
                name, args.transitions, args.threads, args.steps, warmup, args.rounds, args.max_round_s, kinds
            )
        else:
            contenders = build_contenders(
                name, arrays, device, peer=not args.no_peer, compiled=not args.no_compile
            )
            run_rounds(contenders, device, args.steps, warmup, args.rounds, args.max_round_s)
        row = {"algo": name, "seeds": 1}
        for c in contenders:
            row[c.label] = median(c)
            row[c.label + " per_cpu_s"] = statistics.median(c.cpu_rates) if c.cpu_rates else None
            row[c.label + " setup_s"] = round(c.setup_s, 1)
            if c.error:
                row[c.label + " error"] = c.error
        rows.append(row)
        print(
            "  " + ", ".join(f"{c.label}: {fmt(median(c))}/s (setup {c.setup_s:.0f} s)" for c in contenders),
            flush=True,
        )
        if args.json:  # written as we go: a run cut short still leaves its finished rows
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"header": header, "rows": rows}, indent=2) + "\n")
        if name == "cql" and args.vector_seeds > 1:
            s = args.vector_seeds
            modes = (["graph"] + ([] if args.no_compile else ["compile"])) if cuda else ["none"]
            precisions = [p for p in args.vector_precisions.split(",") if p] if cuda else ["fp32"]
            vec = [
                Contender(
                    f"ours {m}" + ("" if p == "fp32" else f" {p}"),
                    functools.partial(make_ours, "cql", arrays, device, s, m, p),
                )
                for p in precisions
                for m in modes
            ]
            run_rounds(vec, device, args.steps, warmup, args.rounds, args.max_round_s)
            vec_row: dict[str, Any] = {"algo": f"cql x{s} seeds", "seeds": s}
            for c in vec:
                vec_row[c.label] = median(c)
                if c.error:
                    vec_row[c.label + " error"] = c.error
                print(f"  cql x{s} seeds, {c.label}: {fmt(median(c))} updates/s", flush=True)
            rows.append(vec_row)
            if args.json:
                args.json.write_text(json.dumps({"header": header, "rows": rows}, indent=2) + "\n")
        del contenders
        if cuda:
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------------------ table
    cols = ["ours none", *(["ours graph"] if cuda else []), *([] if args.no_compile else ["ours compile"])]
    # The ratio columns: ours' default GPU mode (graph) or, on a CPU, eager and compile.
    ratio_ours = ["ours graph"] if cuda else [c for c in cols if c in ("ours none", "ours compile")]
    peer_cols = [] if args.no_peer else ["d3rlpy eager", "d3rlpy upd-only"]
    if cuda and not args.no_peer and not args.no_compile:
        peer_cols.append("d3rlpy compile_graph")
    print("\n## Updates/s (median of rounds; seed-updates/s = updates/s x S)")
    titles = {"ours none": "ours eager", "ours graph": "ours graph", "ours compile": "ours compile"}
    head = ["algo", *[titles[c] for c in cols], *peer_cols]
    ratio_peers = ["d3rlpy eager"] + (["d3rlpy compile_graph"] if "d3rlpy compile_graph" in peer_cols else [])
    if peer_cols:
        head += [f"{titles[o]} / {p}" for o in ratio_ours for p in ratio_peers]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for row in rows:
        s = row["seeds"]
        cells = [row["algo"]]
        for c in cols + peer_cols:
            v = row.get(c)
            cells.append(fmt(v) + (f" ({fmt(v * s)} seed-upd/s)" if v is not None and s > 1 else ""))
        if peer_cols and s == 1:
            for label in ratio_ours:
                for peer in ratio_peers:
                    ours, theirs = row.get(label), row.get(peer)
                    cells.append(f"{ours / theirs:.2f}x" if ours and theirs else "—")
        elif peer_cols:
            cells += ["—"] * (len(head) - len(cells))
        print("| " + " | ".join(cells) + " |")
    for row in rows:
        if row["seeds"] > 1:
            print(f"\n## {row['algo']}: every variant (updates/s; seed-updates/s)")
            for label, v in row.items():
                if label.startswith("ours") and isinstance(v, float):
                    print(f"- {label}: {fmt(v)} ({fmt(v * row['seeds'])} seed-upd/s)")
    if not cuda and peer_cols:
        # On a CPU shared with other jobs, wall time depends on their load; CPU time of this
        # process is the fairer cost measure (with several threads it counts every core used).
        print("\n## Updates per CPU-second of this process (process_time; insensitive to other jobs' load)")
        print(
            "| algo | "
            + " | ".join(titles[o] for o in ratio_ours)
            + " | d3rlpy eager | "
            + " | ".join(f"{titles[o]} / d3rlpy" for o in ratio_ours)
            + " |"
        )
        print("|---|" + "---|" * (2 * len(ratio_ours) + 1))
        for row in rows:
            if row["seeds"] != 1:
                continue
            ours = [row.get(o + " per_cpu_s") for o in ratio_ours]
            theirs = row.get("d3rlpy eager per_cpu_s")
            ratios = [f"{o / theirs:.2f}x" if o and theirs else "—" for o in ours]
            print(
                f"| {row['algo']} | "
                + " | ".join(fmt(o) for o in ours)
                + f" | {fmt(theirs)} | "
                + " | ".join(ratios)
                + " |"
            )
    errors = {k: v for row in rows for k, v in row.items() if k.endswith(" error")}
    for row in rows:
        for k, v in row.items():
            if k.endswith(" error"):
                print(f"note: {row['algo']} {k[:-6]} failed: {v}")
    if not errors:
        print("(no contender failed)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"header": header, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
