"""Picking a free TCP port on this node (for MASTER_PORT when a NodeInfo says 0)."""

from __future__ import annotations

import socket


def free_port(host: str = "") -> int:
    """A port that is free now on `host` ("": every IPv4 interface); an IPv6 host binds IPv6.

    The usual bind-to-0 race applies, as in torchrun: another process may take it before the
    workers bind it. Raises `OSError` if `host` cannot be bound.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


__all__ = ["free_port"]
