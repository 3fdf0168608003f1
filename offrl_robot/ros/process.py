"""Process start-up shared by the node entry points and `deploy`: rclpy init + signals.

rclpy's default signal handlers shut the context down the moment SIGINT arrives, after which
nothing can be published, so a policy node killed with Ctrl-C (or SIGTERM from `ros2 launch`)
could not leave the safe action on /cmd. Here SIGINT and SIGTERM become KeyboardInterrupt in the
main thread instead; the caller publishes what it must, then shuts rclpy down itself.

Only the first signal interrupts: Ctrl-C in a terminal reaches every process of the foreground
group, and `ros2 launch` then forwards its own SIGINT to each node, so a node sees two. The second
used to land inside rclpy's shutdown as a KeyboardInterrupt traceback (exit -2) under the real
launch tools; it is ignored now (a node that hangs anyway gets launch's SIGKILL).
"""

from __future__ import annotations

import signal
from collections.abc import Mapping, Sequence
from typing import Any

import rclpy
from rclpy.context import Context
from rclpy.signals import SignalHandlerOptions

_INTERRUPTED: list[int] = []  # the signal that interrupted this process, once one has


def _interrupt(signum: int, frame: object) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _INTERRUPTED.append(signum)
    raise KeyboardInterrupt


def interrupted() -> bool:
    """Whether SIGINT/SIGTERM arrived. The KeyboardInterrupt it raises can land inside an rclpy
    C++ call, which then fails as a RuntimeError ("Unable to convert call argument '0' to Python
    object", seen from spin_once): a caller treats that error as the interrupt when this is true."""
    return bool(_INTERRUPTED)


def init_ros(args: Sequence[str] | None, context: Context | None = None) -> None:
    """`rclpy.init` without rclpy's signal handlers; SIGINT/SIGTERM raise KeyboardInterrupt."""
    rclpy.init(
        args=None if args is None else list(args),
        context=context,
        signal_handler_options=SignalHandlerOptions.NO,
    )
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def wants_help(argv: Sequence[str]) -> bool:
    """-h/--help before any --ros-args (after it, arguments belong to ROS): print help, start nothing."""
    own = list(argv[1:])
    if "--ros-args" in own:
        own = own[: own.index("--ros-args")]
    return "-h" in own or "--help" in own


def usage(synopsis: str, summary: str, parameters: Mapping[str, tuple[Any, str]]) -> str:
    """A node's `--help`: how to run it and every parameter with its default ([] for a list)."""
    lines = [f"usage: {synopsis}", "", summary, "", "parameters (default):"]
    for name, (default, description) in parameters.items():
        lines.append(f"  {name} ({'[]' if default is None else repr(default)}): {description}")
    return "\n".join(lines)
