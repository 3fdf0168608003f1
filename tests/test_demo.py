"""`offrl-robot demo` end to end at CI size: every stage's artefact exists and the gate passed.

Reduced sizes (a few expert episodes, a short BC run, a 3 s closed loop over DDS), and a gate
whose thresholds a short run can meet (success is not required: a 1,500-update BC policy does
not stop within 2 cm; the full `make demo` uses config/validate.yaml, success >= 0.9). What
this test proves is the plumbing: bag -> dataset -> checkpoint -> ONNX + card -> gate verdict
in the card -> nodes over DDS -> summary.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import offrl_cli

pytestmark = [pytest.mark.slow, pytest.mark.ros]


def test_reduced_demo_runs_every_stage_and_the_gate_passes(tmp_path: Path, ros_env: dict, run_child) -> None:
    gate = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "validate.yaml").read_text())
    gate["thresholds"] = {
        "normalized_score": {"min": 40.0},
        "nan_events": {"max": 0},
        "intervention_rate": {"max": 0.05},
    }
    gate_file = tmp_path / "gate.yaml"
    gate_file.write_text(yaml.safe_dump(gate))
    out = tmp_path / "demo"
    proc = run_child.run(
        [
            *offrl_cli(),
            "demo",
            "--out",
            str(out),
            "--episodes",
            "30",
            "--steps",
            "1500",
            "--gate-config",
            str(gate_file),
            "--gate-episodes",
            "4",
            "--node-seconds",
            "3",
            "--domain-id",
            ros_env["ROS_DOMAIN_ID"],
            # this gate does not test success, so policy_node's default floor (success >= 0.8)
            # refuses the model: the supervised reduced run states its own floor
            "--min-thresholds",
            "nan_events<=0",
            "intervention_rate<=0.05",
        ],
        timeout=420,
        env=ros_env,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    for stage in ("collect", "ingest", "train", "export", "validate", "deploy"):
        assert f"=== {stage}" in proc.stdout
    assert (out / "bags" / "arm_reach_demo" / "metadata.yaml").is_file()
    assert (out / "datasets" / "offrl_demo" / "arm_reach_ingested-v0").is_dir()
    assert list((out / "runs" / "bc" / "checkpoints").glob("*.pt"))
    model, card = out / "models" / "arm_reach.onnx", out / "models" / "arm_reach.card.yaml"
    assert model.is_file() and card.is_file() and not list(model.parent.glob("*.onnx.data"))
    assert yaml.safe_load(card.read_text())["validation"]["passed"] is True
    report = out / "reports" / "arm_reach"
    assert json.loads((report / "report.json").read_text())["passed"] is True
    assert (report / "report.md").is_file() and list(report.glob("*.png"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gate_passed"] is True
    assert "p50" in summary["rows"]["node tick latency"]
    assert "=== summary" in proc.stdout and "=== artefacts" in proc.stdout
