"""Where the package's data files live: the source tree or an installed `share/offrl_robot`.

In a checkout, `launch/`, `config/`, `models/` and `sim/` sit beside `offrl_robot/`. An install
puts them in `PREFIX/share/offrl_robot` (a pip wheel: PREFIX is the venv or `--prefix`; colcon:
`install/offrl_robot`), which is also what `ros2 launch` finds through the ament index. Code that
needs a default file (the arm's MJCF, the gate's thresholds, the demo's configs) asks here, so
every install route resolves the same way and the search order is written once:

1. the source tree this module was imported from (an editable install or a checkout, and a
   colcon `--symlink-install`, whose build folder links back to it);
2. the install this module belongs to: `share/offrl_robot` in an ancestor of the module's
   folder (`PREFIX/lib/pythonX.Y/site-packages/offrl_robot` -> `PREFIX`), so the data matches
   the code that runs, whatever else is on the path;
3. every prefix on `AMENT_PREFIX_PATH` holding the ament index marker (what ament_index_python
   does; no ROS import needed for it);
4. `sys.prefix` (a venv the package was pip-installed into).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from offrl_robot.errors import ConfigError

PACKAGE = "offrl_robot"
# Installed below share/offrl_robot by every route (setup.py data_files); `ros2 launch` needs them.
SHARE_FOLDERS = ("launch", "config", "models", "sim")
EXECUTABLES = ("policy_node", "sim_node", "offrl-robot")
AMENT_MARKER = Path("share", "ament_index", "resource_index", "packages", PACKAGE)


def _is_share(root: Path) -> bool:
    """A source tree and an installed share folder both hold package.xml (ament requires it)."""
    return (root / "package.xml").is_file()


def share_roots() -> list[Path]:
    """Candidate data roots, best first (see the module docstring for the order and why)."""
    module_dir = Path(__file__).absolute().parent
    candidates = [module_dir.resolve().parent]
    candidates += [parent / "share" / PACKAGE for parent in module_dir.parents]
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix and (Path(prefix) / AMENT_MARKER).is_file():
            candidates.append(Path(prefix) / "share" / PACKAGE)
    candidates.append(Path(sys.prefix) / "share" / PACKAGE)
    roots: list[Path] = []
    for root in candidates:
        if root not in roots and _is_share(root):
            roots.append(root)
    return roots


def share_path(*parts: str, hint: str = "reinstall offrl_robot") -> Path:
    """`share/offrl_robot/<parts>` (or the source tree's `<parts>`): the first root that has it.

    Raises ConfigError naming every place looked in and `hint` (what the user can do instead)."""
    roots = share_roots()
    for root in roots:
        path = root.joinpath(*parts)
        if path.exists():
            return path
    relative = "/".join(parts)
    looked = ", ".join(str(root) for root in roots) or "no source tree or share/offrl_robot found"
    raise ConfigError(f"{relative} not found in the package's data (looked in {looked}); {hint}")


__all__ = ["AMENT_MARKER", "EXECUTABLES", "PACKAGE", "SHARE_FOLDERS", "share_path", "share_roots"]
