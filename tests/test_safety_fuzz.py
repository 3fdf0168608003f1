"""benchmarks/safety_fuzz.py: the SafetyFilter fuzz finds no violation, reaches every path, and
its checks CAN fail: each deliberately broken filter (or config) variant below is caught by the
very invariant it breaks. The full >= 250,000-tick run is recorded in BENCHMARKS.md (Reliability)."""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from conftest import REPO, ChildProcesses

from offrl_robot.errors import ConfigError
from offrl_robot.safety import SafetyConfig, SafetyFilter

SCRIPT = REPO / "benchmarks" / "safety_fuzz.py"
CI_TICKS = 20_000
MUTANT_TICKS = 5_000


def load_fuzz() -> ModuleType:
    spec = importlib.util.spec_from_file_location("safety_fuzz", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["safety_fuzz"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


fuzz = load_fuzz()


def test_fuzz_finds_no_violation_and_reaches_every_path() -> None:
    result = fuzz.run(CI_TICKS, seed=1)
    print("\n" + fuzz.report(result))
    assert result.ticks == CI_TICKS
    assert result.total_violations == 0, result.examples
    assert result.configs >= 50 and 0 < result.refused < result.configs
    # every invariant was checked on many ticks, and every path was taken many times
    assert all(count >= 500 for name, count in result.checked.items() if name != "config verdict"), (
        result.checked
    )
    assert all(count >= 50 for count in result.paths.values()), result.paths


# ------------------------------------------------------------------- broken variants


class NoSlewLimit(SafetyFilter):
    """Forgets the slew limit."""

    def _slew_for(self, dt: float) -> list[float]:
        return [math.inf] * self._n


class PerTickSlew(SafetyFilter):
    """The defect of issue 14 §2.5: the step limit per tick, whatever the tick's dt."""

    def step(
        self, action: Any, observation: Any, observation_age_s: float, dt: Any = None, **kw: Any
    ) -> np.ndarray:
        return super().step(action, observation, observation_age_s, None, **kw)


class SometimesNaN(SafetyFilter):
    """Returns NaN in one joint on every 97th tick."""

    def step(self, *args: Any, **kw: Any) -> np.ndarray:
        out = super().step(*args, **kw)
        if self.ticks % 97 == 0:
            out[0] = math.nan
        return out


class WideLimits(SafetyFilter):
    """Clamps to limits 10 % wider than configured (the hold clamp keeps the real ones)."""

    def __init__(self, config: SafetyConfig, initial_command: Any = None) -> None:
        super().__init__(config, initial_command)
        self._low = [lo - 0.1 * (hi - lo) - 1e-3 for lo, hi in self._limits]
        self._high = [hi + 0.1 * (hi - lo) + 1e-3 for lo, hi in self._limits]


class EstopIgnored(SafetyFilter):
    """estop() does nothing."""

    def estop(self) -> None:
        pass


class StaleTrusted(SafetyFilter):
    """Takes every observation as finite (NaN / inf observations pass)."""

    @staticmethod
    def _observation_finite(observation: Any) -> bool:
        return observation is not None


class HoldIgnoresMeasured(SafetyFilter):
    """Under "hold", keeps the previous command even when the measured position is given."""

    def step(self, *args: Any, hold_reference: Any = None, **kw: Any) -> np.ndarray:
        return super().step(*args, **kw)


class RoundsToFloat32(SafetyFilter):
    """Sends float32-rounded commands."""

    def step(self, *args: Any, **kw: Any) -> np.ndarray:
        with np.errstate(over="ignore"):
            return super().step(*args, **kw).astype(np.float32).astype(np.float64)


@pytest.mark.parametrize(
    ("variant", "invariant"),
    [
        (NoSlewLimit, "slew (rate x dt)"),
        (PerTickSlew, "slew (rate x dt)"),
        (SometimesNaN, "finite"),
        (WideLimits, "within limits"),
        (EstopIgnored, "latch held"),
        (StaleTrusted, "untrusted -> safe action"),
        (StaleTrusted, "action-independent"),
        (HoldIgnoresMeasured, "untrusted -> safe action"),
        (RoundsToFloat32, "pass-through"),
    ],
)
def test_a_broken_filter_is_caught_by_the_invariant_it_breaks(
    variant: Callable[..., SafetyFilter], invariant: str
) -> None:
    result = fuzz.run(MUTANT_TICKS, seed=2, filter_cls=variant)
    assert result.violations[invariant] > 0, fuzz.report(result)
    assert invariant in result.examples


def test_a_config_check_that_refuses_or_accepts_wrongly_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuses_everything(**kwargs: Any) -> SafetyConfig:
        raise ConfigError("safety config: joint 0 limits span more than float64 can hold")

    monkeypatch.setattr(fuzz, "SafetyConfig", refuses_everything)
    assert fuzz.run(10_000, seed=3).violations["config verdict"] > 0

    def accepts_overflow(**kwargs: Any) -> SafetyConfig:
        half = sys.float_info.max / 2
        kwargs = {**kwargs, "low": np.clip(kwargs["low"], -half, half).tolist()}
        kwargs["high"] = np.clip(kwargs["high"], -half, half).tolist()
        if not isinstance(kwargs["safe_action"], str):
            kwargs["safe_action"] = "zero"
        return SafetyConfig(**kwargs)

    monkeypatch.setattr(fuzz, "SafetyConfig", accepts_overflow)
    assert fuzz.run(10_000, seed=3).violations["config verdict"] > 0


def test_cli_exits_non_zero_on_a_violation(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(fuzz, "SafetyFilter", NoSlewLimit)
    assert fuzz.main(["--ticks", "3000", "--seed", "4"]) == 1
    out = capsys.readouterr().out
    assert "FAIL:" in out and "first slew (rate x dt) violation" in out


def test_cli_prints_the_table_and_exits_zero(run_child: ChildProcesses) -> None:
    result = run_child.run([sys.executable, str(SCRIPT), "--ticks", "3000", "--seed", "5"], timeout=120)
    assert result.returncode == 0, result.stdout
    assert "| slew (rate x dt)" in result.stdout and "| hold_reference used" in result.stdout
    assert result.stdout.rstrip().endswith("OK: 0 violations in 3,000 ticks"), result.stdout
