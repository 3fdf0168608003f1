"""The committed example policy works out of the box: validated card, and `deploy --sim` reaches the goal."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml
from conftest import REPO, offrl_cli

from offrl_robot.runtime import PolicyRuntime

MODEL = REPO / "models" / "arm_reach.onnx"


def test_example_model_is_validated_and_loads_with_its_card() -> None:
    card = yaml.safe_load(MODEL.with_suffix(".card.yaml").read_text())
    assert card["validation"]["passed"] is True and card["validation"]["task"] == "ArmReach-v0"
    assert card["validation"]["metrics"]["success_rate"] >= 0.9
    runtime = PolicyRuntime(MODEL)  # verifies the sha256 and the names against the card
    action = runtime.act(np.zeros(15, dtype=np.float32))
    assert action.shape == (6,) and np.isfinite(action).all()
    assert (REPO / "models" / "arm_reach_report" / "report.md").is_file()


@pytest.mark.ros
def test_deploy_sim_with_the_shipped_params_reaches_the_goal(ros_env: dict, run_child) -> None:
    proc = run_child.run(
        [
            *offrl_cli(),
            "deploy",
            "--params",
            str(REPO / "config" / "policy.yaml"),
            "--sim",
            "--duration",
            "5",
        ],
        timeout=90,
        env=ros_env,
        cwd=REPO,  # the params file names models/arm_reach.onnx relative to the checkout, as a user runs it
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    sim_line = next(line for line in proc.stdout.splitlines() if line.startswith("sim: "))
    assert "success=1" in sim_line, sim_line
    assert float(re.search(r"distance_to_goal=([0-9.e-]+)", sim_line).group(1)) < 0.02
