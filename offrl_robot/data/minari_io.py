"""Local Minari storage for `Dataset`: save ours, load ours and anyone else's. Never downloads.

Why Minari: it is the community format for offline RL data, so our datasets open in Minari's own
tools (`minari list local`, `minari.load_dataset`) and foreign local Minari datasets train here.

Layout of a saved dataset `<root>/<dataset_id>/`: Minari's own `data/` (metadata.json +
main_data.hdf5, written by `minari.create_dataset_from_buffers`) plus `offrl_metadata.json` —
our `DatasetMetadata`, the row index of every episode start and the content sha256 — so a
round trip reproduces the Dataset exactly (same arrays, same metadata, same sha256).

Minari stores an episode as observations [T+1] (each step's next observation is the following
step's observation). Our flat arrays do not promise that (ingestion may drop a stale tick inside
an episode), so we split an episode into Minari episodes wherever the chain breaks and restore
the real episode starts from the sidecar on load.

`minari.create_dataset_from_buffers` writes under `$MINARI_DATASETS_PATH`; to be atomic we point it
at a hidden scratch root beside the real one, then rename the finished folder into place
(`offrl_robot.atomic.atomic_dir`). Hidden folders are ignored by Minari's listing.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from offrl_robot.atomic import atomic_dir
from offrl_robot.data.dataset import Dataset, DatasetMetadata
from offrl_robot.errors import DatasetError

METADATA_FILE = "offrl_metadata.json"
SIDECAR_FORMAT = "offrl_robot.dataset/1"
_VERSION = re.compile(r"-v(\d+)$")
# Minari's own id grammar: no '.' anywhere (`my.data-v0` is "Malformed" to it)
_ID_CHARS = re.compile(r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*$")
LIST_HINT = "list local ones with `offrl-robot dataset-info --list` (or `minari list local`)"


# ---------------------------------------------------------------------------------- names, roots
def dataset_id_from_name(name: str) -> str:
    """`arm_reach/expert` -> `arm_reach/expert-v0`; Minari requires a version suffix."""
    name = name.strip().strip("/")
    problem = (
        f"dataset name {name!r} is not valid; use letters, digits, '_', '-' and '/' (no '.', a "
        "namespace of 2+ characters; e.g. arm_reach/expert-v0)"
    )
    if not name or not _ID_CHARS.match(name):
        raise DatasetError(problem)
    dataset_id = name if _VERSION.search(name) else f"{name}-v0"
    from minari.dataset.minari_dataset import parse_dataset_id

    try:
        parse_dataset_id(dataset_id)  # Minari's own grammar decides what it will save and load
    except ValueError:
        raise DatasetError(problem) from None
    return dataset_id


def datasets_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Where local Minari datasets live: `root`, else $MINARI_DATASETS_PATH, else ~/.minari/datasets."""
    if root is not None:
        return Path(root)
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env) if env else Path.home() / ".minari" / "datasets"


@contextlib.contextmanager
def _minari_root(path: Path) -> Iterator[None]:
    """Point Minari's storage functions at `path` for the duration (they only read the env var)."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def list_local(root: str | os.PathLike[str] | None = None) -> list[str]:
    """Ids of every local Minari dataset under the root (ours and foreign)."""
    base = datasets_root(root)
    if not base.is_dir():
        return []
    found = []
    for meta in base.rglob("data/metadata.json"):
        rel = meta.parent.parent.relative_to(base)
        if not any(part.startswith(".") for part in rel.parts):
            found.append(rel.as_posix())
    return sorted(found)


# ---------------------------------------------------------------------------------- save
def _chain_segments(dataset: Dataset) -> list[tuple[int, int]]:
    """[(start, stop)) row ranges where next_observations[i] == observations[i+1] holds throughout."""
    n = len(dataset)
    breaks = np.zeros(n, dtype=bool)
    breaks[0] = True
    breaks |= dataset.episode_starts
    if n > 1:
        chained = np.all(dataset.next_observations[:-1] == dataset.observations[1:], axis=1)
        breaks[1:] |= ~chained
    starts = np.flatnonzero(breaks).tolist()
    return list(zip(starts, [*starts[1:], n], strict=True))


def save_dataset(
    dataset: Dataset,
    name: str,
    root: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `dataset` as a local Minari dataset `name` (adds `-v0` if unversioned); return its folder.

    Atomic: nothing appears under the root unless the whole dataset was written.
    """
    from minari import create_dataset_from_buffers
    from minari.data_collector import EpisodeBuffer

    dataset_id = dataset_id_from_name(name)
    dataset.validate(dataset_id)
    base = datasets_root(root)
    target = base / dataset_id
    if target.exists() and not overwrite:
        raise DatasetError(
            f"dataset {dataset_id} already exists at {target}; choose another name or pass --overwrite"
        )
    buffers = []
    for index, (start, stop) in enumerate(_chain_segments(dataset)):
        buffers.append(
            EpisodeBuffer(
                id=index,
                observations=np.concatenate(
                    [dataset.observations[start:stop], dataset.next_observations[stop - 1 : stop]]
                ),
                actions=dataset.actions[start:stop],
                rewards=dataset.rewards[start:stop].tolist(),
                terminations=dataset.terminals[start:stop].tolist(),
                truncations=dataset.timeouts[start:stop].tolist(),
            )
        )
    meta = dataset.metadata
    observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(dataset.observation_dim,), dtype=np.float32)
    action_space = gym.spaces.Box(
        np.asarray(meta.action_low, np.float32), np.asarray(meta.action_high, np.float32), dtype=np.float32
    )
    sidecar = {
        "format": SIDECAR_FORMAT,
        "metadata": meta.to_dict(),
        "episode_start_rows": np.flatnonzero(dataset.episode_starts).tolist(),
        "num_transitions": len(dataset),
        "sha256": dataset.sha256(),
    }
    base.mkdir(parents=True, exist_ok=True)
    with atomic_dir(target, overwrite=overwrite) as folder:
        scratch = Path(tempfile.mkdtemp(prefix=".offrl-minari-", dir=base))
        try:
            with _minari_root(scratch), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Minari nags about optional fields (eval_env, ...)
                create_dataset_from_buffers(
                    dataset_id,
                    buffers,
                    env=None,
                    observation_space=observation_space,
                    action_space=action_space,
                    algorithm_name=str(meta.source.get("policy", meta.source.get("kind", "unknown"))),
                    author="offrl_robot",
                    author_email="offrl-robot@example.invalid",
                    code_permalink="https://example.invalid/offrl_robot",
                    description=_describe(meta),
                )
            for child in (scratch / dataset_id).iterdir():
                os.replace(child, folder / child.name)
            (folder / METADATA_FILE).write_text(json.dumps(sidecar, indent=1, default=str), encoding="utf-8")
            _copy_namespace_metadata(scratch, base)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def _describe(meta: DatasetMetadata) -> str:
    return (
        f"offrl_robot dataset: {len(meta.observation_names)} observations, {len(meta.action_names)} actions "
        f"at {meta.control_rate_hz:g} Hz; source {json.dumps(meta.source, default=str)}; reward {meta.reward or 'n/a'}"
    )


def _copy_namespace_metadata(scratch: Path, base: Path) -> None:
    """Minari marks namespace folders with a small JSON file; keep the real root consistent."""
    for marker in scratch.rglob("namespace_metadata.json"):
        dest = base / marker.relative_to(scratch)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(marker, dest)


# ---------------------------------------------------------------------------------- load
def resolve_dataset(name_or_path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> Path:
    """The dataset folder (the one holding `data/`) for a local id or a path; DatasetError if missing."""
    path = Path(name_or_path)
    if path.is_dir():
        if (path / "data" / "metadata.json").is_file():
            return path
        if path.name == "data" and (path / "metadata.json").is_file():
            return path.parent
        raise DatasetError(f"{path} is not a Minari dataset folder (no data/metadata.json); {LIST_HINT}")
    base = datasets_root(root)
    text = str(name_or_path).strip().strip("/")
    if _VERSION.search(text):
        candidates = [base / text]
    else:  # unversioned name: try the newest local version first
        candidates = sorted(base.glob(f"{glob.escape(text)}-v*"), key=_version_of)
    for folder in reversed(candidates):
        if (folder / "data" / "metadata.json").is_file():
            return folder
    raise DatasetError(f"dataset {text!r} not found under {base} (MINARI_DATASETS_PATH); {LIST_HINT}")


def _version_of(path: Path) -> int:
    match = _VERSION.search(path.name)
    return int(match.group(1)) if match else -1


def load_dataset(
    name_or_path: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    control_rate_hz: float | None = None,
) -> Dataset:
    """Load a local Minari dataset — one we saved (exact) or a foreign one (names/bounds from its spaces).

    `control_rate_hz` is only needed for a foreign dataset whose env is not a known task.
    """
    from minari.dataset.minari_storage import MinariStorage

    folder = resolve_dataset(name_or_path, root)
    label = str(name_or_path)
    try:
        storage = MinariStorage.read(folder / "data")
        episodes = list(storage.get_episodes(range(storage.total_episodes)))
        raw = MinariStorage.read_raw_metadata(folder / "data")
    except DatasetError:
        raise
    except Exception as err:
        raise DatasetError(
            f"{folder}: cannot read Minari data ({type(err).__name__}: {err}); the dataset is damaged, re-create it"
        ) from err
    if not episodes:
        raise DatasetError(f"{folder}: the Minari dataset holds no episodes")
    sidecar_path = folder / METADATA_FILE
    if sidecar_path.is_file():
        return _load_ours(folder, label, episodes, sidecar_path)
    return _load_foreign(folder, label, episodes, storage, raw, control_rate_hz)


def _load_ours(folder: Path, label: str, episodes: list[dict[str, Any]], sidecar_path: Path) -> Dataset:
    try:
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
        if sidecar.get("format") != SIDECAR_FORMAT:
            raise DatasetError(
                f"{sidecar_path}: format {sidecar.get('format')!r} is not {SIDECAR_FORMAT!r}; re-create the dataset"
            )
        metadata = DatasetMetadata.from_dict(sidecar["metadata"])
        start_rows = [int(i) for i in sidecar["episode_start_rows"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"{sidecar_path}: unreadable ({err}); re-create the dataset") from err
    dataset = Dataset.from_episodes(
        [_episode_arrays(ep, np.asarray(ep["observations"])) for ep in episodes], metadata
    )
    starts = np.zeros(len(dataset), dtype=bool)
    if start_rows and (min(start_rows) < 0 or max(start_rows) >= len(dataset)):
        raise DatasetError(f"{sidecar_path}: episode_start_rows out of range for {len(dataset)} rows")
    starts[start_rows] = True
    dataset.episode_starts = starts
    dataset.validate(label)
    if dataset.sha256() != sidecar.get("sha256"):
        raise DatasetError(
            f"{folder}: content does not match the sha256 in {METADATA_FILE}; the dataset was modified or damaged"
        )
    return dataset


def _flat(space: gym.Space, data: Any, prefix: str, folder: Path) -> tuple[np.ndarray, list[str]]:
    """Flatten one episode's data of a Box or Dict-of-Box space to [T, D] plus a name per column.

    Names: `obs_3` for a plain Box, `achieved_goal.1` (key path + index) inside a Dict.
    """
    if isinstance(space, gym.spaces.Box):
        arr = np.asarray(data, dtype=np.float64)
        arr = arr.reshape(arr.shape[0], -1)
        sep = "_" if prefix in ("obs", "act") else "."
        return arr, [f"{prefix}{sep}{i}" for i in range(arr.shape[1])]
    if isinstance(space, gym.spaces.Dict):
        parts, names = [], []
        for key, sub in space.spaces.items():
            arr, sub_names = _flat(
                sub, data[key], key if prefix in ("obs", "act") else f"{prefix}.{key}", folder
            )
            parts.append(arr)
            names += sub_names
        return np.concatenate(parts, axis=1), names
    raise DatasetError(
        f"{folder}: space {type(space).__name__} is not supported; only continuous Box (or Dict of Box) spaces"
    )


def _episode_arrays(ep: dict[str, Any], observations: np.ndarray) -> dict[str, np.ndarray]:
    """A Minari episode in `Dataset.from_episodes` layout, with observations already flattened."""
    actions = np.asarray(ep["actions"])
    return {
        "observations": observations,
        "actions": actions.reshape(actions.shape[0], -1),
        "rewards": np.asarray(ep["rewards"]),
        "terminations": np.asarray(ep["terminations"]),
        "truncations": np.asarray(ep["truncations"]),
    }


def _load_foreign(
    folder: Path,
    label: str,
    episodes: list[dict[str, Any]],
    storage: Any,
    raw: dict[str, Any],
    control_rate_hz: float | None,
) -> Dataset:
    obs_space, act_space = storage.observation_space, storage.action_space
    if not isinstance(act_space, gym.spaces.Box):
        raise DatasetError(
            f"{folder}: action space {type(act_space).__name__} is not supported; only continuous Box actions"
        )
    converted = []
    for ep in episodes:
        converted.append(_episode_arrays(ep, _flat(obs_space, ep["observations"], "obs", folder)[0]))
    obs_names = _flat(obs_space, episodes[0]["observations"], "obs", folder)[1]
    act_dim = int(np.prod(act_space.shape))
    env_id = _env_id(raw)
    task = _known_task(env_id)
    low = np.asarray(act_space.low, np.float64).reshape(-1)
    high = np.asarray(act_space.high, np.float64).reshape(-1)
    extra: dict[str, Any] = {}
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        # unbounded action space: the data's own range is the only honest bound we have
        all_actions = np.concatenate([a["actions"] for a in converted])
        low, high = all_actions.min(axis=0), all_actions.max(axis=0)
        high = np.where(high > low, high, low + 1e-6)
        extra["action_bounds_from_data"] = True
    rate = control_rate_hz or _control_rate(env_id, task)
    if not rate:
        raise DatasetError(
            f"{folder}: control rate unknown (env {env_id or 'not recorded'}); pass control_rate_hz to load_dataset"
        )
    metadata = DatasetMetadata(
        observation_names=obs_names,
        action_names=[f"act_{i}" for i in range(act_dim)],
        action_low=[float(v) for v in low],
        action_high=[float(v) for v in high],
        control_rate_hz=float(rate),
        source={"kind": "minari", "dataset_id": raw.get("dataset_id", folder.name), "path": str(folder)},
        reward="logged in the Minari dataset",
        task=task,
        extra=extra,
    )
    if task is not None:
        from offrl_robot.sim import task_info

        info = task_info(task)
        if len(info.observation_names) == len(obs_names) and len(info.action_names) == act_dim:
            metadata.observation_names = list(info.observation_names)
            metadata.action_names = list(info.action_names)
    return Dataset.from_episodes(converted, metadata).validate(label)


def _env_id(raw: dict[str, Any]) -> str | None:
    spec = raw.get("env_spec")
    if not isinstance(spec, str):
        return None
    try:
        return str(json.loads(spec).get("id")) or None
    except (ValueError, AttributeError):
        return None


def _known_task(env_id: str | None) -> str | None:
    if not env_id:
        return None
    from offrl_robot.errors import ConfigError
    from offrl_robot.sim.tasks import canonical_task

    try:
        return canonical_task(env_id)
    except ConfigError:
        return None


def _control_rate(env_id: str | None, task: str | None) -> float | None:
    """From our task table, else from the registered env's dt (no env is stepped)."""
    if task is not None:
        from offrl_robot.sim import task_info

        return task_info(task).control_rate_hz
    if env_id and env_id in gym.registry:
        try:
            env = gym.make(env_id)
            try:
                return float(1.0 / env.unwrapped.dt)  # type: ignore[attr-defined]
            finally:
                env.close()
        except Exception:
            return None
    return None
