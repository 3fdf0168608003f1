"""Both install routes give the layout `ros2 launch` needs, and `ros2 launch` really runs from it.

Routes (ros2_ws/README.md): a wheel (`pip install .`, here into a temporary prefix: colcon is not
available here; setup.py serves colcon the same data_files) and the venv's editable install plus
`make install-ros` (offrl_robot/ament_layout.py). The layout: share/offrl_robot/{launch,config,
models,sim}, package.xml, the ament index marker, and lib/offrl_robot/NAME executables.

The real ROS 2 launch tools are not on PyPI; ../shared/ros2_launch holds them (its README). With
them, `ros2 pkg executables` must list our executables for both layouts, and `ros2 launch
offrl_robot policy.launch.py use_sim:=true` must keep policy_node and sim_node alive with non-zero
commands on /cmd (policy.launch.py's `model`, the .onnx, once leaked into the included
sim.launch.py: sim_node died at start-up and the policy sent only the safe action), then stop
cleanly on Ctrl-C (SIGINT to the whole process group, as a terminal sends it).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What setup.py reads or installs (copied, so pip's in-tree build leaves the checkout untouched).
SOURCES = (
    "setup.py",
    "setup.cfg",
    "pyproject.toml",
    "package.xml",
    "resource",
    "offrl_robot",
    "launch",
    "config",
    "models",
    "sim",
)
EXECUTABLES = ("policy_node", "sim_node", "offrl-robot")
SHARE_FILES = (
    "package.xml",
    "launch/policy.launch.py",
    "launch/sim.launch.py",
    "config/policy.yaml",
    "config/sim.yaml",
    "config/validate.yaml",
    "models/arm_reach.onnx",
    "models/arm_reach.card.yaml",
    "sim/arm6/scene.xml",
)


def site_packages(prefix: Path) -> Path:
    """Where pip --prefix puts pure-Python packages (same scheme as pip)."""
    return Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))


@pytest.fixture(scope="module")
def wheel_prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install .` (a wheel, no deps) of this checkout into a fresh prefix (~2-5 s)."""
    src, prefix = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("prefix")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=ignore)
        else:
            shutil.copy2(source, src / name)
    for requirements in REPO.glob("requirements*.txt"):
        shutil.copy2(requirements, src / requirements.name)
    before = _installed_here()
    # --ignore-installed: without it pip --prefix UNINSTALLS the venv's own offrl_robot first.
    args = ["--no-deps", "--no-build-isolation", "--no-compile", "--ignore-installed", "--prefix"]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", *args, str(prefix), str(src)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _installed_here() == before, "installing into a prefix changed this venv's offrl_robot"
    return prefix


def _installed_here() -> str | None:
    """Where this interpreter's own offrl_robot distribution lives (None: not installed)."""
    try:
        return str(importlib.metadata.distribution("offrl_robot").locate_file(""))
    except importlib.metadata.PackageNotFoundError:
        return None


@pytest.fixture(scope="module")
def editable_prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `make install-ros` adds to the venv, written into a fresh prefix instead."""
    prefix = tmp_path_factory.mktemp("venv_like")
    proc = subprocess.run(
        [sys.executable, "-m", "offrl_robot.ament_layout", "--prefix", str(prefix)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return prefix


def check_layout(prefix: Path) -> None:
    share = prefix / "share" / "offrl_robot"
    missing = [rel for rel in SHARE_FILES if not (share / rel).is_file()]
    assert not missing, f"not installed under {share}: {missing}"
    assert (prefix / "share/ament_index/resource_index/packages/offrl_robot").is_file(), "ament index marker"
    for name in EXECUTABLES:
        exe = prefix / "lib" / "offrl_robot" / name
        assert exe.is_file() and os.access(exe, os.X_OK), f"{exe} is not an executable"
    # The executable really reaches our CLI (wrapper -> PREFIX/bin entry point, or a link to it).
    proc = subprocess.run(
        [str(prefix / "lib" / "offrl_robot" / "offrl-robot"), "frobnicate"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "unknown command" in proc.stderr, proc.stdout + proc.stderr


def test_wheel_install_has_the_ament_layout(wheel_prefix: Path) -> None:
    check_layout(wheel_prefix)


def test_editable_install_ros_has_the_ament_layout(editable_prefix: Path) -> None:
    check_layout(editable_prefix)
    # --symlink-install semantics: the share folders are the checkout's own (edits need no reinstall).
    launch_file = editable_prefix / "share/offrl_robot/launch/policy.launch.py"
    assert launch_file.resolve() == REPO / "launch" / "policy.launch.py"
    # Real folders: `ros2 launch` looks launch files up with os.walk, which skips linked folders.
    walked = {name for _, _, files in os.walk(editable_prefix / "share/offrl_robot") for name in files}
    assert {Path(rel).name for rel in SHARE_FILES} <= walked
    # Idempotent: running it again (make install-ros twice) keeps the same layout.
    proc = subprocess.run(
        [sys.executable, "-m", "offrl_robot.ament_layout", "--prefix", str(editable_prefix)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    check_layout(editable_prefix)


def test_editable_layout_refuses_to_overwrite_real_files(tmp_path: Path) -> None:
    (tmp_path / "share/offrl_robot/config").mkdir(parents=True)
    (tmp_path / "share/offrl_robot/config/policy.yaml").write_text("mine\n")
    proc = subprocess.run(
        [sys.executable, "-m", "offrl_robot.ament_layout", "--prefix", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "share/offrl_robot/config/policy.yaml exists" in proc.stderr, proc.stderr
    assert (tmp_path / "share/offrl_robot/config/policy.yaml").read_text() == "mine\n"


def test_installed_package_finds_its_share_files(wheel_prefix: Path, tmp_path: Path) -> None:
    """The installed code (no source tree beside it) finds the MJCF and the gate config in its
    own prefix's share/offrl_robot, also with no AMENT_PREFIX_PATH and another sys.prefix."""
    env = {k: v for k, v in os.environ.items() if k not in ("AMENT_PREFIX_PATH", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site_packages(wheel_prefix))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import offrl_robot\n"
            "from offrl_robot.sim.arm_reach import default_model_path\n"
            "from offrl_robot.sim.validate import default_config_path\n"
            "print(offrl_robot.__file__); print(default_model_path()); print(default_config_path())",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    module, mjcf, config = (Path(line) for line in proc.stdout.split())
    share = (wheel_prefix / "share" / "offrl_robot").resolve()
    assert module.resolve().is_relative_to(site_packages(wheel_prefix).resolve())
    assert mjcf.resolve() == share / "sim/arm6/scene.xml"
    assert config.resolve() == share / "config/validate.yaml"


# ------------------------------------------------------------------------ the real ROS 2 tools
@pytest.fixture
def ros2_cli(ros2_launch_tools: Path) -> Path:
    """The launch tools, for tests that run the `ros2` command (ros2cli imports psutil)."""
    if importlib.util.find_spec("psutil") is None:
        pytest.fail("ros2cli needs psutil, which is missing: pip install -r requirements-ros.txt")
    return ros2_launch_tools


def tools_env(base: dict[str, str], prefix: Path, tools: Path, log_dir: Path) -> dict[str, str]:
    """../shared/ros2_launch/README.md's environment, with `prefix` as the offrl_robot install."""
    env = dict(base)

    def join(*parts: object) -> str:
        return os.pathsep.join(str(p) for p in parts if p)

    env["PYTHONPATH"] = join(site_packages(prefix), tools / "site-packages", base.get("PYTHONPATH"))
    env["LD_LIBRARY_PATH"] = join(tools / "lib", base.get("LD_LIBRARY_PATH"))
    env["PATH"] = join(tools / "bin", Path(sys.executable).parent, base.get("PATH"))
    env["AMENT_PREFIX_PATH"] = join(prefix, tools, sys.prefix)
    env["ROS_LOG_DIR"] = str(log_dir)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    return env


@pytest.mark.parametrize("route", ["wheel", "editable"])
def test_ros2_pkg_and_launch_find_the_package(
    route: str, request: pytest.FixtureRequest, tmp_path: Path, ros2_cli: Path
) -> None:
    tools = ros2_cli
    prefix: Path = request.getfixturevalue(f"{route}_prefix")
    env = tools_env(dict(os.environ), prefix, tools, tmp_path)
    proc = subprocess.run(
        [sys.executable, str(tools / "bin" / "ros2"), "pkg", "executables", "offrl_robot"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listed = {tuple(line.split()) for line in proc.stdout.splitlines()}
    assert {("offrl_robot", name) for name in EXECUTABLES} <= listed, proc.stdout
    # ros2launch finds the file in share/ and loads the description (no nodes started).
    proc = subprocess.run(
        [
            sys.executable,
            str(tools / "bin" / "ros2"),
            "launch",
            "offrl_robot",
            "policy.launch.py",
            "--show-args",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and "'use_sim'" in proc.stdout, proc.stdout + proc.stderr


def _children(pid: int) -> dict[int, str]:
    """Live (non-zombie) child processes of `pid`: pid -> command line (from /proc)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                children[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue  # exited while we looked
    return children


@pytest.mark.ros
def test_policy_launch_with_sim_runs_under_ros2_launch(
    wheel_prefix: Path, ros_env: dict[str, str], run_child, tmp_path: Path, ros2_cli: Path
) -> None:
    tools = ros2_cli
    from offrl_robot.ros.probe import RosProbe

    env = tools_env(ros_env, wheel_prefix, tools, tmp_path / "ros_log")
    launch = run_child.start(
        [
            sys.executable,
            str(tools / "bin" / "ros2"),
            "launch",
            "offrl_robot",
            "policy.launch.py",
            "use_sim:=true",
        ],
        env=env,
        cwd=tmp_path,
    )
    lines: list[str] = []  # drained continuously: a full pipe would stall ros2 launch
    reader = threading.Thread(target=lambda: lines.extend(launch.stdout), daemon=True)
    reader.start()

    def output() -> str:
        return "".join(lines)

    def nonzero(cmds: list) -> list:  # type: ignore[type-arg]
        return [c for c in cmds if any(v != 0.0 for v in c.data)]

    with RosProbe(int(ros_env["ROS_DOMAIN_ID"]), name="launch_test_probe") as probe:
        probe.record_joint_states()
        deadline = time.monotonic() + 90.0  # start-up on a loaded 2-core machine; seconds normally
        while not (nonzero(probe.cmds) and probe.joint_states):
            assert launch.poll() is None, f"ros2 launch exited early:\n{output()}"
            assert "process has died" not in output(), output()
            if time.monotonic() > deadline:
                pytest.fail(
                    f"no non-zero /cmd from the sim loop: {len(probe.cmds)} cmds, "
                    f"{len(probe.joint_states)} joint states; output:\n{output()}"
                )
            probe.spin_for(0.2)
        # A few seconds of closed loop: both nodes stay up, the policy keeps commanding the sim.
        window = time.monotonic()
        probe.spin_for(3.0)
        commands = [c for c in probe.cmds if c.t >= window]
        states = [s for s in probe.joint_states if s.t >= window]
        # The launch file's LifecycleNode action watches policy_node's transitions.
        watchers = probe.node.count_subscribers("/policy_node/transition_event")
    children = " | ".join(_children(launch.pid).values())
    assert launch.poll() is None, output()
    assert "/policy_node" in children and "/sim_node" in children, f"children: {children}\n{output()}"
    assert nonzero(commands) and states, f"{len(commands)} cmds, {len(states)} joint states:\n{output()}"
    assert watchers >= 1, "policy_node is not a launch_ros LifecycleNode (no transition_event watcher)"

    os.killpg(launch.pid, signal.SIGINT)  # Ctrl-C: the whole group, launch and both nodes
    try:
        launch.wait(timeout=30)
    except subprocess.TimeoutExpired:
        run_child.kill(launch)
        pytest.fail(f"ros2 launch did not stop within 30 s of SIGINT:\n{output()}")
    reader.join(timeout=10)
    out = output()
    assert launch.returncode == 0, out
    assert "Traceback" not in out and "process has died" not in out, out
    assert out.count("process has finished cleanly") == 2, out
    assert "published the safe action" in out, out
