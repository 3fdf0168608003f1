"""`make install-ros`: give an editable (pip -e) install the ament layout `ros2 launch` needs.

A wheel (`pip install .`) and colcon both install share/offrl_robot, the ament index marker and
lib/offrl_robot/NAME themselves (setup.py). An editable install installs none of them (setuptools
skips data_files in editable mode), so `ros2 launch offrl_robot ...` answers "Package
'offrl_robot' not found". This writes that layout into a prefix (the venv) the way colcon's
--symlink-install does: every file below share/offrl_robot/{launch,config,models,sim} and
package.xml is a symlink into the source tree (edits take effect without reinstalling; a new or
removed file needs another run), the marker is an empty file, and lib/offrl_robot/NAME links to
the console script pip wrote in the venv's bin/. Folders are real, files are links: `ros2
launch` finds a launch file with os.walk, which does not enter a linked folder.

    python -m offrl_robot.ament_layout --prefix .venv
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from offrl_robot.errors import ConfigError, OffrlError
from offrl_robot.paths import AMENT_MARKER, EXECUTABLES, PACKAGE, SHARE_FOLDERS


def source_tree() -> Path:
    """The checkout this (editable) package runs from; refused for an installed copy."""
    root = Path(__file__).resolve().parents[1]
    if not ((root / "setup.py").is_file() and (root / "package.xml").is_file()):
        raise ConfigError(
            f"offrl_robot runs from {root}, not from a source tree: a non-editable `pip install .` "
            "already installs the ament layout, nothing to link"
        )
    return root


def _link(target: Path, link: Path) -> None:
    """Point `link` at `target`, replacing an older link; never overwrite a real file or folder."""
    if link.is_symlink():
        link.unlink()
    elif link.is_dir() and not any(link.iterdir()):
        link.rmdir()  # emptied by pip uninstalling an earlier wheel
    elif link.exists():
        raise ConfigError(
            f"{link} exists and is not a link (left by another install?); remove it and run again"
        )
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def _source_files(root: Path, folder: str) -> list[Path]:
    """Files below root/folder, relative to root (what setup.py installs: no caches)."""
    return sorted(
        path.relative_to(root)
        for path in (root / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )


def _prune_stale(share: Path, folder: str) -> None:
    """Drop links whose source file is gone (renamed or deleted since the last run)."""
    base = share / folder
    if base.is_symlink() or not base.is_dir():
        return
    for path in sorted(base.rglob("*"), reverse=True):
        if path.is_symlink() and not path.exists():
            path.unlink()
        elif path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()


def install_layout(prefix: Path, scripts_dir: Path | None = None) -> list[Path]:
    """Write the layout into `prefix`; returns what was written. Idempotent."""
    root = source_tree()
    scripts = Path(scripts_dir or sysconfig.get_path("scripts"))
    missing = [name for name in EXECUTABLES if not os.access(scripts / name, os.X_OK)]
    if missing:
        raise ConfigError(
            f"console scripts {', '.join(missing)} not found in {scripts}; run "
            "`pip install --no-deps -e .` first (or pass --scripts-dir)"
        )
    prefix = prefix.absolute()
    share = prefix / "share" / PACKAGE
    written: list[Path] = []
    for folder in SHARE_FOLDERS:
        if (share / folder).is_symlink():  # a folder link (older layout): os.walk skips it
            (share / folder).unlink()
        _prune_stale(share, folder)
        for rel in _source_files(root, folder):
            _link(root / rel, share / rel)
            written.append(share / rel)
    _link(root / "package.xml", share / "package.xml")
    written.append(share / "package.xml")
    for name in EXECUTABLES:
        _link(scripts / name, prefix / "lib" / PACKAGE / name)
        written.append(prefix / "lib" / PACKAGE / name)
    marker = prefix / AMENT_MARKER
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    written.append(marker)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m offrl_robot.ament_layout", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--prefix", default=sys.prefix, help="install prefix (default: this venv)")
    parser.add_argument(
        "--scripts-dir", default=None, help="where pip put the console scripts (default: this venv's bin/)"
    )
    args = parser.parse_args(argv)
    try:
        install_layout(Path(args.prefix), Path(args.scripts_dir) if args.scripts_dir else None)
    except OffrlError as err:
        print(f"ament_layout: error: {err}", file=sys.stderr)
        return 2
    print(
        f"ament layout of {PACKAGE} in {Path(args.prefix).absolute()}: `ros2 launch {PACKAGE} ...` "
        f"finds it with AMENT_PREFIX_PATH={Path(args.prefix).absolute()}"
    )
    return 0


__all__ = ["install_layout", "main", "source_tree"]

if __name__ == "__main__":
    sys.exit(main())
