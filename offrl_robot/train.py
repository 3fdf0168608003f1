"""Offline training: `Trainer(config).fit()` and the `offrl-robot train` command.

The loop is built for throughput and exact reproducibility:

- The dataset is normalised (observation mean/std, actions scaled to [-1, 1] from the dataset's
  action_low/high) and moved to the training device ONCE. Each step samples indices [S, B] on
  the device, gathers the batch, runs `algo.update`, and adds the per-seed metrics to on-device
  accumulators; the host only reads them back at log intervals. With uniform sampling the loop
  has no host<->device sync; prioritised replay has exactly one (TD errors read back to update
  the host-side sum-trees, see `offrl_robot.replay`).
- S seeds train as one batched program: the algorithm's nets are ensembles over seeds and each
  seed draws its own indices from its own stream.
- Checkpoints (atomic, every `checkpoint_every` steps) hold everything needed to continue
  bit-identically on the same CPU build — nets, optimisers, torch/numpy/python(/CUDA) RNG
  states, sampler state, step — and everything export needs — config, normaliser, action
  bounds, dataset sha256 and metadata — so a checkpoint alone is enough to export a model.
- Evaluation runs outside the timed loop, in `torch.random.fork_rng`, so evaluating (or not)
  never changes the weights a run ends with.

Run directory layout: `config.yaml`, `checkpoints/step_XXXXXXXX.pt`, `metrics.csv` (one row per
log interval and seed), `eval.csv`, TensorBoard event files, `summary.json` (written at the end).
The checkpoint layout and its read/write live in `offrl_robot.checkpoint`, the config in
`offrl_robot.train_config` (both below the algorithms, which use them too); their names stay
importable from here.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from offrl_robot import __version__
from offrl_robot.accel import ACCEL_MODES, make_update_step
from offrl_robot.algos import resolve_algo
from offrl_robot.atomic import atomic_write_text
from offrl_robot.checkpoint import (
    CHECKPOINT_FORMAT,
    OBS_STD_FLOOR,
    default_run_dir,
    list_checkpoints,
    load_checkpoint,
    plain,
    write_checkpoint,
)
from offrl_robot.checkpoint import CHECKPOINT_PATTERN as CHECKPOINT_PATTERN  # re-exported (scale.sweep)
from offrl_robot.checkpoint import checkpoint_dir as checkpoint_dir  # re-exported
from offrl_robot.data.dataset import Dataset
from offrl_robot.errors import ConfigError
from offrl_robot.replay import Sampler, make_sampler
from offrl_robot.train_config import TrainConfig, build_algo_config, load_dataset_by_name, resolve_device

# Config keys that may differ between a run and its resumption: they do not change the weights
# (except `steps` with prioritised replay or an LR schedule: β is annealed and the learning rate
# decays over the total, so extending a run changes them from the resume point on; resuming
# with the same `steps` stays bit-identical).
RESUME_MAY_CHANGE = frozenset(
    {
        "steps",
        "eval_every",
        "eval_episodes",
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "progress",
        "log_dir",
    }
)


def _rng_state(device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *map(float, np_state[2:])],
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy(), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int) -> None:
    """Global RNGs used by the algorithms' own noise (exploration noise, CQL random actions...)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------- trainer
class Trainer:
    """Python API of `offrl-robot train`.

    `Trainer(config).fit()` trains and returns the summary dict (also written as summary.json).
    `dataset=` passes an in-memory Dataset instead of loading `config.dataset`;
    `run_dir=` overrides `<log_dir>/<algo>_<dataset>`; `resume=True` continues from the latest
    checkpoint in `run_dir` (which must exist and match this config and dataset).
    """

    def __init__(
        self,
        config: TrainConfig,
        dataset: Dataset | None = None,
        run_dir: str | Path | None = None,
        resume: bool = False,
        on_checkpoint: Callable[[int, Path, dict[str, Any] | None], None] | None = None,
    ) -> None:
        """on_checkpoint(step, checkpoint_path, evaluation): called after each checkpoint is
        written, with the evaluation made at that same step (None if none was): the hook a
        scheduler (Ray Tune in `offrl_robot.scale.sweep`) reports through."""
        self.on_checkpoint = on_checkpoint
        self.config = config.validate()
        self.algo_cls = resolve_algo(config.algo)
        # Before the dataset loads: a bad algo_config (e.g. a schedule shorter than steps) fails at once.
        self.algo_config = build_algo_config(
            self.algo_cls, config.algo_config, config.batch_size, config.steps
        )
        if dataset is None:
            if not config.dataset:
                raise ConfigError("no dataset: set `dataset:` in the train config or pass --dataset NAME")
            dataset = load_dataset_by_name(config.dataset)
        self.dataset_name = config.dataset or "in-memory"
        self.dataset = dataset.validate(self.dataset_name)
        self.dataset_sha256 = self.dataset.sha256()
        self.device = resolve_device(config.device)
        if config.prioritized and not self.algo_cls.value_based:
            raise ConfigError(
                f"prioritized replay needs TD errors but {config.algo!r} has no critic; "
                "set `prioritized: false` or use a value-based algorithm"
            )
        self.task = config.task or self.dataset.metadata.task
        if self.task:
            from offrl_robot.evaluation import check_task_dims
            from offrl_robot.sim.tasks import portable_task_name

            # a task file is recorded by its absolute path (the card's task: the gate finds it from anywhere)
            self.task = portable_task_name(self.task)

            check_task_dims(
                self.task, self.dataset.observation_dim, self.dataset.action_dim, self.dataset_name
            )
        default_dir = default_run_dir(config.log_dir, config.algo, self.dataset_name)
        self.run_dir = Path(run_dir) if run_dir is not None else default_dir
        self.resume = resume
        self._resume_state: dict[str, Any] | None = None
        if resume:
            self._resume_state = self._latest_checkpoint_state()
        elif list_checkpoints(self.run_dir):
            raise ConfigError(
                f"run directory {self.run_dir} already holds checkpoints; pass --resume to continue it "
                "or --out NEW_DIR for a new run"
            )

    # ------------------------------------------------------------------ setup
    def _latest_checkpoint_state(self) -> dict[str, Any]:
        checkpoints = list_checkpoints(self.run_dir)
        if not checkpoints:
            raise ConfigError(
                f"--resume: no checkpoint in {self.run_dir / 'checkpoints'}; start the run without --resume"
            )
        state = load_checkpoint(checkpoints[-1])
        if (state["observation_dim"], state["action_dim"]) != (
            self.dataset.observation_dim,
            self.dataset.action_dim,
        ):
            raise ConfigError(
                f"--resume: checkpoint dims (obs {state['observation_dim']}, act {state['action_dim']}) disagree "
                f"with dataset {self.dataset_name!r} (obs {self.dataset.observation_dim}, act {self.dataset.action_dim})"
            )
        if state["dataset"]["sha256"] != self.dataset_sha256:
            raise ConfigError(
                f"--resume: checkpoint {checkpoints[-1]} was trained on dataset sha256 "
                f"{state['dataset']['sha256'][:12]}…, this dataset is {self.dataset_sha256[:12]}…; resume with the same data"
            )
        saved = state["config"]
        mine = self.config.to_dict()
        # algo_config is compared resolved (below): `{}` and the defaults spelled out are one run.
        changed = sorted(
            k for k in mine if k not in RESUME_MAY_CHANGE | {"algo_config"} and saved.get(k) != mine[k]
        )
        if changed:
            raise ConfigError(
                f"--resume: config differs from the run's in {changed}; only {sorted(RESUME_MAY_CHANGE)} may change"
            )
        self._check_resolved_algo_config(state["algo_config"])
        if state["step"] > self.config.steps:
            raise ConfigError(
                f"--resume: checkpoint is at step {state['step']}, beyond steps={self.config.steps}; raise --steps"
            )
        return state

    def _check_resolved_algo_config(self, saved: dict[str, Any]) -> None:
        """Resume only with the hyper-parameters the run had, compared as resolved (every field,
        defaults included): a changed value is refused, and so is the same `algo_config:` that
        resolves differently because a default changed since the run started (IQL's
        actor_lr_schedule became cosine on 2026-12-04); the message names what to write to keep
        the run's values. Schedule lengths may differ (they follow `steps`); fields the run's
        checkpoint does not have are newer than it and not compared."""
        mine = plain(asdict(self.algo_config))
        horizons = set(getattr(self.algo_cls.config_class, "lr_schedules", {}).values())
        differs = sorted(k for k in saved.keys() & mine.keys() if k not in horizons and saved[k] != mine[k])
        if differs:
            had = ", ".join(f"{k}: {saved[k]!r}" for k in differs)
            now = ", ".join(f"{k}: {mine[k]!r}" for k in differs)
            raise ConfigError(
                f"--resume: the run was trained with algo_config {had}, this config resolves to {now} "
                f"(changed, or a default changed since the run started); set {had} in algo_config to continue it"
            )

    def _normaliser(self) -> tuple[np.ndarray, np.ndarray]:
        """Observation mean/std over the dataset (float64 sums, stored float32), std floored."""
        obs = self.dataset.observations.astype(np.float64)
        mean = obs.mean(axis=0)
        std = np.maximum(obs.std(axis=0), OBS_STD_FLOOR)
        return mean.astype(np.float32), std.astype(np.float32)

    def _device_tensors(self) -> dict[str, torch.Tensor]:
        """Normalised observations and [-1, 1] actions, on the device, computed there once."""
        data = self.dataset
        dev = self.device
        mean = torch.from_numpy(self.obs_mean).to(dev)
        std = torch.from_numpy(self.obs_std).to(dev)
        low = torch.from_numpy(self.action_low).to(dev)
        high = torch.from_numpy(self.action_high).to(dev)

        def to_dev(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array)).to(dev)

        actions = to_dev(data.actions)
        # Out-of-bounds dataset actions (a real robot may overshoot its nominal limits) are clipped.
        unit_actions = ((actions - low) / (high - low) * 2.0 - 1.0).clamp_(-1.0, 1.0)
        return {
            "observations": (to_dev(data.observations) - mean) / std,
            "actions": unit_actions,
            "rewards": to_dev(data.rewards),
            "next_observations": (to_dev(data.next_observations) - mean) / std,
            "terminals": to_dev(data.terminals.astype(np.float32)),
        }

    def _build_algo(self) -> Any:
        """Construct the algorithm with per-seed init (seed s's members from a generator seeded s)."""
        algo = self.algo_cls(
            self.dataset.observation_dim,
            self.dataset.action_dim,
            len(self.config.seeds),
            self.algo_config,
            seeds=list(self.config.seeds),
        )
        return algo.to(self.device)

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_state(self, step: int) -> dict[str, Any]:
        meta = self.dataset.metadata
        return {
            "format": CHECKPOINT_FORMAT,
            "version": __version__,
            "torch_version": str(torch.__version__),
            "step": step,
            "algo": self.config.algo,
            "algo_config": plain(asdict(self.algo_config)),
            "seeds": list(self.config.seeds),
            "num_seeds": len(self.config.seeds),
            "observation_dim": self.dataset.observation_dim,
            "action_dim": self.dataset.action_dim,
            "config": self.config.to_dict(),
            "task": self.task,
            "normalizer": {
                "obs_mean": torch.from_numpy(self.obs_mean.copy()),
                "obs_std": torch.from_numpy(self.obs_std.copy()),
                # Observed range: export draws its parity-check observations inside it.
                "obs_min": torch.from_numpy(self.dataset.observations.min(axis=0)),
                "obs_max": torch.from_numpy(self.dataset.observations.max(axis=0)),
            },
            "action_scale": {
                "low": torch.from_numpy(self.action_low.copy()),
                "high": torch.from_numpy(self.action_high.copy()),
            },
            "dataset": {
                "name": self.dataset_name,
                "sha256": self.dataset_sha256,
                "num_transitions": len(self.dataset),
                "metadata": plain(meta.to_dict()),
            },
            "algo_state": {k: v.detach().to("cpu") for k, v in self.algo.state_dict().items()},
            "optimizer_state": _to_cpu(self.algo.optimizer_state_dict()),
            "sampler": self.sampler.state_dict(),
            "rng": _rng_state(self.device),
        }

    def _save_checkpoint(self, step: int) -> Path:
        path = write_checkpoint(self.run_dir, step, self._checkpoint_state(step))
        for old in list_checkpoints(self.run_dir)[: -self.config.keep_checkpoints]:
            old.unlink(missing_ok=True)
        return path

    def _restore(self, state: dict[str, Any]) -> int:
        self.algo.load_state_dict(state["algo_state"])
        self.algo.load_optimizer_state_dict(state["optimizer_state"])
        self.sampler.load_state_dict(state["sampler"])
        _set_rng_state(state["rng"], self.device)
        return int(state["step"])

    # ------------------------------------------------------------------ logging
    def _open_logs(self, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            self.run_dir / "config.yaml", yaml.safe_dump(self.config.to_dict(), sort_keys=False)
        )
        for name in ("metrics.csv", "eval.csv"):
            _truncate_csv_after(self.run_dir / name, start_step)
        self.tb = SummaryWriter(
            str(self.run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None
        )

    def _write_csv(self, name: str, rows: list[dict[str, Any]]) -> None:
        path = self.run_dir / name
        new = not path.exists() or path.stat().st_size == 0
        with path.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            if new:
                writer.writeheader()
            writer.writerows(rows)

    def _log_metrics(self, step: int, sums: dict[str, torch.Tensor], count: int, rate: float) -> None:
        """The periodic host sync: per-seed means of every metric since the last log."""
        if not sums:
            return
        names = sorted(sums)
        means = (torch.stack([sums[n] for n in names]) / count).to("cpu", torch.float64).numpy()
        rows = []
        for col, seed in enumerate(self.config.seeds):
            row: dict[str, Any] = {"step": step, "seed": seed, "updates_per_s": round(rate, 3)}
            for i, name in enumerate(names):
                row[name] = float(means[i, col])
                self.tb.add_scalar(f"train/{name}/seed_{seed}", means[i, col], step)
            rows.append(row)
        self.tb.add_scalar("train/updates_per_s", rate, step)
        self._write_csv("metrics.csv", rows)

    def _evaluate(self, step: int) -> dict[str, Any] | None:
        if not self.task:
            return None
        # MuJoCo/gymnasium are imported only when there is a task to evaluate on.
        from offrl_robot.evaluation import aggregate, evaluate

        self.algo.eval()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            results = evaluate(
                self.algo.act,
                self.task,
                list(self.config.seeds),
                self.config.eval_episodes,
                self.config.eval_seed,
                self.obs_mean,
                self.obs_std,
                self.action_low,
                self.action_high,
                self.device,
                facts=self.facts,
            )
        self.algo.train()
        rows = []
        for res in results:
            rows.append(
                {
                    "step": step,
                    "seed": res.seed,
                    "mean_return": res.mean_return,
                    "std_return": res.std_return,
                    "normalized_score": res.normalized_score,
                    "success_rate": res.success_rate,
                    "final_distance": res.final_distance,
                }
            )
            self.tb.add_scalar(f"eval/mean_return/seed_{res.seed}", res.mean_return, step)
            if res.normalized_score is not None:
                self.tb.add_scalar(f"eval/normalized_score/seed_{res.seed}", res.normalized_score, step)
            if res.success_rate is not None:
                self.tb.add_scalar(f"eval/success_rate/seed_{res.seed}", res.success_rate, step)
            if res.final_distance is not None:
                self.tb.add_scalar(f"eval/final_distance/seed_{res.seed}", res.final_distance, step)
        self._write_csv("eval.csv", rows)
        return {"step": step, **aggregate(results)}

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Train to `config.steps`, evaluating, logging and checkpointing; return the summary."""
        previous_threads = torch.get_num_threads()
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        try:
            return self._fit()
        finally:
            torch.set_num_threads(previous_threads)

    def _fit(self) -> dict[str, Any]:
        cfg = self.config
        wall_start = time.perf_counter()
        seed_everything(cfg.seeds[0])
        self.obs_mean, self.obs_std = self._normaliser()
        self.action_low = np.asarray(self.dataset.metadata.action_low, np.float32)
        self.action_high = np.asarray(self.dataset.metadata.action_high, np.float32)
        self.facts = None
        if self.task:
            from offrl_robot.sim import task_info

            self.facts = task_info(self.task)
        self.algo = self._build_algo()
        if self._resume_state is None:  # on resume the checkpoint restores what prepare() built
            self.algo.prepare(self.dataset)
        self.algo.train()
        self.sampler: Sampler = make_sampler(
            len(self.dataset),
            cfg.batch_size,
            cfg.seeds,
            self.device,
            prioritized=cfg.prioritized,
            alpha=cfg.per_alpha,
            beta=cfg.per_beta,
            eps=cfg.per_eps,
            total_steps=cfg.steps,
        )
        start_step = self._restore(self._resume_state) if self._resume_state is not None else 0
        data = self._device_tensors()
        # After any resume: a CUDA-graph step snapshots the restored state around its capture.
        step_fn = make_update_step(self.algo, self.sampler, data, cfg.accelerate, cfg.precision)
        self._open_logs(start_step)

        last_eval: dict[str, Any] | None = None
        checkpoint_path: Path | None = None
        train_time = 0.0
        sums: dict[str, torch.Tensor] = {}
        count = 0
        progress = _progress(cfg.progress, start_step, cfg.steps, self.run_dir.name)
        prioritized = cfg.prioritized
        try:
            interval_start = time.perf_counter()
            interval_steps = 0
            for step in range(start_step + 1, cfg.steps + 1):
                indices, out = step_fn(step)  # sample -> gather -> update (eager or a CUDA graph)
                if prioritized:
                    self.sampler.update_priorities(indices, out.td_error)
                for name, value in out.metrics.items():
                    value = value.detach()
                    if name in sums:
                        sums[name] += value
                    else:
                        sums[name] = value.clone()
                count += 1
                interval_steps += 1
                progress.update(1)
                log_now = step % cfg.log_every == 0 or step == cfg.steps
                eval_now = (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps
                ckpt_now = (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps
                if log_now or eval_now or ckpt_now:
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    elapsed = time.perf_counter() - interval_start
                    train_time += elapsed
                    if log_now:
                        self._log_metrics(step, sums, count, interval_steps / max(elapsed, 1e-9))
                        sums, count = {}, 0
                    if eval_now:
                        last_eval = self._evaluate(step)
                        if last_eval is not None:
                            progress.set_postfix_str(_eval_postfix(last_eval))
                    if ckpt_now:
                        checkpoint_path = self._save_checkpoint(step)
                        if self.on_checkpoint is not None:
                            same_step = last_eval is not None and last_eval.get("step") == step
                            self.on_checkpoint(step, checkpoint_path, last_eval if same_step else None)
                    interval_start = time.perf_counter()
                    interval_steps = 0
            if checkpoint_path is None:  # resumed at the very end: nothing left to run
                checkpoint_path = list_checkpoints(self.run_dir)[-1]
                last_eval = self._evaluate(cfg.steps)
        finally:
            progress.close()
            self.tb.flush()
            self.tb.close()
        steps_run = cfg.steps - start_step
        summary = {
            "algo": cfg.algo,
            "dataset": self.dataset_name,
            "dataset_sha256": self.dataset_sha256,
            "task": self.task,
            "seeds": list(cfg.seeds),
            "steps": cfg.steps,
            "resumed_from_step": start_step if self.resume else None,
            "steps_this_run": steps_run,
            "batch_size": cfg.batch_size,
            "prioritized": cfg.prioritized,
            "device": str(self.device),
            "accelerate": step_fn.mode,
            "wall_time_s": round(time.perf_counter() - wall_start, 3),
            "train_time_s": round(train_time, 3),
            "updates_per_s": round(steps_run / train_time, 3) if train_time > 0 else None,
            "seed_updates_per_s": round(steps_run * len(cfg.seeds) / train_time, 3)
            if train_time > 0
            else None,
            "final_eval": last_eval,
            "checkpoint": str(checkpoint_path),
            "run_dir": str(self.run_dir),
        }
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary


def _eval_postfix(result: dict[str, Any]) -> str:
    parts = [f"return {result['mean_return']['mean']:.1f}"]
    if "success_rate" in result:
        parts.append(f"success {result['success_rate']['mean']:.2f}")
    if "normalized_score" in result:
        parts.append(f"score {result['normalized_score']['mean']:.1f}")
    if "final_distance" in result:
        parts.append(f"dist {result['final_distance']['mean']:.3f}")
    return " ".join(parts)


def _progress(enabled: bool, start: int, total: int, name: str) -> Any:
    """tqdm bar with updates/s and ETA (tqdm's rate and remaining time), or a no-op."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=start,
        unit="upd",
        desc=name,
        disable=not enabled,
        mininterval=1.0,
        dynamic_ncols=True,
        smoothing=0.05,
    )


def _truncate_csv_after(path: Path, step: int) -> None:
    """On resume drop rows the killed run logged after its last checkpoint (they get redone)."""
    if not path.exists():
        return
    if step == 0:
        path.unlink()
        return
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    kept = [r for r in body if r and r[0].isdigit() and int(r[0]) <= step]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(kept)
    atomic_write_text(path, buffer.getvalue())


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu")
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_cpu(v) for v in value)
    return value


# ---------------------------------------------------------------------------------- CLI
def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise ConfigError(f"--seeds {text!r} must be comma-separated integers, e.g. 0,1,2,3") from err
    if not seeds:
        raise ConfigError("--seeds is empty; give e.g. 0,1,2,3")
    return seeds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="train config YAML (config/train/*.yaml); optional with --resume")
    parser.add_argument("--dataset", help="local Minari dataset name or path (overrides the config)")
    parser.add_argument("--algo", help="algorithm name (overrides the config), e.g. bc, cql, iql, td3bc, bcq")
    parser.add_argument("--task", help="evaluation env (overrides the config / dataset metadata)")
    parser.add_argument("--steps", type=int, help="total update steps (overrides the config)")
    parser.add_argument("--seeds", help="comma-separated seeds trained together, e.g. 0,1,2,3")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto (overrides the config)")
    parser.add_argument("--out", help="run directory (default: <log_dir>/<algo>_<dataset>)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in the run dir"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.add_argument(
        "--accelerate",
        choices=ACCEL_MODES,
        help="CUDA: graph or compile the training step (overrides the config)",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Config file (or, for --resume without --config, the run's saved config) + CLI overrides."""
    if args.config:
        base = TrainConfig.from_yaml(args.config).to_dict()
    elif args.resume and args.out:
        saved = Path(args.out) / "config.yaml"
        if not saved.is_file():
            raise ConfigError(
                f"--resume: {args.out} holds no run (no config.yaml); check --out or pass --config"
            )
        base = TrainConfig.from_yaml(saved).to_dict()
    else:
        base = TrainConfig().to_dict()
    overrides = {
        "dataset": args.dataset,
        "algo": args.algo,
        "task": args.task,
        "steps": args.steps,
        "device": args.device,
        "seeds": _parse_seeds(args.seeds) if args.seeds else None,
        "accelerate": getattr(args, "accelerate", None),
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    if args.no_progress:
        base["progress"] = False
    return TrainConfig.from_dict(base, source="train config")


def run(args: argparse.Namespace) -> int:
    if args.resume and not args.out and not args.config:
        raise ConfigError("--resume needs the run directory: pass --out DIR (and optionally --config)")
    config = config_from_args(args)
    if config.algo == "dynamics":  # a model for MPC, fitted with held-out early stopping: its own loop
        from offrl_robot.algos.dynamics import run_cli

        return run_cli(config, args.out, args.resume)
    trainer = Trainer(config, run_dir=args.out, resume=args.resume)
    summary = trainer.fit()
    final = summary.get("final_eval") or {}
    line = (
        f"trained {summary['algo']} on {summary['dataset']} for {summary['steps']} steps, "
        f"seeds {summary['seeds']}, {summary['updates_per_s']} updates/s"
    )
    if "mean_return" in final:
        line += f"; return {final['mean_return']['mean']:.2f} ± {final['mean_return']['std']:.2f}"
    if "success_rate" in final:
        line += f", success {final['success_rate']['mean']:.2f}"
    if "final_distance" in final:
        line += f", final distance {final['final_distance']['mean']:.3f} m"
    if "normalized_score" in final:
        line += f", score {final['normalized_score']['mean']:.1f}"
    print(line)
    print(f"checkpoint: {summary['checkpoint']}")
    print(f"summary: {Path(summary['run_dir']) / 'summary.json'}")
    from offrl_robot.sim.report import write_learning_curves_quietly  # PNGs beside the CSVs; never raises

    write_learning_curves_quietly(summary["run_dir"])
    return 0
