"""MOPO: SAC on penalised ensemble rollouts, run by the ordinary Trainer and exported like any
MLP policy. Small and fast: the linear system of test_dynamics, no env evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_dynamics import linear_dataset

from offrl_robot.algos.dynamics import fit_dynamics
from offrl_robot.algos.mopo import MOPO
from offrl_robot.errors import ConfigError
from offrl_robot.train import TrainConfig, Trainer, load_checkpoint


@pytest.fixture(autouse=True)
def mopo_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """MOPO is not in the shared registry yet (see offrl_robot/algos/mopo.py): register it for
    these tests only, so the Trainer and export resolve `algo: mopo`."""
    from offrl_robot.algos import REGISTRY

    monkeypatch.setitem(REGISTRY, "mopo", MOPO)


@pytest.fixture(scope="module")
def dynamics_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    dataset = linear_dataset(2000)
    run = tmp_path_factory.mktemp("mopo") / "dyn"
    config = TrainConfig(
        algo="dynamics",
        steps=300,
        threads=1,
        progress=False,
        algo_config={"members": 3, "hidden_sizes": [32, 32]},
    )
    fit_dynamics(config, dataset, run_dir=run)
    return run, dataset


def mopo_config(dynamics: Path, penalty: float, steps: int = 60) -> TrainConfig:
    return TrainConfig(
        algo="mopo",
        steps=steps,
        seeds=[0, 1],
        batch_size=64,
        eval_every=0,
        log_every=20,
        checkpoint_every=0,
        progress=False,
        threads=1,
        algo_config={
            "dynamics_checkpoint": str(dynamics),
            "hidden_sizes": [32, 32],
            "penalty": penalty,
            "rollout_length": 3,
            "rollout_every": 5,
            "model_buffer_size": 1000,
        },
    )


def test_mopo_trains_on_penalised_rollouts_and_exports(
    dynamics_run: tuple[Path, object], tmp_path: Path
) -> None:
    from offrl_robot.export import export_checkpoint

    dynamics, dataset = dynamics_run
    summary = Trainer(mopo_config(dynamics, penalty=1.0), dataset=dataset, run_dir=tmp_path / "run").fit()
    state = load_checkpoint(summary["checkpoint"])
    # 60 updates, a rollout of 3 steps x 64 states every 5: 12 rollouts -> 1000 (full ring)
    assert state["optimizer_state"]["model_buffer"] == {"cursor": (12 * 3 * 64) % 1000, "filled": 1000}
    rewards = state["algo_state"]["model_rewards"]
    assert rewards.shape == (2, 1000) and torch.isfinite(rewards).all()
    # the penalty lowers the model reward below the reward head's own prediction
    algo = Trainer(mopo_config(dynamics, penalty=1.0), dataset=dataset, run_dir=tmp_path / "x")._build_algo()
    algo.load_state_dict(state["algo_state"])
    obs_n, actions = algo.model_obs[:, :200], algo.model_actions[:, :200]
    torch.manual_seed(0)
    _, penalised = algo._model_step(obs_n, actions)
    algo.config.penalty = 0.0
    torch.manual_seed(0)
    _, unpenalised = algo._model_step(obs_n, actions)
    assert bool((penalised < unpenalised).all())
    result = export_checkpoint(summary["checkpoint"], tmp_path / "mopo.onnx", dataset=dataset)
    assert result.algorithm == "mopo" and result.parity.max_unit_diff <= 1e-5


def test_mopo_is_deterministic_per_seed(dynamics_run: tuple[Path, object], tmp_path: Path) -> None:
    dynamics, dataset = dynamics_run
    first = Trainer(mopo_config(dynamics, 1.0, steps=20), dataset=dataset, run_dir=tmp_path / "a").fit()
    second = Trainer(mopo_config(dynamics, 1.0, steps=20), dataset=dataset, run_dir=tmp_path / "b").fit()
    a = load_checkpoint(first["checkpoint"])["algo_state"]
    b = load_checkpoint(second["checkpoint"])["algo_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mopo_config_errors(dynamics_run: tuple[Path, object], tmp_path: Path) -> None:
    from offrl_robot.algos.mopo import MOPOConfig

    with pytest.raises(ConfigError, match="dynamics_checkpoint is empty"):
        MOPOConfig()
    with pytest.raises(ConfigError, match="real_fraction"):
        MOPOConfig(dynamics_checkpoint="x", real_fraction=1.0)
    dynamics, _ = dynamics_run
    with pytest.raises(ConfigError, match="models obs 4"):
        MOPO(5, 2, 1, MOPOConfig(dynamics_checkpoint=str(dynamics)))
    assert np.isfinite(MOPOConfig(dynamics_checkpoint="x").penalty)
