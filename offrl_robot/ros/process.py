"""Process start-up shared by the node entry points and `deploy`: rclpy init + signals.

rclpy's default signal handlers shut the context down the moment SIGINT arrives, after which
nothing can be published, so a policy node killed with Ctrl-C (or SIGTERM from `ros2 launch`)
could not leave the safe action on /cmd. Here SIGINT and SIGTERM become KeyboardInterrupt in the
main thread instead; the caller publishes what it must, then shuts rclpy down itself.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence

import rclpy
from rclpy.context import Context
from rclpy.signals import SignalHandlerOptions


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


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
