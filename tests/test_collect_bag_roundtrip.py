"""collect --bag -> ingest reproduces the collected dataset (both storages), end to end through
the real CLI: MuJoCo rollouts, rosbags-written MCAP/sqlite3, our reader, Minari on disk."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, offrl_cli

from offrl_robot.data.minari_io import load_dataset


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_collect_bag_ingest_round_trip(tmp_path: Path, storage: str, run_child, minari_root: Path) -> None:
    env = dict(os.environ)
    bag = tmp_path / "bag"
    collected = run_child.run(
        [
            *offrl_cli(),
            "collect",
            "--task",
            "ArmReach-v0",
            "--policy",
            "scripted-expert",
            "--episodes",
            "3",
            "--seed",
            "0",
            "--out",
            f"rt/collect-{storage}",
            "--bag",
            str(bag),
            "--storage",
            storage,
        ],
        timeout=120,
        env=env,
    )
    assert collected.returncode == 0, collected.stdout
    ingested = run_child.run(
        [
            *offrl_cli(),
            "ingest",
            str(bag),
            "--spec",
            str(REPO / "config/ingest/arm_reach.yaml"),
            "--out",
            f"rt/ingest-{storage}",
        ],
        timeout=120,
        env=env,
    )
    assert ingested.returncode == 0, ingested.stdout
    assert "sync report" in ingested.stdout and "dropped 0" in ingested.stdout

    a = load_dataset(f"rt/collect-{storage}")
    b = load_dataset(f"rt/ingest-{storage}")
    assert a.num_episodes == b.num_episodes == 3
    assert a.episode_bounds() == b.episode_bounds()
    np.testing.assert_allclose(b.observations, a.observations, atol=1e-6)
    np.testing.assert_allclose(b.next_observations, a.next_observations, atol=1e-6)
    np.testing.assert_allclose(b.actions, a.actions, atol=1e-6)
    np.testing.assert_allclose(b.rewards, a.rewards, atol=1e-4)  # recomputed by name from the log
    np.testing.assert_array_equal(b.timeouts, a.timeouts)
    np.testing.assert_array_equal(b.terminals, a.terminals)
    assert b.metadata.observation_names == a.metadata.observation_names
    assert b.metadata.action_names == a.metadata.action_names
    assert b.metadata.action_low == a.metadata.action_low and b.metadata.action_high == a.metadata.action_high
    assert b.metadata.control_rate_hz == a.metadata.control_rate_hz
    assert b.metadata.source["kind"] == "rosbag"
    assert b.metadata.source["bags"][0]["path"] == str(bag.resolve())
    sync = b.metadata.extra["sync_report"]
    assert sync["ticks"] == sync["transitions"] == len(a) and sync["dropped"] == {}
    assert sync["topics"]["/joint_states"]["rate_hz"] == pytest.approx(50.0, rel=0.05)
