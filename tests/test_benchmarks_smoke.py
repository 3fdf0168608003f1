"""The training-throughput benchmark runs end to end and prints its table (ours only, tiny)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_throughput_runs_and_prints_a_row_per_algorithm(run_child, tmp_path: Path) -> None:
    out_json = tmp_path / "rows.json"
    result = run_child.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "train_throughput.py"),
            "--steps=4",
            "--warmup=1",
            "--rounds=1",
            "--algos=bc,td3bc",
            "--no-peer",
            "--vector-seeds=0",
            "--transitions=2000",
            f"--json={out_json}",
        ],
        timeout=60,
    )
    assert result.returncode == 0, result.stdout
    rows = [
        line for line in result.stdout.splitlines() if line.startswith("| bc ") or line.startswith("| td3bc ")
    ]
    assert len(rows) == 2, result.stdout
    data = json.loads(out_json.read_text())
    assert [row["algo"] for row in data["rows"]] == ["bc", "td3bc"]
    assert all(row["ours none"] > 0 for row in data["rows"])


def test_train_throughput_rejects_unknown_algorithm(run_child) -> None:
    result = run_child.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--algos=sac", "--no-peer"],
        timeout=60,
    )
    assert result.returncode == 2
    assert "unknown --algos" in result.stdout
