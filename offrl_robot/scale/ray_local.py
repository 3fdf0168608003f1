"""Start (or join) Ray so that nothing of ours listens beyond loopback.

Ray is an optional extra (`pip install .[scale]`), so it is imported here, lazily, and a
missing install is a one-line user error. Locally we start a private single-node Ray on
127.0.0.1: a robot workstation must not expose an unauthenticated cluster to the lab network
just because someone ran a sweep. Two things are needed for that, not one:

- `_node_ip_address="127.0.0.1"` alone is not enough: `ray.init` "resolves" a loopback node IP
  to the machine's external address on Linux (it assumes a multi-node cluster) and its gRPC
  servers then bind that address or all interfaces. Ray only keeps loopback when its
  single-machine mode is on (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, read when Ray is imported
  and inherited by every Ray process we spawn).
- the dashboard is off, usage stats are off, and the session lives in its own temp dir (other
  users' Ray sessions on a shared machine live in /tmp/ray).

`listening_sockets()` reads /proc/net/tcp{,6} for the sockets our process tree listens on, so
tests (and the benchmark) can check the promise instead of trusting it.

With `--address` we join an existing cluster; binding there is that cluster's operators'
business and we change nothing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from offrl_robot.errors import ConfigError, OffrlError

LOOPBACK = "127.0.0.1"
# Ray's shared-memory object store: results of tasks (decoded bags) pass through it. Small on
# purpose: the machines we start on are shared workstations, and Ray spills to disk beyond it.
DEFAULT_OBJECT_STORE_BYTES = 512 * 1024 * 1024
# Environment for a loopback-only local Ray (see the module docstring for why each is needed).
LOCAL_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}
_SINGLE_NODE_FLAG = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class ScaleUnavailable(OffrlError):
    """Ray (the scale extra) is not installed."""


def import_ray() -> ModuleType:
    """Import Ray or explain how to get it."""
    try:
        import ray
    except ImportError as err:
        raise ScaleUnavailable(
            f"Ray is not installed ({err}); install the scale extra: pip install '.[scale]' "
            "(or pip install -r requirements-scale.txt)"
        ) from None
    return ray


def _set_single_node_mode(enabled: bool) -> None:
    """Switch Ray's single-machine mode for this process and the Ray processes it starts."""
    if enabled:
        os.environ.update(LOCAL_RAY_ENV)
    else:
        os.environ.pop(_SINGLE_NODE_FLAG, None)
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:  # Ray already imported: its constant was read at import time
        constants.ENABLE_RAY_CLUSTER = not enabled


@dataclass
class RaySession:
    """A running Ray connection: the module, whether we started it, and where it keeps its files."""

    ray: ModuleType
    local: bool
    temp_dir: Path | None

    @property
    def num_cpus(self) -> int:
        return int(self.ray.cluster_resources().get("CPU", 1))


@contextlib.contextmanager
def ray_session(
    address: str | None = None,
    num_cpus: int | None = None,
    object_store_bytes: int = DEFAULT_OBJECT_STORE_BYTES,
) -> Iterator[RaySession]:
    """Start a private loopback-only Ray (address None) or join `address`; shut down on exit.

    A Ray already initialised in this process (by a caller that set it up itself) is reused
    and left running.
    """
    if num_cpus is not None and num_cpus < 1:
        raise ConfigError(f"number of Ray workers must be >= 1, got {num_cpus}")
    local = not address
    if address:
        _check_reachable(address)
    saved_env = {key: os.environ.get(key) for key in (*LOCAL_RAY_ENV, "PYTHONPATH", "RAY_AUTH_MODE")}
    if address and _has_auth_token():
        # Ray secures clusters with a token (~/.ray/auth_token) but a joining driver only sends
        # it when token mode is named explicitly; without it the head rejects us, for minutes.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    # Before the import (Ray reads it then). A head on loopback (`ray start --head
    # --node-ip-address 127.0.0.1`) is joined in single-machine mode too: otherwise Ray
    # "resolves" 127.0.0.1 to this machine's external address and never reaches the head.
    _set_single_node_mode(local or is_loopback_address(address or ""))
    ray = import_ray()
    if ray.is_initialized():
        _restore_env(saved_env)
        yield RaySession(ray, local, None)
        return
    temp_dir: Path | None = None
    # Workers must import offrl_robot from the same tree as the driver (a source checkout is
    # not necessarily installed on the workers' path); Ray processes inherit this environment.
    package_root = str(Path(__file__).resolve().parents[2])
    pythonpath = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    os.environ["PYTHONPATH"] = pythonpath
    try:
        if local:
            # Short path: Ray puts unix sockets in it (108-byte limit).
            temp_dir = Path(tempfile.mkdtemp(prefix="offrl-ray-", dir="/tmp"))
            ray.init(
                address="local",
                _node_ip_address=LOOPBACK,
                include_dashboard=False,
                num_cpus=num_cpus or os.cpu_count() or 1,
                object_store_memory=object_store_bytes,
                _temp_dir=str(temp_dir),
                log_to_driver=False,
                logging_level="warning",
                configure_logging=True,
            )
        else:
            try:
                ray.init(address=address, log_to_driver=False, logging_level="warning")
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise ConfigError(
                    f"cannot join the Ray cluster at --address {address} ({type(err).__name__}: {err}); "
                    "check the address (head node IP:6379) and that this machine can reach it"
                ) from None
        yield RaySession(ray, local, temp_dir)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
        _restore_env(saved_env)  # leave the caller's environment as it was


def _restore_env(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def split_address(address: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:6379`) of a Ray head; the port defaults to 6379."""
    text = address.removeprefix("ray://")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    try:
        return host, int(port or 6379)
    except ValueError:
        raise ConfigError(f"--address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379)") from None


def _has_auth_token() -> bool:
    """Whether a Ray cluster token is available to send (env var, named file, or Ray's default file)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(named).is_file() if named else (Path.home() / ".ray" / "auth_token").is_file()


def is_loopback_address(address: str) -> bool:
    """Whether a Ray `--address` names this machine over loopback (`localhost`, 127.0.0.0/8, ::1)."""
    if not address:
        return False
    host, _ = split_address(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in one line, at once, if nothing answers at the head's address (Ray itself retries
    for minutes, printing warnings, before it gives up)."""
    host, port = split_address(address)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as err:
        raise ConfigError(
            f"no Ray head answers at --address {address} ({err.strerror or err}); "
            "check the address (head node IP:6379) and that the head is running"
        ) from None


# ---------------------------------------------------------------------------------- socket check
@dataclass(frozen=True)
class Listener:
    """A listening TCP socket and the process that holds it."""

    address: str
    port: int
    pid: int

    @property
    def loopback(self) -> bool:
        addr = ipaddress.ip_address(self.address)
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return addr.is_loopback


def _process_tree(root: int) -> set[int]:
    """`root` and all its descendants (Ray's gcs_server, raylet and workers are ours)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, stack = set(), [root]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, []))
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def _decode_address(hex_addr: str) -> str:
    """/proc/net/tcp{,6} addresses are little-endian 32-bit words in hex."""
    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def listening_sockets(root_pid: int | None = None) -> list[Listener]:
    """TCP sockets in LISTEN state held by `root_pid` (default: this process) or its descendants."""
    owner: dict[int, int] = {}
    for pid in _process_tree(root_pid or os.getpid()):
        for inode in _socket_inodes(pid):
            owner[inode] = pid
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as handle:
            next(handle)
            for line in handle:
                cols = line.split()
                local, state, inode = cols[1], cols[3], int(cols[9])
                if state != "0A" or inode not in owner:  # 0A = LISTEN
                    continue
                addr, port = local.split(":")
                found.append(Listener(_decode_address(addr), int(port, 16), owner[inode]))
    return found


def exposed_listeners(root_pid: int | None = None) -> list[Listener]:
    """Listening sockets of our process tree that are reachable from outside this machine."""
    return [sock for sock in listening_sockets(root_pid) if not sock.loopback]
