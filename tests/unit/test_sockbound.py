"""Finding a client's socket among the process's descriptors, and bounding it (sockbound)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from elaunch.rendezvous import sockbound


@pytest.fixture
def server() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as s:
        yield s


def _connect(server: socket.socket) -> tuple[socket.socket, socket.socket]:
    """A client connection to `server` and the server's side of it (accepted in this process too)."""
    client = socket.create_connection(server.getsockname()[:2], timeout=5)
    accepted, _ = server.accept()
    return client, accepted


@pytest.mark.timeout(10)
def test_the_one_new_client_socket_is_found_not_the_servers_side(server: socket.socket) -> None:
    port = server.getsockname()[1]
    made, sock = sockbound.build(lambda: _connect(server), lambda _: port)
    client, accepted = made
    with client, accepted:
        assert sock is not None and sock.fd == client.fileno()
        assert sock.set_timeout(1.5)
        tv = client.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.calcsize("ll"))
        assert struct.unpack("ll", tv) == (1, 500_000)
        tv = client.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.calcsize("ll"))
        assert struct.unpack("ll", tv) == (1, 500_000)
    assert not sock.set_timeout(1.0), "the descriptor no longer names that socket"


@pytest.mark.timeout(10)
def test_two_new_connections_to_the_port_are_not_told_apart(server: socket.socket) -> None:
    port = server.getsockname()[1]
    made, sock = sockbound.build(lambda: (_connect(server), _connect(server)), lambda _: port)
    try:
        assert sock is None  # the caller falls back to a helper thread per call
    finally:
        for pair in made:
            for s in pair:
                s.close()


@pytest.mark.timeout(10)
def test_a_connection_made_before_is_not_new(server: socket.socket) -> None:
    port = server.getsockname()[1]
    client, accepted = _connect(server)
    with client, accepted:
        _, sock = sockbound.build(lambda: None, lambda _: port)
        assert sock is None


@pytest.mark.timeout(10)
def test_a_failing_build_raises_and_leaves_the_lock_free(server: socket.socket) -> None:
    def fail() -> None:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError, match="no"):
        sockbound.build(fail, lambda _: 0)
    made, sock = sockbound.build(lambda: _connect(server), lambda _: server.getsockname()[1])
    for s in made:
        s.close()
    assert sock is not None
