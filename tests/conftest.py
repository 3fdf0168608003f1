"""Shared test fixtures.

- `shared_data`: the real fixtures in ../shared/data (bags, Menagerie arms), read in place;
  tests that need them skip with a clear reason when ../shared is absent.
- `minari_root`: every test gets its own MINARI_DATASETS_PATH so nothing touches ~/.minari.
- `ros_home`: every test gets its own ROS_HOME (policy_node's persisted e-stop latch lives there).
- `ros_env`: environment for processes that start rclpy: DDS on loopback only, a distinct
  ROS_DOMAIN_ID per test, AMENT_PREFIX_PATH pointing at the venv.
- `run_child`: start a child process with a hard SIGKILL timeout (a hung rclpy process can
  ignore SIGTERM).
- `ros2_launch_tools`: the real ROS 2 launch tools in ../shared/ros2_launch (launch, launch_ros,
  ros2cli; not on PyPI), or $OFFRL_ROS2_LAUNCH; tests skip with a clear reason when absent.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
ROS2_LAUNCH_TOOLS = Path(os.environ.get("OFFRL_ROS2_LAUNCH") or REPO.parent / "shared" / "ros2_launch")

# DDS must stay on loopback for everything started from the test process too.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("AMENT_PREFIX_PATH", str(Path(sys.prefix)))
os.environ.setdefault("MUJOCO_GL", "egl")
# Inductor compiles (tests/test_accel.py) in one process, not a pool of one per core: on 2 cores
# such a pool competes with the other xdist worker's timing-sensitive ROS tests (one run saw a 1 s
# gap in /cmd from a 50 Hz watchdog; the cause is suspected, not proven).
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

# An explicit OFFRL_TEST_DOMAIN_BASE pins the range (parallel runs on one machine get disjoint
# ranges); pytest-xdist workers get disjoint ranges by worker number; otherwise the pid spreads
# concurrent runs apart.
_domain_base = os.environ.get("OFFRL_TEST_DOMAIN_BASE")
_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
if _domain_base:
    _first_domain = int(_domain_base)
elif _worker.startswith("gw"):
    _first_domain = 100 + 40 * int(_worker[2:])
else:
    _first_domain = 100 + (os.getpid() % 50) * 2
_domain_ids = itertools.count(_first_domain)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `pytest -n 2 --dist loadgroup` (make test): every file with a ROS test in one group, so
    those run one at a time on one worker (timing-sensitive DDS checks do not compete with each
    other), and every other test grouped by its file, so module/session fixtures are built once."""
    ros_files = {item.nodeid.split("::", 1)[0] for item in items if item.get_closest_marker("ros")}
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        # a file with any ROS test goes whole into "ros": its tests may share a module fixture
        item.add_marker(pytest.mark.xdist_group("ros" if path in ros_files else path))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real fixtures not found at {SHARED_DATA} (CI lays ../shared beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ros2_launch_tools() -> Path:
    """Root of the real launch tools (see its README for PYTHONPATH, PATH, LD_LIBRARY_PATH)."""
    if not (ROS2_LAUNCH_TOOLS / "bin" / "ros2").is_file():
        pytest.skip(
            f"real ROS 2 launch tools not found at {ROS2_LAUNCH_TOOLS} (CI lays ../shared beside the "
            "checkout; or set OFFRL_ROS2_LAUNCH)"
        )
    return ROS2_LAUNCH_TOOLS


@pytest.fixture(autouse=True)
def ros_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own ROS_HOME: policy_node persists its e-stop latch there, and a latch
    left by one test must not hold the next one's robot (nor a developer's ~/.ros)."""
    home = tmp_path_factory.mktemp("ros_home")
    monkeypatch.setenv("ROS_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def minari_root(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path_factory.mktemp("minari")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


@pytest.fixture
def ros_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A per-test ROS 2 environment (distinct domain id, loopback discovery), also applied to os.environ."""
    domain = str(next(_domain_ids) % 230)
    monkeypatch.setenv("ROS_DOMAIN_ID", domain)
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ChildProcesses:
    """Starts children in their own process group and SIGKILLs whatever is left at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(
        self, args: list[str], env: dict[str, str] | None = None, **kw: object
    ) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            args,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            **kw,
        )
        self.procs.append(proc)
        return proc

    def run(
        self, args: list[str], timeout: float, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion; on timeout SIGKILL the whole group and fail."""
        proc = self.start(args, env=env, cwd=cwd)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            out, _ = proc.communicate()
            pytest.fail(f"{' '.join(args)} did not finish within {timeout} s; output:\n{out}")
        return subprocess.CompletedProcess(args, proc.returncode, out, "")

    @staticmethod
    def kill(proc: subprocess.Popen[str]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                self.kill(proc)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


@pytest.fixture
def run_child() -> Iterator[ChildProcesses]:
    children = ChildProcesses()
    try:
        yield children
    finally:
        children.close()


def offrl_cli() -> list[str]:
    """argv prefix to run the CLI in a child process with this interpreter."""
    return [sys.executable, "-m", "offrl_robot.cli"]
