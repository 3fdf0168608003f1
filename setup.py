"""offrl_robot: offline RL for real robots, from rosbag2 logs to a guarded ROS 2 node.

The repository root is at once a pip package and an ament_python ROS 2 package, so the same
`setup.py` serves `pip install .` (a venv with the ROS 2 PyPI wheels) and `colcon build`
(a system ROS 2 install).
"""

from __future__ import annotations

import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "offrl_robot"


def _requirements(path: str) -> list[str]:
    """Read pinned requirements, skipping comments, so pins live in one place."""
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, path), encoding="utf-8") as handle:
        lines = (line.split(" #", 1)[0].strip() for line in handle)
        return [line for line in lines if line and not line.startswith("#")]


def _tree(folder: str) -> list[tuple[str, list[str]]]:
    """Install every file below `folder` into share/offrl_robot/<same relative path>."""
    entries: dict[str, list[str]] = {}
    for path in sorted(glob(os.path.join(folder, "**", "*"), recursive=True)):
        if os.path.isfile(path) and "__pycache__" not in path:
            target = os.path.join("share", PACKAGE, os.path.dirname(path))
            entries.setdefault(target, []).append(path)
    return sorted(entries.items())


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
