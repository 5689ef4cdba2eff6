"""The processes of one run under ``torchrun``: PyTorch's own engine for many processes (``torch.distributed``; gloo on
CPUs, NCCL on GPUs), from a laptop (``torchrun --standalone --nproc_per_node=K``) to a cluster (``--nnodes``, or
``srun torchrun`` under SLURM). torchrun describes the run in the environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``); without it a run is one process and nothing
here does anything.
"""

from __future__ import annotations

import atexit
import itertools
import os
import sys
from dataclasses import dataclass
from typing import NoReturn, Sequence

import SimpleITK as sitk
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place among the run's: ``rank`` of ``size`` (0 of 1 alone)."""

    rank: int = 0
    size: int = 1

    @property
    def leader(self) -> bool:
        """Rank 0: the one that writes what concerns the whole run (settings, summaries) and draws progress."""
        return self.rank == 0

    def share(self, items: Sequence) -> list:
        """This rank's items: every ``size``-th from its own rank on (the same split on every rank; the shares
        differ by one item at most)."""
        return list(items[self.rank::self.size])

    def unshared(self, results: Sequence) -> list:
        """The inverse of :meth:`share`: every rank's ``results``, one per item of its share, back in the order of
        the items (on every rank)."""
        if self.size == 1:
            return list(results)
        missing = object()  # a shorter share's end
        return [result for row in itertools.zip_longest(*self.gathered(list(results)), fillvalue=missing)
                for result in row if result is not missing]

    def gathered(self, value) -> list:
        """Every rank's ``value`` (picklable), in rank order, on every rank — a barrier too."""
        if self.size == 1:
            return [value]
        found = [None] * self.size
        dist.all_gather_object(found, value)
        return found

    def from_leader(self, value):
        """Rank 0's ``value`` on every rank."""
        return self.gathered(value)[0]

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of every rank's ``values`` (a CPU tensor of one shape on every rank)."""
        return self._reduced(values, dist.ReduceOp.SUM)

    def min(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise least of every rank's ``values``."""
        return self._reduced(values, dist.ReduceOp.MIN)

    def max(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise greatest of every rank's ``values``."""
        return self._reduced(values, dist.ReduceOp.MAX)

    def _reduced(self, values: torch.Tensor, operation) -> torch.Tensor:
        if self.size == 1:
            return values
        # NCCL reduces only on the rank's GPU; gloo on the CPU
        device = f"cuda:{local_rank()}" if dist.get_backend() == "nccl" else "cpu"
        reduced = values.detach().to(device, copy=True).contiguous()
        dist.all_reduce(reduced, operation)
        return reduced.to(values.device)


def joined() -> Ranks:
    """The run's ranks: under torchrun, this process joins the group torchrun describes (once; gloo, or NCCL on its
    own GPU ``cuda:LOCAL_RANK`` when CUDA is there) and takes its share of the CPU cores (torch's and ITK's threads:
    the cores over the processes on this machine)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return Ranks()
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(_destroy)  # as PyTorch asks, before the process ends
        per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", size))
        threads = max(1, (os.cpu_count() or 1) // per_machine)
        torch.set_num_threads(threads)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)  # ITK's pool (reading, registration) too
    return Ranks(dist.get_rank(), dist.get_world_size())


def leave(code: int) -> NoReturn:
    """End the process with ``code``. After a joined run (torchrun) the process group is destroyed, the output
    flushed, and the process ends without the interpreter's final garbage collection: gloo's worker threads may
    still be releasing the last collective's tensors then, and taking the interpreter's lock during that collection
    aborts the process ("terminate called without an active exception", SIGABRT, after every result was written;
    seen in about one 2-rank run in five on a loaded machine, the core showing ``AsyncAllgatherWork``'s destructor
    in ``ProcessGroupGloo::runLoop`` waiting for the lock inside ``Py_FinalizeEx``; pytorch/pytorch#179291)."""
    if dist.is_available() and dist.is_initialized():
        _destroy()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _destroy() -> None:
    """The process group destroyed, unless it is already (by its user, or by :func:`leave`): destroying it twice
    is an error in PyTorch."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_label() -> str:
    """``[rank R] `` under torchrun (from its environment, before the group is joined), else nothing: what
    prefixes a rank's warnings and errors (its other output is rank 0's alone)."""
    return f"[rank {os.environ['RANK']}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""


def local_rank() -> int:
    """This process's index on its machine (torchrun's ``LOCAL_RANK``; 0 alone): which GPU it takes."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def own_gpu() -> str:
    """The GPU ``--device auto`` means: this rank's own under torchrun, else the first."""
    return f"cuda:{local_rank()}" if "LOCAL_RANK" in os.environ else "cuda"
