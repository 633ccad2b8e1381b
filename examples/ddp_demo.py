"""A small real DDP training on CPU (gloo): a 2-layer MLP fits a synthetic regression task.

    elaunch --standalone --nproc-per-node 2 examples/ddp_demo.py
    torchrun --standalone --nproc-per-node 2 examples/ddp_demo.py       # identical
    elaunch --standalone --nproc-per-node 2 examples/ddp_demo.py --epochs 5

Everything comes from the launcher's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT):
`init_process_group("gloo")` uses env://. The data is generated from a fixed seed, split across
ranks by a DistributedSampler; rank 0 prints the loss of every epoch (averaged over all ranks).
At the end every rank checks that its parameters equal rank 0's (all_reduce MAX of the absolute
difference) and exits with code 1 if they do not. Runs in a few seconds on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def make_data(n: int, dim: int, seed: int) -> TensorDataset:
    """y = sin(x @ w1) @ w2 + noise: learnable by a small MLP, identical on every rank."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w1 = torch.randn(dim, 8, generator=g) / dim**0.5
    w2 = torch.randn(8, 1, generator=g) / 8**0.5
    y = torch.sin(x @ w1) @ w2 + 0.01 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def max_param_diff_from_rank0(model: nn.Module) -> float:
    """Largest |p - p_rank0| over all parameters, reduced (MAX) over all ranks."""
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max()
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    t0 = time.perf_counter()

    torch.manual_seed(args.seed)  # same initial weights everywhere (DDP also broadcasts rank 0's)
    model = DDP(nn.Sequential(nn.Linear(args.dim, args.hidden), nn.Tanh(), nn.Linear(args.hidden, 1)))
    data = make_data(args.samples, args.dim, args.seed)
    sampler = DistributedSampler(data, num_replicas=world_size, rank=rank, shuffle=True, seed=args.seed)
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.MSELoss()

    loss_avg = float("nan")
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        total = torch.zeros(2)  # sum of losses, number of samples
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            total += torch.tensor([loss.item() * len(x), len(x)])
        dist.all_reduce(total)
        loss_avg = float(total[0] / total[1])
        if rank == 0:
            print(f"epoch {epoch + 1}/{args.epochs}: loss {loss_avg:.4f} ({time.perf_counter() - t0:.1f}s)", flush=True)

    diff = max_param_diff_from_rank0(model.module)
    ok = diff == 0.0
    if rank == 0:
        print(f"done: final loss {loss_avg:.4f} (world size {world_size})", flush=True)
    if not ok:
        print(
            f"rank {rank}: parameters differ between ranks (max |p - p_rank0| = {diff:g})", file=sys.stderr, flush=True
        )
    dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    code = main()
    # torch 2.13's gloo sometimes aborts during interpreter teardown after destroy_process_group
    # ("terminate called without an active exception"), under torchrun too: skip the teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
