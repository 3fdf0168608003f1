"""Trainer on CUDA: (1) the update loop makes no host<->device sync, (2) seeds scale for free.

(1) Runs `Trainer.fit()` with `torch.cuda.set_sync_debug_mode("error")` switched on for the
update loop only (off for the log / checkpoint points, which sync on purpose), uniform sampling,
every registered algorithm; then once with prioritised replay, which must trip the check (its
one documented sync) — proof that the check is live.
(2) Updates/s of 1 seed vs 8 vectorised seeds, 256x256 nets, batch 256, synthetic data
(obs 15, act 6, 100k transitions), eager PyTorch (no torch.compile / CUDA graphs).

Needs only torch/numpy/yaml/tqdm/tensorboard (no MuJoCo: no evaluation task is set):
    PYTHONPATH=. python benchmarks/trainer_gpu.py [UPDATES]     (UPDATES=0: sync check only)
"""

from __future__ import annotations

import sys
import tempfile
from typing import Any

import numpy as np
import torch

from offrl_robot.algos import REGISTRY
from offrl_robot.data.dataset import Dataset, DatasetMetadata
from offrl_robot.train import TrainConfig, Trainer


def synthetic_dataset(n: int = 100_000, obs_dim: int = 15, act_dim: int = 6) -> Dataset:
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    meta = DatasetMetadata(
        [f"o{i}" for i in range(obs_dim)],
        [f"a{i}" for i in range(act_dim)],
        [-1.0] * act_dim,
        [1.0] * act_dim,
        50.0,
    )
    starts = np.zeros(n, bool)
    starts[0] = True
    return Dataset(
        obs,
        rng.uniform(-1, 1, (n, act_dim)),
        rng.normal(size=n),
        obs + 0.01,
        np.zeros(n, bool),
        np.zeros(n, bool),
        starts,
        meta,
    )


class SyncCheckTrainer(Trainer):
    """Sync debugging 'error' from the moment the data is on the device; off at log/checkpoint."""

    def _device_tensors(self) -> dict[str, torch.Tensor]:
        out = super()._device_tensors()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        return out

    def _log_metrics(self, *args: Any, **kwargs: Any) -> None:
        torch.cuda.set_sync_debug_mode(0)
        super()._log_metrics(*args, **kwargs)

    def _save_checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        torch.cuda.set_sync_debug_mode(0)
        return super()._save_checkpoint(*args, **kwargs)


def config(algo: str, seeds: list[int], steps: int, **extra: Any) -> TrainConfig:
    algo_config: dict[str, Any] = {"hidden_sizes": [256, 256]}
    if algo == "mopo":  # MOPO first fits its own dynamics ensemble: keep that fit short here
        algo_config["dynamics_steps"] = 200
    return TrainConfig(
        algo=algo,
        steps=steps,
        seeds=seeds,
        batch_size=256,
        eval_every=0,
        log_every=steps,
        checkpoint_every=0,
        progress=False,
        device="cuda",
        algo_config=algo_config,
        **extra,
    )


def check_sync(trainer: Trainer) -> str:
    try:
        trainer.fit()
        return "no host<->device sync"
    except RuntimeError as err:
        return "SYNC: " + str(err).splitlines()[0][:100]
    finally:
        torch.cuda.set_sync_debug_mode(0)


def main() -> int:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    data = synthetic_dataset()
    tmp = tempfile.mkdtemp()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("sync check, 30 updates, 2 seeds, sync debug mode 'error' during the loop:")
    for algo in sorted(REGISTRY):
        print(
            f"  {algo} (uniform): {check_sync(SyncCheckTrainer(config(algo, [0, 1], 30), data, f'{tmp}/s_{algo}'))}"
        )
    per = SyncCheckTrainer(config("td3bc", [0, 1], 30, prioritized=True), data, f"{tmp}/s_per")
    print(f"  td3bc (prioritised, must sync): {check_sync(per)}")
    if steps == 0:
        return 0
    print(f"\n| algo | seeds | updates/s | seed-updates/s |  ({steps} updates, 256x256, batch 256, eager)")
    print("|---|---:|---:|---:|")
    for algo in sorted(REGISTRY):
        for seeds in ([0], list(range(8))):
            Trainer(config(algo, seeds, 50), data, f"{tmp}/w_{algo}_{len(seeds)}").fit()  # warm-up
            summary = Trainer(config(algo, seeds, steps), data, f"{tmp}/{algo}_{len(seeds)}").fit()
            print(
                f"| {algo} | {len(seeds)} | {summary['updates_per_s']:.0f} | {summary['seed_updates_per_s']:.0f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
