#!/usr/bin/env python3
"""The least a launcher does (bench_launch.py's floor): torchrun's worker variables, one session per worker, wait.

    python scripts/minimal_launcher.py --standalone --nproc-per-node 4 train.py --lr 0.1

No torch, no elaunch, no rendezvous, no output handling (workers share our stdout/stderr), no
restarts and no signal forwarding; exits with the first non-zero worker exit code.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def main(argv: list[str]) -> int:
    nproc = 1
    while argv and argv[0].startswith("--"):
        opt = argv.pop(0)
        if opt in ("--nproc-per-node", "--nproc_per_node"):
            nproc = int(argv.pop(0))
        elif opt != "--standalone":
            sys.exit(f"minimal_launcher: unknown option {opt}")
    with socket.socket() as s:  # a free port for MASTER_PORT, as torchrun --standalone picks one
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = {"LOCAL_WORLD_SIZE": str(nproc), "WORLD_SIZE": str(nproc), "ROLE_WORLD_SIZE": str(nproc),
              "GROUP_RANK": "0", "GROUP_WORLD_SIZE": "1", "ROLE_NAME": "default",
              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
              "TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_MAX_RESTARTS": "0",
              "TORCHELASTIC_RUN_ID": os.urandom(8).hex(), "TORCHELASTIC_USE_AGENT_STORE": "False",
              "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "PYTHONUNBUFFERED": "1"}  # fmt: skip
    if nproc > 1:
        common["OMP_NUM_THREADS"] = "1"
    procs = []
    for rank in range(nproc):
        env = {**os.environ, **common, "RANK": str(rank), "LOCAL_RANK": str(rank), "ROLE_RANK": str(rank)}
        procs.append(subprocess.Popen([sys.executable, *argv], env=env, start_new_session=True))
    codes = [p.wait() for p in procs]
    return next((c for c in codes if c != 0), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
