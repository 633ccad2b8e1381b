"""Rendezvous: how the agents of a job agree on who is in it and in which order."""

from elaunch.rendezvous.api import (
    Membership,
    NodeInfo,
    Rendezvous,
    RendezvousInfo,
)

__all__ = ["Membership", "NodeInfo", "Rendezvous", "RendezvousInfo"]
