"""Module layering of the package, read from the source (ast; nothing is imported, no rclpy).

Why: a private helper imported across modules, or two modules importing each other (even
inside a function), ties their internals together so that neither can change alone; and a
layer that reaches upwards (ingestion into the Ray scale-out, the MPC runtime into training)
drags heavy optional dependencies into places that must work without them. Checked here:

(a) no module imports a private name (`_x`, not a dunder) from another offrl_robot module or
    from another test/benchmark module: a shared helper gets a public name in one place;
(b) no import cycle among offrl_robot modules: every import counts, function-level ones and
    `TYPE_CHECKING` ones included; `from pkg import sub` is an edge to the submodule `pkg.sub`,
    and a package `__init__` that re-exports is an edge like any other;
(c) named rules: ingestion does not import the Ray scale-out; the MPC runtime does not import
    training, the algorithms or the exporters; the checkpoint reader does not import the
    algorithms or the trainer; only offrl_robot/ros imports ROS 2 (rclpy and message packages).
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "offrl_robot"
# Folders whose .py files are also checked for private imports (their sibling modules are
# imported by bare name: tests/ and benchmarks/ put their own folder on sys.path).
SCRIPT_FOLDERS = ("tests", "benchmarks", "launch")

# ROS 2 client library and message packages (rosbags, the pure-Python bag reader, is not ROS).
ROS_PACKAGES = frozenset(
    {
        "rclpy",
        "rcl_interfaces",
        "builtin_interfaces",
        "rosgraph_msgs",
        "std_msgs",
        "std_srvs",
        "sensor_msgs",
        "geometry_msgs",
        "diagnostic_msgs",
        "lifecycle_msgs",
        "trajectory_msgs",
        "rosidl_runtime_py",
        "rosbag2_py",
        "launch_ros",
    }
)


@dataclass(frozen=True)
class Import:
    """One imported name: `from module import name` (name None for `import module`)."""

    importer: str  # dotted name of the importing module (tests.x / benchmarks.x for scripts)
    path: Path
    line: int
    module: str  # absolute dotted module the statement names
    name: str | None


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@functools.cache
def package_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((REPO / PACKAGE).rglob("*.py"))}


@functools.cache
def script_modules() -> dict[str, Path]:
    """tests/, benchmarks/ and launch/ files by dotted name (tests.test_x)."""
    return {
        _module_name(p): p
        for folder in SCRIPT_FOLDERS
        if (REPO / folder).is_dir()
        for p in sorted((REPO / folder).glob("*.py"))
    }


def _imports(name: str, path: Path) -> list[Import]:
    """Every import statement of a file, at any depth (functions, TYPE_CHECKING blocks)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(name, path, node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                module = f"{base}.{module}" if module else base
            found += [Import(name, path, node.lineno, module, alias.name) for alias in node.names]
    return found


@functools.cache
def package_imports() -> tuple[Import, ...]:
    return tuple(imp for name, path in package_modules().items() for imp in _imports(name, path))


def _resolve(dotted: str, modules: dict[str, Path]) -> str | None:
    """The module a dotted name lives in (its longest prefix that is a module), if ours."""
    while dotted and dotted not in modules:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def _target(imp: Import, modules: dict[str, Path]) -> str | None:
    """The module an import loads: `from pkg import sub` -> pkg.sub when sub is a module."""
    if imp.name is not None and f"{imp.module}.{imp.name}" in modules:
        return f"{imp.module}.{imp.name}"
    return _resolve(imp.module, modules)


def _where(imp: Import) -> str:
    return f"{imp.path.relative_to(REPO)}:{imp.line}"


def _private_imports() -> list[tuple[Import, str]]:
    """(import, module it comes from) for every private name imported from another of our modules."""
    ours = package_modules()
    scripts = script_modules()
    found = []
    for name, path in {**ours, **scripts}.items():
        folder = name.rpartition(".")[0]
        for imp in _imports(name, path):
            if imp.name is None or not imp.name.startswith("_") or imp.name.startswith("__"):
                continue
            source = _resolve(imp.module, ours) or _resolve(imp.module, scripts)
            if source is None and name in scripts:
                # scripts import their siblings by bare name (`from test_ros_nodes import ...`)
                source = _resolve(f"{folder}.{imp.module}", scripts)
            if source is not None and source != name:
                found.append((imp, source))
    return found


def _strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components with more than one module (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def _cycle_path(component: list[str], first_edge: dict[tuple[str, str], Import]) -> list[Import]:
    """One cycle through the component's first module, as the imports that close it (BFS)."""
    members = set(component)
    start = component[0]
    previous: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for (a, b), imp in sorted(first_edge.items()):
                if a != node or b not in members:
                    continue
                if b == start:
                    chain = [imp]
                    while chain[0].importer != start:
                        chain.insert(0, previous[chain[0].importer])
                    return chain
                if b not in previous:
                    previous[b] = imp
                    following.append(b)
        frontier = following
    return []


def _components() -> list[list[str]]:
    modules = package_modules()
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for imp in package_imports():
        target = _target(imp, modules)
        if target is not None and target != imp.importer:
            edges[imp.importer].add(target)
    return _strongly_connected(edges)


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


# (importer, module prefixes it must not import, the rule with its fix)
LAYERING_RULES: list[tuple[str, tuple[str, ...], str]] = [
    (
        "offrl_robot.data.rosbag_ingest",
        ("offrl_robot.scale",),
        "ingestion must not depend on the Ray scale-out: scale/ calls the per-bag step "
        "(ingest_bag, merge_bag_parts); the `ingest` command (data/ingest_cli.py) picks the path",
    ),
    (
        "offrl_robot.mpc",
        ("offrl_robot.train", "offrl_robot.algos", "offrl_robot.export"),
        "the MPC runtime serves an exported ONNX model: move what it needs into a lower module "
        "(card, runtime, checkpoint) instead of importing training or the exporters",
    ),
    (
        "offrl_robot.checkpoint",
        ("offrl_robot.algos", "offrl_robot.train"),
        "reading a checkpoint must not load the algorithms or the trainer: keep the format in checkpoint.py",
    ),
]


def _rule_breaks() -> list[tuple[Import, str, str]]:
    """(import, the rule with its fix, imported module) for each named layering rule broken."""
    modules = package_modules()
    found = []
    for importer, banned, fix in LAYERING_RULES:
        for imp in package_imports():
            if imp.importer != importer:
                continue
            target = _target(imp, modules)
            if target is not None and any(_within(target, prefix) for prefix in banned):
                found.append((imp, f"{importer} must not import {target}: {fix}", target))
    ros_fix = "ROS 2 imports live only under offrl_robot/ros/: move the ROS code there"
    for imp in package_imports():
        if _within(imp.importer, "offrl_robot.ros"):
            continue
        top = imp.module.partition(".")[0]
        if top in ROS_PACKAGES:
            found.append((imp, f"{imp.importer} imports {imp.module}: {ros_fix}", imp.module))
    return found


# ----------------------------------------------------------------------------------- tests
def test_the_scan_sees_the_package() -> None:
    """The checks below cannot pass vacuously: the scan finds the modules and edges we know."""
    modules = package_modules()
    assert {"offrl_robot.data.rosbag_ingest", "offrl_robot.scale.fleet_ingest", "offrl_robot.mpc"} <= set(
        modules
    )
    edges = {(imp.importer, _target(imp, modules)) for imp in package_imports()}
    assert ("offrl_robot.scale.fleet_ingest", "offrl_robot.data.rosbag_ingest") in edges
    # a function-level import is an edge too (sim/validate imports the MPC loader lazily)
    assert ("offrl_robot.sim.validate", "offrl_robot.mpc") in edges
    # `from pkg import sub` is an edge to the submodule
    assert ("offrl_robot.data.rosbag_ingest", "offrl_robot.data.bag_reader") in edges
    assert len(script_modules()) > 20


def test_strongly_connected_finds_a_function_level_cycle() -> None:
    """The cycle finder itself: a 3-cycle plus a tail is one component; a DAG has none."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert _strongly_connected(edges) == [["a", "b", "c"]]
    assert _strongly_connected({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_private_name_imported_across_modules() -> None:
    errors = [
        f"{_where(imp)}: {imp.importer} imports private {imp.name} from {source}; give it a public "
        f"name where it is defined (or move the shared helper into a module both import)"
        for imp, source in _private_imports()
    ]
    assert not errors, "\n".join(errors)


def test_no_import_cycle_in_the_package() -> None:
    modules = package_modules()
    first_edge: dict[tuple[str, str], Import] = {}
    for imp in package_imports():
        target = _target(imp, modules)
        if target is not None and target != imp.importer:
            first_edge.setdefault((imp.importer, target), imp)
    errors = []
    for component in _components():
        chain = " -> ".join(f"{imp.importer} ({_where(imp)})" for imp in _cycle_path(component, first_edge))
        errors.append(
            f"import cycle among {', '.join(component)}: {chain} -> {component[0]}; move what both "
            f"need into a lower module that both import (an import inside a function still counts)"
        )
    assert not errors, "\n".join(errors)


def test_named_layering_rules() -> None:
    # a renamed or moved module would otherwise leave its rule checking nothing
    missing = [importer for importer, _, _ in LAYERING_RULES if importer not in package_modules()]
    assert not missing, f"layering rules name modules that do not exist: {missing}; update LAYERING_RULES"
    errors = [f"{_where(imp)}: {message}" for imp, message, _target in _rule_breaks()]
    assert not errors, "\n".join(errors)
