"""PolicyRuntime on real ONNX files written by torch.onnx.export, run by real onnxruntime.

Every bad input of the export/safety issue (item 5) must give a one-line ModelError and create
no onnxruntime session at all (counted by wrapping ort.InferenceSession).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import ChildProcesses, offrl_cli
from onnx_fixtures import PolicyFiles, default_metadata, torch_reference, write_policy

from offrl_robot import runtime as runtime_module
from offrl_robot.card import file_sha256
from offrl_robot.errors import ModelError, OffrlError
from offrl_robot.runtime import PolicyRuntime


@pytest.fixture
def sessions_created(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts real onnxruntime sessions created through offrl_robot.runtime."""
    created: list[int] = []
    real = ort.InferenceSession

    def counting(*args: object, **kwargs: object) -> ort.InferenceSession:
        created.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runtime_module.ort, "InferenceSession", counting)
    return created


def test_act_matches_torch_and_is_single_threaded(tmp_path: Path, sessions_created: list[int]) -> None:
    files = write_policy(tmp_path, hidden=(64, 64))
    rt = PolicyRuntime(files.onnx_path)
    assert len(sessions_created) == 1
    assert rt.metadata == files.metadata and rt.card.sha256 == file_sha256(files.onnx_path)
    options = rt._session.get_session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    obs = np.random.default_rng(3).normal(size=(16, 6)).astype(np.float32) * 3.0
    expected = torch_reference(files, obs)
    first = rt.act(obs[0])
    second = rt.act(obs[1])
    np.testing.assert_allclose(first, expected[0], atol=1e-5)  # not overwritten by the next call
    np.testing.assert_allclose(second, expected[1], atol=1e-5)
    assert first.dtype == np.float32 and first.shape == (3,)
    for row in range(16):
        np.testing.assert_allclose(rt.act(obs[row].astype(np.float64)), expected[row], atol=1e-5)
    np.testing.assert_allclose(rt.act_batch(obs), expected, atol=1e-5)  # dynamic batch
    low, high = np.array(files.metadata.action_low), np.array(files.metadata.action_high)
    big = rt.act_batch(obs * 1e6)
    assert (big >= low - 1e-6).all() and (big <= high + 1e-6).all()  # action scaling is in the graph
    with pytest.raises(ValueError, match=r"observation has shape \(5,\), the model takes \(6,\)"):
        rt.act(obs[0, :5])


def test_same_file_same_numbers(tmp_path: Path) -> None:
    files = write_policy(tmp_path)
    obs = np.linspace(-2, 2, 6, dtype=np.float32)
    a = PolicyRuntime(files.onnx_path).act(obs)
    b = PolicyRuntime(files.onnx_path, card_path=files.card_path).act(obs)
    np.testing.assert_array_equal(a, b)


def test_caller_expectations_that_match_are_accepted(tmp_path: Path) -> None:
    meta = default_metadata()
    files = write_policy(tmp_path, metadata=meta)
    rt = PolicyRuntime(
        files.onnx_path,
        expected_observation_names=meta.observation_names,
        expected_action_names=tuple(meta.action_names),
    )
    assert rt.metadata.action_names == meta.action_names


def _rehash_card(files: PolicyFiles) -> None:
    """Make the card's sha256 match the edited file, so a later check (not the sha) must catch it."""
    card = files.card_path.read_text()
    old = card.split("sha256: ")[1].split("\n")[0]
    files.card_path.write_text(card.replace(old, file_sha256(files.onnx_path)))


def _truncate(files: PolicyFiles) -> None:
    files.onnx_path.write_bytes(files.onnx_path.read_bytes()[: files.onnx_path.stat().st_size // 2])
    _rehash_card(files)


def _external_data(files: PolicyFiles) -> None:
    model = onnx.load(files.onnx_path)
    onnx.save(
        model, files.onnx_path, save_as_external_data=True, all_tensors_to_one_file=True, size_threshold=0
    )
    _rehash_card(files)


BAD_CASES: dict[str, tuple[dict, Callable[..., None] | None, dict, str]] = {
    # name: (write_policy kwargs, edit after writing, PolicyRuntime kwargs, error pattern)
    "not onnx": (
        {},
        lambda f: f.onnx_path.write_text("this is not a model\n"),
        {},
        "is not an ONNX model or is truncated",
    ),
    "empty file": ({}, lambda f: f.onnx_path.write_bytes(b""), {}, "file is empty"),
    "truncated": ({}, _truncate, {}, "is not an ONNX model or is truncated|ONNX checker rejected"),
    "missing model": ({}, lambda f: f.onnx_path.unlink(), {}, "model file not found"),
    "missing card": ({}, lambda f: f.card_path.unlink(), {}, r"policy\.card\.yaml: model card not found"),
    "sha256 mismatch": (
        {},
        lambda f: write_policy(f.onnx_path.parent / "other", seed=7).onnx_path.replace(f.onnx_path),
        {},
        r"sha256 [0-9a-f]{12}\.\.\. does not match policy\.card\.yaml",
    ),
    "graph columns vs names": ({"graph_obs_dim": 5}, None, {}, "has 5 columns but the metadata lists 6"),
    "card vs metadata_props": (
        {"card_overrides": {"control_rate_hz": 100.0}},
        None,
        {},
        "metadata_props 'control_rate_hz' disagrees with policy.card.yaml",
    ),
    "no metadata_props": ({"write_props": False}, None, {}, r"has no offrl\.\* metadata_props"),
    "low > high in metadata_props": (
        {"props_overrides": {"action_low": [5.0, -1.5, -2.0]}},
        None,
        {},
        "action 'joint_1.position_cmd' has action_low 5.0 > action_high 1.0",
    ),
    "NaN bound in metadata_props": (
        {"props_overrides": {"action_high": [1.0, float("nan"), 2.0]}},
        None,
        {},
        "action_high must be finite",
    ),
    "NaN in embedded normaliser": (
        {"obs_std": np.array([1, 1, np.nan, 1, 1, 1], np.float32)},
        None,
        {},
        "holds NaN/inf",
    ),
    "fixed batch": (
        {"dynamic_batch": False},
        None,
        {},
        "fixed batch size 1; re-export with a dynamic batch axis",
    ),
    "external data": ({}, _external_data, {}, "external data file; re-export with external_data=False"),
    "config expects other observation names": (
        {},
        None,
        {"expected_observation_names": [*default_metadata().observation_names[:-1], "joint_9.position"]},
        "observation 5 is 'joint_3.velocity' in the model but 'joint_9.position' in the config",
    ),
    "config expects more actions": (
        {},
        None,
        {"expected_action_names": [*default_metadata().action_names, "gripper"]},
        "model has 3 action names but the config expects 4",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_is_one_line_model_error_and_nothing_loaded(
    tmp_path: Path, sessions_created: list[int], case: str
) -> None:
    write_kwargs, edit, runtime_kwargs, pattern = BAD_CASES[case]
    files = write_policy(tmp_path, **write_kwargs)
    if edit is not None:
        edit(files)
    with pytest.raises(ModelError, match=pattern) as info:
        PolicyRuntime(files.onnx_path, **runtime_kwargs)
    message = str(info.value)
    assert isinstance(info.value, OffrlError) and "\n" not in message
    assert "policy" in message  # names the file
    assert sessions_created == []


def test_explicit_card_path_and_renamed_card(tmp_path: Path) -> None:
    files = write_policy(tmp_path, metadata=replace(default_metadata(), algorithm="iql"))
    moved = tmp_path / "cards" / "renamed.card.yaml"
    moved.parent.mkdir()
    files.card_path.replace(moved)
    with pytest.raises(ModelError, match="model card not found"):
        PolicyRuntime(files.onnx_path)
    assert PolicyRuntime(files.onnx_path, card_path=moved).metadata.algorithm == "iql"


@pytest.mark.parametrize(
    "case", ["not onnx", "missing card", "sha256 mismatch", "NaN in embedded normaliser"]
)
def test_cli_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path, run_child: ChildProcesses, case: str
) -> None:
    """The real `offrl-robot` entry point on a command that loads a model (collect --policy)."""
    write_kwargs, edit, _, pattern = BAD_CASES[case]
    files = write_policy(tmp_path / "model", **write_kwargs)
    if edit is not None:
        edit(files)
    root = tmp_path / "datasets"
    args = [*offrl_cli(), "collect", "--policy", str(files.onnx_path), "--episodes", "1"]
    result = run_child.run([*args, "--out", "tt/x-v0", "--root", str(root)], timeout=120)
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 2, result.stdout
    assert len(lines) == 1 and lines[0].startswith("offrl-robot collect: error: "), result.stdout
    assert re.search(pattern, lines[0]), lines[0]
    assert not root.exists() or not any(root.rglob("*.hdf5"))
