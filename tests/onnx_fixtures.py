"""Small REAL ONNX policies + cards in the documented format, for tests (runtime, ROS node, exporter).

`write_policy(tmp_path)` exports a tiny torch MLP with the observation normaliser and action
scaling inside the graph (input `observation [batch, O]`, output `action [batch, A]`, physical
units, dynamic batch), sets the offrl.* metadata_props via offrl_robot.card, saves one
self-contained file and writes NAME.card.yaml beside it with the file's sha256. Keyword
arguments make the deliberately broken variants the bad-input tests need.

The legacy TorchScript exporter (dynamo=False) is used because it takes ~0.2 s for a tiny
model here versus ~5 s for dynamo=True; the files it writes follow the same contract.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from offrl_robot.card import (
    ModelCard,
    ModelMetadata,
    ValidationRecord,
    card_path_for,
    file_sha256,
    write_metadata_props,
)


class NormalisedPolicy(nn.Module):
    """(obs - mean) / std -> MLP -> tanh -> [low, high]: a deterministic exported policy."""

    def __init__(
        self,
        obs_mean: np.ndarray,
        obs_std: np.ndarray,
        action_low: np.ndarray,
        action_high: np.ndarray,
        hidden: tuple[int, ...],
        seed: int,
    ):
        super().__init__()
        torch.manual_seed(seed)
        self.register_buffer("obs_mean", torch.as_tensor(obs_mean, dtype=torch.float32))
        self.register_buffer("obs_std", torch.as_tensor(obs_std, dtype=torch.float32))
        self.register_buffer("act_low", torch.as_tensor(action_low, dtype=torch.float32))
        self.register_buffer("act_high", torch.as_tensor(action_high, dtype=torch.float32))
        layers: list[nn.Module] = []
        width = len(obs_mean)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, len(action_low)))
        self.net = nn.Sequential(*layers)

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        unit = torch.tanh(self.net((observation - self.obs_mean) / self.obs_std))
        return self.act_low + (unit + 1.0) * 0.5 * (self.act_high - self.act_low)


def export_module(module: nn.Module, obs_dim: int, dynamic_batch: bool = True) -> onnx.ModelProto:
    """Legacy-exporter ONNX of `module` with input `observation` and output `action`."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notices
        torch.onnx.export(
            module.eval(),
            (torch.zeros(1, obs_dim),),
            buffer,
            dynamo=False,
            input_names=["observation"],
            output_names=["action"],
            dynamic_axes={"observation": {0: "batch"}, "action": {0: "batch"}} if dynamic_batch else None,
            opset_version=17,
        )
    return onnx.load_from_string(buffer.getvalue())


@dataclass
class PolicyFiles:
    onnx_path: Path
    card_path: Path
    module: NormalisedPolicy
    metadata: ModelMetadata


def default_metadata(obs_dim: int = 6, act_dim: int = 3) -> ModelMetadata:
    return ModelMetadata(
        observation_names=[
            f"joint_{i // 2 + 1}.{'position' if i % 2 == 0 else 'velocity'}" for i in range(obs_dim)
        ],
        action_names=[f"joint_{j + 1}.position_cmd" for j in range(act_dim)],
        action_low=[-1.0 - 0.5 * j for j in range(act_dim)],
        action_high=[1.0 + 0.5 * j for j in range(act_dim)],
        control_rate_hz=50.0,
        algorithm="bc",
        dataset_sha256="0" * 64,
        train_config={"seed": 0, "hidden_sizes": [32]},
    )


def write_policy(
    folder: Path,
    name: str = "policy",
    metadata: ModelMetadata | None = None,
    hidden: tuple[int, ...] = (32,),
    seed: int = 0,
    obs_std: np.ndarray | None = None,
    graph_obs_dim: int | None = None,
    dynamic_batch: bool = True,
    props_overrides: dict[str, Any] | None = None,
    card_overrides: dict[str, Any] | None = None,
    validation: ValidationRecord | None = None,
    write_props: bool = True,
) -> PolicyFiles:
    """Write folder/NAME.onnx + folder/NAME.card.yaml; return paths, the torch module and metadata.

    graph_obs_dim: build the graph with this many input columns (to disagree with the names);
    props_overrides / card_overrides: replace metadata fields in metadata_props / the card only.
    """
    meta = metadata or default_metadata()
    obs_dim = graph_obs_dim if graph_obs_dim is not None else meta.observation_dim
    rng = np.random.default_rng(seed)
    module = NormalisedPolicy(
        obs_mean=rng.normal(size=obs_dim).astype(np.float32),
        obs_std=obs_std if obs_std is not None else (0.5 + rng.random(obs_dim)).astype(np.float32),
        action_low=np.asarray(meta.action_low, np.float32),
        action_high=np.asarray(meta.action_high, np.float32),
        hidden=hidden,
        seed=seed,
    )
    model = export_module(module, obs_dim, dynamic_batch)
    if write_props and props_overrides:
        # raw entries, not write_metadata_props (which validates): tests want broken metadata here
        for key, value in replace(meta, **props_overrides).to_metadata_props().items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
    elif write_props:
        write_metadata_props(model, meta)
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / f"{name}.onnx"
    onnx.save(model, onnx_path)
    card_path = card_path_for(onnx_path)
    ModelCard(
        model=onnx_path.name,
        sha256=file_sha256(onnx_path),
        metadata=replace(meta, **(card_overrides or {})),
        training={"steps": 0, "note": "test fixture"},
        validation=validation,
    ).write(card_path)
    return PolicyFiles(onnx_path, card_path, module, meta)


def torch_reference(files: PolicyFiles, observations: np.ndarray) -> np.ndarray:
    """The torch module's output for [B, O] observations (float32)."""
    with torch.no_grad():
        return files.module(torch.as_tensor(observations, dtype=torch.float32)).numpy()
