"""The training-throughput benchmark runs end to end and prints its table (ours only, tiny)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
THROUGHPUT = str(ROOT / "benchmarks" / "train_throughput.py")
TINY = ["--steps=4", "--warmup=1", "--vector-seeds=0", "--transitions=2000"]


def run_throughput(run_child: Any, *args: str, timeout: int = 60) -> Any:
    """benchmarks/train_throughput.py in a child process with `args`."""
    return run_child.run([sys.executable, THROUGHPUT, *args], timeout=timeout)


def test_train_throughput_runs_and_prints_a_row_per_algorithm(run_child, tmp_path: Path) -> None:
    out_json = tmp_path / "rows.json"
    result = run_throughput(
        run_child, *TINY, "--rounds=1", "--algos=bc,td3bc", "--no-peer", f"--json={out_json}"
    )
    assert result.returncode == 0, result.stdout
    rows = [
        line for line in result.stdout.splitlines() if line.startswith("| bc ") or line.startswith("| td3bc ")
    ]
    assert len(rows) == 2, result.stdout
    data = json.loads(out_json.read_text())
    assert [row["algo"] for row in data["rows"]] == ["bc", "td3bc"]
    assert all(row["ours none"] > 0 and row["ours compile"] > 0 for row in data["rows"])


def test_train_throughput_rejects_unknown_algorithm(run_child) -> None:
    result = run_throughput(run_child, "--algos=sac", "--no-peer")
    assert result.returncode == 2
    assert "unknown --algos" in result.stdout


def test_model_based_quality_runs_every_method_and_prints_the_table(run_child, tmp_path: Path) -> None:
    """benchmarks/model_based_quality.py end to end at toy size: MPC through the exported
    controller, MOPO, CQL and IQL through the Trainer, one table row per dataset (~15 s here)."""
    out_json = tmp_path / "rows.json"
    result = run_child.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "model_based_quality.py"),
            "--seeds=0",
            "--arm-datasets=expert",
            "--episodes=2",
            "--steps=20",
            "--dynamics-steps=20",
            "--eval-episodes=1",
            "--workers=1",
            f"--json={out_json}",
        ],
        timeout=120,
    )
    assert result.returncode == 0, result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ArmReach expert |")]
    assert len(rows) == 1 and "not run" not in rows[0], result.stdout
    data = json.loads(out_json.read_text())
    assert sorted(r["method"] for r in data["rows"]) == ["cql", "iql", "mopo", "mpc"]
    assert all(r["success_rate"] is not None and r["seed"] == 0 for r in data["rows"])


def test_train_throughput_isolate_needs_the_peer_on_the_cpu(run_child) -> None:
    result = run_throughput(run_child, "--isolate", "--no-peer")
    assert result.returncode == 2
    assert "--isolate is for CPU runs against d3rlpy" in result.stdout


def test_train_throughput_isolated_contenders_each_report_a_rate(run_child, tmp_path: Path) -> None:
    """--isolate: ours and d3rlpy each in a process of their own, both columns filled."""
    if importlib.util.find_spec("d3rlpy") is None:
        pytest.skip("d3rlpy is a benchmark extra (make bench-deps), not installed here")
    out_json = tmp_path / "rows.json"
    result = run_throughput(
        run_child, *TINY, "--rounds=2", "--algos=bc", "--isolate", f"--json={out_json}", timeout=120
    )
    assert result.returncode == 0, result.stdout
    (row,) = json.loads(out_json.read_text())["rows"]
    assert row["ours none"] > 0 and row["ours compile"] > 0
    assert row["d3rlpy eager"] > 0 and row["d3rlpy upd-only"] > 0


QUALITY = str(ROOT / "benchmarks" / "quality.py")


def test_quality_runs_only_the_named_dataset_with_a_variant_row(run_child, tmp_path: Path) -> None:
    """benchmarks/quality.py end to end at toy size (ours only): --only-datasets keeps one
    dataset, --variant adds a row of ours with other hyper-parameters beside the default."""
    out_json = tmp_path / "runs.json"
    result = run_child.run(
        [
            sys.executable,
            QUALITY,
            "--algos=bcq",
            "--steps=4",
            "--episodes=4",
            "--seeds=0",
            "--eval-episodes=1",
            "--workers=1",
            "--no-peer",
            "--only-datasets=ArmReach mixed",
            "--variant=bcq:num_act_candidates=3",
            f"--json={out_json}",
        ],
        timeout=180,
    )
    assert result.returncode == 0, result.stdout
    runs = json.loads(out_json.read_text())
    assert sorted(r["library"] for r in runs) == ["ours", "ours num_act_candidates=3"]
    assert {r["dataset"] for r in runs} == {"ArmReach mixed"}
    assert all(len(r["per_seed"]) == 1 and r["per_seed"][0]["seed"] == 0 for r in runs)
    assert "| ArmReach mixed | bcq |" in result.stdout and "| ArmReach expert |" not in result.stdout


def test_quality_rejects_an_unknown_dataset_name(run_child) -> None:
    result = run_child.run(
        [sys.executable, QUALITY, "--algos=bc", "--episodes=2", "--no-peer", "--only-datasets=ArmReach huge"],
        timeout=120,
    )
    assert result.returncode != 0
    assert "--only-datasets: unknown ['ArmReach huge']" in result.stdout


def test_safety_overhead_runs_every_scenario_with_the_per_second_slew(run_child) -> None:
    """benchmarks/safety_overhead.py end to end at toy size: each scenario fires exactly the
    interventions it is meant to (the script asserts it) with rate x dt and hold_reference."""
    result = run_child.run(
        [sys.executable, str(ROOT / "benchmarks" / "safety_overhead.py"), "--ticks=200", "--rounds=1"],
        timeout=120,
    )
    assert result.returncode == 0, result.stdout
    for row in ("nominal", "nominal, position arm", "clamp+slew", "stale, hold measured", "e-stop"):
        assert f"| SafetyFilter.step {row} " in result.stdout, result.stdout
