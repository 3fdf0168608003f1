"""Control-loop statistics for `/diagnostics`: achieved rate and latency percentiles.

An operator needs to know, without attaching a profiler, whether the policy node keeps its
control rate and how long a tick takes, so both are measured continuously over a sliding
window (fixed-size ring buffers: no allocation in the control loop).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue


class SlidingWindow:
    """The last `size` samples (seconds) in a ring buffer; percentiles over what is there."""

    def __init__(self, size: int = 2048) -> None:
        self._samples = np.zeros(size, dtype=np.float64)
        self._count = 0

    def add(self, value: float) -> None:
        self._samples[self._count % self._samples.size] = value
        self._count += 1

    def __len__(self) -> int:
        return min(self._count, self._samples.size)

    def percentiles(self, qs: tuple[float, ...] = (50.0, 99.0, 100.0)) -> tuple[float, ...]:
        """Percentiles of the window, NaN for each when empty."""
        n = len(self)
        if n == 0:
            return tuple(float("nan") for _ in qs)
        return tuple(float(v) for v in np.percentile(self._samples[:n], qs))


class RateMeter:
    """Achieved tick rate from the timestamps of the last `size` ticks (monotonic clock)."""

    def __init__(self, size: int = 256) -> None:
        self._stamps = np.zeros(size, dtype=np.float64)
        self._count = 0

    def tick(self, now: float | None = None) -> None:
        self._stamps[self._count % self._stamps.size] = time.monotonic() if now is None else now
        self._count += 1

    def rate_hz(self, now: float | None = None) -> float:
        """Ticks per second over the window; 0 when there were fewer than 2 ticks or none lately."""
        n = min(self._count, self._stamps.size)
        if n < 2:
            return 0.0
        newest = self._stamps[(self._count - 1) % self._stamps.size]
        oldest = self._stamps[(self._count - n) % self._stamps.size]
        now = time.monotonic() if now is None else now
        span = max(newest - oldest, 1e-9)
        rate = (n - 1) / span
        # A loop that stopped ticking must not keep reporting its old rate.
        if now - newest > 2.0 * span / (n - 1) + 0.5:
            return 0.0
        return rate


def build_diagnostics(
    stamp: object, name: str, hardware_id: str, level: bytes, message: str, values: Mapping[str, object]
) -> DiagnosticArray:
    """One DiagnosticArray with one status; values are stringified (diagnostic_msgs is strings only)."""
    status = DiagnosticStatus()
    status.level = level
    status.name = name
    status.hardware_id = hardware_id
    status.message = message
    status.values = [KeyValue(key=str(k), value=_fmt(v)) for k, v in values.items()]
    array = DiagnosticArray()
    array.header.stamp = stamp
    array.status = [status]
    return array


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def diagnostic_values(array: DiagnosticArray) -> dict[str, str]:
    """Flatten a DiagnosticArray's key/values (first status wins on a duplicate key): for tools and tests."""
    out: dict[str, str] = {}
    for status in array.status:
        for kv in status.values:
            out.setdefault(kv.key, kv.value)
    return out


LEVEL_OK = DiagnosticStatus.OK
LEVEL_WARN = DiagnosticStatus.WARN
LEVEL_ERROR = DiagnosticStatus.ERROR
