"""`offrl-robot` command line: one entry point, one module per sub-command.

Sub-commands are imported lazily (torch, MuJoCo and rclpy are slow to import), so each
module only needs two functions:

    def add_arguments(parser: argparse.ArgumentParser) -> None
    def run(args: argparse.Namespace) -> int

A user error (`OffrlError`) is printed as one line and exits 2; anything else is a bug and
prints one line plus a hint to re-run with `--debug` for the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import traceback

from offrl_robot.errors import OffrlError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "collect": (
        "offrl_robot.data.collect",
        "roll out a policy in MuJoCo; write a dataset (and a rosbag2 log)",
    ),
    "ingest": ("offrl_robot.data.ingest_cli", "turn rosbag2 logs into a dataset using a YAML spec"),
    "record": (
        "offrl_robot.ros.record",
        "record ROS 2 topics to a rosbag2 bag (raw CDR; no ROS install needed)",
    ),
    "expert": (
        "offrl_robot.ros.expert_node",
        "drive a sim/robot over ROS 2 with a task's scripted expert (demonstrations to record)",
    ),
    "bag-info": ("offrl_robot.data.bag_info", "open a rosbag2 log and read every message it reports"),
    "dataset-info": ("offrl_robot.data.dataset_info", "summarise a local Minari dataset"),
    "train": ("offrl_robot.train", "train an offline RL algorithm on a dataset"),
    "export": ("offrl_robot.export", "export a checkpoint to a self-contained ONNX model + card"),
    "validate": ("offrl_robot.sim.validate", "MuJoCo validation gate for an ONNX model"),
    "deploy": ("offrl_robot.ros.deploy", "run policy_node (+ sim_node) in one process"),
    "sweep": ("offrl_robot.scale.sweep", "hyper-parameter / seed sweep on Ray"),
    "demo": (
        "offrl_robot.demo",
        "the end-to-end demo: collect -> ingest -> train -> export -> validate -> deploy",
    ),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="offrl-robot",
        description="Offline RL for real robots: rosbag2/Minari -> policy -> ONNX -> guarded ROS 2 node.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<13} {help_}" for name, (_, help_) in COMMANDS.items()),
    )
    parser.add_argument("command", nargs="?", help="one of the commands below")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    if not argv or argv[0] in ("-h", "--help"):
        _top_parser().print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(
            f"offrl-robot: error: unknown command {name!r}; choose from {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    module_name, help_ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            print(
                f"offrl-robot {name}: error: this command is not available in this build ({err})",
                file=sys.stderr,
            )
            return 2
        raise
    parser = argparse.ArgumentParser(prog=f"offrl-robot {name}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except OffrlError as err:
        print(f"offrl-robot {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"offrl-robot {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `offrl-robot X | head`: the reader left. Point stdout at /dev/null so the interpreter's
        # own flush at exit does not fail again, and say so in one line.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(
            f"offrl-robot {name}: error: standard output closed early (broken pipe); "
            "redirect the output to a file instead of a pipe that exits early",
            file=sys.stderr,
        )
        return 1
    except Exception as err:  # a bug, not a user error: still one line unless --debug
        if debug:
            traceback.print_exc()
        else:
            print(
                f"offrl-robot {name}: internal error: {type(err).__name__}: {err} (re-run with --debug for the traceback)",
                file=sys.stderr,
            )
        return 1


if __name__ == "__main__":
    sys.exit(main())
