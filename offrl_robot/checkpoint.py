"""Run checkpoints: where they live, how they are written and read back.

One module for what the Trainer, the dynamics fit (`offrl_robot.algos.dynamics`), MOPO and
export all rely on: the file layout (`<run_dir>/checkpoints/step_XXXXXXXX.pt`), the format tag,
the normaliser's std floor, the run-directory naming and the plain-value conversion that keeps a
checkpoint loadable with `weights_only=True`. It sits below the algorithms and the trainer and
imports neither, so both can use it without importing each other.

Writes are atomic (`offrl_robot.atomic`): a crash never leaves a half-written checkpoint that a
resume or an export would then pick up as the latest.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offrl_robot.atomic import atomic_write_bytes
from offrl_robot.errors import ModelError

CHECKPOINT_FORMAT = "offrl_robot.checkpoint/1"
CHECKPOINT_PATTERN = re.compile(r"^step_(\d{8})\.pt$")
# Observation std below this is treated as this (constant features would otherwise blow up).
OBS_STD_FLOOR = 1e-3


def plain(value: Any) -> Any:
    """JSON-like copy (tuples -> lists, numpy scalars -> Python) so checkpoints load weights_only."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def slug(text: str) -> str:
    """A file-name-safe form of an algorithm or dataset name (run directories are named by them)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def default_run_dir(log_dir: str | os.PathLike[str], algo: str, dataset_name: str) -> Path:
    """`<log_dir>/<algo>_<dataset>`: where a run goes when no run directory is given."""
    return Path(log_dir) / f"{slug(algo)}_{slug(dataset_name)}"


def checkpoint_dir(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Checkpoints of a run, oldest first (by step)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def write_checkpoint(run_dir: str | os.PathLike[str], step: int, state: dict[str, Any]) -> Path:
    """Serialise `state` (tensors and plain values) to the run's step checkpoint, atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = checkpoint_dir(run_dir) / f"step_{step:08d}.pt"
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint (tensors and plain values only: loads with weights_only=True)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise ModelError(f"checkpoint {path} does not exist; check the path or the run directory") from err
    except Exception as err:
        raise ModelError(
            f"checkpoint {path} cannot be read ({type(err).__name__}); it is corrupt or not ours"
        ) from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"checkpoint {path} is not an offrl_robot checkpoint ({CHECKPOINT_FORMAT})")
    return state


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A checkpoint file, or a run directory (its latest checkpoint)."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise ModelError(
                f"{path} is a directory without checkpoints/step_*.pt; pass a checkpoint file or a run directory"
            )
        return found[-1]
    if not path.exists():
        raise ModelError(f"checkpoint {path} does not exist; pass a checkpoint file or a run directory")
    return path
