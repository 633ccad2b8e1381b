"""Rank 1 fails after a short delay; the other ranks wait for it (in a barrier with torch, else asleep).

Shows how a launcher reports a failure and stops the survivors:

    elaunch --standalone --nproc-per-node 3 examples/crash.py
    elaunch --standalone --nproc-per-node 3 --max-restarts 1 examples/crash.py   # fails again after one restart
    elaunch --standalone --nproc-per-node 3 examples/crash.py --no-torch          # no torch import: plain sleep

Options: --delay SECONDS (default 1.0), --no-torch.
"""

import argparse
import os
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--delay", type=float, default=1.0, help="seconds before rank 1 fails")
    p.add_argument("--no-torch", action="store_true", help="others sleep instead of waiting in a gloo barrier")
    args = p.parse_args()
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    print(f"rank {rank}/{world_size} started (restart {restart})", flush=True)

    dist = None
    if not args.no_torch:
        try:
            import torch.distributed as dist
        except ImportError:
            print("torch not installed: sleeping instead of a barrier", flush=True)
    if dist is not None:
        dist.init_process_group("gloo")
    if rank == 1:
        time.sleep(args.delay)
        raise ValueError(f"rank {rank} hit a bad batch after {args.delay:g}s (this is the demo's failure)")
    print(f"rank {rank} waiting for the others", flush=True)
    if dist is not None:
        dist.barrier()  # completes only without a rank 1; otherwise the launcher stops us here
        dist.destroy_process_group()
    elif world_size > 1:
        time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
