"""Print this worker's place in the job; no torch needed.

elaunch --standalone --nproc-per-node 4 examples/hello.py
"""

import os
import socket

rank = int(os.environ.get("RANK", "0"))
world_size = int(os.environ.get("WORLD_SIZE", "1"))
local_rank = int(os.environ.get("LOCAL_RANK", "0"))
restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
print(
    f"hello from rank {rank} of {world_size} (local rank {local_rank}) on {socket.gethostname()}, "
    f"pid {os.getpid()}, master {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}, restart {restart}"
)
