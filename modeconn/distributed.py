"""Where the work runs: one process, or every rank of a ``torchrun`` job.

:func:`current` chooses the strategy once per process. Under ``torchrun`` (its ``RANK``,
``WORLD_SIZE`` and ``MASTER_ADDR`` variables present, world size above one) or inside a
process group the user initialized, it is :class:`Distributed`: PyTorch's own process group
(gloo on CPU, NCCL on CUDA), ``cuda:LOCAL_RANK`` per rank, DistributedDataParallel for training,
and collectives for what must agree across ranks. Otherwise it is :class:`Local`, which does
nothing. Every rank must make the same calls of modeconn in the same order (a collective
waits for all of them); :func:`local` runs a block as one process on one rank.

Asking is free of side effects: :func:`current` and the strategy's rank, world size and
device read torchrun's variables. The process group is opened only when it is needed, by
:meth:`Distributed.connect`: DDP's wrapping of a model for training, and the first collective.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn

from modeconn.errors import InvalidArgumentError

__all__ = ["Strategy", "Local", "Distributed", "current", "local", "under_torchrun"]


class Strategy:
    """What the training, alignment and evaluation loops ask of the place they run in."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this rank writes files and draws progress (rank 0)."""
        return self.rank == 0

    def device(self, requested: str | torch.device | None) -> torch.device:
        """The device to run on: ``requested``, or CUDA when available, else the CPU."""
        if requested is None:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(requested)
        except (RuntimeError, TypeError):
            raise InvalidArgumentError(
                f"device {requested!r} is not a device: name cpu, cuda, cuda:N or mps"
            ) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InvalidArgumentError(
                f"device {requested!r}: there is no CUDA device here; leave the device out to use the CPU"
            )
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidArgumentError(
                f"device {requested!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        return device

    def wrap(self, module: nn.Module, *, broadcast_buffers: bool = True) -> nn.Module:
        """``module`` as the training forward calls it (gradients averaged across ranks)."""
        return module

    @contextlib.contextmanager
    def synced_batchnorm(self, module: nn.Module) -> Iterator[None]:
        """Within the block, ``module``'s BatchNorm layers normalize with the statistics of the
        batch of every rank together (PyTorch's ``SyncBatchNorm``): one process needs nothing."""
        yield

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over ranks, in place; returns it."""
        return tensor

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (picklable), on every rank."""
        return obj

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        return [obj]

    def barrier(self) -> None:
        """Wait until every rank is here."""

    def where(self) -> str:
        """`` on rank r of N`` under torchrun, else empty: for messages."""
        return f" on rank {self.rank} of {self.world_size}" if self.world_size > 1 else ""

    def shared_seed(self) -> int:
        """A seed drawn from rank 0's global torch generator, the same on every rank."""
        return self.broadcast(int(torch.randint(0, 2**62, ())))


class Local(Strategy):
    """One process: every method is the identity."""

    def __repr__(self) -> str:
        return "Local()"


class Distributed(Strategy):
    """The ranks of a ``torch.distributed`` process group: the initialized one, or, before it
    is, the one torchrun's variables describe, opened by :meth:`connect` when first needed."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist
        if dist.is_initialized():
            self._adopt_group()
        else:  # torchrun's ranks; the group is not opened here (see connect)
            self.opened = False
            self.rank, self.world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            self._set_backend("nccl" if torch.cuda.is_available() else "gloo")

    def _adopt_group(self) -> None:
        """Take rank, world size and backend from the initialized process group."""
        self.opened = True
        self.rank, self.world_size = self.dist.get_rank(), self.dist.get_world_size()
        self._set_backend(self.dist.get_backend())

    def _set_backend(self, backend: str) -> None:
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank % max(torch.cuda.device_count(), 1)))
        self.backend = backend
        # NCCL communicates CUDA tensors only; gloo communicates CPU ones
        self.comm_device = (
            torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")
        )

    def connect(self) -> None:
        """Open the process group, if no one has (under torchrun: NCCL when CUDA is present,
        else gloo; destroyed at exit); a group opened meanwhile by the user's script is used."""
        if self.opened:
            return
        if not self.dist.is_initialized():
            if torch.cuda.is_available():
                torch.cuda.set_device(self.local_rank)
            self.dist.init_process_group(self.backend)
            # A group left to interpreter teardown can abort the process: gloo's worker threads
            # still hold tensors whose release needs the GIL ("terminate called without an
            # active exception", SIGABRT). atexit runs while the interpreter is whole.
            atexit.register(_close_group)
        self._adopt_group()

    def __repr__(self) -> str:
        return f"Distributed(rank={self.rank}, world_size={self.world_size}, backend={self.backend!r})"

    def device(self, requested: str | torch.device | None) -> torch.device:
        device = super().device(requested)
        if device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    def wrap(self, module: nn.Module, *, broadcast_buffers: bool = True) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        self.connect()
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        # torch >= 2.14 names the per-forward buffer sync forward_sync_buffers
        sync = "forward_sync_buffers" if "forward_sync_buffers" in _ddp_arguments() else "broadcast_buffers"
        return DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None, **{sync: broadcast_buffers}
        )

    @contextlib.contextmanager
    def synced_batchnorm(self, module: nn.Module) -> Iterator[None]:
        # each BatchNorm child is swapped for a SyncBatchNorm that shares its parameters and
        # buffers (so training updates them), and put back after: the caller's model keeps its classes
        swapped = []
        for parent in list(module.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(
                    child, nn.SyncBatchNorm
                ):
                    swapped.append((parent, name, child))
        devices = {t.device.type for _, _, bn in swapped for t in (*bn.parameters(), *bn.buffers())}
        if devices - {"cuda", "xpu"}:
            raise InvalidArgumentError(
                f"sync_bn needs the model on CUDA or XPU devices (it is on {', '.join(sorted(devices))}): "
                "PyTorch's SyncBatchNorm synchronizes GPU tensors only. On CPU, train without it "
                "(each rank normalizes with its own shard's statistics; docs/scaling.md)"
            )
        for parent, name, child in swapped:
            setattr(parent, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        try:
            yield
        finally:
            for parent, name, child in swapped:
                setattr(parent, name, child)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        self.connect()
        moved = tensor.to(self.comm_device)
        self.dist.all_reduce(moved)
        if moved is not tensor:
            tensor.copy_(moved)
        return tensor

    def broadcast(self, obj: Any) -> Any:
        self.connect()
        box = [obj]
        self.dist.broadcast_object_list(box, src=0, device=self.comm_device)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        self.connect()
        out: list[Any] = [None] * self.world_size
        self.dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        self.connect()
        self.dist.barrier()


def _ddp_arguments() -> set[str]:
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    return set(inspect.signature(DistributedDataParallel.__init__).parameters)


_LOCAL = Local()
_chosen: Strategy | None = None
_forced: list[Strategy] = []


def under_torchrun() -> bool:
    """Whether this process is one of several that ``torchrun`` started."""
    env = os.environ
    return all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR")) and int(env["WORLD_SIZE"]) > 1


def current() -> Strategy:
    """The strategy of this process: :class:`Distributed` under ``torchrun`` or in an
    initialized process group, :class:`Local` otherwise or inside :func:`local`. Asking opens
    no process group: under torchrun the strategy opens it when first needed
    (:meth:`Distributed.connect`)."""
    global _chosen
    if _forced:
        return _forced[-1]
    import torch.distributed as dist

    if not dist.is_available():
        return _LOCAL
    if dist.is_initialized() or under_torchrun():
        if not isinstance(_chosen, Distributed):
            _chosen = Distributed()
        elif dist.is_initialized() and not _chosen.opened:
            _chosen._adopt_group()  # opened since by the user's script
        return _chosen
    return _LOCAL


def _close_group() -> None:
    """Destroy the process group :meth:`Distributed.connect` opened, if it is still there."""
    global _chosen
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _chosen = None


@contextlib.contextmanager
def local() -> Iterator[None]:
    """Run the block as one process, without collectives (e.g. an evaluation on rank 0 only)."""
    _forced.append(_LOCAL)
    try:
        yield
    finally:
        _forced.pop()
