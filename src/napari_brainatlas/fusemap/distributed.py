"""Data-parallel training over processes (GPUs and nodes) with ``torch.distributed``.

Launch with torchrun, one process per GPU (or CPU processes with the gloo backend)::

    torchrun --nproc_per_node=4 --nnodes=2 --node_rank=0 --master_addr=HOST \
        --no-python napari-brainatlas embed a.h5ad b.h5ad --out DIR

or call :func:`init_from_env` yourself before building :class:`~.FuseMap`. When a process
group is initialised, :meth:`FuseMap.train` shards the seed cells of every section over
the ranks (each rank draws 64 seeds per section per step from its shard), averages the
gradients of every step over all ranks (one flattened all-reduce per optimiser step,
the same arithmetic as ``DistributedDataParallel``; done explicitly because the
alternating adversarial steps update different parameter subsets), averages validation
losses, and broadcasts the initial weights and the balance weights from rank 0, so all
ranks hold identical models. Only rank 0 should write files.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = [
    "allreduce_grads",
    "allreduce_sum",
    "broadcast_module",
    "broadcast_tensor",
    "init_from_env",
    "is_main_process",
    "rank_world",
]


def rank_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when no process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return rank_world()[0] == 0


def init_from_env(backend: str | None = None) -> tuple[int, int, str]:
    """Initialise the default process group from torchrun's environment variables.

    Returns (rank, world_size, device). Does nothing (returns (0, 1, "auto")) when
    ``WORLD_SIZE`` is unset or 1. The backend defaults to nccl with CUDA, gloo otherwise;
    with CUDA each process uses ``cuda:LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, "auto"
    use_cuda = torch.cuda.is_available()
    if backend is None:
        backend = "nccl" if use_cuda else "gloo"
    device = "cpu"
    if use_cuda and backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), device


def _comm_device(t: torch.Tensor) -> torch.Tensor:
    # gloo reduces CPU tensors; nccl needs CUDA tensors
    if dist.get_backend() == "gloo" and t.device.type != "cpu":
        return t.cpu()
    return t


def allreduce_grads(params) -> None:
    """Average the gradients of ``params`` over all ranks (missing grads count as zero)."""
    _, world = rank_world()
    if world == 1:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    )
    buf = _comm_device(flat)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    buf = buf.to(flat.device) / world
    off = 0
    for p in params:
        n = p.numel()
        g = buf[off : off + n].view_as(p)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
        off += n


def allreduce_sum(values: list[float], device="cpu") -> list[float]:
    """Sum a list of floats over all ranks."""
    _, world = rank_world()
    if world == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_tensor(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    _, world = rank_world()
    if world == 1:
        return t
    buf = _comm_device(t.contiguous())
    dist.broadcast(buf, src)
    if buf is not t:
        t.copy_(buf.to(t.device))
    return t


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy parameters and buffers of rank ``src`` to every rank."""
    _, world = rank_world()
    if world == 1:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            broadcast_tensor(t.data, src)
