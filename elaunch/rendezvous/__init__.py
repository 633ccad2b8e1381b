"""Rendezvous: how the agents of a job agree on who is in it and in which order."""

from elaunch.rendezvous.api import (
    Endpoint,
    EtcdOptions,
    Membership,
    NodeInfo,
    Rendezvous,
    RendezvousConfig,
    RendezvousInfo,
    RendezvousSettings,
)
from elaunch.rendezvous.factory import create_rendezvous

__all__ = [
    "Endpoint",
    "EtcdOptions",
    "Membership",
    "NodeInfo",
    "Rendezvous",
    "RendezvousConfig",
    "RendezvousInfo",
    "RendezvousSettings",
    "create_rendezvous",
]
