"""Kernel-side time limits on a c10d TCPStore client's socket, so that its calls are bounded on the
calling thread.

c10d sets no timeout on a client socket (torch's `TCPStore.cpp`: only `wait` polls, every other
read is a blocking `recv`): when the link to the store is cut (packets vanish, nothing is closed)
or the server hangs, a call blocks until TCP gives up, about 15 minutes later. Python cannot reach
that socket through `torch.distributed.TCPStore`, so it is found in `/proc/self/fd`: the one
socket connected to the store's port that appeared while the client was being built (`build`).
On it `SO_RCVTIMEO` and `SO_SNDTIMEO` are set (`ClientSocket.set_timeout`): a read or a write that
makes no progress for that long fails inside c10d with `DistNetworkError("Socket Timeout")`.

The alternative, running every call on a helper thread and waiting for its answer with a deadline
(what `store._BoundedCaller` does when the socket cannot be found), costs two thread switches per
call: a third of a node's CPU in a rendezvous round, and with 128 nodes to a process (the
benchmark's harness) two thirds of the round's time.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_FD_DIR = "/proc/self/fd"
_building = threading.Lock()
_BUILD_LOCK_WAIT = 30.0
"""Seconds a build waits for another thread's build to finish before it goes on without finding
its socket (a build stuck in c10d's handshake must not hold up every later one)."""


class ClientSocket:
    """One c10d client's socket, named by its descriptor and its inode (`socket:[N]`): the
    descriptor is only used while it still names that socket (the client closes it when it is
    garbage-collected, and the number may be reused)."""

    __slots__ = ("fd", "link")

    def __init__(self, fd: int, link: str) -> None:
        self.fd = fd
        self.link = link

    def set_timeout(self, seconds: float) -> bool:
        """Bound each read and write on the socket to `seconds` (at least 1 ms). False when the
        descriptor no longer names this socket or the options cannot be set."""
        try:
            if os.readlink(f"{_FD_DIR}/{self.fd}") != self.link:
                return False
            dup = os.dup(self.fd)
        except OSError:
            return False
        with socket.socket(fileno=dup) as s:  # closes the duplicate only
            us = max(1000, int(seconds * 1e6))
            tv = struct.pack("ll", us // 1_000_000, us % 1_000_000)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
            except OSError:
                return False
        return True


def _sockets() -> set[tuple[int, str]]:
    """This process's sockets as (descriptor, `socket:[inode]`); empty without /proc."""
    out: set[tuple[int, str]] = set()
    try:
        names = os.listdir(_FD_DIR)
    except OSError:
        return out
    for name in names:
        with contextlib.suppress(OSError, ValueError):
            link = os.readlink(f"{_FD_DIR}/{name}")
            if link.startswith("socket:"):
                out.add((int(name), link))
    return out


def _connects_to(fd: int, port: int) -> bool:
    """True if `fd` is a TCP socket connected to `port` from another port (a server's accepted
    connections have `port` on their own side)."""
    try:
        dup = os.dup(fd)
    except OSError:
        return False
    with socket.socket(fileno=dup) as s:
        if s.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        try:
            return bool(s.getpeername()[1] == port and s.getsockname()[1] != port)
        except OSError:
            return False


def find_new_client(before: set[tuple[int, str]], port: int) -> ClientSocket | None:
    """The one socket connected to `port` that is not in `before` (None unless exactly one)."""
    found = [(fd, link) for fd, link in _sockets() - before if _connects_to(fd, port)]
    return ClientSocket(*found[0]) if len(found) == 1 else None


def build(make: Callable[[], T], port: Callable[[T], int]) -> tuple[T, ClientSocket | None]:
    """Run `make` (which builds one TCPStore client, maybe a server too) and find the client's
    socket: `(made, socket)`, the socket None when it cannot be told apart (another connection
    to the same port was made meanwhile, no /proc). `port(made)` is the store's port (known
    only once a server on port 0 is up). Builds in one process are serialised so that each finds
    its own; `make`'s exceptions propagate."""
    locked = _building.acquire(timeout=_BUILD_LOCK_WAIT)
    try:
        before = _sockets()
        made = make()
        return made, find_new_client(before, port(made))
    finally:
        if locked:
            _building.release()  # a plain Lock: released even if `make` left a thread stuck


__all__ = ["ClientSocket", "build", "find_new_client"]
