"""Policy quality, offrl_robot vs d3rlpy 2.8.0: same datasets, same number of updates, 3 seeds.

Datasets are made with `offrl_robot.data.collect.collect` (the code behind `offrl-robot collect`):
  ArmReach expert  scripted expert, no noise
  ArmReach medium  the scripted expert with Gaussian action noise (--medium-noise of each joint's
                   range: a noisy expert)
  ArmReach mixed   half expert episodes, half uniform-random episodes
  Hopper random / Hopper medium (optional, --hopper-prefix): made by benchmarks/hopper_behaviour.py.

Each of our algorithms trains through the real `Trainer` (all seeds vectorised in one run) and is
evaluated by its final evaluation; d3rlpy's same algorithm trains one seed per run with its own
defaults (batch 256, 256x256 nets, both are those libraries' defaults elsewhere) on the same
arrays, with the same observation standardisation and action min-max scaling ours uses, and is
evaluated by the SAME `offrl_robot.evaluation.evaluate` (same episodes, same start states).
Reported: final success rate and return, mean ± sample std (ddof = 1) over seeds.

    .venv/bin/python benchmarks/quality.py --algos bc,iql,td3bc   # CPU-sized defaults
    python3 benchmarks/quality.py --device cuda --steps 20000 --workers 4   # GPU machine

d3rlpy's eager runs are launch-bound (BCQ ~50 updates/s on an H200 whatever the GPU load): many
of them share one GPU well only under CUDA MPS (`nvidia-cuda-mps-control -d` first, then
`--no-ours`: 15 BCQ runs of 20,000 updates in 415 s). Run ours without MPS: our CUDA-graph runs
failed under it (BENCHMARKS.md, Quality follow-up 19:18).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ALGOS = ("bc", "iql", "td3bc", "cql", "bcq")
TASK = "ArmReach-v0"


@dataclass(frozen=True)
class Job:
    library: str  # "ours" | "d3rlpy"
    algo: str
    dataset: str
    dataset_path: str
    task: str
    seeds: tuple[int, ...]
    steps: int
    device: str
    accelerate: str
    eval_episodes: int
    precision: str = "fp32"
    peer_compile: bool = False
    algo_config: tuple[tuple[str, Any], ...] = ()  # ours: hyper-parameters other than the defaults


# --------------------------------------------------------------------------------- datasets
def make_arm_datasets(episodes: int, medium_noise: float, seed: int) -> dict[str, Any]:
    """expert / medium / mixed ArmReach datasets, each of `episodes` episodes."""
    from offrl_robot.data.collect import collect
    from offrl_robot.data.dataset import Dataset

    expert = collect(TASK, "scripted-expert", episodes=episodes, seed=seed).dataset
    medium = collect(TASK, "scripted-expert", episodes=episodes, seed=seed + 1, noise=medium_noise).dataset
    half_expert = collect(TASK, "scripted-expert", episodes=episodes // 2, seed=seed + 2).dataset
    half_random = collect(TASK, "random", episodes=episodes - episodes // 2, seed=seed + 3).dataset
    mixed = Dataset.from_episodes(half_expert.episodes() + half_random.episodes(), half_expert.metadata)
    mixed.metadata.source = {
        "kind": "mixed",
        "expert": half_expert.metadata.source,
        "random": half_random.metadata.source,
    }
    return {"ArmReach expert": expert, "ArmReach medium": medium, "ArmReach mixed": mixed.validate("mixed")}


def load_hopper_datasets(
    prefix: str, root: str | None, labels: tuple[str, ...] = ("random", "medium")
) -> dict[str, Any]:
    """The locomotion datasets PREFIX-random / PREFIX-medium written by benchmarks/hopper_behaviour.py
    (Hopper-v5 by default, any task with its --task), named "<Task> <label>" ("HalfCheetah
    medium"). A label that was not made (--random-episodes 0) is skipped; none at all is an error."""
    from offrl_robot.data.minari_io import load_dataset
    from offrl_robot.errors import OffrlError

    out, errors = {}, []
    for label in labels:
        try:
            data = load_dataset(f"{prefix}-{label}-v0", root=root)
        except OffrlError as exc:
            errors.append(str(exc))
            continue
        task = (data.metadata.task or "Hopper-v5").split("/")[-1].rsplit("-v", 1)[0]
        out[f"{task} {label}"] = data
    if not out:
        raise SystemExit(
            f"--hopper-prefix {prefix}: {'; '.join(errors)}; make them first with benchmarks/hopper_behaviour.py"
        )
    return out


# ------------------------------------------------------------------------------------- jobs
def pin_worker_gpu(counter: Any, gpus: list[str]) -> None:
    """Pool initializer: worker k sees only GPU gpus[k mod len(gpus)] (set before it imports
    torch), so jobs spread over every GPU given and each process has one current device."""
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]


def run_job(job: Job) -> dict[str, Any]:
    """One training + final evaluation (in a worker process). Returns per-seed results."""
    import torch

    torch.set_num_threads(1)
    with open(job.dataset_path, "rb") as f:
        dataset = pickle.load(f)
    t0 = time.perf_counter()
    per_seed = _train_ours(job, dataset) if job.library.startswith("ours") else _train_d3rlpy(job, dataset)
    return {
        "library": job.library,
        "algo": job.algo,
        "dataset": job.dataset,
        "steps": job.steps,
        "seconds": round(time.perf_counter() - t0, 1),
        "per_seed": per_seed,
    }


def _train_ours(job: Job, dataset: Any) -> list[dict[str, Any]]:
    from offrl_robot.train import TrainConfig, Trainer

    values: dict[str, Any] = {
        "algo": job.algo,
        "task": job.task,
        "steps": job.steps,
        "seeds": list(job.seeds),
        "batch_size": 256,
        "eval_every": 0,
        "eval_episodes": job.eval_episodes,
        "log_every": job.steps,
        "checkpoint_every": 0,
        "progress": False,
        "device": job.device,
        "threads": 1,
    }
    if "accelerate" in {f.name for f in fields(TrainConfig)}:
        values["accelerate"] = job.accelerate
    if job.precision != "fp32":
        values["precision"] = job.precision
    if job.algo_config:
        values["algo_config"] = dict(job.algo_config)
    with tempfile.TemporaryDirectory() as tmp:
        summary = Trainer(TrainConfig(**values), dataset=dataset, run_dir=Path(tmp) / "run").fit()
    return [
        {"seed": r["seed"], "success_rate": r["success_rate"], "mean_return": r["mean_return"]}
        for r in summary["final_eval"]["per_seed"]
    ]


def _d3rlpy_config(
    algo: str,
    obs_mean: np.ndarray,
    obs_std: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    compile_graph: bool = False,
) -> Any:
    """d3rlpy's defaults for `algo`, batch 256, with our normaliser and action scaling."""
    import d3rlpy
    from d3rlpy.preprocessing import MinMaxActionScaler, StandardObservationScaler

    common = {
        "batch_size": 256,
        "observation_scaler": StandardObservationScaler(mean=obs_mean, std=obs_std),
        "action_scaler": MinMaxActionScaler(minimum=low, maximum=high),
    }
    if compile_graph:  # d3rlpy's fastest CUDA mode (torch.compile + CUDA graphs); same maths
        common["compile_graph"] = True
    configs = {
        "bc": d3rlpy.algos.BCConfig,
        "iql": d3rlpy.algos.IQLConfig,
        "td3bc": d3rlpy.algos.TD3PlusBCConfig,
        "cql": d3rlpy.algos.CQLConfig,
        "bcq": d3rlpy.algos.BCQConfig,
    }
    return configs[algo](**common)


def _train_d3rlpy(job: Job, dataset: Any) -> list[dict[str, Any]]:
    import d3rlpy
    import torch

    from offrl_robot.evaluation import evaluate
    from offrl_robot.train import OBS_STD_FLOOR

    obs = dataset.observations.astype(np.float64)
    obs_mean = obs.mean(axis=0).astype(np.float32)
    obs_std = np.maximum(obs.std(axis=0), OBS_STD_FLOOR).astype(np.float32)
    low = np.asarray(dataset.metadata.action_low, np.float32)
    high = np.asarray(dataset.metadata.action_high, np.float32)
    mdp = d3rlpy.dataset.MDPDataset(
        observations=dataset.observations,
        actions=np.clip(dataset.actions, low, high),
        rewards=dataset.rewards,
        terminals=dataset.terminals.astype(np.float32),
        timeouts=dataset.timeouts.astype(np.float32),
    )
    device = "cuda:0" if job.device.startswith("cuda") else "cpu:0"
    results = []
    for seed in job.seeds:
        d3rlpy.seed(seed)
        algo = _d3rlpy_config(job.algo, obs_mean, obs_std, low, high, job.peer_compile and device != "cpu:0")
        algo = algo.create(device=device)
        algo.build_with_dataset(mdp)
        started = time.perf_counter()
        quarter = max(1, job.steps // 4)
        for step in range(1, job.steps + 1):
            algo.update(mdp.sample_transition_batch(256))
            if step % quarter == 0:  # a run cut by --deadline-s still shows its rate
                rate = step / (time.perf_counter() - started)
                print(
                    f"    d3rlpy {job.algo} {job.dataset} seed {seed}: {step}/{job.steps} ({rate:.0f}/s)",
                    flush=True,
                )

        def act(normed: torch.Tensor, algo: Any = algo) -> torch.Tensor:
            physical_obs = normed[:, 0, :].cpu().numpy() * obs_std + obs_mean
            action = algo.predict(physical_obs.astype(np.float32))
            unit = (action - low) / (high - low) * 2.0 - 1.0
            return torch.from_numpy(unit.astype(np.float32))[:, None, :]

        (result,) = evaluate(
            act,
            job.task,
            [seed],
            job.eval_episodes,
            10_000,
            obs_mean,
            obs_std,
            low,
            high,
            torch.device("cpu"),
        )
        results.append({"seed": seed, "success_rate": result.success_rate, "mean_return": result.mean_return})
    return results


def parse_variant(text: str) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """ "cql:lagrange=true;conservative_weight=10" -> ("cql", (("lagrange", True), ...))."""
    import yaml

    algo, _, body = text.partition(":")
    pairs = []
    for item in filter(None, body.split(";")):
        key, _, value = item.partition("=")
        pairs.append((key.strip(), yaml.safe_load(value)))
    if not algo or not pairs:
        raise SystemExit(f"--variant {text!r}: write ALGO:key=value[;key=value]")
    return algo.strip(), tuple(pairs)


# ------------------------------------------------------------------------------------ table
def mean_std(values: list[float | None]) -> str:
    """mean ± sample std (ddof = 1, `offrl_robot.stats`: tables before 2026-12-04 printed ddof = 0)."""
    from offrl_robot.stats import sample_std

    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    return f"{np.mean(vals):.2f} ± {sample_std(vals):.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", default=",".join(ALGOS))
    parser.add_argument("--steps", type=int, default=1000, help="updates per run, same for both libraries")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--episodes", type=int, default=40, help="episodes per ArmReach dataset")
    parser.add_argument("--medium-noise", type=float, default=0.3, help="noise of the medium dataset")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--accelerate", default="graph", help="ours on CUDA: none|graph|compile")
    parser.add_argument("--workers", type=int, default=max(1, min(12, (os.cpu_count() or 2) - 1)))
    parser.add_argument(
        "--hopper-prefix",
        action="append",
        default=[],
        help="also the locomotion datasets PREFIX-random/-medium (hopper_behaviour.py; repeatable: "
        "one per task, e.g. hopper and cheetah)",
    )
    parser.add_argument("--minari-root", help="Minari root of the Hopper datasets (default: offrl_robot's)")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument(
        "--no-ours", action="store_true", help="only d3rlpy's runs (e.g. to fill its missing cells)"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="extra rows of ours with other hyper-parameters, e.g. cql:lagrange=true (repeatable; "
        "ALGO:key=value[;key=value]; values parsed as YAML)",
    )
    parser.add_argument("--skip-arm", action="store_true", help="only the Hopper datasets (--hopper-prefix)")
    parser.add_argument(
        "--only-datasets", default="", help="comma-separated dataset names to run, e.g. 'ArmReach mixed'"
    )
    parser.add_argument(
        "--peer-cpu-algos",
        default="",
        help="run d3rlpy's runs of these algorithms on the CPU (one thread each) even with --device cuda: "
        "its eager BC/TD3+BC/IQL are launch-bound, a CPU core is as fast and leaves the GPUs free",
    )
    parser.add_argument(
        "--peer-compile-algos",
        default="",
        help="d3rlpy runs of these algorithms on CUDA with compile_graph=True (its fastest mode); "
        "not bcq: d3rlpy 2.8.0's compiled BCQ crashes on torch 2.11",
    )
    parser.add_argument(
        "--bf16-algos",
        default="",
        help="also train ours with precision bf16 for these algorithms (extra rows)",
    )
    parser.add_argument("--deadline-s", type=float, default=None, help="report what finished by then")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    algos = [a for a in args.algos.split(",") if a]
    seeds = tuple(int(s) for s in args.seeds.split(","))
    peer_cpu_algos = {a for a in args.peer_cpu_algos.split(",") if a}
    peer_compile_algos = {a for a in args.peer_compile_algos.split(",") if a}
    variants = [parse_variant(v) for v in args.variant]
    bf16_algos = {a for a in args.bf16_algos.split(",") if a}
    if bf16_algos and not args.device.startswith("cuda"):
        parser.error("--bf16-algos needs --device cuda (precision bf16 is a CUDA mode)")

    import torch

    versions = f"torch {torch.__version__}, python {platform.python_version()}"
    if not args.no_peer:
        import d3rlpy

        versions += f", d3rlpy {d3rlpy.__version__}"
    machine = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.machine()
    print(
        f"# {machine}; {versions}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
        f"# {args.steps} updates, batch 256, seeds {list(seeds)}, {args.eval_episodes} eval episodes; "
        f"ArmReach datasets of {args.episodes} episodes (medium noise {args.medium_noise})",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        datasets = {} if args.skip_arm else make_arm_datasets(args.episodes, args.medium_noise, seed=0)
        for prefix in args.hopper_prefix:
            datasets |= load_hopper_datasets(prefix, args.minari_root)
        if args.only_datasets:
            wanted = {name.strip() for name in args.only_datasets.split(",")}
            if unknown := wanted - set(datasets):
                raise SystemExit(f"--only-datasets: unknown {sorted(unknown)}; known: {sorted(datasets)}")
            datasets = {name: data for name, data in datasets.items() if name in wanted}
        jobs: list[Job] = []
        for name, data in datasets.items():
            path = Path(tmp) / f"{name.replace(' ', '_')}.pkl"
            path.write_bytes(pickle.dumps(data))
            print(f"# {name}: {len(data)} transitions, {data.num_episodes} episodes", flush=True)
            for algo in algos:
                task = data.metadata.task or TASK
                common = dict(algo=algo, dataset=name, dataset_path=str(path), task=task, steps=args.steps)
                common |= dict(
                    device=args.device, accelerate=args.accelerate, eval_episodes=args.eval_episodes
                )
                if not args.no_ours:
                    jobs.append(Job(library="ours", seeds=seeds, **common))
                for variant_algo, overrides in variants:
                    if variant_algo == algo:
                        label = "ours " + ";".join(f"{k}={v}" for k, v in overrides)
                        jobs.append(Job(library=label, seeds=seeds, algo_config=overrides, **common))
                if algo in bf16_algos:
                    jobs.append(Job(library="ours-bf16", seeds=seeds, precision="bf16", **common))
                if not args.no_peer:
                    peer = common | {"device": "cpu"} if algo in peer_cpu_algos else common
                    jobs += [
                        Job(library="d3rlpy", seeds=(s,), peer_compile=algo in peer_compile_algos, **peer)
                        for s in seeds
                    ]
        # Cheapest algorithms first, each algorithm's runs together: a deadline then cuts whole
        # (expensive) rows rather than leaving every row half-filled.
        cost_order = ("bc", "td3bc", "iql", "bcq", "cql")
        jobs.sort(key=lambda j: cost_order.index(j.algo) if j.algo in cost_order else len(cost_order))
        ctx = multiprocessing.get_context("spawn")
        gpus: list[str] = []
        if args.device.startswith("cuda"):  # the GPUs this process may use, as the system names them
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
            gpus = [g for g in visible.split(",") if g] or [str(i) for i in range(torch.cuda.device_count())]
        pool = ProcessPoolExecutor(
            max_workers=args.workers,
            mp_context=ctx,
            initializer=pin_worker_gpu,
            initargs=(ctx.Value("i", 0), gpus),
        )
        futures = {pool.submit(run_job, job): job for job in jobs}
        outputs: list[dict[str, Any]] = []
        start = time.perf_counter()
        try:
            for future in as_completed(futures, timeout=args.deadline_s):
                try:
                    out = future.result()
                except Exception as exc:  # one failed run must not lose the others' results
                    job = futures[future]
                    print(f"  failed: {job.library} {job.algo} {job.dataset}: {exc!r}"[:300], flush=True)
                    continue
                outputs.append(out)
                print(
                    f"  [{time.perf_counter() - start:5.0f} s] {out['library']:6s} {out['algo']:5s} {out['dataset']}: "
                    + ", ".join(
                        f"seed {r['seed']} success {r['success_rate']} return {r['mean_return']:.1f}"
                        for r in out["per_seed"]
                    ),
                    flush=True,
                )
                if args.json:
                    args.json.parent.mkdir(parents=True, exist_ok=True)
                    args.json.write_text(json.dumps(outputs, indent=2) + "\n")
        except TimeoutError:
            unfinished = [futures[f] for f in futures if not f.done()]
            print(
                f"# deadline {args.deadline_s} s reached: {len(unfinished)} runs unfinished (shown as —)",
                flush=True,
            )
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.kill()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
    merged: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    seconds: dict[tuple[str, str, str], float] = {}
    for out in outputs:
        key = (out["dataset"], out["algo"], out["library"])
        merged.setdefault(key, []).extend(out["per_seed"])
        seconds[key] = seconds.get(key, 0.0) + out["seconds"]
    print("\n## Final success rate and return, mean ± std over seeds")
    print(
        "| dataset | algo | ours success | d3rlpy success | ours return | d3rlpy return | ours s | d3rlpy s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in datasets:
        for algo in algos:
            ours = merged.get((name, algo, "ours"), [])
            peer = merged.get((name, algo, "d3rlpy"), [])
            print(
                f"| {name} | {algo} | {mean_std([r['success_rate'] for r in ours])} | "
                f"{mean_std([r['success_rate'] for r in peer])} | {mean_std([r['mean_return'] for r in ours])} | "
                f"{mean_std([r['mean_return'] for r in peer])} | {seconds.get((name, algo, 'ours'), 0):.0f} | "
                f"{seconds.get((name, algo, 'd3rlpy'), 0):.0f} |"
            )
    extra = sorted({k[2] for k in merged} - {"ours", "d3rlpy"})
    for library in extra:
        print(f"\n## {library} (other settings of ours), next to ours defaults and d3rlpy")
        print(
            f"| dataset | algo | {library} success | ours success | d3rlpy success | {library} return | ours return | d3rlpy return |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name in datasets:
            for algo in algos:
                if (name, algo, library) not in merged:
                    continue
                cells = [merged.get((name, algo, lib), []) for lib in (library, "ours", "d3rlpy")]
                print(
                    f"| {name} | {algo} | "
                    + " | ".join(mean_std([r["success_rate"] for r in c]) for c in cells)
                    + " | "
                    + " | ".join(mean_std([r["mean_return"] for r in c]) for c in cells)
                    + " |"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
