"""The repo root is a pip package and an ament_python ROS 2 package at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_package_xml_is_format3_with_ros_exec_depends() -> None:
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "offrl_robot"
    deps = {e.text for e in root.findall("exec_depend")}
    assert {"rclpy", "std_msgs", "sensor_msgs", "geometry_msgs", "diagnostic_msgs", "std_srvs"} <= deps
    assert root.find("export/build_type").text == "ament_python"


def test_ament_resource_marker_and_setup_cfg() -> None:
    assert (REPO / "resource" / "offrl_robot").is_file()
    cfg = (REPO / "setup.cfg").read_text()
    assert "script_dir=$base/lib/offrl_robot" in cfg and "install_scripts=$base/lib/offrl_robot" in cfg


def _setup_kwargs(setup_py: Path, cwd: Path, *argv: str) -> dict:
    """setup()'s data_files and entry points, as `python setup.py ARGV` in `cwd` would pass them."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import runpy, setuptools, json, sys\n"
            "captured = {}\n"
            "setuptools.setup = lambda **kw: captured.update(kw)\n"
            "sys.argv = sys.argv[1:]\n"
            "runpy.run_path(sys.argv[0])\n"
            "print(json.dumps({'data_files': captured['data_files'], 'entry_points': captured['entry_points']}))",
            str(setup_py),
            *argv,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_setup_installs_share_folders_and_entry_points() -> None:
    info = _setup_kwargs(REPO / "setup.py", REPO)
    targets = {target for target, _ in info["data_files"]}
    for folder in ("launch", "config", "models", "sim"):
        assert any(
            t == f"share/offrl_robot/{folder}" or t.startswith(f"share/offrl_robot/{folder}/")
            for t in targets
        ), folder
    assert "share/ament_index/resource_index/packages" in targets
    scripts = {s.split("=")[0].strip() for s in info["entry_points"]["console_scripts"]}
    assert {"offrl-robot", "policy_node", "sim_node"} <= scripts
    # colcon (`setup.py develop|install`): setup.cfg puts the real scripts in lib/offrl_robot,
    # so nothing else may be installed there; a wheel adds its launchers of PREFIX/bin/NAME.
    assert not any(t.startswith("lib/") for t in targets)
    wheel = _setup_kwargs(REPO / "setup.py", REPO, "bdist_wheel")
    launchers = [
        src for target, sources in wheel["data_files"] if target == "lib/offrl_robot" for src in sources
    ]
    assert sorted(Path(src).name for src in launchers) == sorted(scripts)
    for src in launchers:
        assert os.access(REPO / src, os.X_OK), f"{src} must be executable (a wheel keeps the mode)"


def test_setup_runs_through_a_symlink_in_another_folder(tmp_path: Path) -> None:
    """colcon --symlink-install runs setup.py as build/offrl_robot/setup.py, a symlink, from that
    folder, where only declared files are linked: setup.py must find its files from its real path."""
    (tmp_path / "setup.py").symlink_to(REPO / "setup.py")
    info = _setup_kwargs(tmp_path / "setup.py", tmp_path)
    assert info == _setup_kwargs(REPO / "setup.py", REPO)
    assert any(t == "share/offrl_robot/launch" for t, _ in info["data_files"])


def test_colcon_workspace_points_at_package() -> None:
    link = REPO / "ros2_ws" / "src" / "offrl_robot"
    assert link.is_symlink() and link.resolve() == REPO
    assert (REPO / "ros2_ws" / "README.md").is_file()


def test_torch_pinned_everywhere_it_is_required() -> None:
    reqs = (REPO / "requirements.txt").read_text().splitlines()
    torch_lines = [line for line in reqs if line.startswith("torch")]
    assert torch_lines == ["torch==2.13.0"]


def test_cli_unknown_command_is_one_line_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "offrl_robot.cli", "frobnicate"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown command" in proc.stderr
