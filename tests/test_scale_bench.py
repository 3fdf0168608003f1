"""benchmarks/scale.py runs end to end (tiny sizes, ingestion only: the sweep path is what
tests/test_scale_sweep.py covers) and prints the side-by-side table."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import REPO, ChildProcesses

pytest.importorskip("ray", reason="the scale extra (requirements-scale.txt) is not installed")


@pytest.mark.slow
def test_scale_benchmark_prints_serial_and_ray_rows(run_child: ChildProcesses, tmp_path: Path) -> None:
    args = [sys.executable, str(REPO / "benchmarks" / "scale.py"), "--skip-sweep", "--bags", "3"]
    args += ["--ticks", "800", "--workers", "2", "--workdir", str(tmp_path)]
    result = run_child.run(args, timeout=180)
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert any(line.startswith("ingestion of 3 bags x 800 ticks") for line in lines), result.stdout
    rows = {
        name: line
        for name in ("serial ingest (no Ray)", "Ray ingest, 2 worker(s)")
        for line in lines
        if name in line
    }
    assert len(rows) == 2, result.stdout
    assert "merge on the driver" in result.stdout and "MB/bag" in result.stdout
