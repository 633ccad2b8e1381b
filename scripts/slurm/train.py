"""A small DDP training (gloo, CPU) for the SLURM examples: preemption-aware, resumable.

    srun --ntasks-per-node=1 elaunch scripts/slurm/train.py --steps 200 --checkpoint ckpt.pt

Every rank prints where it runs (`rank 0 of 2 on host1 ...`) and, at the end, `done`.
SIGUSR1 or SIGUSR2 (SLURM's preemption warning, e.g. `#SBATCH --signal=USR1@120` or
`scancel --signal=USR1 <job>`) only sets a flag: at the next step boundary the ranks agree on it
(all_reduce), rank 0 saves the checkpoint, and training goes on; with `--requeue`, rank 0 then asks
SLURM to requeue the job (`scontrol requeue $SLURM_JOB_ID`), which stops it and starts it again
later, resuming from the checkpoint. A flag, not work in the handler: under SLURM a worker can
get the same warning twice (SLURM signals every process of the step, and elaunch passes the
signal on too), and the two then usually fall in the same step. SIGTERM (scancel, time limit) ends the worker
at once with code 143. `--marker-dir` leaves one file per rank and event (ready, warning,
sigterm, done) for tests.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

RANK = int(os.environ.get("RANK", "0"))
HOST = socket.gethostname()
_warnings: list[str] = []  # preemption warnings not yet acted on
_marker_dir: str | None = None


def marker(event: str, text: str = "") -> None:
    """`<marker dir>/<event>.rank<R>`: host, pid, time and `text`; nothing without --marker-dir."""
    if _marker_dir:
        path = os.path.join(_marker_dir, f"{event}.rank{RANK}")
        with open(path + ".tmp", "w") as f:
            f.write(f"{HOST} {os.getpid()} {time.time():.3f} {text}\n")
        os.replace(path + ".tmp", path)


def on_warning(signum: int, frame: object) -> None:
    _warnings.append(signal.Signals(signum).name)


def on_term(signum: int, frame: object) -> None:
    print(f"rank {RANK} on {HOST}: {signal.Signals(signum).name}, stopping", flush=True)
    marker("sigterm")
    os._exit(128 + signum)


# Before torch is imported (seconds): a warning that arrives early must not kill the worker.
signal.signal(signal.SIGUSR1, on_warning)
signal.signal(signal.SIGUSR2, on_warning)
signal.signal(signal.SIGTERM, on_term)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402


def batch(step: int, rank: int, size: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic batch of y = sin(x @ w) per (step, rank)."""
    g = torch.Generator().manual_seed(step * 1009 + rank)
    x = torch.randn(size, dim, generator=g)
    w = torch.linspace(-1, 1, dim).unsqueeze(1)
    return x, torch.sin(x @ w)


def save(path: str, step: int, model: nn.Module, opt: torch.optim.Optimizer) -> None:
    """Atomically: a preempted save never leaves half a checkpoint."""
    torch.save({"step": step, "model": model.state_dict(), "opt": opt.state_dict()}, path + ".tmp")
    os.replace(path + ".tmp", path)


def requeue() -> None:
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        print("--requeue: not in a SLURM job, going on", flush=True)
        return
    res = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, check=False)
    print(f"rank 0: scontrol requeue {job}: exit {res.returncode} {res.stderr.strip()}", flush=True)


def main() -> int:
    global _marker_dir
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--step-time", type=float, default=0.0, help="extra seconds per step (simulated compute)")
    p.add_argument("--checkpoint", default=None, help="save here on a preemption warning; resume from it")
    p.add_argument("--requeue", action="store_true", help="after the checkpoint, scontrol requeue the job")
    p.add_argument("--marker-dir", default=None)
    p.add_argument("--lr", type=float, default=0.01)
    args = p.parse_args()
    _marker_dir = args.marker_dir

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    print(
        f"rank {rank} of {world} on {HOST} (local rank {os.environ.get('LOCAL_RANK')}, "
        f"node {os.environ.get('GROUP_RANK')}, SLURM job {os.environ.get('SLURM_JOB_ID', '-')} "
        f"restart {os.environ.get('SLURM_RESTART_COUNT', '0')})",
        flush=True,
    )
    torch.manual_seed(0)
    model = DDP(nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    start = 0
    if args.checkpoint and os.path.exists(args.checkpoint):
        state = torch.load(args.checkpoint, weights_only=True)
        model.module.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = int(state["step"])
        print(f"rank {rank}: resumed from step {start} ({args.checkpoint})", flush=True)
    dist.barrier()
    marker("ready", str(start))

    requeued = False
    loss = torch.zeros(())
    for step in range(start, args.steps):
        x, y = batch(step, rank, 32, 16)
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        if args.step_time:
            time.sleep(args.step_time)
        # Every rank takes part, so all checkpoint at the same step even if the signal reached
        # them at different times.
        seen = list(_warnings)
        flag = torch.tensor([1 if seen else 0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if seen:
            _warnings.clear()
            print(f"rank {rank} on {HOST}: {','.join(seen)} at step {step + 1}", flush=True)
            marker("warning", f"{step + 1} {','.join(seen)}")
        if flag.item():
            if rank == 0 and args.checkpoint:
                save(args.checkpoint, step + 1, model.module, opt)
                print(f"rank 0: checkpoint saved at step {step + 1} ({args.checkpoint})", flush=True)
            dist.barrier()  # the checkpoint is complete before anyone requeues
            if rank == 0 and args.requeue and args.checkpoint and not requeued:
                requeued = True
                requeue()
        if rank == 0 and (step + 1) % 50 == 0:
            print(f"step {step + 1}/{args.steps}: loss {loss.item():.4f}", flush=True)

    dist.barrier()
    print(f"rank {rank} of {world} on {HOST}: done, {args.steps} steps, loss {loss.item():.4f}", flush=True)
    marker("done")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main()
    # Skip interpreter shutdown: there, after a peer has exited, gloo (torch 2.13, CPU) sometimes
    # aborts the process ("terminate called without an active exception", SIGABRT, no Python
    # frame); seen in about 1 of 20 two-node runs on a busy machine.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
