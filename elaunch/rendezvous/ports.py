"""Picking a free TCP port on this node (for MASTER_PORT when a NodeInfo says 0)."""

from __future__ import annotations

import _socket  # socket's C core: `import socket` costs 2-3 ms of start-up (its enums), this 0.5


def free_port(host: str = "") -> int:
    """A port that is free now on `host` ("": every IPv4 interface); an IPv6 host binds IPv6.

    The usual bind-to-0 race applies, as in torchrun: another process may take it before the
    workers bind it. Raises `OSError` if `host` cannot be bound.
    """
    s = _socket.socket(_socket.AF_INET6 if ":" in host else _socket.AF_INET, _socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        return int(s.getsockname()[1])
    finally:
        s.close()


__all__ = ["free_port"]
