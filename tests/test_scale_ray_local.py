"""The loopback check the Ray tests rely on: it must see our listening sockets (v4 and v6) and
tell loopback from everything else, or an empty "exposed" list would prove nothing. Also how
`--address` is read and that a head that does not answer is one error line, not minutes of retries."""

from __future__ import annotations

import socket

import pytest

from offrl_robot.errors import ConfigError
from offrl_robot.scale.ray_local import (
    Listener,
    exposed_listeners,
    is_loopback_address,
    listening_sockets,
    ray_session,
    split_address,
)


def test_listening_sockets_finds_ours_with_address_and_pid() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as v4, socket.socket(socket.AF_INET6) as v6:
        v4.bind(("127.0.0.1", 0))
        v4.listen()
        v6.bind(("::1", 0))
        v6.listen()
        found = {(s.address, s.port) for s in listening_sockets()}
        assert ("127.0.0.1", v4.getsockname()[1]) in found
        assert ("::1", v6.getsockname()[1]) in found
        assert all(s.port not in (v4.getsockname()[1], v6.getsockname()[1]) for s in exposed_listeners())


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.5.0.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.2", False),
        ("::ffff:10.0.0.5", False),
    ],
)
def test_loopback_classification(address: str, loopback: bool) -> None:
    assert Listener(address, 1234, 1).loopback is loopback


def test_joining_an_address_where_no_head_answers_fails_at_once_in_one_line() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    match = f"no Ray head answers at --address 127.0.0.1:{port}"
    with pytest.raises(ConfigError, match=match) as err, ray_session(address=f"127.0.0.1:{port}"):
        pytest.fail("joined a cluster that does not exist")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("address", "host", "port", "loopback"),
    [
        ("127.0.0.1:6390", "127.0.0.1", 6390, True),
        ("localhost", "localhost", 6379, True),
        ("[::1]:7000", "::1", 7000, True),
        ("10.0.0.5:6379", "10.0.0.5", 6379, False),
        ("ray://head.lab:10001", "head.lab", 10001, False),
    ],
)
def test_head_addresses_are_parsed(address: str, host: str, port: int, loopback: bool) -> None:
    assert split_address(address) == (host, port)
    assert is_loopback_address(address) is loopback
