"""`srun elaunch train.py` on a real SLURM whose nodes are fake hosts (scripts/testbed).

The example batch scripts of scripts/slurm run as users submit them (from a directory holding
`scripts/`, here tmp_path/work with a link to the repository's), with `elaunch` found on the
PATH the job inherits from sbatch. Workers leave marker files in tmp_path/markers (see
scripts/slurm/train.py); the test bed's KillWait is 2 s, so a SIGTERM marker proves the worker
saw SIGTERM within SLURM's grace, before SIGKILL.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from scripts.testbed import TestbedError, wait_until
from scripts.testbed.procs import cmdline
from scripts.testbed.slurm import SlurmCluster

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
BIN = str(Path(sys.executable).parent)  # the `elaunch` installed with this Python
JOB_TIMEOUT = 150.0  # the machine may be busy: torch imports take seconds of CPU each


class Job:
    """A submitted batch job: its id, the cluster, the work dir, markers and output file."""

    def __init__(self, s: SlurmCluster, tmp_path: Path) -> None:
        self.s = s
        self.work = tmp_path / "work"
        self.markers = tmp_path / "markers"
        self.out = tmp_path / "job.out"
        self.id = 0
        self.work.mkdir()
        (self.work / "scripts").symlink_to(REPO / "scripts")
        self.markers.mkdir()
        self.env = {**s.env, "PATH": f"{BIN}:{s.env['PATH']}", "TMPDIR": os.environ["TMPDIR"]}
        self.env.pop("PET_NPROC_PER_NODE", None)

    def submit(self, script: str, *args: str, sbatch: tuple[str, ...] = (), env: dict[str, str] | None = None) -> int:
        res = self.s.command(
            ["sbatch", "--parsable", "-o", str(self.out), *sbatch, script, *args],
            cwd=str(self.work),
            env={**self.env, **(env or {})},
        )
        self.id = int(res.stdout.strip().split(";")[0])
        return self.id

    def output(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def wait(self, timeout: float = JOB_TIMEOUT) -> str:
        try:
            return self.s.wait_job(self.id, timeout=timeout)
        except Exception as e:
            raise AssertionError(f"{e}\n--- job output:\n{self.output()}") from None

    def diagnose(self) -> str:
        """The job's record and slurmctld's last lines: why a job ended as it did."""
        info = self.s.command(["scontrol", "show", "job", str(self.id)], check=False).stdout
        return f"--- scontrol show job\n{info}\n--- slurmctld.log\n{self.s.log_tail('slurmctld.log', 40)}"

    def exit_code(self) -> str:
        return self.s.job_info(self.id).get("ExitCode", "?")

    def marker(self, event: str, rank: int) -> list[str] | None:
        """(host, pid, time, ...) of `<event>.rank<rank>`, None while it does not exist."""
        path = self.markers / f"{event}.rank{rank}"
        return path.read_text().split() if path.exists() else None

    def wait_markers(self, event: str, ranks: range, timeout: float = JOB_TIMEOUT, text: str = "") -> list[list[str]]:
        """The markers of `event` of every rank in `ranks` once all exist (and contain `text`)."""

        def all_there() -> list[list[str]] | None:
            found = [m for m in (self.marker(event, r) for r in ranks) if m and text in m[-1]]
            if len(found) == len(ranks):
                return found
            if self.s.job_state(self.id) not in ("PENDING", "RUNNING", "CONFIGURING", None):
                raise TestbedError(f"job ended before every {event} marker")  # gives up at once
            return None

        try:
            return wait_until(all_there, timeout, f"{event} markers of ranks {list(ranks)}", max_interval=0.5)
        except Exception as e:
            raise AssertionError(f"{e}\n--- job output:\n{self.output()}{self.diagnose()}") from None


def nodes_quiet(s: SlurmCluster) -> None:
    """Wait until nothing but slurmd runs on any node; fail naming what is left."""

    def leftovers() -> dict[int, list[str]]:
        left: dict[int, list[str]] = {}
        for i in range(1, s.n + 1):
            for pid in set(s.cluster.pids(i)) - {s.slurmds[i - 1].pid}:
                cmd = cmdline(pid)
                if cmd is not None:
                    left.setdefault(i, []).append(f"{pid}: {cmd}")
        return left

    try:
        wait_until(lambda: not leftovers(), 20, "every node to run nothing but slurmd", max_interval=0.5)
    except Exception:
        raise AssertionError(f"processes left on the nodes: {leftovers()}") from None


def worker_line(out: str, rank: int, world: int) -> str:
    m = re.search(rf"^\[(\S+?):{rank}\] rank {rank} of {world} on (\S+) ", out, re.MULTILINE)
    assert m, f"no start line of rank {rank} in:\n{out}"
    assert m.group(1) == m.group(2), m.group(0)
    return m.group(2)


@pytest.mark.torch
@pytest.mark.timeout(300)
def test_multi_node_example_trains_with_rank0_on_first_node(
    slurm_cluster: Callable[..., SlurmCluster], tmp_path: Path
) -> None:
    s = slurm_cluster(2)
    job = Job(s, tmp_path)
    job.submit("scripts/slurm/multi_node.sbatch", "--steps", "60", "--marker-dir", str(job.markers))
    assert job.wait() == "COMPLETED", job.output()
    out = job.output()
    assert job.exit_code() == "0:0", out
    assert worker_line(out, 0, 2) == "host1" and worker_line(out, 1, 2) == "host2"
    for rank, host in ((0, "host1"), (1, "host2")):
        assert f"rank {rank} of 2 on {host}: done, 60 steps" in out, out
        assert (job.marker("done", rank) or [""])[0] == host
    assert out.count("job SUCCEEDED") == 2, out
    nodes_quiet(s)


@pytest.mark.torch
@pytest.mark.timeout(300)
def test_rdzv_server_example_serves_the_job_from_outside_its_steps(
    slurm_cluster: Callable[..., SlurmCluster], tmp_path: Path
) -> None:
    s = slurm_cluster(2)
    job = Job(s, tmp_path)
    # PYTHONPATH: the `elaunch` on PATH runs this checkout's code (a worktree's too).
    job.submit(
        "scripts/slurm/rdzv_server.sbatch",
        "--steps",
        "30",
        "--marker-dir",
        str(job.markers),
        env={"PYTHONPATH": str(REPO)},
    )
    assert job.wait() == "COMPLETED", job.output()
    out = job.output()
    assert job.exit_code() == "0:0", out
    for rank in (0, 1):
        assert f"rank {rank} of 2 on" in out and (job.marker("done", rank) or [""])[0].startswith("host"), out
    assert out.count("job SUCCEEDED") == 2, out
    assert "serving the rendezvous store on port" in out, out
    run = f"slurm-{job.id}.0"
    assert out.count(f"job '{run}' started") == 1 and out.count(f"job '{run}' ended") == 1, out
    assert out.rstrip().endswith("stopping"), out  # the batch shell's SIGTERM: a clean stop
    nodes_quiet(s)


@pytest.mark.torch
@pytest.mark.timeout(300)
def test_one_node_example_with_workers_from_pet_variable(
    slurm_cluster: Callable[..., SlurmCluster], tmp_path: Path
) -> None:
    s = slurm_cluster(1)
    job = Job(s, tmp_path)
    job.submit(
        "scripts/slurm/one_node.sbatch",
        "--steps",
        "30",
        "--marker-dir",
        str(job.markers),
        env={"PET_NPROC_PER_NODE": "2"},  # PET_* wins over SLURM's default of 1 worker
    )
    assert job.wait() == "COMPLETED", job.output()
    out = job.output()
    assert job.exit_code() == "0:0", out
    for rank in (0, 1):
        assert f"rank {rank} of 2 on host1: done, 30 steps" in out, out
    assert out.count("job SUCCEEDED") == 1, out
    nodes_quiet(s)


@pytest.mark.torch
@pytest.mark.timeout(300)
def test_scancel_stops_workers_within_grace_and_leaves_nothing(
    slurm_cluster: Callable[..., SlurmCluster], tmp_path: Path
) -> None:
    s = slurm_cluster(2)
    job = Job(s, tmp_path)
    job.submit(
        "scripts/slurm/multi_node.sbatch", "--steps", "100000", "--step-time", "0.05", "--marker-dir", str(job.markers)
    )
    ready = job.wait_markers("ready", range(2))
    pids = [int(m[1]) for m in ready]
    s.scancel(job.id)
    assert job.wait(timeout=30) == "CANCELLED", job.output()
    nodes_quiet(s)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} still exists"
    for rank, host in ((0, "host1"), (1, "host2")):
        # Written by the worker's SIGTERM handler: before SLURM's SIGKILL (KillWait=2 s).
        term = job.marker("sigterm", rank)
        assert term is not None and term[0] == host, (rank, job.output())
        assert job.marker("done", rank) is None
    out = job.output()
    # elaunch stopped its workers itself and reported it, on both nodes, before SLURM's SIGKILL.
    assert out.count("job STOPPED by SIGTERM: exit code 143") == 2, out


@pytest.mark.torch
@pytest.mark.timeout(300)
def test_preemption_signals_reach_every_worker_and_job_completes(
    slurm_cluster: Callable[..., SlurmCluster], tmp_path: Path
) -> None:
    s = slurm_cluster(2)
    job = Job(s, tmp_path)
    job.submit(
        "scripts/slurm/multi_node.sbatch", "--steps", "200", "--step-time", "0.05", "--marker-dir", str(job.markers)
    )
    job.wait_markers("ready", range(2))
    # scancel --signal signals every process of the job's steps, not the batch shell (no --full/--batch).
    s.scancel(job.id, signal="USR1")
    first = job.wait_markers("warning", range(2))
    assert [m[0] for m in first] == ["host1", "host2"]
    assert all("SIGUSR1" in m[-1] and "SIGUSR2" not in m[-1] for m in first), first
    s.scancel(job.id, signal="USR2")
    second = job.wait_markers("warning", range(2), text="SIGUSR2")
    assert [m[0] for m in second] == ["host1", "host2"]
    assert job.wait() == "COMPLETED", job.output()
    out = job.output()
    assert job.exit_code() == "0:0", out
    for rank, host in ((0, "host1"), (1, "host2")):
        assert f"rank {rank} of 2 on {host}: done, 200 steps" in out, out
    for name in ("SIGUSR1", "SIGUSR2"):
        assert out.count(f"{name} received: passed on to the workers, job keeps running") == 2, out
    nodes_quiet(s)


@pytest.mark.torch
@pytest.mark.timeout(400)
def test_elastic_example_checkpoints_requeues_and_resumes(
    slurm_cluster: Callable[..., SlurmCluster], tmp_path: Path
) -> None:
    s = slurm_cluster(2)
    job = Job(s, tmp_path)
    job.submit(
        "scripts/slurm/elastic_requeue.sbatch",
        "--steps",
        "100",
        "--step-time",
        "0.05",
        "--marker-dir",
        str(job.markers),
    )
    job.wait_markers("ready", range(2))
    s.scancel(job.id, signal="USR1")  # what SLURM sends 120 s before the time limit

    def requeued() -> bool:
        info = s.job_info(job.id)
        if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED"):
            raise TestbedError(f"job ended instead of being requeued: {info}\n{job.output()}")
        return info.get("Restarts") == "1" and info.get("JobState") == "PENDING"

    wait_until(requeued, 60, "the job to be requeued", max_interval=0.5)
    # SLURM holds a requeued job for 120 s (EligibleTime); let it start again soon, but not within the
    # second of the requeue: slurmd revokes the old credential with a one-second clock and refuses a
    # start in that same second ("Killing non-startable batch JobId: Job credential revoked").
    s.command(["scontrol", "update", f"JobId={job.id}", "StartTime=now+2"])
    assert job.wait() == "COMPLETED", job.output() + job.diagnose()
    out = job.output()
    assert job.exit_code() == "0:0", out
    m = re.search(r"rank 0: checkpoint saved at step (\d+) \(elastic-(\d+)\.ckpt\)", out)
    assert m and int(m.group(2)) == job.id, out
    step = int(m.group(1))
    assert f"scontrol requeue {job.id}: exit 0" in out, out
    assert f"elastic_requeue: job {job.id} start 0 " in out and f"elastic_requeue: job {job.id} start 1 " in out, out
    for rank, host in ((0, "host1"), (1, "host2")):
        assert f"rank {rank}: resumed from step {step} (elastic-{job.id}.ckpt)" in out, out
        assert f"rank {rank} of 2 on {host}: done, 100 steps" in out, out
    assert (job.work / f"elastic-{job.id}.ckpt").exists()
    nodes_quiet(s)


@pytest.mark.timeout(180)
def test_dry_run_in_a_step_shows_values_from_slurm(slurm_cluster: Callable[..., SlurmCluster], tmp_path: Path) -> None:
    s = slurm_cluster(2)
    job = Job(s, tmp_path)
    script = job.work / "dry.sbatch"
    script.write_text(
        "#!/bin/bash\n"
        "srun -l --ntasks-per-node=1 elaunch --dry-run scripts/slurm/train.py\n"
        "echo '=== explicit'\n"
        "PET_MAX_RESTARTS=2 srun -l --ntasks-per-node=1 elaunch --dry-run --rdzv-id mine scripts/slurm/train.py\n"
    )
    job.submit(str(script), sbatch=("-N2",))
    assert job.wait() == "COMPLETED", job.output()
    first, _, explicit = job.output().partition("=== explicit\n")

    def rows(text: str, task: int) -> dict[str, tuple[str, str]]:
        found = re.findall(rf"^{task}:\s+(\w+)\s+(.+?)\s+\((.+)\)$", text, re.MULTILINE)
        return {name: (value, source) for name, value, source in found}

    port = 29500 + job.id % 20000
    for task in (0, 1):
        r = rows(first, task)
        assert r["nnodes"] == ("2", "SLURM"), first
        assert r["rdzv_backend"] == ("c10d", "SLURM")
        assert r["rdzv_endpoint"] == (f"host1:{port}", "SLURM")
        assert r["node_rank"] == (str(task), "SLURM")
        assert r["run_id"] == (f"slurm-{job.id}.0", "SLURM")
        assert r["nproc_per_node"] == ("1", "default")
        assert re.search(rf"^{task}: worker local_rank=0 rank={task} role_rank={task} world_size=2$", first, re.M)
        e = rows(explicit, task)
        assert e["run_id"] == ("mine", "option"), explicit
        assert e["max_restarts"] == ("2", "environment")
        assert e["rdzv_endpoint"] == (f"host1:{port}", "SLURM")


@pytest.mark.timeout(180)
def test_guards_batch_shell_tasks_per_node_and_nnodes(
    slurm_cluster: Callable[..., SlurmCluster], tmp_path: Path
) -> None:
    s = slurm_cluster(2)
    job = Job(s, tmp_path)
    script = job.work / "guards.sbatch"
    train = f"scripts/slurm/train.py --marker-dir {job.markers}"
    script.write_text(
        "#!/bin/bash\n"
        # The allocation has 2 tasks per node, and a plain srun starts them all.
        f'srun elaunch {train}; echo "=== two per node: $?"\n'
        f'srun -n2 --ntasks-per-node=1 elaunch --nnodes 3 {train}; echo "=== nnodes: $?"\n'
        f"elaunch {train}\n"  # in the batch shell, without srun: the job ends with elaunch's code
    )
    job.submit(str(script), sbatch=("-N2", "--ntasks-per-node=2"))
    assert job.wait() == "FAILED", job.output()
    out = job.output()
    assert job.exit_code() == "2:0", out
    two, _, rest = out.partition("=== two per node: 2\n")
    assert rest, out
    assert two.count("elaunch: error: SLURM started 2 elaunch tasks on this node") == 4, out
    nnodes, _, batch = rest.partition("=== nnodes: 2\n")
    assert batch, out
    assert nnodes.count("elaunch: error: --nnodes 3 contradicts the SLURM step, which runs on 2 node(s)") == 2, out
    assert "elaunch: error: elaunch runs in the batch script of a 2-node SLURM allocation, outside any step" in batch
    assert "srun --ntasks-per-node=1 elaunch" in batch, batch
    assert not list(job.markers.iterdir()), "a worker started"
