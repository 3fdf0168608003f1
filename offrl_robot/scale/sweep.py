"""`offrl-robot sweep`: grid/random search over algorithm x hyper-parameters x seeds x datasets
on Ray Tune, with our own Trainer inside every trial.

Why it is built this way:

- The trial list is expanded HERE, deterministically (grid = cartesian product; random =
  `num_samples` draws per grid point from a generator seeded by `search_seed`; one when
  nothing is drawn), and handed to
  Tune as one grid over prepared trials. Each algorithm has its own hyper-parameters (IQL's
  expectile means nothing to BC), which a plain Tune search space cannot express, and the same
  sweep file must give the same trials on a laptop and on a cluster.
- A trial is one `Trainer` run; a trial's seed group (`seeds: [[0, 1, 2], ...]`) trains as one
  vectorised program, so seeds cost one process, not several.
- Fault tolerance: every time the Trainer checkpoints (= every evaluation; the sweep sets
  `checkpoint_every = eval_every`) the trial reports the evaluation AND hands the checkpoint
  to Tune, which stores it under the sweep's storage path. If the worker dies, Tune restarts
  the trial (`max_failures`), the trial puts Tune's last checkpoint back into its run directory
  and resumes the Trainer from it — bit-identically on the same CPU build, so the trial ends
  with the weights an uninterrupted run ends with (tests/test_scale_sweep.py kills one).
- Output beside Tune's own files in `<storage>/<name>/`: `results.csv` + `results.md` (one row
  per trial), `best_train.yaml` (a ready `config/train/*.yaml`), `plots/score_vs_<param>.png`
  and `plots/learning_curves.png`, and `runs/<trial>/` (each trial's Trainer run directory).

Sweep file (config/sweep/*.yaml):

    name: arm_reach_small
    base: ../train/arm_reach_bc.yaml   # optional train config to start from (relative to this file)
    train: {steps: 2000, eval_every: 500, eval_episodes: 5}   # overrides for every trial
    datasets: [arm_reach/expert-v0]    # searched: one trial set per dataset
    algorithms:                        # searched: each with its own hyper-parameter space
      bc: {learning_rate: {grid: [1.0e-3, 3.0e-4]}}
      iql: {expectile: {choice: [0.7, 0.9]}, learning_rate: {loguniform: [1.0e-4, 1.0e-3]}}
    params: {batch_size: {grid: [128, 256]}}   # searched top-level train fields (optional)
    seeds: [[0, 1], [2, 3]]            # searched: each entry is one trial's vectorised seed group
    num_samples: 1                     # random draws per grid point
    search_seed: 0
    metric: success_rate               # mean_return | success_rate | normalized_score | final_distance
    mode: max
    storage: sweeps                    # a directory every worker sees (shared storage on a cluster)
    max_failures: 2
    cpus_per_trial: 1

Values: a plain value is fixed; `{grid: [...]}` is crossed with everything else; `{choice: [...]}`,
`{uniform: [lo, hi]}`, `{loguniform: [lo, hi]}`, `{randint: [lo, hi]}` (hi exclusive) are drawn.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import itertools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from offrl_robot.atomic import atomic_write_bytes, atomic_write_text
from offrl_robot.errors import ConfigError

METRICS = ("mean_return", "success_rate", "normalized_score", "final_distance")
DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")
SWEEP_KEYS = {
    "name",
    "base",
    "train",
    "datasets",
    "algorithms",
    "params",
    "seeds",
    "num_samples",
    "search_seed",
    "metric",
    "mode",
    "storage",
    "max_failures",
    "cpus_per_trial",
    "max_concurrent_trials",
}
# Train fields a sweep decides itself (per trial) or that make no sense inside a trial.
TRIAL_OWNED = ("algo", "algo_config", "dataset", "seeds", "checkpoint_every", "progress", "log_dir")


# ---------------------------------------------------------------------------------- spec
@dataclass
class SweepSpec:
    """A parsed sweep file (see the module docstring); `path` anchors relative paths."""

    name: str
    base: dict[str, Any]
    datasets: list[str]
    algorithms: dict[str, dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    seeds: list[list[int]] = field(default_factory=lambda: [[0]])
    num_samples: int = 1
    search_seed: int = 0
    metric: str = "mean_return"
    mode: str = "max"
    storage: str = "sweeps"
    max_failures: int = 2
    cpus_per_trial: int = 1
    max_concurrent_trials: int = 0
    path: Path = Path("sweep.yaml")


def load_sweep(path: str | os.PathLike[str]) -> SweepSpec:
    """Read and check a sweep file; every problem is one ConfigError line naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"cannot read sweep config {path}: {err.strerror or err}; check the path") from err
    except yaml.YAMLError:
        raise ConfigError(f"sweep config {path} is not valid YAML; fix its syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"sweep config {path} must be a YAML mapping of keys")
    return sweep_from_dict(data, path)


def sweep_from_dict(data: dict[str, Any], path: Path) -> SweepSpec:
    where = f"sweep config {path}"
    unknown = sorted(set(data) - SWEEP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(SWEEP_KEYS)}")
    from offrl_robot.train import TrainConfig

    base: dict[str, Any] = {}
    if data.get("base"):
        base_path = (path.parent / str(data["base"])).resolve()
        base = TrainConfig.from_yaml(base_path).to_dict()
    overrides = data.get("train") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: 'train' must be a mapping of train config fields")
    base.update(overrides)
    base = TrainConfig.from_dict(base, source=f"{where} (base + train)").to_dict()

    datasets = data.get("datasets") or ([base["dataset"]] if base.get("dataset") else [])
    if isinstance(datasets, str):
        datasets = [datasets]
    if not datasets or not all(isinstance(d, str) for d in datasets):
        raise ConfigError(f"{where}: 'datasets' must list at least one dataset name or path")
    algorithms = data.get("algorithms") or {base["algo"]: {}}
    if not isinstance(algorithms, dict):
        raise ConfigError(f"{where}: 'algorithms' must map algorithm names to hyper-parameter spaces")
    algorithms = {str(k): dict(v or {}) for k, v in algorithms.items()}
    seeds = data.get("seeds", [base["seeds"]])
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError(f"{where}: 'seeds' must be a list of seed groups, e.g. [[0, 1], [2, 3]]")
    seeds = [[s] if isinstance(s, int) else s for s in seeds]
    if not all(isinstance(g, list) and g and all(isinstance(s, int) for s in g) for g in seeds):
        raise ConfigError(f"{where}: 'seeds' entries must be integers or non-empty lists of integers")
    spec = SweepSpec(
        name=str(data.get("name") or path.stem),
        base=base,
        datasets=list(datasets),
        algorithms=algorithms,
        params=dict(data.get("params") or {}),
        seeds=seeds,
        num_samples=int(data.get("num_samples", 1)),
        search_seed=int(data.get("search_seed", 0)),
        metric=str(data.get("metric", "mean_return")),
        mode=str(data.get("mode", "max")),
        storage=str(data.get("storage", "sweeps")),
        max_failures=int(data.get("max_failures", 2)),
        cpus_per_trial=int(data.get("cpus_per_trial", 1)),
        max_concurrent_trials=int(data.get("max_concurrent_trials", 0)),
        path=path,
    )
    if spec.metric not in METRICS:
        raise ConfigError(f"{where}: metric {spec.metric!r} is not one of {list(METRICS)}")
    if spec.mode not in ("max", "min"):
        raise ConfigError(f"{where}: mode must be max or min, got {spec.mode!r}")
    if spec.num_samples < 1 or spec.cpus_per_trial < 1 or spec.max_failures < 0:
        raise ConfigError(f"{where}: num_samples and cpus_per_trial must be >= 1, max_failures >= 0")
    for name, space in [("params", spec.params), *((f"algorithms.{a}", s) for a, s in algorithms.items())]:
        for key, value in space.items():
            _check_value(f"{where}: {name}.{key}", value)
    owned = sorted(set(spec.params) & set(TRIAL_OWNED))
    if owned:
        raise ConfigError(
            f"{where}: params {owned} are set by the sweep itself; use datasets/algorithms/seeds"
        )
    return spec


def _check_value(where: str, value: Any) -> None:
    if not (isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS):
        return  # a fixed value
    kind, arg = next(iter(value.items()))
    if not isinstance(arg, list) or not arg:
        raise ConfigError(f"{where}: {kind} needs a non-empty list")
    if kind in ("uniform", "loguniform", "randint"):
        if len(arg) != 2 or not all(isinstance(v, (int, float)) for v in arg) or not arg[0] < arg[1]:
            raise ConfigError(f"{where}: {kind} needs [low, high] with low < high, got {arg}")
        if kind == "loguniform" and arg[0] <= 0:
            raise ConfigError(f"{where}: loguniform needs low > 0, got {arg}")


# ---------------------------------------------------------------------------------- trials
@dataclass
class Trial:
    """One prepared trial: its name, what it searched, and its complete train config."""

    index: int
    name: str
    dataset: str
    algo: str
    seeds: list[int]
    params: dict[str, Any]  # searched values only, flat: "lr", "batch_size", ...
    train: dict[str, Any]  # the complete TrainConfig dict

    def to_dict(self) -> dict[str, Any]:
        return {k: copy.deepcopy(getattr(self, k)) for k in self.__dataclass_fields__}


def _split(space: dict[str, Any]) -> tuple[list[tuple[str, list[Any]]], dict[str, Any], dict[str, Any]]:
    """Grid axes, random distributions and fixed values of one space."""
    grid, drawn, fixed = [], {}, {}
    for key, value in space.items():
        if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS:
            kind, arg = next(iter(value.items()))
            if kind == "grid":
                grid.append((key, list(arg)))
            else:
                drawn[key] = (kind, arg)
        else:
            fixed[key] = value
    return grid, drawn, fixed


def _draw(rng: np.random.Generator, kind: str, arg: list[Any]) -> Any:
    if kind == "choice":
        return copy.deepcopy(arg[int(rng.integers(len(arg)))])
    if kind == "uniform":
        return float(rng.uniform(arg[0], arg[1]))
    if kind == "loguniform":
        return float(math.exp(rng.uniform(math.log(arg[0]), math.log(arg[1]))))
    return int(rng.integers(arg[0], arg[1]))  # randint


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "x".join(_fmt(v) for v in value)
    return str(value)


def expand_trials(spec: SweepSpec) -> list[Trial]:
    """The sweep's trials, in a fixed order: datasets x algorithms x grid points x samples x seeds."""
    rng = np.random.default_rng(spec.search_seed)
    trials: list[Trial] = []
    p_grid, p_drawn, p_fixed = _split(spec.params)
    for dataset, (algo, space) in itertools.product(spec.datasets, spec.algorithms.items()):
        a_grid, a_drawn, a_fixed = _split(space)
        axes = [("algo", k, v) for k, v in a_grid] + [("train", k, v) for k, v in p_grid]
        for point in itertools.product(*(values for _, _, values in axes)):
            # without random draws every sample would be the same trial: seeds are the repeat axis
            samples = spec.num_samples if (a_drawn or p_drawn) else 1
            for _sample in range(samples):
                algo_cfg = copy.deepcopy(a_fixed)
                top = copy.deepcopy(p_fixed)
                searched: dict[str, Any] = {}
                for (where, key, _), value in zip(axes, point, strict=True):
                    (algo_cfg if where == "algo" else top)[key] = copy.deepcopy(value)
                    searched[key] = value
                for key, (kind, arg) in a_drawn.items():
                    algo_cfg[key] = searched[key] = _draw(rng, kind, arg)
                for key, (kind, arg) in p_drawn.items():
                    top[key] = searched[key] = _draw(rng, kind, arg)
                for seeds in spec.seeds:
                    train = copy.deepcopy(spec.base)
                    if algo != train.get("algo"):
                        train["algo_config"] = {}  # the base's hyper-parameters belong to its algorithm
                    train.update(top)
                    train["algo_config"] = {**train.get("algo_config", {}), **algo_cfg}
                    train.update(algo=algo, dataset=dataset, seeds=list(seeds), progress=False)
                    train["checkpoint_every"] = train["eval_every"]  # report = evaluate + checkpoint
                    index = len(trials)
                    label = "_".join(f"{k}{_fmt(v)}" for k, v in searched.items())
                    name = f"t{index:03d}_{algo}" + (f"_{label}" if label else "")
                    name += "_s" + "-".join(map(str, seeds))
                    trials.append(Trial(index, _safe(name), dataset, algo, list(seeds), searched, train))
    return trials


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name)[:120]


def check_trials(trials: list[Trial]) -> None:
    """Every trial's config is valid before anything starts (a typo fails in one line, at once)."""
    from offrl_robot.train import TrainConfig, build_algo_config, resolve_algo

    for trial in trials:
        config = TrainConfig.from_dict(trial.train, source=f"sweep trial {trial.name}")
        build_algo_config(resolve_algo(config.algo), config.algo_config, config.batch_size, config.steps)


# ---------------------------------------------------------------------------------- trial body
def _report_to_tune(step: int, path: Path, evaluation: dict[str, Any] | None) -> None:
    """Trainer.on_checkpoint hook: each Trainer checkpoint becomes a Tune checkpoint. The sweep
    sets checkpoint_every = eval_every, so the Trainer evaluates just before it checkpoints at
    the same step and each report carries the evaluation of exactly the weights it holds."""
    from ray import tune

    metrics: dict[str, Any] = {"step": step}
    for key in METRICS:
        if evaluation and key in evaluation:
            metrics[key] = evaluation[key]["mean"]
            metrics[f"{key}_std"] = evaluation[key]["std"]
    with tempfile.TemporaryDirectory(prefix="offrl-tune-ckpt-") as folder:
        shutil.copy2(path, Path(folder) / path.name)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _restore_from_tune(run_dir: Path, checkpoint: Any) -> int:
    """Put Tune's last checkpoint back as the run's latest one; return its step.

    A worker killed between writing a Trainer checkpoint and reporting it leaves a newer
    checkpoint in the run directory than Tune knows of; it is removed so the resumed run
    continues from exactly what Tune recorded.
    """
    from offrl_robot.train import CHECKPOINT_PATTERN, checkpoint_dir, list_checkpoints

    with checkpoint.as_directory() as folder:
        files = [p for p in Path(folder).iterdir() if CHECKPOINT_PATTERN.match(p.name)]
        if len(files) != 1:
            raise RuntimeError(f"Tune checkpoint {folder} holds {len(files)} trainer checkpoints, expected 1")
        step = int(CHECKPOINT_PATTERN.match(files[0].name).group(1))  # type: ignore[union-attr]
        for existing in list_checkpoints(run_dir):
            if int(CHECKPOINT_PATTERN.match(existing.name).group(1)) > step:  # type: ignore[union-attr]
                existing.unlink()
        target = checkpoint_dir(run_dir) / files[0].name
        if not target.exists():
            atomic_write_bytes(target, files[0].read_bytes())
    return step


def run_trial(config: dict[str, Any]) -> None:
    """Tune trainable: one Trainer run, resumed from Tune's checkpoint after a failure."""
    from ray import tune

    from offrl_robot.train import TrainConfig, Trainer, list_checkpoints

    trial = config["trial"]
    run_dir = Path(config["runs_root"]) / trial["name"]
    train = dict(trial["train"], dataset=config["dataset_paths"][trial["dataset"]])
    checkpoint = tune.get_checkpoint()
    resumed_from = _restore_from_tune(run_dir, checkpoint) if checkpoint is not None else None
    attempts = run_dir / "attempts.jsonl"
    history = attempts.read_text(encoding="utf-8") if attempts.exists() else ""
    if checkpoint is None and list_checkpoints(run_dir):
        shutil.rmtree(run_dir)  # an attempt that died before Tune recorded a checkpoint: start clean
    run_dir.mkdir(parents=True, exist_ok=True)
    entry = json.dumps({"pid": os.getpid(), "resumed_from_step": resumed_from})
    atomic_write_text(attempts, history + entry + "\n")
    trainer = Trainer(
        TrainConfig.from_dict(train, source=f"sweep trial {trial['name']}"),
        run_dir=run_dir,
        resume=resumed_from is not None,
        on_checkpoint=_report_to_tune,
    )
    trainer.fit()


# ---------------------------------------------------------------------------------- driver
@dataclass
class SweepResult:
    """What a finished sweep wrote and which trial won."""

    out_dir: Path
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    files: dict[str, Path]


def run_sweep(
    spec: SweepSpec,
    address: str | None = None,
    workers: int | None = None,
    storage: str | None = None,
    callbacks: list[Any] | None = None,
) -> SweepResult:
    """Expand, check, run on Tune, then write the table, the best config and the plots.

    `callbacks`: extra `ray.tune.Callback`s (progress reporting, or a test that kills a trial
    once Tune has recorded its checkpoint)."""
    from offrl_robot.data.minari_io import resolve_dataset
    from offrl_robot.scale.ray_local import ray_session

    trials = expand_trials(spec)
    check_trials(trials)
    storage_root = Path(storage or spec.storage)
    if not storage_root.is_absolute():
        storage_root = (Path.cwd() / storage_root).resolve()
    out_dir = storage_root / spec.name
    # Workers may not share our MINARI_DATASETS_PATH (or our cwd): give them absolute paths.
    dataset_paths = {name: str(resolve_dataset(name)) for name in spec.datasets}
    # Tune warns on every frequent checkpoint; ours are frequent on purpose (one per evaluation).
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    with ray_session(address, num_cpus=workers) as session:
        from ray import tune

        trainable = tune.with_resources(run_trial, {"cpu": spec.cpus_per_trial})
        max_concurrent = spec.max_concurrent_trials or max(1, session.num_cpus // spec.cpus_per_trial)
        tuner = tune.Tuner(
            trainable,
            param_space={
                "trial": tune.grid_search([t.to_dict() for t in trials]),
                "runs_root": str(out_dir / "runs"),
                "dataset_paths": dataset_paths,
            },
            tune_config=tune.TuneConfig(
                num_samples=1,
                max_concurrent_trials=max_concurrent,
                reuse_actors=True,  # one process per worker slot: torch/MuJoCo import once, not per trial
                trial_name_creator=lambda t: t.config["trial"]["name"],
                trial_dirname_creator=lambda t: t.config["trial"]["name"],
            ),
            run_config=tune.RunConfig(
                name=spec.name,
                storage_path=str(storage_root),
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                verbose=0,
                callbacks=callbacks,
            ),
        )
        grid = tuner.fit()
        by_name: dict[str, Any] = {}
        for result in grid:
            by_name[result.config["trial"]["name"]] = result
    rows, curves = _collect(trials, by_name, out_dir, spec.metric)
    return _write_outputs(spec, trials, rows, curves, out_dir)


def _collect(
    trials: list[Trial], by_name: dict[str, Any], out_dir: Path, metric: str
) -> tuple[list[dict[str, Any]], dict[str, list[tuple[int, float]]]]:
    """One table row per trial (in trial order) and its learning curve from Tune's results."""
    rows, curves = [], {}
    for trial in trials:
        result = by_name.get(trial.name)
        metrics = dict(result.metrics or {}) if result is not None else {}
        error = result.error if result is not None else "not run"
        run_dir = out_dir / "runs" / trial.name
        attempts = 0
        if (run_dir / "attempts.jsonl").exists():
            attempts = len((run_dir / "attempts.jsonl").read_text().splitlines())
        row: dict[str, Any] = {
            "trial": trial.name,
            "dataset": trial.dataset,
            "algo": trial.algo,
            "seeds": " ".join(map(str, trial.seeds)),
            **{f"param.{k}": _fmt(v) for k, v in trial.params.items()},
            "step": metrics.get("step"),
            **{key: metrics.get(key) for key in METRICS if key in metrics},
            "attempts": attempts,
            "status": "error" if error else "ok",
            "run_dir": str(run_dir),
        }
        rows.append(row)
        curve: list[tuple[int, float]] = []
        frame = result.metrics_dataframe if result is not None else None
        if frame is not None and "step" in frame and metric in frame:
            curve = [(int(s), float(v)) for s, v in zip(frame["step"], frame[metric], strict=True)]
        curves[trial.name] = curve
    return rows, curves


def best_row(rows: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The winning trial; ties go to the earliest trial (the table order is fixed)."""
    scored = [r for r in rows if r["status"] == "ok" and isinstance(r.get(metric), (int, float))]
    scored = [r for r in scored if math.isfinite(r[metric])]
    if not scored:
        return None
    sign = 1.0 if mode == "max" else -1.0
    return max(scored, key=lambda r: (sign * r[metric], -rows.index(r)))


def _table(rows: list[dict[str, Any]]) -> tuple[list[str], str, str]:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)

    def cell(value: Any) -> str:
        if value is None:
            return ""
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    shown = [c for c in columns if c != "run_dir"]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in shown) + " |" for r in rows]
    return columns, buffer.getvalue(), "\n".join(lines) + "\n"


def _write_outputs(
    spec: SweepSpec,
    trials: list[Trial],
    rows: list[dict[str, Any]],
    curves: dict[str, list[tuple[int, float]]],
    out_dir: Path,
) -> SweepResult:
    files: dict[str, Path] = {}
    _, csv_text, md_text = _table(rows)
    best = best_row(rows, spec.metric, spec.mode)
    header = f"# Sweep {spec.name}: {len(rows)} trials, metric {spec.metric} ({spec.mode})\n\n"
    if best is not None:
        header += f"Best: **{best['trial']}** with {spec.metric} = {best[spec.metric]:.4g}\n\n"
    files["csv"] = out_dir / "results.csv"
    files["markdown"] = out_dir / "results.md"
    atomic_write_text(files["csv"], csv_text)
    atomic_write_text(files["markdown"], header + md_text)
    if best is not None:
        trial = next(t for t in trials if t.name == best["trial"])
        config = dict(trial.train, progress=True)
        text = (
            f"# Best trial of sweep {spec.name} ({spec.path}): {trial.name}\n"
            f"# {spec.metric} = {best[spec.metric]:.6g} ({spec.mode}); train it with:\n"
            f"#   offrl-robot train --config <this file>\n"
        ) + yaml.safe_dump(config, sort_keys=False)
        files["best_config"] = out_dir / "best_train.yaml"
        atomic_write_text(files["best_config"], text)
    files.update(_plots(spec, trials, rows, curves, out_dir / "plots"))
    return SweepResult(out_dir, rows, best, files)


def _plots(
    spec: SweepSpec,
    trials: list[Trial],
    rows: list[dict[str, Any]],
    curves: dict[str, list[tuple[int, float]]],
    folder: Path,
) -> dict[str, Path]:
    """Score vs each searched hyper-parameter, and every trial's learning curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: dict[str, Path] = {}
    by_name = {r["trial"]: r for r in rows}
    params = sorted({k for t in trials for k in t.params})
    for param in params:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for algo in spec.algorithms:
            points = [
                (t.params[param], by_name[t.name].get(spec.metric))
                for t in trials
                if t.algo == algo and param in t.params
            ]
            points = [
                (x, y) for x, y in points if isinstance(y, (int, float)) and not isinstance(x, (list, dict))
            ]
            if points:
                xs = [p[0] if isinstance(p[0], (int, float)) else str(p[0]) for p in points]
                ax.scatter(xs, [p[1] for p in points], label=algo)
        numeric = all(isinstance(t.params.get(param), (int, float)) for t in trials if param in t.params)
        values = [t.params[param] for t in trials if param in t.params]
        if numeric and values and min(values) > 0 and max(values) / min(values) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(param)
        ax.set_ylabel(spec.metric)
        ax.set_title(f"{spec.name}: {spec.metric} vs {param}")
        ax.legend(fontsize=7)
        written[f"score_vs_{param}"] = _save_figure(fig, folder / f"score_vs_{_safe(param)}.png")
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        if curve:
            ax.plot([s for s, _ in curve], [v for _, v in curve], marker="o", markersize=3, label=name)
    ax.set_xlabel("update step")
    ax.set_ylabel(spec.metric)
    ax.set_title(f"{spec.name}: learning curves")
    if len(curves) <= 16:
        ax.legend(fontsize=6)
    written["learning_curves"] = _save_figure(fig, folder / "learning_curves.png")
    plt.close(fig)
    return written


def _save_figure(fig: Any, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())
    return path


# ---------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="sweep YAML (config/sweep/*.yaml)")
    parser.add_argument("--address", help="join this Ray cluster (head IP:6379) instead of a local Ray")
    parser.add_argument("--workers", type=int, help="CPUs of the local Ray (default: all of this machine)")
    parser.add_argument("--storage", help="storage root every worker sees (overrides the config)")
    parser.add_argument("--dry-run", action="store_true", help="list the trials and exit")


def _describe(trials: Iterable[Trial]) -> str:
    return "\n".join(f"  {t.name}: dataset {t.dataset}, seeds {t.seeds}, {t.params}" for t in trials)


def run(args: argparse.Namespace) -> int:
    spec = load_sweep(args.config)
    if args.dry_run:
        trials = expand_trials(spec)
        check_trials(trials)
        print(f"sweep {spec.name}: {len(trials)} trials\n{_describe(trials)}")
        return 0
    result = run_sweep(spec, address=args.address, workers=args.workers, storage=args.storage)
    failed = [r["trial"] for r in result.rows if r["status"] != "ok"]
    print(f"sweep {spec.name}: {len(result.rows)} trials, {len(failed)} failed; results in {result.out_dir}")
    for kind, path in result.files.items():
        print(f"  {kind}: {path}")
    if result.best is None:
        print(f"no trial reported {spec.metric}; see {result.files['markdown']}")
        return 1
    print(f"best: {result.best['trial']} {spec.metric} = {result.best[spec.metric]:.4g}")
    return 1 if failed else 0
