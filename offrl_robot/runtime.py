"""PolicyRuntime: load an exported policy and run it once per control tick.

Everything that can be wrong with the files is checked BEFORE a session exists, so a bad
model is never half-loaded: the file is read once, and the very bytes that were hashed are
the bytes that are parsed and handed to onnxruntime (no window in which the file on disk
could change between the check and the load). Checks, in order:

1. the file parses as ONNX (not ONNX / truncated -> ModelError) and is self-contained
2. the card exists (default NAME.card.yaml beside it) and parses
3. the sha256 of the file equals the card's
4. metadata_props parse and agree with the card's metadata, field by field
5. the graph has one input `observation [batch, O]` and one output `action [batch, A]`
   (float32, dynamic batch) with O/A equal to the number of names
6. every float initializer / Constant (e.g. the embedded normaliser) is finite
7. the caller's expected observation/action names equal the model's (order matters)

The session is single-threaded (1 intra-op, 1 inter-op thread, sequential): on a robot the
policy shares the CPU with the control loop, and for a 256x256 MLP threads cost more than
they gain. `act` writes into a preallocated input array and uses io_binding with a
preallocated output, so the hot path allocates only the returned copy.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from offrl_robot.card import (
    INPUT_NAME,
    OUTPUT_NAME,
    ModelCard,
    ModelMetadata,
    bytes_sha256,
    card_path_for,
    metadata_mismatch,
    read_metadata_props,
)
from offrl_robot.errors import ModelError


def _parse_onnx(data: bytes, path: Path) -> onnx.ModelProto:
    if not data:
        raise ModelError(f"{path}: file is empty; export the model again")
    try:
        model = onnx.ModelProto.FromString(data)
    except (DecodeError, RuntimeError, ValueError):
        raise ModelError(
            f"{path}: is not an ONNX model or is truncated (protobuf parse failed); export it again"
        ) from None
    if not model.graph.node or not model.opset_import:
        raise ModelError(f"{path}: is not an ONNX model or is truncated (no graph/opset); export it again")
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise ModelError(
                f"{path}: weights live in an external data file; re-export with external_data=False (one self-contained file)"
            )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{path}: ONNX checker rejected the model ({first})") from None
    return model


def _tensor_signature(value_info: onnx.ValueInfoProto) -> tuple[int, list[int | str | None]]:
    """(elem_type, dims) with a dim as int (fixed), str (symbolic) or None (unknown)."""
    tensor_type = value_info.type.tensor_type
    dims: list[int | str | None] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return tensor_type.elem_type, dims


def _check_io(model: onnx.ModelProto, meta: ModelMetadata, path: Path) -> None:
    initializer_names = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializer_names]
    outputs = list(model.graph.output)
    for kind, values, name, size, names_field in (
        ("input", inputs, INPUT_NAME, meta.observation_dim, "observation_names"),
        ("output", outputs, OUTPUT_NAME, meta.action_dim, "action_names"),
    ):
        if [v.name for v in values] != [name]:
            raise ModelError(
                f"{path}: graph {kind}s are {[v.name for v in values]}, expected exactly [{name!r}]"
            )
        elem_type, dims = _tensor_signature(values[0])
        if elem_type != onnx.TensorProto.FLOAT:
            raise ModelError(
                f"{path}: graph {kind} {name!r} is {onnx.TensorProto.DataType.Name(elem_type)}, expected FLOAT"
            )
        if len(dims) != 2:
            raise ModelError(f"{path}: graph {kind} {name!r} has shape {dims}, expected [batch, {size}]")
        if isinstance(dims[0], int):
            raise ModelError(
                f"{path}: graph {kind} {name!r} has a fixed batch size {dims[0]}; re-export with a dynamic batch axis"
            )
        if dims[1] != size:
            raise ModelError(
                f"{path}: graph {kind} {name!r} has {dims[1]} columns but the metadata lists {size} {names_field}"
            )


def check_finite_constants(model: onnx.ModelProto, path: Path) -> None:
    tensors = [(t.name, t) for t in model.graph.initializer]
    for node in model.graph.node:
        if node.op_type == "Constant":
            tensors += [(node.output[0], a.t) for a in node.attribute if a.name == "value"]
    for name, tensor in tensors:
        if tensor.data_type not in (
            onnx.TensorProto.FLOAT,
            onnx.TensorProto.DOUBLE,
            onnx.TensorProto.FLOAT16,
            onnx.TensorProto.BFLOAT16,
        ):
            continue
        values = numpy_helper.to_array(tensor)
        if not np.isfinite(values.astype(np.float64)).all():
            raise ModelError(
                f"{path}: constant {name!r} holds NaN/inf (e.g. a broken normaliser: std = 0?); fix the checkpoint and re-export"
            )


def check_names(kind: str, expected: Sequence[str] | None, actual: list[str], path: Path) -> None:
    if expected is None:
        return
    expected = list(expected)
    if expected == actual:
        return
    if len(expected) != len(actual):
        raise ModelError(
            f"{path}: model has {len(actual)} {kind} names but the config expects {len(expected)}"
        )
    j = next(i for i, (a, b) in enumerate(zip(expected, actual, strict=True)) if a != b)
    raise ModelError(f"{path}: {kind} {j} is {actual[j]!r} in the model but {expected[j]!r} in the config")


@dataclass
class VerifiedModel:
    """An ONNX file whose bytes match its card's sha256 and whose metadata_props match the card."""

    path: Path
    card_path: Path
    data: bytes
    model: onnx.ModelProto
    card: ModelCard
    metadata: ModelMetadata


def load_verified(
    onnx_path: str | os.PathLike[str], card_path: str | os.PathLike[str] | None = None
) -> VerifiedModel:
    """Read NAME.onnx + its card and check them against each other, before anything runs it.

    The single place that decides whether a model file is the one its card describes; every
    loader (PolicyRuntime, the MPC controller) starts here, then adds its own I/O checks.
    """
    path = Path(onnx_path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{path}: model file not found; check the path or export it first") from None
    except OSError as err:
        raise ModelError(f"{path}: cannot read model file ({err.strerror})") from None
    model = _parse_onnx(data, path)
    card_file = Path(card_path) if card_path is not None else card_path_for(path)
    card = ModelCard.read(card_file)
    digest = bytes_sha256(data)
    if digest != card.sha256:
        raise ModelError(
            f"{path}: sha256 {digest[:12]}... does not match {card_file.name} ({card.sha256[:12]}...); the model or card was changed, export again"
        )
    props = read_metadata_props(model, str(path))
    field_name = metadata_mismatch(card.metadata, props)
    if field_name is not None:
        raise ModelError(
            f"{path}: metadata_props {field_name!r} disagrees with {card_file.name}; export again"
        )
    return VerifiedModel(path, card_file, data, model, card, props)


def make_session(data: bytes, path: Path, threads: int = 1) -> ort.InferenceSession:
    """A sequential CPU onnxruntime session with `threads` intra-op threads (1 for a control loop:
    no thread hand-off jitter), or a one-line ModelError when onnxruntime rejects the graph."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for bad graphs
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{path}: onnxruntime cannot load the model ({first})") from None


class PolicyRuntime:
    """A verified ONNX policy: `act(observation_1d) -> action_1d` in physical units.

    card_path defaults to NAME.card.yaml beside NAME.onnx. expected_*_names (from the
    robot/ROS config) must match the model exactly; pass None to skip that check.
    Not thread-safe: `act` reuses one bound input/output buffer (one runtime per control loop).
    """

    def __init__(
        self,
        onnx_path: str | os.PathLike[str],
        card_path: str | os.PathLike[str] | None = None,
        expected_observation_names: Sequence[str] | None = None,
        expected_action_names: Sequence[str] | None = None,
    ):
        verified = load_verified(onnx_path, card_path)
        path, card_file, card, props, model = (
            verified.path,
            verified.card_path,
            verified.card,
            verified.metadata,
            verified.model,
        )
        _check_io(model, props, path)
        check_finite_constants(model, path)  # a broken file first, then "not for this robot"
        check_names("observation", expected_observation_names, props.observation_names, path)
        check_names("action", expected_action_names, props.action_names, path)
        session = make_session(verified.data, path, threads=1)

        self.path = path
        self.card_path = card_file
        self.card = card
        self._metadata = props
        self._session = session
        self._obs_dim = props.observation_dim
        self._obs_shape = (self._obs_dim,)
        self._input = np.zeros((1, self._obs_dim), dtype=np.float32)
        self._output = np.zeros((1, props.action_dim), dtype=np.float32)
        self._input_row = self._input[0]
        self._output_row = self._output[0]
        binding = session.io_binding()
        binding.bind_cpu_input(INPUT_NAME, self._input)
        binding.bind_output(
            OUTPUT_NAME, "cpu", 0, np.float32, list(self._output.shape), self._output.ctypes.data
        )
        self._binding = binding
        # onnxruntime's Python wrapper re-checks WebGPU graph-capture state on every
        # run_with_iobinding (~2.5 µs of a ~11 µs tick here); call the C++ session directly when
        # this onnxruntime build exposes it (pinned 1.32), else the public method.
        native = getattr(session, "_sess", None)
        native_binding = getattr(binding, "_iobinding", None)
        if native is not None and native_binding is not None and hasattr(native, "run_with_iobinding"):
            self._run, self._run_args = native.run_with_iobinding, (native_binding, None)
        else:  # pragma: no cover - other onnxruntime versions
            self._run, self._run_args = session.run_with_iobinding, (binding,)

    @property
    def metadata(self) -> ModelMetadata:
        return self._metadata

    def act(self, observation: np.ndarray) -> np.ndarray:
        """One observation [O] (physical units) -> action [A] float32 (a new array).

        The preallocated input/output are bound once; a tick is a copy in (cast to float32),
        one run, a copy out. No RunOptions: through the public wrapper one costs ~40 µs p50 and
        milliseconds at p99 with onnxruntime 1.32 (benchmarks/runtime_latency.py shows it).
        """
        if observation.shape != self._obs_shape:
            raise ValueError(f"observation has shape {observation.shape}, the model takes ({self._obs_dim},)")
        self._input_row[...] = observation  # ~0.4 µs; np.copyto costs ~1 µs here
        self._run(*self._run_args)
        return self._output_row.copy()

    def act_batch(self, observations: np.ndarray) -> np.ndarray:
        """[B, O] -> [B, A] float32 (for the sim gate and parity checks; allocates)."""
        obs = np.ascontiguousarray(observations, dtype=np.float32)
        if obs.ndim != 2 or obs.shape[1] != self._obs_dim:
            raise ValueError(f"observations have shape {obs.shape}, the model takes [batch, {self._obs_dim}]")
        return self._session.run([OUTPUT_NAME], {INPUT_NAME: obs})[0]
