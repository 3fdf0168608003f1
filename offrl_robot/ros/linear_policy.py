"""Write a *linear* policy (action = W @ observation + b) as a deployable ONNX model + card.

Why this exists: to check a deployment end to end (DDS, joint-name mapping, SafetyFilter,
watchdog, latency) you want a controller whose every output you can predict, in exactly the
file format a trained policy has (`observation [batch, O]` -> `action [batch, A]`, metadata_props,
card beside it). A joint-space P-controller (`W = -Kp` on the positions, `b = Kp q*`) drives an
arm to known joint angles; an identity map echoes its input (the latency benchmark uses that to
match each /cmd to the JointState it came from). The card goes through `offrl_robot.card`, the
single place that knows the card format, so the node checks it like any other model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from offrl_robot.atomic import atomic_write_bytes
from offrl_robot.errors import ConfigError


def linear_policy_graph(weights: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    """ONNX graph `action = observation @ W^T + b` with a dynamic batch axis, float32."""
    weights = np.asarray(weights, dtype=np.float32)
    bias = np.asarray(bias, dtype=np.float32).reshape(-1)
    if weights.ndim != 2 or bias.shape != (weights.shape[0],):
        raise ConfigError(
            f"linear policy: weights must be [A, O] and bias [A], got {weights.shape} and {bias.shape}"
        )
    if not (np.isfinite(weights).all() and np.isfinite(bias).all()):
        raise ConfigError("linear policy: weights and bias must be finite")
    n_act, n_obs = weights.shape
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["observation", "weight", "bias"], ["action"], transB=1)],
        "linear_policy",
        [helper.make_tensor_value_info("observation", TensorProto.FLOAT, ["batch", n_obs])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", n_act])],
        [numpy_helper.from_array(weights, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="offrl_robot")
    model.ir_version = 8  # readable by every onnxruntime we support
    onnx.checker.check_model(model)
    return model


def write_linear_policy(
    path: str | Path,
    *,
    observation_names: Sequence[str],
    action_names: Sequence[str],
    weights: np.ndarray,
    bias: np.ndarray,
    action_low: Sequence[float],
    action_high: Sequence[float],
    control_rate_hz: float,
    validation: Mapping[str, Any] | None,
) -> Path:
    """Write PATH (.onnx) and PATH's card; `validation`: the fields of a card's validation block
    (`offrl_robot.card.ValidationRecord`), None for a model the gate has not seen."""
    from offrl_robot import card as card_module

    path = Path(path)
    weights = np.asarray(weights, dtype=np.float32)
    if weights.shape != (len(action_names), len(observation_names)):
        raise ConfigError(
            f"linear policy: weights {weights.shape} do not match {len(action_names)} actions x "
            f"{len(observation_names)} observations"
        )
    model = linear_policy_graph(weights, bias)
    metadata = card_module.ModelMetadata(
        observation_names=list(observation_names),
        action_names=list(action_names),
        action_low=[float(v) for v in action_low],
        action_high=[float(v) for v in action_high],
        control_rate_hz=float(control_rate_hz),
        algorithm="linear",
    )
    card_module.write_metadata_props(model, metadata)
    data = model.SerializeToString()
    atomic_write_bytes(path, data)
    sha256 = card_module.bytes_sha256(data)
    # a verdict is bound to the bytes it judged; a caller may give another sha256 (a stale verdict)
    record = (
        None if validation is None else card_module.ValidationRecord(**{"model_sha256": sha256, **validation})
    )
    card_module.ModelCard(
        model=path.name,
        sha256=sha256,
        metadata=metadata,
        training={"kind": "hand-written linear controller (offrl_robot.ros.linear_policy)"},
        validation=record,
    ).write(card_module.card_path_for(path))
    return path
