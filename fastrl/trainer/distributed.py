"""torch.distributed for the trainer: process setup under torchrun and the reductions
that credit assignment and the loss need across processes."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from fastrl.algos.credit import Reduce
from fastrl.algos.pure import masked_whiten
from fastrl.trainer.config import ConfigError


def launched() -> bool:
    """True under torchrun (or any launcher setting WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str) -> tuple["Processes", torch.device]:
    """Join the process group when launched (gloo on CPU, nccl on CUDA) and pick this
    process's device: device "auto" is cuda:<local rank> where CUDA exists, else cpu."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank}"
    elif launched() and device.startswith("cuda:"):  # every process would take that one GPU
        raise ConfigError(f"run.device {device!r} under torchrun: every process would use that GPU; set 'cuda' or "
                          "'auto' (each process takes cuda:<LOCAL_RANK>) and choose GPUs with CUDA_VISIBLE_DEVICES")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if launched() and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(), device


class Processes(Reduce):
    """Rank, world size and the reductions; with one process every reduction is the identity."""

    def __init__(self):
        self.on = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    def local(self, x: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return x
        n = x.shape[0] // self.world
        return x[self.rank * n:(self.rank + 1) * n]

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """The sum over processes of a tensor (a new tensor; x is unchanged)."""
        x = x.clone()
        if self.world > 1:
            dist.all_reduce(x)
        return x

    def whiten(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_whiten(x, mask, self.sum)

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether flag is set on any process (every process gets the same answer)."""
        return bool(self.max(int(flag), device)) if self.world > 1 else flag

    def max(self, value: int | float, device: torch.device) -> int | float:
        """The largest of the processes' values, of value's type (every process gets the same answer)."""
        if self.world == 1:
            return value
        x = torch.tensor(value, dtype=torch.float64 if isinstance(value, float) else torch.int64, device=device)
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
        return type(value)(x.item())

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def close(self):
        if self.on:
            dist.destroy_process_group()
