"""Model metadata and card: round trips, atomic writes, the validation block, one-line errors."""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from pathlib import Path

import onnx
import pytest
import yaml
from onnx_fixtures import default_metadata

from offrl_robot.card import (
    ModelCard,
    ModelMetadata,
    ValidationRecord,
    card_path_for,
    file_sha256,
    parse_threshold_floor,
    read_metadata_props,
    set_validation,
    verdict_problems,
    write_metadata_props,
)
from offrl_robot.errors import ModelError


def passing_record() -> ValidationRecord:
    return ValidationRecord(
        task="reach",
        episodes=10,
        metrics={"success_rate": 0.9, "mean_return": -3.5},
        thresholds={"success_rate": {"min": 0.8}},
        passed=True,
        model_sha256="ab" * 32,
    )


def write_card(tmp_path: Path, **kw: object) -> Path:
    path = tmp_path / "policy.card.yaml"
    ModelCard(model="policy.onnx", sha256="ab" * 32, metadata=default_metadata(), **kw).write(path)  # type: ignore[arg-type]
    return path


def test_metadata_props_round_trip_keeps_foreign_keys() -> None:
    model = onnx.ModelProto()
    model.metadata_props.add(key="pkg.torch.version", value="2.13")
    model.metadata_props.add(key="offrl.algorithm", value="stale")
    meta = default_metadata()
    write_metadata_props(model, meta)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["pkg.torch.version"] == "2.13"
    assert props["offrl.algorithm"] == "bc"  # stale entry replaced, not duplicated
    assert [p.key for p in model.metadata_props].count("offrl.algorithm") == 1
    assert props["offrl.action_low"] == "[-1.0, -1.5, -2.0]"  # JSON where structured
    assert set(props) >= {
        f"offrl.{k}"
        for k in (
            "observation_names",
            "action_names",
            "action_low",
            "action_high",
            "control_rate_hz",
            "algorithm",
            "dataset_sha256",
            "train_config",
            "version",
        )
    }
    assert read_metadata_props(model, "m.onnx") == meta


def test_card_round_trip_is_atomic_and_names_the_model(tmp_path: Path) -> None:
    path = write_card(tmp_path, training={"steps": 100, "loss": 0.25}, validation=passing_record())
    card = ModelCard.read(path)
    assert card.metadata == default_metadata()
    assert card.training == {"steps": 100, "loss": 0.25}
    assert card.validation == passing_record()
    assert card.model_path(path) == tmp_path / "policy.onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.card.yaml"]  # no temp files left
    raw = yaml.safe_load(path.read_text())
    assert list(raw) == ["card_version", "model", "sha256", "metadata", "training", "validation"]


def test_set_validation_and_deploy_guard(tmp_path: Path) -> None:
    path = write_card(tmp_path)
    card = ModelCard.read(path)
    assert card.validation is None
    with pytest.raises(ModelError, match="no validation block; run `offrl-robot validate` first"):
        card.require_passing_validation(path, card.sha256)
    set_validation(path, replace(passing_record(), passed=False, date="2026-11-26T12:00:00Z"))
    with pytest.raises(ModelError, match=r"FAILED validation on reach \(2026-11-26T12:00:00Z\)"):
        ModelCard.read(path).require_passing_validation(path, card.sha256)
    set_validation(path, passing_record())
    ModelCard.read(path).require_passing_validation(path, card.sha256)
    # the verdict licenses the bytes it judged, not a file that replaced them
    with pytest.raises(ModelError, match="validation was made for another model file"):
        ModelCard.read(path).require_passing_validation(path, "cd" * 32)


def test_set_validation_refuses_a_verdict_for_other_bytes(tmp_path: Path) -> None:
    """The model was swapped while the gate ran: the card now describes other bytes than the gate
    judged, so no verdict is written (the swapped model must not come out with a passing card)."""
    path = write_card(tmp_path)
    before = path.read_bytes()
    with pytest.raises(ModelError, match="model changed during validation, nothing was written"):
        set_validation(path, replace(passing_record(), model_sha256="cd" * 32))
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        (
            ["success_rate>=0.8", "nan_events <= 0"],
            {"success_rate": {"min": 0.8}, "nan_events": {"max": 0.0}},
        ),
        (["x>=1", "x<=2"], {"x": {"min": 1.0, "max": 2.0}}),
    ],
)
def test_threshold_floor_parses(entries: list[str], expected: dict) -> None:
    assert parse_threshold_floor(entries, "p") == expected


@pytest.mark.parametrize("entries", [["success_rate=0.8"], [">=1"], ["x>=nan"], "success_rate>=0.8"])
def test_threshold_floor_rejects_garbage_in_one_line(entries: object) -> None:
    with pytest.raises(ModelError, match="p: "):
        parse_threshold_floor(entries, "p")


def test_verdict_problems_recompute_instead_of_trusting() -> None:
    good = passing_record()
    floor = {"success_rate": {"min": 0.8}}
    assert verdict_problems(good, good.model_sha256, floor) == []
    flipped = replace(good, metrics={"success_rate": 0.3})
    assert any("its own thresholds fail" in p for p in verdict_problems(flipped, good.model_sha256, floor))
    weak = replace(good, thresholds={"success_rate": {"min": 0.0}})
    assert any("weaker than the floor" in p for p in verdict_problems(weak, good.model_sha256, floor))
    # a floor metric the task does not report (locomotion: no success_rate) is not applicable
    locomotion = replace(good, metrics={"return_mean": 1.0}, thresholds={})
    assert verdict_problems(locomotion, good.model_sha256, floor) == []


def test_threshold_failures() -> None:
    thresholds = {"success_rate": {"min": 0.8}, "max_torque": {"max": 5.0}, "jerk": {"max": 1.0}}
    assert ValidationRecord.failures({"success_rate": 0.9, "max_torque": 4.0, "jerk": 0.0}, thresholds) == []
    assert ValidationRecord.failures(
        {"success_rate": 0.5, "max_torque": 6.0, "jerk": math.nan}, thresholds
    ) == [
        "success_rate = 0.5 < min 0.8",
        "max_torque = 6 > max 5",
        "jerk is nan",
    ]


def test_file_sha256_and_card_path(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"x" * 3_000_000)
    assert file_sha256(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    assert card_path_for(path) == tmp_path / "m.card.yaml"
    with pytest.raises(ModelError, match="cannot read"):
        file_sha256(tmp_path / "missing.onnx")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(card_version=2), "card_version 2 is not supported"),
        (lambda d: d.update(extra=1), r"unknown card keys \['extra'\]"),
        (lambda d: d.pop("sha256"), "card field 'sha256' must be a non-empty string"),
        (
            lambda d: d["metadata"].update(action_low=[2.0, -1.5, -2.0]),
            "has action_low 2.0 > action_high 1.0",
        ),
        (lambda d: d["metadata"].update(action_high=[1.0, float("nan"), 2.0]), "action_high must be finite"),
        (
            lambda d: d["metadata"].update(action_low=[0.0]),
            r"action_low must have one number per action \(3\)",
        ),
        (lambda d: d["metadata"].pop("control_rate_hz"), r"metadata is missing \['control_rate_hz'\]"),
        (lambda d: d["metadata"].update(control_rate_hz=0), "control_rate_hz must be a finite number > 0"),
        (
            lambda d: d["metadata"].update(action_names=["a", "a", "b"]),
            "action_names lists 'a' twice",
        ),
        (lambda d: d.update(validation={"task": "reach"}), "validation block must have exactly the keys"),
    ],
)
def test_bad_cards_are_one_line_model_errors(tmp_path: Path, edit: object, message: str) -> None:
    path = write_card(tmp_path)
    data = yaml.safe_load(path.read_text())
    edit(data)  # type: ignore[operator]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ModelError, match=message) as info:
        ModelCard.read(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_unreadable_cards(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model card not found; export the model again"):
        ModelCard.read(tmp_path / "nope.card.yaml")
    bad = tmp_path / "bad.card.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ModelError, match="model card is not valid YAML"):
        ModelCard.read(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ModelError, match="model card must be a YAML mapping"):
        ModelCard.read(bad)


def test_unquoted_yaml_date_is_accepted(tmp_path: Path) -> None:
    path = write_card(tmp_path, validation=passing_record())
    text = path.read_text()
    date = ModelCard.read(path).validation.date  # type: ignore[union-attr]
    path.write_text(text.replace(f"'{date}'", date).replace(f'"{date}"', date))
    assert ModelCard.read(path).validation.date == date  # type: ignore[union-attr]


def test_metadata_props_errors() -> None:
    model = onnx.ModelProto()
    with pytest.raises(
        ModelError, match=r"has no offrl\.\* metadata_props; export it with `offrl-robot export`"
    ):
        read_metadata_props(model, "m.onnx")
    write_metadata_props(model, default_metadata())
    for entry in model.metadata_props:
        if entry.key == "offrl.action_low":
            entry.value = "[-1.0, oops"
    with pytest.raises(ModelError, match=r"metadata_props 'offrl\.action_low' is not valid JSON"):
        read_metadata_props(model, "m.onnx")
    with pytest.raises(ModelError, match="observation_names must be a non-empty list"):
        write_metadata_props(onnx.ModelProto(), replace(default_metadata(), observation_names=[]))
    assert isinstance(ModelMetadata.from_dict(default_metadata().to_dict(), "x"), ModelMetadata)


def test_numpy_values_and_tuples_are_stored_as_plain_yaml(tmp_path: Path) -> None:
    import numpy as np

    meta = replace(
        default_metadata(),
        action_low=np.array([-1.0, -1.5, -2.0], dtype=np.float32),
        action_high=np.array([1.0, 1.5, 2.0]),
        control_rate_hz=np.float64(50.0),
        train_config={"hidden_sizes": (256, 256), "lr": np.float32(0.5)},
    )
    record = ValidationRecord(
        task="reach",
        episodes=np.int64(5),
        metrics={"success_rate": np.float32(0.75)},
        thresholds={"success_rate": {"min": np.float64(0.5)}},
        passed=True,
    )
    path = tmp_path / "p.card.yaml"
    ModelCard(model="p.onnx", sha256="cd" * 32, metadata=meta, validation=record).write(path)
    card = ModelCard.read(path)
    assert card.metadata.train_config == {"hidden_sizes": [256, 256], "lr": 0.5}
    assert card.metadata.action_low == [-1.0, -1.5, -2.0] and card.metadata.control_rate_hz == 50.0
    assert card.validation is not None and card.validation.metrics == {"success_rate": 0.75}
    assert card.validation.episodes == 5 and type(card.validation.episodes) is int
