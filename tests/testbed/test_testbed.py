"""Tests of the test bed itself: fake hosts, faults, etcd, SLURM, and clean teardown."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scripts.testbed import TestbedError, WaitTimeout, free_port, wait_until
from scripts.testbed import netns as tb_netns
from scripts.testbed.etcd import EtcdServer
from scripts.testbed.netns import Cluster
from scripts.testbed.procs import alive, cmdline, descendants, kill_tree, pids_mentioning, remove_orphaned_dirs
from scripts.testbed.slurm import SlurmCluster

PY = sys.executable
PORT = 7070

SERVER = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[1])))
    s.listen()
    s.settimeout(120)  # bounded: exits by itself if the test forgets it
    for _ in range(1000):
        c, _ = s.accept()
        c.sendall(socket.gethostname().encode())
        c.close()
    """
)

CLIENT = textwrap.dedent(
    """
    import socket, sys
    try:
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as c:
            print(c.recv(100).decode())
    except OSError as e:
        print(type(e).__name__, e.errno)
        sys.exit(1)
    """
)

ETCD_CLIENT = textwrap.dedent(
    """
    import sys, etcd3gw
    c = etcd3gw.client(host=sys.argv[1], port=int(sys.argv[2]), timeout=5)
    c.put("from-host", sys.argv[3])
    print(c.get("root-key")[0].decode())
    """
)


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[set[int]]:
    """Yield a set for PIDs a test saw; afterwards assert nothing of ours remains."""
    seen: set[int] = set()
    yield seen
    me = f"elt{os.getpid():x}x"
    assert [ns for ns in tb_netns.list_namespaces() if ns.startswith(me)] == []
    assert glob.glob(f"/etc/netns/{me}*") == []
    links = subprocess.run(["ip", "-o", "link", "show"], check=False, capture_output=True, text=True).stdout
    assert me not in links
    tmp = tempfile.gettempdir()
    assert glob.glob(os.path.join(tmp, f"elt-*-{os.getpid()}-*")) == []
    assert [p for p in seen if alive(p)] == []
    assert descendants([os.getpid()]) == []


def client(cl: Cluster, i: int, host: str, timeout: float = 2.0) -> subprocess.CompletedProcess[str]:
    """Connect from host ``i`` to ``host:PORT``; stdout is the server's hostname or the error."""
    return cl.run(i, [PY, "-c", CLIENT, host, str(PORT), str(timeout)], timeout=timeout + 20)


def reaches(cl: Cluster, i: int, host: str, expect: str) -> bool:
    res = client(cl, i, host)
    return res.returncode == 0 and res.stdout.strip() == expect


@pytest.mark.timeout(60)
def test_hosts_reach_each_other_and_link_faults(netns_cluster: Callable[..., Cluster], no_leftovers: set[int]) -> None:
    cl = netns_cluster(2)
    assert cl.run(1, ["hostname"], check=True).stdout.strip() == "host1"
    server = cl.popen(1, [PY, "-c", SERVER, str(PORT)])
    no_leftovers.update([server.pid, *cl.pids(1)])
    wait_until(lambda: reaches(cl, 2, "host1", "host1"), 15, "host2 to reach host1 by name", max_interval=0.5)

    cl.link_down(1)
    res = client(cl, 2, "host1", timeout=1.0)
    assert res.returncode == 1 and res.stdout.startswith("TimeoutError"), res
    cl.link_up(1)
    wait_until(lambda: reaches(cl, 2, "host1", "host1"), 15, "host1 back after link_up", max_interval=0.5)

    cl.eth_down(2)
    res = client(cl, 2, "host1", timeout=5.0)
    assert res.returncode == 1 and "101" in res.stdout, res  # ENETUNREACH at once
    cl.eth_up(2)
    wait_until(lambda: reaches(cl, 2, "host1", "host1"), 15, "host2 back after eth_up", max_interval=0.5)

    ok, _ = tb_netns.nft_available()
    if ok:
        cl.blackhole(1)
        res = client(cl, 2, "host1", timeout=1.0)
        assert res.returncode == 1 and res.stdout.startswith("TimeoutError"), res
        cl.unblackhole(1)
        wait_until(lambda: reaches(cl, 2, "host1", "host1"), 15, "host1 back after unblackhole", max_interval=0.5)


@pytest.mark.timeout(30)
def test_close_kills_everything_and_is_idempotent(no_leftovers: set[int]) -> None:
    ok, why = tb_netns.available()
    if not ok:
        pytest.skip(why)
    cl = Cluster(2).start()
    sleeper = cl.popen(2, ["sh", "-c", "sleep 300 & sleep 300 & wait"])
    wait_until(lambda: len(cl.pids(2)) == 3, 10, "3 processes in host2", max_interval=0.5)
    no_leftovers.update(cl.pids(2))
    cl.close()
    cl.close()
    assert sleeper.poll() is not None
    assert not any(ns.startswith(cl.prefix) for ns in tb_netns.list_namespaces())


@pytest.mark.timeout(30)
def test_partial_setup_failure_leaves_nothing(
    netns_cluster: Callable[..., Cluster],
) -> None:
    first = netns_cluster(1, host_link=True)
    other = netns_cluster(1, host_link=True)  # subnet chosen automatically: no clash
    assert other.subnet != first.subnet and other.host_addr != first.host_addr
    second = Cluster(2, host_link=True, subnet=first.subnet)  # taken: fail, undo itself
    with pytest.raises(TestbedError, match="already in use"):
        second.start()
    assert not any(ns.startswith(second.prefix) for ns in tb_netns.list_namespaces())
    assert glob.glob(f"/etc/netns/{second.prefix}-*") == []


@pytest.mark.timeout(60)
def test_cleanup_stale_after_killed_owner(no_leftovers: set[int]) -> None:
    ok, why = tb_netns.available()
    if not ok:
        pytest.skip(why)
    root = str(Path(tb_netns.__file__).resolve().parents[2])  # `python -c` imports from its cwd
    code = (
        "import time; import scripts.testbed.netns as N\n"
        "c = N.Cluster(1).start(); p = c.popen(1, ['sleep', '300'])\n"
        "print(c.prefix, p.pid, flush=True); time.sleep(300)\n"
    )
    owner = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, text=True, cwd=root)
    assert owner.stdout is not None
    prefix, pid = owner.stdout.readline().split()
    no_leftovers.update([owner.pid, int(pid)])
    owner.kill()
    owner.wait(timeout=10)
    owner.stdout.close()
    assert alive(int(pid))  # the orphan lives on in its namespace
    assert tb_netns.cleanup_stale(prefix) == [prefix]
    assert not alive(int(pid))
    assert not any(ns.startswith(prefix) for ns in tb_netns.list_namespaces())


@pytest.mark.timeout(60)
def test_etcd_from_root_and_from_fake_host(
    etcd_server: EtcdServer,
    netns_cluster: Callable[..., Cluster],
    etcd_factory: Callable[..., EtcdServer],
    no_leftovers: set[int],
) -> None:
    etcd3gw = pytest.importorskip("etcd3gw")
    c = etcd3gw.client(host="127.0.0.1", port=etcd_server.port, timeout=5)
    assert c.put("k", "v")
    assert c.get("k") == [b"v"]
    assert etcd_server.pid is not None
    no_leftovers.add(etcd_server.pid)

    cl = netns_cluster(2, host_link=True)
    e = etcd_factory(cl)
    assert e.pid is not None
    no_leftovers.add(e.pid)
    root = etcd3gw.client(host="127.0.0.1", port=e.port, timeout=5)
    root.put("root-key", "hello-hosts")
    res = cl.run(1, [PY, "-c", ETCD_CLIENT, "host0", str(e.port), "from-host1"], timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "hello-hosts"
    assert root.get("from-host") == [b"from-host1"]


@pytest.mark.timeout(90)
def test_slurm_two_nodes_srun(
    slurm_cluster: Callable[..., SlurmCluster], tmp_path: Path, no_leftovers: set[int]
) -> None:
    s = slurm_cluster(2)
    no_leftovers.update(s.pids)
    no_leftovers.update(p for i in (1, 2) for p in s.cluster.pids(i))
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\nsrun -N2 hostname\n")
    out = tmp_path / "job.out"
    job = s.sbatch(str(script), "-N2", "-o", str(out))
    assert s.wait_job(job, timeout=60) == "COMPLETED", out.read_text()
    assert sorted(out.read_text().split()) == ["host1", "host2"]


@pytest.mark.timeout(90)
def test_slurm_fake_gpus_and_cancel(
    slurm_cluster: Callable[..., SlurmCluster], tmp_path: Path, no_leftovers: set[int]
) -> None:
    s = slurm_cluster(1, gpus_per_node=2)
    no_leftovers.update(s.pids)
    script = tmp_path / "gpu.sh"
    script.write_text("#!/bin/sh\nsrun --gres=gpu:2 sh -c 'echo $CUDA_VISIBLE_DEVICES $SLURM_GPUS_ON_NODE'\n")
    out = tmp_path / "gpu.out"
    job = s.sbatch(str(script), "--gres=gpu:2", "-o", str(out))
    assert s.wait_job(job, timeout=60) == "COMPLETED", out.read_text()
    assert out.read_text().split() == ["0,1", "2"]

    long = tmp_path / "long.sh"
    long.write_text("#!/bin/sh\nsrun sleep 300\n")
    job = s.sbatch(str(long), "-o", str(tmp_path / "long.out"))
    wait_until(lambda: s.job_state(job) == "RUNNING", 30, f"job {job} running", max_interval=0.5)
    s.scancel(job)
    assert s.wait_job(job, timeout=30) == "CANCELLED"


@pytest.mark.timeout(10)
def test_wait_until_reports_what() -> None:
    with pytest.raises(WaitTimeout, match="waiting for the impossible"):
        wait_until(lambda: False, 0.2, "the impossible")
    assert wait_until(lambda: 42, 1, "an answer") == 42


@pytest.mark.timeout(10)
def test_wait_until_lets_the_condition_give_up_at_once() -> None:
    calls: list[int] = []

    def broken() -> bool:
        calls.append(1)
        raise TestbedError("the daemon exited")

    with pytest.raises(TestbedError, match="the daemon exited"):
        wait_until(broken, 5, "a daemon")
    assert len(calls) == 1


@pytest.mark.timeout(10)
def test_free_port_can_be_bound() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


@pytest.mark.timeout(20)
def test_kill_tree_kills_children_and_grandchildren(tmp_path: Path, no_leftovers: set[int]) -> None:
    marker = str(tmp_path / "tree")
    sleeper = f"{PY} -c 'import time; time.sleep(300)' {marker}"
    root = subprocess.Popen(["sh", "-c", f"{sleeper} & {sleeper} & wait", marker])  # $0 names the marker too
    kids = wait_until(lambda: len(d := descendants([root.pid])) == 2 and d, 10, "two sleepers")
    no_leftovers.update([root.pid, *kids])
    assert sorted(pids_mentioning(marker)) == sorted([root.pid, *kids])
    assert cmdline(kids[0]) == f"{PY} -c import time; time.sleep(300) {marker}"
    assert kill_tree([root.pid]) == []
    root.wait(timeout=5)
    assert not any(alive(p) for p in kids)
    assert pids_mentioning(marker) == []


@pytest.mark.timeout(20)
def test_remove_orphaned_dirs_kills_what_runs_from_them(no_leftovers: set[int]) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait(timeout=5)
    prefix = f"elt-test-{os.getpid()}-"
    mine = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")  # owner alive: kept
    orphan = tempfile.mkdtemp(prefix=f"{prefix}{dead.pid}-")  # owner dead: removed
    sleeper = subprocess.Popen([PY, "-c", "import time; time.sleep(300)", os.path.join(orphan, "x")])
    no_leftovers.add(sleeper.pid)
    try:
        # Popen returns once the child's exec has begun; its argv shows in /proc a moment later.
        wait_until(lambda: sleeper.pid in pids_mentioning(orphan), 10, "the sleeper's argv in /proc")
        assert remove_orphaned_dirs(prefix) == [orphan]
        assert sleeper.wait(timeout=5) == -9
        assert not os.path.exists(orphan) and os.path.isdir(mine)
    finally:
        sleeper.kill()
        sleeper.wait(timeout=5)
        os.rmdir(mine)
