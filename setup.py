"""offrl_robot: offline RL for real robots, from rosbag2 logs to a guarded ROS 2 node.

The repository root is at once a pip package and an ament_python ROS 2 package, so the same
`setup.py` serves `pip install .` (a venv with the ROS 2 PyPI wheels) and `colcon build`
(a system ROS 2 install).

Both routes must leave the layout `ros2 launch` needs (tests/test_package_layout.py installs a
wheel into a temporary prefix and checks it): share/offrl_robot/{launch,config,models,sim},
the ament index marker, and the executables in lib/offrl_robot.

- colcon runs `setup.py develop|install` itself; setup.cfg sends the console scripts to
  lib/offrl_robot. With --symlink-install it runs this file through a symlink in its build
  folder, where only the declared files are linked: paths here are relative to the file's
  real location (realpath), never to the working directory or the symlink.
- pip builds a wheel, and wheels ignore setup.cfg's script dirs: the console scripts land in
  PREFIX/bin. So a wheel (only a wheel: under colcon the real scripts occupy the same paths)
  also carries resource/libexec/NAME as PREFIX/lib/offrl_robot/NAME, two lines of sh that exec
  PREFIX/bin/NAME, the entry point pip wrote for this very interpreter.
  An editable install carries no data files at all: `make install-ros` adds the layout
  (offrl_robot/ament_layout.py).
"""

from __future__ import annotations

import os
import sys
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "offrl_robot"
HERE = os.path.dirname(os.path.realpath(__file__))
EXECUTABLES = ("offrl-robot", "policy_node", "sim_node")


def _requirements(path: str) -> list[str]:
    """Read pinned requirements, skipping comments, so pins live in one place."""
    with open(os.path.join(HERE, path), encoding="utf-8") as handle:
        lines = (line.split(" #", 1)[0].strip() for line in handle)
        return [line for line in lines if line and not line.startswith("#")]


def _tree(folder: str) -> list[tuple[str, list[str]]]:
    """Install every file below `folder` into share/offrl_robot/<same relative path>.

    Sources stay relative (colcon links them into its build folder by these names) but are
    found from the real source tree, whatever the working directory."""
    entries: dict[str, list[str]] = {}
    for path in sorted(glob(os.path.join(folder, "**", "*"), root_dir=HERE, recursive=True)):
        if os.path.isfile(os.path.join(HERE, path)) and "__pycache__" not in path:
            target = os.path.join("share", PACKAGE, os.path.dirname(path))
            entries.setdefault(target, []).append(path)
    return sorted(entries.items())


def _wheel_libexec() -> list[tuple[str, list[str]]]:
    """lib/offrl_robot/NAME launchers, for wheels only (see the module docstring)."""
    if "bdist_wheel" not in sys.argv[1:]:
        return []
    return [(f"lib/{PACKAGE}", [f"resource/libexec/{name}" for name in EXECUTABLES])]


setup(
    name=PACKAGE,
    version="0.1.0",
    description="Offline reinforcement learning for real robots: rosbag2 -> policy -> ONNX -> guarded ROS 2 node",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    python_requires=">=3.10",
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        *_tree("launch"),
        *_tree("config"),
        *_tree("models"),
        *_tree("sim"),
        *_wheel_libexec(),
    ],
    install_requires=[] if os.environ.get("COLCON_PREFIX_PATH") else _requirements("requirements.txt"),
    extras_require={
        "ros": _requirements("requirements-ros.txt"),
        "dev": _requirements("requirements-dev.txt"),
        "bench": _requirements("requirements-bench.txt"),
        "scale": _requirements("requirements-scale.txt"),
    },
    zip_safe=False,
    maintainer="offrl_robot developers",
    maintainer_email="offrl-robot@example.invalid",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "offrl-robot = offrl_robot.cli:main",
            "policy_node = offrl_robot.ros.policy_node:main",
            "sim_node = offrl_robot.ros.sim_node:main",
        ],
    },
)
