"""torchrun (DDP) helpers: who this process is, and gathering tensors of unequal length."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import distributed as dist

__all__ = ["DistInfo", "distributed", "gather"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


@contextmanager
def distributed() -> Iterator[DistInfo]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield DistInfo()
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    try:
        yield DistInfo(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))
    finally:
        dist.destroy_process_group()


def gather(x: torch.Tensor, d: DistInfo) -> torch.Tensor:
    if d.world == 1:
        return x
    sizes = [torch.zeros((), dtype=torch.long) for _ in range(d.world)]
    dist.all_gather(sizes, torch.tensor(x.shape[0]))
    padded = torch.zeros((int(max(sizes)), *x.shape[1:]), dtype=x.dtype)
    padded[: x.shape[0]] = x
    out = [torch.zeros_like(padded) for _ in range(d.world)]
    dist.all_gather(out, padded)
    return torch.cat([o[: int(n)] for o, n in zip(out, sizes, strict=True)])
