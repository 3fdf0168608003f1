"""policy_node + sim_node over real DDS for a few seconds, as separate processes, and what
another process on the network saw: the closing stage of `make demo`.

Each node runs as its own console-script process (what `ros2 launch offrl_robot
policy.launch.py use_sim:=true` starts); a `RosProbe` in this process resets the sim every
`episode_s` seconds (a new sampled goal), and reads `/diagnostics` (control rate, tick latency,
interventions by kind) and the sim's `~/metrics` (distance to goal, success) like any monitoring
tool would. DDS stays on loopback; children are SIGKILLed if they ignore SIGINT.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from offrl_robot.errors import OffrlError
from offrl_robot.ros.probe import RosProbe

BIN = Path(sys.executable).parent


@dataclass
class ClosedLoopResult:
    """What the probe saw: per-episode sim metrics at the end of each episode + the last policy diagnostics."""

    seconds: float
    episodes: list[dict[str, float]] = field(default_factory=list)
    diagnostics: dict[str, str] = field(default_factory=dict)
    commands: int = 0

    @property
    def success_rate(self) -> float:
        return sum(ep.get("success", 0.0) > 0.5 for ep in self.episodes) / max(len(self.episodes), 1)

    def diag_float(self, key: str) -> float:
        try:
            return float(self.diagnostics.get(key, "nan"))
        except ValueError:
            return float("nan")

    @property
    def interventions(self) -> dict[str, int]:
        prefix = "interventions."
        return {k[len(prefix) :]: int(float(v)) for k, v in self.diagnostics.items() if k.startswith(prefix)}


def _ros_env(domain_id: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ROS_DOMAIN_ID=str(domain_id),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        AMENT_PREFIX_PATH=env.get("AMENT_PREFIX_PATH") or sys.prefix,
        RMW_IMPLEMENTATION=env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp"),
        PYTHONUNBUFFERED="1",
    )
    return env


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 5.0
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # a hung rclpy process can ignore SIGINT/SIGTERM
            proc.wait()


def run_closed_loop(
    model: str | os.PathLike[str],
    policy_params: str | os.PathLike[str],
    sim_params: str | os.PathLike[str],
    seconds: float = 10.0,
    episode_s: float = 2.5,
    domain_id: int = 73,
    log_dir: str | os.PathLike[str] | None = None,
    policy_overrides: Sequence[str] = (),
) -> ClosedLoopResult:
    """Run both nodes for `seconds` (after the first command arrives); see the module docstring.

    `policy_overrides`: extra `NAME:=VALUE` parameters for policy_node (e.g. a lower
    `min_thresholds` floor for a reduced, supervised run)."""
    env = _ros_env(domain_id)
    logs = Path(log_dir) if log_dir else None
    if logs:
        logs.mkdir(parents=True, exist_ok=True)
    commands = {
        "sim_node": [str(BIN / "sim_node"), "--ros-args", "--params-file", str(sim_params)],
        "policy_node": [
            str(BIN / "policy_node"),
            "--ros-args",
            "--params-file",
            str(policy_params),
            "-p",
            f"model_path:={Path(model).resolve()}",
            *(arg for override in policy_overrides for arg in ("-p", override)),
        ],
    }
    procs: list[subprocess.Popen[bytes]] = []
    result = ClosedLoopResult(seconds=seconds)
    try:
        for name, argv in commands.items():
            out = open(logs / f"{name}.log", "wb") if logs else subprocess.DEVNULL  # noqa: SIM115
            procs.append(
                subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            )
        with RosProbe(domain_id, name="offrl_demo_probe") as probe:
            if not probe.spin_until(lambda: len(probe.cmds) > 0, timeout=90.0):
                dead = [
                    f"{n} exited {p.returncode}"
                    for n, p in zip(commands, procs, strict=True)
                    if p.poll() is not None
                ]
                raise OffrlError(
                    f"policy_node never published /cmd within 90 s ({'; '.join(dead) or 'nodes still up'}); see {logs or 'the node logs'}"
                )
            start = time.monotonic()
            while time.monotonic() - start < seconds:
                probe.trigger("/sim_node/reset")
                reset_at = time.monotonic()
                probe.spin_for(min(episode_s, seconds - (reset_at - start)))
                later = [m.data for m in probe.metrics if m.t > reset_at]
                if later:
                    result.episodes.append(later[-1])
            policy_diags = [d.data for d in probe.diags if any(k.startswith("tick_latency") for k in d.data)]
            result.diagnostics = policy_diags[-1] if policy_diags else {}
            result.commands = len(probe.cmds)
    finally:
        _stop(procs)
    return result
