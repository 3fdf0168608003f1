"""The dynamics ensemble: fits a known linear system, stops early on held-out data, is
deterministic, and exports to an ONNX graph that agrees with torch and flags unfamiliar inputs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from offrl_robot.algos.dynamics import fit_dynamics, load_dynamics
from offrl_robot.card import ModelCard, card_path_for
from offrl_robot.data.dataset import Dataset, DatasetMetadata
from offrl_robot.errors import ConfigError, ModelError
from offrl_robot.export.dynamics import OUTPUTS
from offrl_robot.train import TrainConfig, load_checkpoint

OBS_DIM, ACT_DIM = 4, 2


def linear_system(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x' = A x + B u, r = c.x + d.u: a system whose exact answer the test knows."""
    rng = np.random.default_rng(seed)
    a = 0.9 * np.eye(OBS_DIM) + 0.05 * rng.standard_normal((OBS_DIM, OBS_DIM))
    b = 0.5 * rng.standard_normal((OBS_DIM, ACT_DIM))
    c = rng.standard_normal(OBS_DIM)
    d = rng.standard_normal(ACT_DIM)
    return a, b, c, d


def linear_dataset(n: int, noise: float = 0.0, seed: int = 0) -> Dataset:
    a, b, c, d = linear_system()
    rng = np.random.default_rng(seed + 1)
    obs = rng.standard_normal((n, OBS_DIM)).astype(np.float32)
    act = rng.uniform(-1.0, 1.0, (n, ACT_DIM)).astype(np.float32)
    nxt = obs @ a.T + act @ b.T + noise * rng.standard_normal((n, OBS_DIM))
    rew = obs @ c + act @ d + noise * rng.standard_normal(n)
    meta = DatasetMetadata(
        observation_names=[f"x{i}.position" for i in range(OBS_DIM)],
        action_names=[f"x{i}.velocity_cmd" for i in range(ACT_DIM)],
        action_low=[-1.0] * ACT_DIM,
        action_high=[1.0] * ACT_DIM,
        control_rate_hz=50.0,
    )
    starts = np.zeros(n, dtype=bool)
    starts[0] = True
    return Dataset(
        obs,
        act,
        rew.astype(np.float32),
        nxt.astype(np.float32),
        np.zeros(n, dtype=bool),
        np.zeros(n, dtype=bool),
        starts,
        meta,
    )


def dyn_config(**algo: object) -> TrainConfig:
    params = {"members": 3, "hidden_sizes": [64, 64], **algo}
    return TrainConfig(
        algo="dynamics", steps=3000, batch_size=256, algo_config=params, progress=False, threads=1
    )


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path, Dataset]:
    dataset = linear_dataset(4000)
    run_dir = tmp_path_factory.mktemp("dyn") / "run"
    config = dyn_config()
    config.steps = 800  # ~4 s here; the error is still falling, far below the tolerances
    result = fit_dynamics(config, dataset, run_dir=run_dir)
    return result, run_dir, dataset


def test_fits_a_known_linear_system_to_tolerance(fitted: tuple[object, Path, Dataset]) -> None:
    result, _, _ = fitted
    a, b, c, d = linear_system()
    rng = np.random.default_rng(7)  # fresh inputs from the training distribution
    obs = rng.standard_normal((1000, OBS_DIM)).astype(np.float32)
    act = rng.uniform(-1.0, 1.0, (1000, ACT_DIM)).astype(np.float32)
    with torch.no_grad():
        member_next, member_reward = result.model.predict(torch.from_numpy(obs), torch.from_numpy(act))
    true_next = obs @ a.T + act @ b.T
    true_reward = obs @ c + act @ d
    next_err = np.abs(member_next.mean(0).numpy() - true_next)
    reward_err = np.abs(member_reward.mean(0).numpy() - true_reward)
    # next state has std ~1 per dimension: the model is right to a few hundredths
    assert float(np.mean(next_err)) < 0.02 and float(np.percentile(next_err, 99)) < 0.08
    assert float(np.mean(reward_err)) < 0.04
    # every member learned it, not only their average
    assert all(float(np.mean(np.abs(m.numpy() - true_next))) < 0.03 for m in member_next)
    assert result.summary["holdout_mse"] < 0.01


def test_early_stopping_keeps_each_members_best_held_out_weights(tmp_path: Path) -> None:
    # 300 noisy rows and a wide net: held-out error bottoms out, then rises as it overfits
    dataset = linear_dataset(300, noise=0.3, seed=3)
    config = dyn_config(hidden_sizes=[256, 256], patience=4, max_epochs=400, holdout_fraction=0.2)
    config.batch_size = 32
    result = fit_dynamics(config, dataset, run_dir=tmp_path / "run")
    summary = result.summary
    assert summary["stop_reason"] == "early_stop"
    assert summary["epochs"] < 400
    with (tmp_path / "run" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == summary["epochs"]
    last = rows[-1]
    # the returned weights are the best ones seen, not the last (overfitted) ones
    assert summary["holdout_mse"] == pytest.approx(float(last["best_holdout_mse"]), rel=1e-4)
    assert summary["holdout_mse"] <= min(float(r["holdout_mse"]) for r in rows) + 1e-6
    assert summary["holdout_mse"] < float(last["holdout_mse"])


def test_same_seed_same_weights_and_checkpoint_rebuilds(fitted: tuple[object, Path, Dataset]) -> None:
    result, run_dir, dataset = fitted
    config = dyn_config()
    config.steps = 50
    first = fit_dynamics(config, dataset, write=False).model.state_dict()
    second = fit_dynamics(config, dataset, write=False).model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    config.seeds = [1]
    other = fit_dynamics(config, dataset, write=False).model.state_dict()
    assert not torch.equal(first["net.layers.0.weight"], other["net.layers.0.weight"])
    state = load_checkpoint(result.checkpoint)
    rebuilt = load_dynamics(state)
    assert all(
        torch.equal(rebuilt.state_dict()[k], result.model.state_dict()[k]) for k in state["algo_state"]
    )
    assert state["algo"] == "dynamics" and state["observation_dim"] == OBS_DIM
    assert (run_dir / "summary.json").is_file() and (run_dir / "config.yaml").is_file()


def test_export_onnx_agrees_with_torch_and_flags_unfamiliar_inputs(
    fitted: tuple[object, Path, Dataset], tmp_path: Path
) -> None:
    from offrl_robot.export import export_checkpoint

    result, run_dir, dataset = fitted
    out = tmp_path / "lin_dyn.onnx"
    # through the ordinary export entry point: it recognises a dynamics checkpoint
    exported = export_checkpoint(run_dir, out, dataset=dataset)
    assert exported.algorithm == "dynamics" and exported.parity.max_unit_diff <= 1e-4
    card = ModelCard.read(card_path_for(out))
    assert card.metadata.algorithm == "dynamics" and card.training["mpc"]["method"] == "mppi"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(OUTPUTS)
    rng = np.random.default_rng(11)
    obs = rng.standard_normal((64, OBS_DIM)).astype(np.float32)
    act = rng.uniform(-1.0, 1.0, (64, ACT_DIM)).astype(np.float32)
    nxt, rew, disagreement, member_next, member_reward = session.run(
        None, {"observation": obs, "action": act}
    )
    assert member_next.shape == (3, 64, OBS_DIM) and member_reward.shape == (3, 64)
    np.testing.assert_allclose(nxt, member_next.mean(0), atol=1e-5)
    with torch.no_grad():
        ref_next, ref_rew = result.model.predict(torch.from_numpy(obs), torch.from_numpy(act))
    np.testing.assert_allclose(member_next, ref_next.numpy(), atol=1e-4)
    np.testing.assert_allclose(rew, ref_rew.mean(0).numpy(), atol=1e-4)
    # pessimism signal: 8 std away from every training state the members disagree far more
    far = np.full((64, OBS_DIM), 8.0, dtype=np.float32)
    far_disagreement = session.run(["disagreement"], {"observation": far, "action": act})[0]
    assert float(np.median(far_disagreement)) > 5 * float(np.median(disagreement))
    # the controller factory picks MPC for it; a changed file is refused like any policy's
    from offrl_robot.mpc import MPCController, load_controller

    controller = load_controller(out, expected_observation_names=card.metadata.observation_names)
    assert isinstance(controller, MPCController)
    action = controller.act(obs[0])
    assert action.shape == (ACT_DIM,) and np.all(np.abs(action) <= 1.0)
    with pytest.raises(ModelError, match="observation 0 is"):
        load_controller(out, expected_observation_names=["q", *card.metadata.observation_names[1:]])
    # the planner settings live inside the ONNX file (its sha256 covers them): a card whose
    # readable copy was edited (a longer horizon, another reward) is refused, not obeyed
    assert ModelCard.read(card_path_for(out)).metadata.controller["mpc"] == card.training["mpc"]
    for edit in ({"horizon": 50}, {"reward": "arm_reach"}):
        edited = ModelCard.read(card_path_for(out))
        edited.training["mpc"] = {**edited.training["mpc"], **edit}
        edited.write(card_path_for(out))
        with pytest.raises(ModelError, match=r"training\.mpc differs .* the card was edited"):
            load_controller(out)
    card.sha256 = "0" * 64  # the card now describes another file
    card.write(card_path_for(out))
    with pytest.raises(ModelError, match="sha256"):
        load_controller(out)


def test_export_refuses_broken_reward_and_writes_nothing(
    fitted: tuple[object, Path, Dataset], tmp_path: Path
) -> None:
    from offrl_robot.export.dynamics import export_dynamics

    _, run_dir, dataset = fitted
    out = tmp_path / "m.onnx"
    with pytest.raises(ConfigError, match="mpc reward"):
        export_dynamics(
            run_dir, out, dataset=dataset, mpc={"reward": "offrl_robot.sim.rewards:arm_reach_reward"}
        )
    with pytest.raises(ConfigError, match="unknown planner key"):
        export_dynamics(run_dir, out, dataset=dataset, mpc={"horizn": 5})
    assert list(tmp_path.iterdir()) == []


def test_config_errors_are_one_line(fitted: tuple[object, Path, Dataset], tmp_path: Path) -> None:
    from offrl_robot.export.dynamics import export_dynamics

    dataset = linear_dataset(100)
    with pytest.raises(ConfigError, match="one seed"):
        config = dyn_config()
        config.seeds = [0, 1]
        fit_dynamics(config, dataset, write=False)
    with pytest.raises(ConfigError, match="unknown key"):
        fit_dynamics(dyn_config(membres=3), dataset, write=False)
    with pytest.raises(ConfigError, match="at least 2 members"):
        fit_dynamics(dyn_config(members=1), dataset, write=False)
    state = load_checkpoint(fitted[0].checkpoint)
    state["algo"] = "bc"
    torch.save(state, tmp_path / "policy.pt")
    with pytest.raises(ModelError, match="not a dynamics ensemble"):
        export_dynamics(tmp_path / "policy.pt", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_train_cli_runs_dynamics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from offrl_robot.cli import main
    from offrl_robot.data.minari_io import save_dataset

    save_dataset(linear_dataset(400), "linear/dyn-v0")
    run_dir = tmp_path / "run"
    args = [
        "train",
        "--algo",
        "dynamics",
        "--dataset",
        "linear/dyn-v0",
        "--steps",
        "30",
        "--out",
        str(run_dir),
    ]
    assert main([*args, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "trained dynamics (5 members)" in out and "held-out MSE" in out
    state = load_checkpoint(next((run_dir / "checkpoints").glob("step_*.pt")))
    assert state["algo"] == "dynamics" and 0 < state["step"] <= 30
    assert state["dataset"]["name"] == "linear/dyn-v0"
    # a second run into the same directory is refused with one line, like the Trainer's
    assert main([*args, "--no-progress"]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
