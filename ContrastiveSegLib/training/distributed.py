"""torch.distributed for pretraining under torchrun: process group, DDP wrap, synchronised flags, checks.

The same command runs alone or as ``torchrun --nproc-per-node N -m ContrastiveSegLib pretrain ...``: torchrun sets
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT, and :func:`init_distributed` joins the group with
``env://`` (NCCL on CUDA, one GPU per local rank; gloo on the CPU). There is no process management of our own.
Only rank 0 writes files and reports progress; every rank takes every step, so decisions that end the run
(time budget, cancellation) are all-reduced so that no rank waits forever on a collective its peers skipped.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job; the default is a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only writer and reporter."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether the environment describes a multi-process job (torchrun or any env:// launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_distributed(device: torch.device) -> tuple[DistributedContext, torch.device, bool]:
    """Join the process group when launched by torchrun.

    Args:
        device: the device asked for; under torchrun on CUDA each process takes GPU ``LOCAL_RANK`` instead.

    Returns:
        (context, device to use, whether this call created the group and so must destroy it). Without torchrun
        (or with an already initialised group, e.g. a test harness) nothing is created.
    """
    if dist.is_available() and dist.is_initialized():
        backend = dist.get_backend()
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        if device.type == "cuda":
            device = torch.device("cuda", local)
        return DistributedContext(dist.get_rank(), dist.get_world_size(), local, backend), device, False
    if not launched_by_torchrun():
        return DistributedContext(), device, False
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world)
    return DistributedContext(rank, world, local, backend), device, True


def shutdown(created: bool) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if created and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, context: DistributedContext, device: torch.device) -> nn.Module:
    """DDP around ``module`` in a multi-process job (it broadcasts rank 0's weights, then averages gradients);
    ``module`` itself otherwise."""
    if not context.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def all_reduce_max(values: list[float], context: DistributedContext, device: torch.device) -> list[float]:
    """Element-wise maximum of ``values`` over the ranks (the values themselves in a single process)."""
    if not context.enabled:
        return [float(v) for v in values]
    buffer = torch.tensor(values, dtype=torch.float64, device=device if context.backend == "nccl" else "cpu")
    dist.all_reduce(buffer, op=dist.ReduceOp.MAX)
    return buffer.tolist()


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


def broadcast_buffers(module: nn.Module, context: DistributedContext) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every rank.

    DDP broadcasts them before each forward, so after the last forward each rank holds statistics of its own last
    batch; this makes the final state identical everywhere (rank 0's is the one written)."""
    if not context.enabled:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def parameter_checksum(module: nn.Module) -> torch.Tensor:
    """(2,) float64: sum and sum of squares of every parameter and floating buffer, a cheap fingerprint."""
    total = torch.zeros(2, dtype=torch.float64)
    for p in module.state_dict().values():
        if not p.is_floating_point():
            continue
        data = p.detach().double().cpu()
        total += torch.stack([data.sum(), (data * data).sum()])
    return total


def ranks_agree(module: nn.Module, context: DistributedContext, device: torch.device) -> bool:
    """Whether every rank holds the same weights and buffers (they should: DDP applies the same averaged
    gradients everywhere). Compares a checksum; True in a single process."""
    if not context.enabled:
        return True
    local = parameter_checksum(module)
    on = device if context.backend == "nccl" else torch.device("cpu")
    high, low = local.to(on), local.to(on).neg()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MAX)
    return bool(torch.equal(high, low.neg()))
