"""A tiny gloo DDP job for the multi-host tests: trains until told to stop, reporting progress.

Every line it prints and appends to `--progress FILE` is `key=value` pairs (`event=start|step|done`,
the host, ranks, world sizes, restart count and master), so a test can see each (re-)formed group.
Every `--every` steps the ranks agree with an all_reduce whether to stop: the job ends after
`--steps` steps once `--release FILE` exists (at once without it), so a test decides how long
training lasts without sleeping. `--fail-on HOST` makes the worker on that host raise at the first
report (a deterministic bug).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--progress", required=True)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--release", default=None)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--step-time", type=float, default=0.02)
    p.add_argument("--fail-on", default=None)
    a = p.parse_args()
    env = os.environ
    host = socket.gethostname()
    tag = (
        f"host={host} rank={env['RANK']} local_rank={env['LOCAL_RANK']} world={env['WORLD_SIZE']} "
        f"group_rank={env['GROUP_RANK']} group_world={env['GROUP_WORLD_SIZE']} "
        f"restart={env['TORCHELASTIC_RESTART_COUNT']} master={env['MASTER_ADDR']}:{env['MASTER_PORT']}"
    )

    def report(event: str, step: int = 0) -> None:
        line = f"event={event} step={step} {tag} t={time.time():.3f}"
        print(line, flush=True)
        with open(a.progress, "a") as f:  # one short write per line: lines of the hosts never mix
            f.write(line + "\n")

    report("start")
    dist.init_process_group("gloo", timeout=timedelta(seconds=15))
    torch.manual_seed(0)
    model = DistributedDataParallel(torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 8), torch.randn(16, 1)
    step = 0
    while True:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()  # DDP all-reduces the gradients
        opt.step()
        step += 1
        if step % a.every == 0:
            report("step", step)
            if a.fail_on == host:
                raise ValueError(f"boom on {host}")
            done = step >= a.steps and (a.release is None or os.path.exists(a.release))
            flag = torch.tensor([1.0 if done else 0.0])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank stops at the same step
            if flag.item() > 0:
                break
        time.sleep(a.step_time)  # pace the job: 2 cores serve every fake host
    dist.destroy_process_group()
    report("done", step)
    # Skip the interpreter's teardown: torch 2.13 sometimes aborts there ("terminate called without
    # an active exception", SIGABRT, no Python frame) after a multi-host gloo job, under torchrun too.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    # A failure leaves without the interpreter's teardown too (torch 2.13's gloo may abort there,
    # SIGABRT, exit 134 instead of 1): print the traceback as Python would, then exit 1 at once.
    try:
        main()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
