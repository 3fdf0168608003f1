"""Model-based control quality: MPC and MOPO side by side with CQL and IQL, same data, 3 seeds.

Datasets: the ArmReach expert / medium / mixed datasets of `benchmarks/quality.py` (its
`make_arm_datasets`, imported, so both benchmarks score the same data) and optionally the
Hopper-v5 random / medium datasets (`--hopper-prefix`, loaded by quality.py's
`load_hopper_datasets`; made by benchmarks/hopper_behaviour.py).

Methods, one job (one process) per method x dataset x seed:
  mpc   fit_dynamics (the ensemble shape of config/dynamics/arm_reach.yaml, at most
        --dynamics-steps steps, held-out early stopping) -> export_dynamics (parity-checked ONNX
        + card) -> MPCController, i.e. the deployed path. Planner: ArmReach runs the shipped
        config/dynamics/arm_reach.yaml planner (named reward `arm_reach_reward`); other tasks
        run MPPI 256 x 10 on the ensemble's learned reward head (Hopper has no named reward).
        No policy updates; the planner's seed is the job's seed.
  mopo  `Trainer` with algo mopo: fits its own ensemble (same layers and --dynamics-steps, 7
        members of which the 5 best on held-out data are the elites, as in the MOPO paper), then
        --steps SAC updates on penalised model rollouts that end at the task's terminal states
        (Hopper falls). `--mopo-variant key=value;...` adds rows of MOPO with other settings.
  cql, iql  `Trainer`, --steps updates (the same number as MOPO).
Every method is evaluated by `offrl_robot.evaluation.evaluate` on the same episodes (start
states seeded from --eval-seed); MPC's warm start is reset before each episode. Reported: mean
± std over seeds of each seed's success rate and mean return.

    .venv/bin/python benchmarks/model_based_quality.py            # small CPU smoke run (< 2 min here)
    python3 benchmarks/model_based_quality.py --device cuda --workers 32 --steps 50000 \\
        --hidden 256 --episodes 200 --dynamics-steps 20000 --eval-episodes 20 --hopper-prefix hopper

On CUDA each worker process is pinned to one GPU, round-robin over the visible ones (quality.py's
pool initializer). MPC plans on the CPU (onnxruntime, 1 thread), whatever --device says.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT, ROOT / "benchmarks"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from quality import (  # noqa: E402
    load_hopper_datasets,
    make_arm_datasets,
    mean_std,
    parse_variant,
    pin_worker_gpu,
)

METHODS = ("mpc", "mopo", "cql", "iql")
ARM_TASK = "ArmReach-v0"
ARM_DYNAMICS = ROOT / "config" / "dynamics" / "arm_reach.yaml"
EVAL_SEED = 10_000


@dataclass(frozen=True)
class Job:
    """One method on one dataset with one seed (what a worker process runs)."""

    method: str
    dataset: str
    dataset_path: str
    task: str
    seed: int
    steps: int
    dynamics_steps: int
    hidden: int
    device: str
    accelerate: str
    eval_episodes: int
    algo_config: tuple[tuple[str, Any], ...] = ()  # a --mopo-variant's settings
    label: str = ""  # the table column of a --mopo-variant ("" = the method's name)


def dynamics_settings() -> tuple[dict[str, Any], dict[str, Any]]:
    """(ensemble settings, ArmReach planner) of the shipped config/dynamics/arm_reach.yaml."""
    from offrl_robot.train import TrainConfig

    shipped = dict(TrainConfig.from_yaml(ARM_DYNAMICS).algo_config)
    planner = dict(shipped.pop("mpc"))
    return shipped, planner


def run_job(job: Job) -> dict[str, Any]:
    """Train (or fit + export) and evaluate one job in a worker process; one result row."""
    import torch

    torch.set_num_threads(1)
    with open(job.dataset_path, "rb") as handle:
        dataset = pickle.load(handle)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="offrl-mbq-") as tmp:
        result = _mpc(job, dataset, Path(tmp)) if job.method == "mpc" else _policy(job, dataset, Path(tmp))
    return {
        **asdict(job),
        "success_rate": result.success_rate,
        "mean_return": result.mean_return,
        "seconds": round(time.perf_counter() - start, 1),
    }


def _policy(job: Job, dataset: Any, tmp: Path) -> Any:
    """CQL / IQL / MOPO through the Trainer; its final evaluation is the result."""
    from offrl_robot.evaluation import SeedEval
    from offrl_robot.train import TrainConfig, Trainer

    algo_config: dict[str, Any] = {"hidden_sizes": [job.hidden, job.hidden]}
    accelerate = job.accelerate
    if job.method == "mopo":
        ensemble, _ = dynamics_settings()
        algo_config |= {"dynamics": ensemble | {"members": 7}, "dynamics_steps": job.dynamics_steps}
        algo_config |= dict(job.algo_config)
        accelerate = "none"  # MOPO's rollout schedule is host-side state (see algos/mopo.py)
    config = TrainConfig(
        algo=job.method,
        algo_config=algo_config,
        task=job.task,
        steps=job.steps,
        seeds=[job.seed],
        batch_size=256,
        eval_every=0,
        eval_episodes=job.eval_episodes,
        eval_seed=EVAL_SEED,
        log_every=job.steps,
        checkpoint_every=0,
        progress=False,
        device=job.device,
        threads=1,
        accelerate=accelerate,
    )
    summary = Trainer(config, dataset=dataset, run_dir=tmp / "run").fit()
    (row,) = summary["final_eval"]["per_seed"]
    return SeedEval(**row)


def _mpc(job: Job, dataset: Any, tmp: Path) -> Any:
    """fit -> export -> MPCController, evaluated through `evaluate` like the policies."""
    import torch

    from offrl_robot.algos.dynamics import fit_dynamics
    from offrl_robot.evaluation import evaluate
    from offrl_robot.export.dynamics import export_dynamics
    from offrl_robot.mpc import MPCController
    from offrl_robot.train import OBS_STD_FLOOR, TrainConfig

    ensemble, arm_planner = dynamics_settings()
    planner = dict(arm_planner) if job.task == ARM_TASK else {"reward": "learned"}
    planner["seed"] = job.seed
    config = TrainConfig(
        algo="dynamics",
        algo_config=ensemble | {"mpc": planner},
        steps=job.dynamics_steps,
        seeds=[job.seed],
        batch_size=256,
        device=job.device,
        threads=1,
        progress=False,
    )
    fit = fit_dynamics(config, dataset, run_dir=tmp / "dynamics")
    model = tmp / "mpc.onnx"
    export_dynamics(fit.checkpoint, model, dataset=dataset)
    controller = MPCController(model)
    obs = dataset.observations.astype(np.float64)
    mean = obs.mean(axis=0).astype(np.float32)
    std = np.maximum(obs.std(axis=0), OBS_STD_FLOOR).astype(np.float32)
    low = np.asarray(dataset.metadata.action_low, np.float64)
    high = np.asarray(dataset.metadata.action_high, np.float64)

    def act(normed: torch.Tensor) -> torch.Tensor:
        """evaluate()'s interface: normalised obs [1, 1, O] -> action in [-1, 1] [1, 1, A]."""
        physical = normed[0, 0].cpu().numpy().astype(np.float64) * std + mean
        action = controller.act(physical.astype(np.float32)).astype(np.float64)
        unit = (action - low) / (high - low) * 2.0 - 1.0
        return torch.from_numpy(unit.astype(np.float32))[None, None]

    (result,) = evaluate(
        act,
        job.task,
        [job.seed],
        job.eval_episodes,
        EVAL_SEED,
        mean,
        std,
        low,
        high,
        torch.device("cpu"),
        on_reset=controller.reset,
    )
    return result


def table(rows: list[dict[str, Any]], methods: list[str], datasets: list[str]) -> str:
    """Markdown: one row per dataset, success and return (mean ± std over seeds) per method."""
    head = "| dataset | " + " | ".join(f"{m} success | {m} return" for m in methods) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(methods)]
    for name in datasets:
        cells = []
        for method in methods:
            mine = [r for r in rows if r["dataset"] == name and (r.get("label") or r["method"]) == method]
            cells.append(mean_std([r["success_rate"] for r in mine]) if mine else "not run")
            cells.append(mean_std([r["mean_return"] for r in mine]) if mine else "not run")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--steps", type=int, default=300, help="updates of each policy learner (same for all)"
    )
    parser.add_argument(
        "--dynamics-steps", type=int, default=300, help="step cap of the ensemble fit (MPC and MOPO)"
    )
    parser.add_argument("--hidden", type=int, default=64, help="policy/critic hidden width (2 layers)")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per ArmReach dataset")
    parser.add_argument("--medium-noise", type=float, default=0.3, help="noise of the medium dataset")
    parser.add_argument("--eval-episodes", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu | cuda (jobs spread over the visible GPUs)")
    parser.add_argument("--accelerate", default="graph", help="CQL/IQL on CUDA: none|graph|compile")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument(
        "--arm-datasets", default="expert,medium,mixed", help="which ArmReach datasets ('' = none)"
    )
    parser.add_argument(
        "--hopper-prefix", help="also the Hopper-v5 datasets PREFIX-random/-medium (hopper_behaviour.py)"
    )
    parser.add_argument("--minari-root", help="Minari root of the Hopper datasets (default: offrl_robot's)")
    parser.add_argument(
        "--hopper-datasets", default="random,medium", help="which of PREFIX-random/-medium to load"
    )
    parser.add_argument(
        "--mopo-variant",
        action="append",
        default=[],
        help="extra MOPO rows with other settings, e.g. 'termination=none' or 'uncertainty=aleatoric' "
        "(repeatable; key=value[;key=value], values parsed as YAML)",
    )
    parser.add_argument("--json", type=Path, help="also write every job's result here")
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    if unknown := sorted(set(methods) - set(METHODS)):
        parser.error(f"unknown --methods {unknown}; choose from {','.join(METHODS)}")
    variants = [(f"mopo {text}", parse_variant(f"mopo:{text}")[1]) for text in args.mopo_variant]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    arm = [f"ArmReach {d}" for d in args.arm_datasets.split(",") if d]

    import torch

    machine = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.machine()
    print(
        f"# {machine}, {os.cpu_count()} cores; torch {torch.__version__}, python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
        f"# {args.steps} policy updates (hidden {args.hidden}x{args.hidden}, batch 256), dynamics fit <= "
        f"{args.dynamics_steps} steps, seeds {seeds}, {args.eval_episodes} eval episodes, "
        f"ArmReach datasets of {args.episodes} episodes (medium noise {args.medium_noise})",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="offrl-mbq-data-") as tmp:
        datasets = make_arm_datasets(args.episodes, args.medium_noise, seed=0) if arm else {}
        datasets = {name: data for name, data in datasets.items() if name in arm}
        if args.hopper_prefix:
            labels = tuple(d for d in args.hopper_datasets.split(",") if d)
            datasets |= load_hopper_datasets(args.hopper_prefix, args.minari_root, labels)
        jobs = []
        for name, data in datasets.items():
            path = Path(tmp) / f"{name.replace(' ', '_')}.pkl"
            path.write_bytes(pickle.dumps(data))
            print(f"# {name}: {len(data)} transitions, {data.num_episodes} episodes", flush=True)
            task = data.metadata.task or ARM_TASK
            runs = [(m, "", ()) for m in methods] + [("mopo", label, o) for label, o in variants]
            for method, label, overrides in runs:
                jobs += [
                    Job(
                        method,
                        name,
                        str(path),
                        task,
                        seed,
                        args.steps,
                        args.dynamics_steps,
                        args.hidden,
                        args.device,
                        args.accelerate,
                        args.eval_episodes,
                        overrides,
                        label,
                    )
                    for seed in seeds
                ]
        ctx = multiprocessing.get_context("spawn")
        gpus: list[str] = []
        if args.device.startswith("cuda"):
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
            gpus = [g for g in visible.split(",") if g] or [str(i) for i in range(torch.cuda.device_count())]
        with ProcessPoolExecutor(
            max_workers=args.workers,
            mp_context=ctx,
            initializer=pin_worker_gpu,
            initargs=(ctx.Value("i", 0), gpus),
        ) as pool:
            futures = {pool.submit(run_job, job): job for job in jobs}
            for future in as_completed(futures):
                row = future.result()
                rows.append(row)
                print(
                    f"# done {row['label'] or row['method']} {row['dataset']} seed {row['seed']}: success "
                    f"{row['success_rate']}, return {row['mean_return']:.2f} ({row['seconds']} s)",
                    flush=True,
                )
    print(table(rows, methods + [label for label, _ in variants], list(datasets)))
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
