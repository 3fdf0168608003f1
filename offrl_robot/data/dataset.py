"""The Dataset every stage shares: flat float32 transition arrays plus the metadata a robot needs.

One row per transition. Metadata travels with the arrays so that the exported model knows
its observation/action names (the ROS node maps JointState by name), its action bounds and
its control rate, and so that every artefact can be traced to its source (bag sha256 or env).

Why flat arrays and not episodes: the trainer samples transitions uniformly or by priority
from one contiguous tensor on the device; episodes are recovered from `episode_starts`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from offrl_robot.errors import DatasetError

ARRAY_FIELDS = (
    "observations",
    "actions",
    "rewards",
    "next_observations",
    "terminals",
    "timeouts",
    "episode_starts",
)


@dataclass
class DatasetMetadata:
    """Facts about a dataset that arrays alone cannot carry.

    `source` is a dict: {"kind": "env", "env_id": ...} for sim collection,
    {"kind": "rosbag", "bags": [{"path": ..., "sha256": ...}], "spec": {...}} for ingestion,
    {"kind": "minari", "dataset_id": ...} for foreign Minari datasets.
    `task` names the MuJoCo task used for evaluation, when there is one.
    """

    observation_names: list[str]
    action_names: list[str]
    action_low: list[float]
    action_high: list[float]
    control_rate_hz: float
    source: dict[str, Any] = field(default_factory=dict)
    reward: str = ""
    task: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetMetadata:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise DatasetError(
                f"dataset metadata has unknown keys {sorted(unknown)}; expected a subset of {sorted(known)}"
            )
        return cls(**data)


@dataclass
class Dataset:
    """Transition arrays (float32 / bool) + metadata. Call `validate()` before trusting it."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    episode_starts: np.ndarray
    metadata: DatasetMetadata

    def __post_init__(self) -> None:
        self.observations = np.ascontiguousarray(self.observations, dtype=np.float32)
        self.actions = np.ascontiguousarray(self.actions, dtype=np.float32)
        self.rewards = np.ascontiguousarray(self.rewards, dtype=np.float32).reshape(-1)
        self.next_observations = np.ascontiguousarray(self.next_observations, dtype=np.float32)
        self.terminals = np.ascontiguousarray(self.terminals, dtype=bool).reshape(-1)
        self.timeouts = np.ascontiguousarray(self.timeouts, dtype=bool).reshape(-1)
        self.episode_starts = np.ascontiguousarray(self.episode_starts, dtype=bool).reshape(-1)

    # ------------------------------------------------------------------ shape facts
    def __len__(self) -> int:
        return int(self.observations.shape[0])

    @property
    def observation_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def num_episodes(self) -> int:
        return int(self.episode_starts.sum())

    def episode_bounds(self) -> list[tuple[int, int]]:
        """[(start, stop)) row ranges of each episode, in order."""
        starts = np.flatnonzero(self.episode_starts).tolist()
        stops = [*starts[1:], len(self)]
        return list(zip(starts, stops, strict=True))

    # ------------------------------------------------------------------ integrity
    def validate(self, name: str = "dataset") -> Dataset:
        """Raise DatasetError naming the field (and row) of the first problem; return self."""
        n = len(self)
        if self.observations.ndim != 2 or self.actions.ndim != 2:
            raise DatasetError(f"{name}: observations and actions must be 2-D [N, dim]")
        if n == 0:
            raise DatasetError(f"{name}: holds no transitions; record or ingest some data first")
        for fname in ARRAY_FIELDS:
            arr = getattr(self, fname)
            if arr.shape[0] != n:
                raise DatasetError(f"{name}: field {fname!r} has {arr.shape[0]} rows, observations has {n}")
        if self.next_observations.shape != self.observations.shape:
            raise DatasetError(
                f"{name}: next_observations shape {self.next_observations.shape} != observations shape {self.observations.shape}"
            )
        for fname in ("observations", "actions", "rewards", "next_observations"):
            arr = getattr(self, fname)
            bad = ~np.isfinite(arr)
            if bad.any():
                row = int(np.flatnonzero(bad.reshape(n, -1).any(axis=1))[0])
                col = int(np.flatnonzero(bad.reshape(n, -1)[row])[0])
                value = arr.reshape(n, -1)[row, col]
                raise DatasetError(
                    f"{name}: field {fname!r} row {row} column {col} is {value}; clean or drop that transition"
                )
        if not self.episode_starts[0]:
            raise DatasetError(f"{name}: field 'episode_starts' row 0 must be true")
        meta = self.metadata
        if len(meta.observation_names) != self.observation_dim:
            raise DatasetError(
                f"{name}: metadata observation_names has {len(meta.observation_names)} names, observations have {self.observation_dim} columns"
            )
        if len(meta.action_names) != self.action_dim:
            raise DatasetError(
                f"{name}: metadata action_names has {len(meta.action_names)} names, actions have {self.action_dim} columns"
            )
        low, high = np.asarray(meta.action_low, float), np.asarray(meta.action_high, float)
        if low.shape != (self.action_dim,) or high.shape != (self.action_dim,):
            raise DatasetError(
                f"{name}: metadata action_low/action_high must have {self.action_dim} values each"
            )
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(low < high)):
            raise DatasetError(
                f"{name}: metadata action_low must be finite and below action_high for every action"
            )
        if not meta.control_rate_hz > 0:
            raise DatasetError(
                f"{name}: metadata control_rate_hz must be positive, got {meta.control_rate_hz}"
            )
        return self

    def sha256(self) -> str:
        """Content hash of arrays + metadata: identifies the exact data a model was trained on."""
        digest = hashlib.sha256()
        for fname in ARRAY_FIELDS:
            arr = np.ascontiguousarray(getattr(self, fname))
            digest.update(fname.encode())
            digest.update(str(arr.dtype).encode() + str(arr.shape).encode())
            digest.update(arr.tobytes())
        digest.update(json.dumps(self.metadata.to_dict(), sort_keys=True, default=str).encode())
        return digest.hexdigest()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_episodes(cls, episodes: list[dict[str, np.ndarray]], metadata: DatasetMetadata) -> Dataset:
        """Build from per-episode dicts with keys observations [T+1, O] (incl. final),
        actions [T, A], rewards [T], terminations [T], truncations [T] — Minari's layout."""
        if not episodes:
            raise DatasetError("no episodes to build a dataset from")
        parts: dict[str, list[np.ndarray]] = {f: [] for f in ARRAY_FIELDS}
        for ep in episodes:
            obs = np.asarray(ep["observations"], dtype=np.float32)
            steps = int(np.asarray(ep["actions"]).shape[0])
            if steps == 0:
                continue
            parts["observations"].append(obs[:steps])
            parts["next_observations"].append(obs[1 : steps + 1])
            parts["actions"].append(np.asarray(ep["actions"], dtype=np.float32).reshape(steps, -1))
            parts["rewards"].append(np.asarray(ep["rewards"], dtype=np.float32).reshape(steps))
            parts["terminals"].append(np.asarray(ep["terminations"], dtype=bool).reshape(steps))
            parts["timeouts"].append(np.asarray(ep["truncations"], dtype=bool).reshape(steps))
            starts = np.zeros(steps, dtype=bool)
            starts[0] = True
            parts["episode_starts"].append(starts)
        if not parts["observations"]:
            raise DatasetError("every episode is empty; nothing to build a dataset from")
        arrays = {f: np.concatenate(v) for f, v in parts.items()}
        return cls(**arrays, metadata=metadata)

    def episodes(self) -> list[dict[str, np.ndarray]]:
        """Inverse of `from_episodes` (observations include the final next_observation)."""
        out = []
        for start, stop in self.episode_bounds():
            out.append(
                {
                    "observations": np.concatenate(
                        [self.observations[start:stop], self.next_observations[stop - 1 : stop]]
                    ),
                    "actions": self.actions[start:stop],
                    "rewards": self.rewards[start:stop],
                    "terminations": self.terminals[start:stop],
                    "truncations": self.timeouts[start:stop],
                }
            )
        return out
