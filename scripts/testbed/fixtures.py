"""Pytest fixtures for the test bed; tests/conftest.py loads them as a plugin (``pytest_plugins``).

Each fixture skips (with the ``available()`` reason) where the machine cannot
provide it and tears down everything it made, even when the test fails.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from . import etcd, netns, slurm
from .etcd import EtcdServer
from .netns import Cluster
from .slurm import SlurmCluster

__all__ = ["etcd_factory", "etcd_server", "netns_cluster", "slurm_cluster"]


def _require(*checks: tuple[bool, str]) -> None:
    for ok, why in checks:
        if not ok:
            pytest.skip(why)


@pytest.fixture
def netns_cluster() -> Iterator[Callable[..., Cluster]]:
    """Factory: ``netns_cluster(n=2, host_link=False, subnet=None)`` -> a started ``Cluster``."""
    _require(netns.available())
    with contextlib.ExitStack() as stack:

        def make(n: int = 2, **kwargs: Any) -> Cluster:
            return stack.enter_context(Cluster(n, **kwargs))

        yield make


@pytest.fixture
def etcd_factory() -> Iterator[Callable[..., EtcdServer]]:
    """Factory: ``etcd_factory(cluster=None)`` -> a healthy ``EtcdServer``."""
    _require(etcd.available())
    with contextlib.ExitStack() as stack:

        def make(cluster: Cluster | None = None, **kwargs: Any) -> EtcdServer:
            return stack.enter_context(EtcdServer(cluster, **kwargs))

        yield make


@pytest.fixture
def etcd_server(etcd_factory: Callable[..., EtcdServer]) -> EtcdServer:
    """A healthy etcd on loopback only (``.endpoint``, ``.client_url``)."""
    return etcd_factory()


@pytest.fixture
def slurm_cluster() -> Iterator[Callable[..., SlurmCluster]]:
    """Factory: ``slurm_cluster(n=2, gpus_per_node=0, subnet=None)`` -> an idle ``SlurmCluster``.

    Makes its own host-linked netns ``Cluster`` (``.cluster``); both go at teardown.
    """
    _require(netns.available(), slurm.available())
    with contextlib.ExitStack() as stack:

        def make(n: int = 2, *, subnet: int | None = None, **kwargs: Any) -> SlurmCluster:
            cluster = stack.enter_context(Cluster(n, host_link=True, subnet=subnet))
            return stack.enter_context(SlurmCluster(cluster, **kwargs))

        yield make
