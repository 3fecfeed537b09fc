"""A DDP script with a validation loop, written as a user might: optionally rank 0 hoards in validation.

Launched by torchrun (through `harness run` with `distributed:`). Each rank trains one epoch on
its DistributedSampler's share of random data, then validates under torch.no_grad() over its
share of a held-out set. With ``--hoard`` rank 0 alone keeps every validation output together
with a 5 MiB scratch buffer per batch (10 batches: 50 MiB), released only after the pass; the
other rank holds nothing extra. Without ``--hoard`` both ranks do the same work.
"""

import sys
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

HOARD = "--hoard" in sys.argv
MIB = 1 << 20


def build_model():
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def main():
    dist.init_process_group(backend="gloo")
    rank = dist.get_rank()
    torch.manual_seed(1)
    train = TensorDataset(torch.randn(320, 64), torch.randint(0, 10, (320,)))
    held_out = TensorDataset(torch.randn(160, 64), torch.randint(0, 10, (160,)))
    train_loader = DataLoader(train, batch_size=8, sampler=DistributedSampler(train, seed=1))
    val_loader = DataLoader(held_out, batch_size=8, sampler=DistributedSampler(held_out, shuffle=False))
    model = nn.parallel.DistributedDataParallel(build_model())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    for x, y in train_loader:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    kept = []
    with torch.no_grad():
        for x, _y in val_loader:
            out = model(x)
            if HOARD and rank == 0:
                kept.append((out, torch.ones(5 * MIB // 4)))  # 5 MiB a batch, held to the pass's end
            time.sleep(0.05)  # a validation batch long enough for the sampler to see each
    print(f"rank {rank}: kept {sum(t.numel() * 4 for _, t in kept) // MIB} MiB in validation", flush=True)
    del kept
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
