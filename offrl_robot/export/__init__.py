"""ONNX export: a checkpoint -> one self-contained model + its card (`offrl-robot export`).

- `offrl_robot.export.common`: the generic machinery (checkpoint facts, exporter, parity inputs,
  onnxruntime runs, card metadata, atomic model + card write);
- `offrl_robot.export.policy`: policies (the algorithm supplies `policy_for_export`);
- `offrl_robot.export.dynamics`: dynamics ensembles for the MPC planner (the ensemble supplies
  `module_for_export`).

This package's namespace is the policy export's public API and the CLI entry point
(`add_arguments`, `run`); `export_checkpoint` hands a dynamics checkpoint to
`offrl_robot.export.dynamics.export_dynamics`.
"""

from offrl_robot.checkpoint import resolve_checkpoint
from offrl_robot.export.common import (
    DEFAULT_OPSET,
    MIN_OPSET,
    MIN_PARITY_SAMPLES,
    CheckpointFacts,
    ExportResult,
    ParityReport,
    metadata_for,
    parity_observations,
    read_checkpoint,
    run_in_onnxruntime,
    training_summary,
    write_model_and_card,
)
from offrl_robot.export.policy import (
    PARITY_TOLERANCE,
    SINGLE_ROW_CHECKS,
    PhysicalUnitsPolicy,
    add_arguments,
    argmax_tie_rows,
    build_export_module,
    check_parity,
    export_checkpoint,
    run,
    to_onnx,
)

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "MIN_PARITY_SAMPLES",
    "PARITY_TOLERANCE",
    "SINGLE_ROW_CHECKS",
    "CheckpointFacts",
    "ExportResult",
    "ParityReport",
    "PhysicalUnitsPolicy",
    "add_arguments",
    "argmax_tie_rows",
    "build_export_module",
    "check_parity",
    "export_checkpoint",
    "metadata_for",
    "parity_observations",
    "read_checkpoint",
    "resolve_checkpoint",
    "run",
    "run_in_onnxruntime",
    "to_onnx",
    "training_summary",
    "write_model_and_card",
]
