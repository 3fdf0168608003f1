"""The launch files are real ROS 2 launch files, and everything they reference exists.

`launch`/`launch_ros` are not installable from PyPI here, so the build test skips without them
(tests/test_ros_install.py runs the real `ros2 launch` from ../shared/ros2_launch); the reference
test always runs: it parses the launch files (ast) and checks every executable (a console_scripts
entry point of setup.py), parameter file (exists and is installed to share/offrl_robot), launch
argument (declared before use, also across includes) and parameter name (declared by the node)
against the repository, so a rename cannot silently break `ros2 launch offrl_robot ...` for users
with a ROS install.

Argument leaks: IncludeLaunchDescription does not scope launch arguments, so an argument the
including file declares reaches the included file under the same name. Every name the two files
both declare must therefore be passed explicitly in `launch_arguments` (policy.launch.py's `model`,
the .onnx, once reached sim_node as its MJCF).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILES = ("policy.launch.py", "sim.launch.py")
NODE_MODULES = {"policy_node": "offrl_robot.ros.policy_node", "sim_node": "offrl_robot.ros.sim_node"}
# Parameters every rclpy node declares itself.
BUILTIN_PARAMETERS = {"use_sim_time"}


@dataclass
class LaunchRefs:
    declared: list[str] = field(default_factory=list)
    used: set[str] = field(default_factory=set)
    nodes: list[dict[str, object]] = field(default_factory=list)
    share_paths: list[str] = field(default_factory=list)
    includes: list[tuple[str, list[str]]] = field(default_factory=list)


def _name(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def _share_path(node: ast.AST) -> str | None:
    """PathJoinSubstitution([share, "config", "x.yaml"]) -> "config/x.yaml" (string parts only)."""
    if isinstance(node, ast.Call) and _name(node) == "PathJoinSubstitution" and node.args:
        parts = node.args[0]
        if isinstance(parts, ast.List):
            strings = [
                e.value for e in parts.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)
            ]
            return "/".join(strings)
    return None


def parse_launch_file(path: Path) -> LaunchRefs:
    tree = ast.parse(path.read_text(), filename=str(path))
    refs = LaunchRefs()
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions, f"{path.name} lacks generate_launch_description()"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node)
        first = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
        if name == "DeclareLaunchArgument":
            refs.declared.append(first)
        elif name == "LaunchConfiguration":
            refs.used.add(first)
        elif name == "PathJoinSubstitution":
            refs.share_paths.append(_share_path(node))
        elif name in ("Node", "LifecycleNode"):
            kw = {k.arg: k.value for k in node.keywords}
            info: dict[str, object] = {
                key: kw[key].value
                for key in ("package", "executable", "name")
                if isinstance(kw.get(key), ast.Constant)
            }
            params: list[str] = []
            if isinstance(kw.get("parameters"), ast.List):
                for element in kw["parameters"].elts:
                    if isinstance(element, ast.Dict):
                        params += [k.value for k in element.keys if isinstance(k, ast.Constant)]
            info["parameter_names"] = params
            refs.nodes.append(info)
        elif name == "IncludeLaunchDescription":
            target = (
                _share_path(node.args[0].args[0])
                if node.args and isinstance(node.args[0], ast.Call)
                else None
            )
            args: list[str] = []
            for kw in node.keywords:
                if kw.arg == "launch_arguments" and isinstance(kw.value, ast.Call):
                    mapping = kw.value.func.value if isinstance(kw.value.func, ast.Attribute) else None
                    if isinstance(mapping, ast.Dict):
                        args = [k.value for k in mapping.keys if isinstance(k, ast.Constant)]
            refs.includes.append((target or "", args))
    return refs


@pytest.fixture(scope="module")
def setup_info() -> dict[str, object]:
    """setup.py's data_files and entry points, captured without building anything."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import runpy, setuptools, json\n"
            "captured = {}\n"
            "setuptools.setup = lambda **kw: captured.update(kw)\n"
            "runpy.run_path('setup.py')\n"
            "print(json.dumps({'data_files': captured['data_files'], 'entry_points': captured['entry_points']}))",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def _installed_files(setup_info: dict[str, object]) -> set[str]:
    """Repo-relative paths of the files setup.py installs under share/offrl_robot."""
    return {
        src
        for target, sources in setup_info["data_files"]
        if target.startswith("share/offrl_robot")
        for src in sources
    }


def _declared_parameters(executable: str) -> set[str]:
    module = importlib.import_module(NODE_MODULES[executable])
    return set(module.PARAMETERS) | BUILTIN_PARAMETERS


def leaked_arguments(includer: LaunchRefs, included: LaunchRefs, passed: list[str]) -> set[str]:
    """Names both files declare that the include does not pass explicitly."""
    return (set(includer.declared) & set(included.declared)) - set(passed)


@pytest.mark.parametrize("launch_file", LAUNCH_FILES)
def test_launch_file_references_exist(launch_file: str, setup_info: dict[str, object]) -> None:
    refs = parse_launch_file(REPO / "launch" / launch_file)
    installed = _installed_files(setup_info)
    assert f"launch/{launch_file}" in installed, f"{launch_file} is not installed to share/offrl_robot/launch"

    # Launch arguments: declared once, every use declared, every declaration used.
    assert len(refs.declared) == len(set(refs.declared)), refs.declared
    assert refs.used <= set(refs.declared), f"undeclared launch arguments {refs.used - set(refs.declared)}"
    assert set(refs.declared) <= refs.used, f"declared but unused {set(refs.declared) - refs.used}"

    # Executables: console_scripts entry points of this package, with the node names the params files use.
    scripts = {s.split("=")[0].strip() for s in setup_info["entry_points"]["console_scripts"]}
    assert refs.nodes, f"{launch_file} starts no Node"
    for node in refs.nodes:
        assert node["package"] == "offrl_robot"
        assert node["executable"] in scripts, f"{node['executable']} is not a console_scripts entry point"
        assert node["name"] == node["executable"], "node name must match the params files' top-level key"
        unknown = set(node["parameter_names"]) - _declared_parameters(node["executable"])
        assert not unknown, (
            f"{launch_file} sets parameters {unknown} that {node['executable']} does not declare"
        )

    # Files under share/offrl_robot: parameter files and launch files exist in the repo and are installed.
    for rel in refs.share_paths:
        folder = rel.split("/")[0]
        assert any(t == f"share/offrl_robot/{folder}" for t, _ in setup_info["data_files"]), rel
        if folder in ("config", "launch"):
            assert (REPO / rel).is_file(), f"{launch_file} references {rel}, which does not exist"
            assert rel in installed, f"{rel} is not installed by setup.py"

    # Included launch files: exist, every argument passed is declared there, and nothing leaks.
    for target, args in refs.includes:
        assert (REPO / target).is_file(), target
        included = parse_launch_file(REPO / target)
        assert set(args) <= set(included.declared), (
            f"{target} does not declare {set(args) - set(included.declared)}"
        )
        leaks = leaked_arguments(refs, included, args)
        assert not leaks, (
            f"{launch_file} declares {sorted(leaks)}, which {target} also declares but is not passed "
            "in launch_arguments: the includer's value leaks into the included file"
        )


def test_leak_check_catches_a_shared_argument(tmp_path: Path) -> None:
    """The leak check itself can fail: today's sim.launch.py included without passing `model`."""
    parent = tmp_path / "parent.launch.py"
    parent.write_text(
        "def generate_launch_description():\n"
        "    return LaunchDescription([\n"
        "        DeclareLaunchArgument('model', default_value='policy.onnx'),\n"
        "        DeclareLaunchArgument('sim_params_file', default_value='sim.yaml'),\n"
        "        IncludeLaunchDescription(\n"
        "            PythonLaunchDescriptionSource(PathJoinSubstitution([share, 'launch', 'sim.launch.py'])),\n"
        "            launch_arguments={'params_file': LaunchConfiguration('sim_params_file')}.items()),\n"
        "    ])\n"
    )
    refs = parse_launch_file(parent)
    [(target, passed)] = refs.includes
    assert target == "launch/sim.launch.py" and passed == ["params_file"]
    included = parse_launch_file(REPO / target)
    assert leaked_arguments(refs, included, passed) == {"model"}


@pytest.mark.parametrize(
    ("params_file", "node_name"), [("policy.yaml", "policy_node"), ("sim.yaml", "sim_node")]
)
def test_params_files_only_set_declared_parameters(params_file: str, node_name: str) -> None:
    data = yaml.safe_load((REPO / "config" / params_file).read_text())
    assert list(data) == [node_name], f"{params_file} must hold parameters for {node_name} only"
    params = data[node_name]["ros__parameters"]
    unknown = set(params) - _declared_parameters(node_name)
    assert not unknown, f"config/{params_file} sets parameters {unknown} that {node_name} does not declare"


def test_checker_catches_an_undeclared_argument(tmp_path: Path) -> None:
    """The reference check itself can fail: a launch file using an undeclared argument is caught."""
    bad = tmp_path / "bad.launch.py"
    bad.write_text(
        "from launch_ros.actions import Node\n"
        "def generate_launch_description():\n"
        "    return LaunchDescription([Node(package='offrl_robot', executable='policy_node',\n"
        "        name='policy_node', parameters=[{'model_pth': LaunchConfiguration('model')}])])\n"
    )
    refs = parse_launch_file(bad)
    assert refs.used == {"model"} and refs.declared == []
    assert refs.nodes[0]["parameter_names"] == ["model_pth"]
    assert "model_pth" not in _declared_parameters("policy_node")


@pytest.mark.parametrize("launch_file", LAUNCH_FILES)
def test_launch_description_builds(
    launch_file: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a ROS install, or ../shared/ros2_launch, the files build a LaunchDescription."""
    if importlib.util.find_spec("launch_ros") is None:
        tools = request.getfixturevalue("ros2_launch_tools")  # skips when absent
        monkeypatch.syspath_prepend(str(tools / "site-packages"))
    # launch_ros imports the real `launch`; a bare `import launch` could find this repo's launch/ folder.
    pytest.importorskip("launch_ros", reason="ROS 2 launch/launch_ros are not installed (not on PyPI)")
    from launch.actions import DeclareLaunchArgument
    from launch_ros.actions import Node

    from launch import LaunchDescription

    spec = importlib.util.spec_from_file_location(
        launch_file.replace(".", "_"), REPO / "launch" / launch_file
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert isinstance(description, LaunchDescription)
    arguments = {e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert arguments == set(parse_launch_file(REPO / "launch" / launch_file).declared)
    assert any(isinstance(e, Node) for e in description.entities)
