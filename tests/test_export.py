"""`offrl-robot export`: real training checkpoints -> real ONNX files -> real onnxruntime / PolicyRuntime.

Every registered algorithm trains a few steps (16x16 nets) on a small in-memory dataset through
the Trainer, is exported once (module-scoped: the dynamo exporter takes seconds per model on
this shared CPU) and the tests check the files, the metadata, the parity and that the deployed
runtime acts exactly like the training-time policy (`Algorithm.act` + the Trainer's scaling).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml

from offrl_robot import cli
from offrl_robot.algos import REGISTRY
from offrl_robot.data.dataset import Dataset, DatasetMetadata
from offrl_robot.errors import ConfigError, DatasetError, ModelError
from offrl_robot.export import (
    PARITY_TOLERANCE,
    ExportResult,
    build_export_module,
    check_parity,
    export_checkpoint,
    read_checkpoint,
)
from offrl_robot.train import TrainConfig, Trainer, build_algo_config, load_checkpoint

OBS, ACT = 6, 3
TINY = [16, 16]
ALGOS = sorted(REGISTRY)
OBS_SCALE = np.array([1.0, 10.0, 0.1, 100.0, 1.0, 3.0], np.float32)
ACTION_LOW = [-1.5, -50.0, 0.0]
ACTION_HIGH = [1.5, 50.0, 2.0]


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_dataset(n: int = 300, seed: int = 0) -> Dataset:
    """Observations on very different scales, actions with narrow and wide physical ranges."""
    rng = np.random.default_rng(seed)
    obs = (rng.normal(size=(n + 1, OBS)) * OBS_SCALE + [0, 5, 0, -40, 1, 0]).astype(np.float32)
    low, high = np.array(ACTION_LOW), np.array(ACTION_HIGH)
    unit = np.tanh(obs[:-1, :ACT] / OBS_SCALE[:ACT])
    actions = (low + (unit + 1) * 0.5 * (high - low)).astype(np.float32)
    starts = np.zeros(n, bool)
    starts[::100] = True
    meta = DatasetMetadata(
        observation_names=[f"joint_{i}.position" for i in range(OBS)],
        action_names=[f"joint_{i}.effort_cmd" for i in range(ACT)],
        action_low=ACTION_LOW,
        action_high=ACTION_HIGH,
        control_rate_hz=50.0,
        source={"kind": "test"},
    )
    return Dataset(
        obs[:-1], actions, rng.normal(size=n), obs[1:], np.zeros(n), np.zeros(n), starts, meta
    ).validate()


def train(algo: str, run_dir: Path, dataset: Dataset, seeds: tuple[int, ...] = (0,)) -> Path:
    algo_config: dict = {"hidden_sizes": TINY}
    if algo == "bcq":
        algo_config["vae_hidden_sizes"] = TINY
    config = TrainConfig(
        algo=algo,
        algo_config=algo_config,
        steps=4,
        seeds=list(seeds),
        batch_size=32,
        eval_every=0,
        log_every=4,
        checkpoint_every=0,
        progress=False,
    )
    return Path(Trainer(config, dataset=dataset, run_dir=run_dir).fit()["checkpoint"])


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return make_dataset()


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory, dataset: Dataset
) -> dict[str, tuple[Path, ExportResult]]:
    """algo -> (checkpoint, export result), every registered algorithm trained and exported once."""
    root = tmp_path_factory.mktemp("export")
    out: dict[str, tuple[Path, ExportResult]] = {}
    for algo in ALGOS:
        checkpoint = train(algo, root / "runs" / algo, dataset)
        out[algo] = (
            checkpoint,
            export_checkpoint(checkpoint, root / "models" / f"{algo}.onnx", dataset=dataset),
        )
    return out


def training_time_actions(checkpoint: Path, observations: np.ndarray, seed_index: int = 0) -> np.ndarray:
    """What the Trainer's evaluation would command: Algorithm.act on normalised observations, then
    the evaluation's clip + scaling to physical units. Independent of the exporter's wrapper."""
    state = load_checkpoint(checkpoint)
    cls = REGISTRY[state["algo"]]
    params = {k: v for k, v in state["algo_config"].items() if k != "batch_size"}
    algo = cls(
        state["observation_dim"],
        state["action_dim"],
        state["num_seeds"],
        build_algo_config(cls, params, state["config"]["batch_size"]),
        seeds=state["seeds"],
    )
    algo.load_state_dict(state["algo_state"])
    algo.eval()
    mean = state["normalizer"]["obs_mean"].numpy()
    std = state["normalizer"]["obs_std"].numpy()
    normed = torch.from_numpy((observations - mean) / std)
    batch = normed.unsqueeze(0).expand(state["num_seeds"], *normed.shape).contiguous()
    unit = algo.act(batch)[seed_index].double().numpy()
    low = state["action_scale"]["low"].double().numpy()
    high = state["action_scale"]["high"].double().numpy()
    return low + (np.clip(unit, -1, 1) + 1) * 0.5 * (high - low)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def assert_one_line(message: str) -> None:
    assert message and "\n" not in message.strip(), message


# ---------------------------------------------------------------------------------- every algorithm
@pytest.mark.parametrize("algo", ALGOS)
def test_export_writes_one_self_contained_model_and_card(
    algo: str, exported: dict[str, tuple[Path, ExportResult]]
) -> None:
    _, result = exported[algo]
    assert result.algorithm == algo
    assert result.parity.samples >= 1000
    assert result.parity.dataset_samples > 0 and result.parity.random_samples > 0
    assert result.parity.max_unit_diff <= PARITY_TOLERANCE
    folder = result.model_path.parent
    # One file per model + its card; no .onnx.data, no temp files left behind.
    assert f"{algo}.onnx" in files_in(folder) and f"{algo}.card.yaml" in files_in(folder)
    assert not [name for name in files_in(folder) if name.endswith((".data", ".tmp")) or name.startswith(".")]
    model = onnx.load(str(result.model_path), load_external_data=False)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert hashlib.sha256(result.model_path.read_bytes()).hexdigest() == result.sha256


@pytest.mark.parametrize("algo", ALGOS)
def test_policy_runtime_acts_like_the_training_time_policy(
    algo: str, exported: dict[str, tuple[Path, ExportResult]], dataset: Dataset
) -> None:
    from offrl_robot.runtime import PolicyRuntime

    checkpoint, result = exported[algo]
    runtime = PolicyRuntime(result.model_path)
    rng = np.random.default_rng(1)
    observations = np.concatenate(
        [dataset.observations[:64], rng.uniform(-3, 3, size=(64, OBS)).astype(np.float32) * OBS_SCALE]
    )
    expected = training_time_actions(checkpoint, observations)
    half_range = (np.array(ACTION_HIGH) - np.array(ACTION_LOW)) / 2
    got_batch = np.asarray(runtime.act_batch(observations), np.float64)
    got_single = np.stack([np.asarray(runtime.act(row), np.float64) for row in observations[:8]])
    assert got_batch.shape == (len(observations), ACT)
    assert np.all(np.abs(got_batch - expected) / half_range <= 2 * PARITY_TOLERANCE)
    assert np.all(np.abs(got_single - expected[:8]) / half_range <= 2 * PARITY_TOLERANCE)
    # Physical units: inside the bounds, and not all the same (the policy is not a constant).
    assert np.all(got_batch >= np.array(ACTION_LOW) - 1e-4) and np.all(
        got_batch <= np.array(ACTION_HIGH) + 1e-4
    )
    assert np.ptp(got_batch, axis=0).max() > 1e-3


@pytest.mark.parametrize("algo", ["bc", "bcq"])
def test_batch_dimension_is_dynamic(algo: str, exported: dict[str, tuple[Path, ExportResult]]) -> None:
    _, result = exported[algo]
    model = onnx.load(str(result.model_path))
    (graph_input,), (graph_output,) = model.graph.input, model.graph.output
    assert (graph_input.name, graph_output.name) == ("observation", "action")
    in_dims = graph_input.type.tensor_type.shape.dim
    out_dims = graph_output.type.tensor_type.shape.dim
    assert in_dims[0].dim_param and out_dims[0].dim_param
    assert (in_dims[1].dim_value, out_dims[1].dim_value) == (OBS, ACT)
    session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 257):
        out = session.run(None, {"observation": np.zeros((batch, OBS), np.float32)})[0]
        assert out.shape == (batch, ACT)


def test_metadata_props_and_card_carry_the_checkpoint_facts(
    exported: dict[str, tuple[Path, ExportResult]], dataset: Dataset
) -> None:
    checkpoint, result = exported["iql"]
    state = load_checkpoint(checkpoint)
    props = {p.key: p.value for p in onnx.load(str(result.model_path)).metadata_props}
    assert json.loads(props["offrl.observation_names"]) == dataset.metadata.observation_names
    assert json.loads(props["offrl.action_names"]) == dataset.metadata.action_names
    assert json.loads(props["offrl.action_low"]) == pytest.approx(ACTION_LOW)
    assert json.loads(props["offrl.action_high"]) == pytest.approx(ACTION_HIGH)
    assert float(props["offrl.control_rate_hz"]) == 50.0
    assert props["offrl.algorithm"] == "iql"
    assert props["offrl.dataset_sha256"] == dataset.sha256() == state["dataset"]["sha256"]
    assert json.loads(props["offrl.train_config"])["algo"] == "iql"
    card = yaml.safe_load(result.card_path.read_text())
    assert json.dumps(card).count(result.sha256) >= 1
    assert dataset.sha256() in json.dumps(card)
    # The run's summary.json (written by the Trainer) travels into the card.
    assert "updates_per_s" in json.dumps(card)


def test_same_checkpoint_exports_to_identical_bytes(
    exported: dict[str, tuple[Path, ExportResult]], tmp_path: Path
) -> None:
    checkpoint, first = exported["td3bc"]
    again = export_checkpoint(checkpoint, tmp_path / "again.onnx")
    assert again.model_path.read_bytes() == first.model_path.read_bytes()
    # Without a dataset at hand (in-memory training data) parity uses in-range random observations only.
    assert again.parity.dataset_samples == 0 and again.parity.random_samples >= 1000


def test_seed_index_selects_that_seeds_policy(tmp_path: Path, dataset: Dataset) -> None:
    checkpoint = train("bc", tmp_path / "run", dataset, seeds=(3, 7))
    result = export_checkpoint(tmp_path / "run", tmp_path / "seed7.onnx", seed_index=1)  # run dir -> latest
    assert result.seed == 7
    session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    observations = dataset.observations[:32]
    got = session.run(None, {"observation": observations})[0]
    half_range = (np.array(ACTION_HIGH) - np.array(ACTION_LOW)) / 2
    seed7 = training_time_actions(checkpoint, observations, seed_index=1)
    seed3 = training_time_actions(checkpoint, observations, seed_index=0)
    assert np.all(np.abs(got - seed7) / half_range <= 2 * PARITY_TOLERANCE)
    assert np.abs(got - seed3).max() > 1e-3
    with pytest.raises(ConfigError, match="seed-index 2"):
        export_checkpoint(checkpoint, tmp_path / "nope.onnx", seed_index=2)
    assert not (tmp_path / "nope.onnx").exists()


# ---------------------------------------------------------------------------------- failures write nothing
def corrupt_checkpoint(source: Path, target: Path, edit) -> Path:
    state = load_checkpoint(source)
    edit(state)
    torch.save(state, target)
    return target


def _nan_mean(state: dict) -> None:
    state["normalizer"]["obs_mean"][2] = float("nan")


def _inf_std(state: dict) -> None:
    state["normalizer"]["obs_std"][0] = float("inf")


def _low_above_high(state: dict) -> None:
    state["action_scale"]["low"][1] = 60.0


def _names_disagree(state: dict) -> None:
    state["dataset"]["metadata"]["observation_names"] = state["dataset"]["metadata"]["observation_names"][:-1]


def _nan_weights(state: dict) -> None:
    name = next(k for k, v in state["algo_state"].items() if v.is_floating_point())
    state["algo_state"][name].view(-1)[0] = float("nan")


def _wrong_width(state: dict) -> None:
    state["observation_dim"] = OBS + 1
    state["normalizer"] = {k: torch.zeros(OBS + 1) + 1 for k in state["normalizer"]}
    state["dataset"]["metadata"]["observation_names"].append("extra")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_nan_mean, "normalizer.obs_mean is nan at index 2"),
        (_inf_std, "normalizer.obs_std is inf at index 0"),
        (_low_above_high, "low 60.0 >= high 50.0 for action 1"),
        (_names_disagree, "observation_names has 5 names for 6 dimensions"),
        (_nan_weights, "hold NaN/inf"),
        (_wrong_width, "weights do not fit"),
    ],
)
def test_bad_checkpoint_is_one_line_error_and_nothing_written(
    edit, message: str, exported: dict[str, tuple[Path, ExportResult]], tmp_path: Path
) -> None:
    checkpoint = corrupt_checkpoint(exported["bc"][0], tmp_path / "bad.pt", edit)
    out_dir = tmp_path / "models"
    with pytest.raises(ModelError) as err:
        export_checkpoint(checkpoint, out_dir / "bad.onnx")
    assert message in str(err.value)
    assert str(checkpoint) in str(err.value)
    assert_one_line(str(err.value))
    assert not out_dir.exists() or files_in(out_dir) == []


def test_parity_failure_writes_nothing(
    exported: dict[str, tuple[Path, ExportResult]], tmp_path: Path
) -> None:
    checkpoint, result = exported["cql"]
    assert result.parity.max_unit_diff > 0  # float32 kernels differ a little, so tolerance 0 must fail
    with pytest.raises(ModelError, match="parity check failed") as err:
        export_checkpoint(checkpoint, tmp_path / "strict.onnx", parity_tolerance=0.0)
    assert_one_line(str(err.value))
    assert files_in(tmp_path) == []


def test_parity_catches_a_graph_that_is_not_the_policy(
    exported: dict[str, tuple[Path, ExportResult]],
) -> None:
    """A corrupted export path: the ONNX of one policy checked against another policy's torch module."""
    module = build_export_module(read_checkpoint(exported["td3bc"][0]))
    other = build_export_module(read_checkpoint(exported["bc"][0]))
    graph = exported["bc"][1].model_path.read_bytes()
    observations = (np.random.default_rng(0).normal(size=(1000, OBS)) * OBS_SCALE).astype(np.float32)
    with pytest.raises(ModelError, match="parity check failed"):
        check_parity(module, graph, observations, dataset_samples=0)
    assert check_parity(other, graph, observations, dataset_samples=0).max_unit_diff <= PARITY_TOLERANCE


def test_bcq_argmax_ties_excuse_only_equally_good_candidates(
    exported: dict[str, tuple[Path, ExportResult]], dataset: Dataset
) -> None:
    """BCQ picks the best of N candidates by Q1; when Q values tie, onnxruntime may pick another
    of the tied candidates. Only such rows are excused, never any other disagreement."""
    from offrl_robot.export import argmax_tie_rows

    module = build_export_module(read_checkpoint(exported["bcq"][0]))
    observations = dataset.observations[:50]
    captured: dict[str, torch.Tensor] = {}
    module.policy.q1.register_forward_hook(lambda _m, inputs, out: captured.update(x=inputs[0], q=out))
    with torch.no_grad():
        module(torch.from_numpy(observations))
    n = module.policy.latents.shape[0]
    candidates = captured["x"][:, -ACT:].reshape(50, n, ACT).numpy()
    q = captured["q"].reshape(50, n).numpy()
    worst = candidates[np.arange(50), q.argmin(axis=1)]
    assert not argmax_tie_rows(module, observations, worst, PARITY_TOLERANCE).any()
    last_layer = [m for m in module.policy.q1 if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():  # a flat critic: every candidate is equally good
        last_layer.weight.zero_()
        last_layer.bias.zero_()
    assert argmax_tie_rows(module, observations, candidates[:, 3], PARITY_TOLERANCE).all()
    assert not argmax_tie_rows(module, observations, candidates[:, 3] + 1e-3, PARITY_TOLERANCE).any()


def test_wrong_parity_dataset_is_refused(
    exported: dict[str, tuple[Path, ExportResult]], tmp_path: Path
) -> None:
    other = make_dataset(seed=5)
    with pytest.raises(DatasetError, match="not the data checkpoint") as err:
        export_checkpoint(exported["bc"][0], tmp_path / "x.onnx", dataset=other)
    assert_one_line(str(err.value))
    assert files_in(tmp_path) == []


# ---------------------------------------------------------------------------------- CLI
def test_cli_exports_a_run_trained_on_a_minari_dataset(
    tmp_path: Path, dataset: Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    """The user's path: dataset saved by name -> Trainer loads it -> `offrl-robot export RUN_DIR`;
    export finds the same dataset by name and uses its rows in the parity check."""
    from offrl_robot.data.minari_io import save_dataset

    save_dataset(dataset, "export-test")
    config = TrainConfig(
        algo="td3bc",
        algo_config={"hidden_sizes": TINY},
        dataset="export-test",
        steps=4,
        batch_size=32,
        eval_every=0,
        log_every=4,
        checkpoint_every=0,
        progress=False,
    )
    Trainer(config, run_dir=tmp_path / "run").fit()
    out = tmp_path / "models" / "cli.onnx"
    argv = ["export", str(tmp_path / "run"), "--out", str(out), "--parity-samples", "1200"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "parity: 1200 observations (300 from the dataset)" in printed and str(out) in printed
    assert files_in(out.parent) == ["cli.card.yaml", "cli.onnx"]
    card = yaml.safe_load((out.parent / "cli.card.yaml").read_text())
    assert card["model"] == "cli.onnx"
    assert card["training"]["export"]["parity"]["dataset_samples"] == 300
    assert card["training"]["dataset"] == "export-test"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.pt", "--out", "{tmp}/m.onnx"], "does not exist"),
        (["{tmp}/garbage.pt", "--out", "{tmp}/m.onnx"], "cannot be read"),
        (["{tmp}", "--out", "{tmp}/m.onnx"], "without checkpoints"),
        (["{ckpt}", "--out", "{tmp}/m.txt"], "must name a .onnx file"),
        (["{ckpt}", "--out", "{tmp}/m.onnx", "--seed-index", "5"], "out of range"),
        (["{ckpt}", "--out", "{tmp}/m.onnx", "--parity-samples", "10"], "at least 1000"),
        (["{ckpt}", "--out", "{tmp}/m.onnx", "--opset", "9"], "--opset 9 is not supported; use 18.."),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(
    args: list[str],
    message: str,
    exported: dict[str, tuple[Path, ExportResult]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "garbage.pt").write_bytes(b"this is not a checkpoint")
    argv = [a.format(tmp=tmp_path, ckpt=exported["bc"][0]) for a in args]
    assert cli.main(["export", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("offrl-robot export: error: ") and message in err
    assert_one_line(err)
    assert files_in(tmp_path) == ["garbage.pt"]
