"""Which cgroups an agent may remove: pure, scripted names and liveness."""

from __future__ import annotations

import pytest

from elaunch.cgroup import stale_cgroups


@pytest.mark.timeout(10)
def test_only_elaunch_cgroups_of_agents_that_are_gone_are_stale() -> None:
    names = ["elaunch-10", "elaunch-11", "elaunch-", "elaunch-x1", "slurm-12", "cgroup.procs", "elaunch-12"]
    assert stale_cgroups(names, lambda pid: pid == 11) == ["elaunch-10", "elaunch-12"]
    assert stale_cgroups(names, lambda pid: True) == []
