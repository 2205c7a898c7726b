"""Data-parallel training under torchrun: which process this is, and rank 0 first.

torchrun starts one process per device and tells each its place through the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``). Everything here reads that environment, so without
torchrun (``WORLD_SIZE`` unset or 1) every function is a no-op and nothing imports
``torch.distributed``'s process group. docs/training_scale.md shows the commands.

Rank 0 alone scores dev and test, writes the run folder and builds feature caches; the other
ranks wait at a barrier and then read what rank 0 wrote, so the run folder and the cache
folder must be on a filesystem every node sees (one machine: always true).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from contextlib import contextmanager
from typing import Iterator

import torch

log = logging.getLogger(__name__)

# The other ranks wait at a barrier while rank 0 builds a feature cache (a frozen encoder over a
# whole corpus, decoding every clip: an hour is possible), scores dev or writes the checkpoint.
# NCCL's own default (10 minutes) would kill such a wait; a real hang still ends after this.
TIMEOUT_ENV = "MMER_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 240


def world_size() -> int:
    """Processes in the job (torchrun's ``WORLD_SIZE``); 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (torchrun's ``RANK``); 0 without torchrun."""
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    return world_size() > 1


def is_main_process() -> bool:
    """True on rank 0, the one process that writes files and scores dev/test."""
    return rank() == 0


def timeout() -> _dt.timedelta:
    """How long a collective (a barrier) may wait: ``$MMER_DIST_TIMEOUT_MIN`` minutes, default 240."""
    return _dt.timedelta(minutes=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_MIN)))


def init_distributed(device: str = "auto") -> torch.device:
    """Join torchrun's process group (once per process) and return this rank's device.

    device: the config's ``optim.device``. Under torchrun, ``auto`` or ``cuda`` means the GPU
    ``LOCAL_RANK`` (NCCL); ``cpu``, or a machine without CUDA, means the CPU (gloo). Without
    torchrun this returns ``auto`` resolved, as the Trainer always did.
    """
    if not is_distributed():
        if device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(device)
    if torch.distributed.is_initialized():   # joined before (for a cache): keep its backend's device
        use_cuda = torch.distributed.get_backend() == "nccl"
    else:
        use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)   # so a bare "cuda" elsewhere (mmer.load) means this GPU
        chosen, backend = torch.device("cuda", local_rank), "nccl"
    else:
        chosen, backend = torch.device("cpu"), "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, timeout=timeout())
        log.info("rank %d of %d on %s (%s)", rank(), world_size(), chosen, backend)
    return chosen


def barrier() -> None:
    """Wait for every rank; a no-op without torchrun."""
    if is_distributed() and torch.distributed.is_initialized():
        torch.distributed.barrier()


@contextmanager
def main_process_first(device: str = "auto") -> Iterator[None]:
    """Run the body on rank 0 first, then on the other ranks (a no-op without torchrun).

    For work whose result lands on disk, such as a feature cache: rank 0 computes and writes it,
    the others wait, then run the same body and find everything cached. The process group is
    joined here when the Trainer has not done it yet (caches are built before it exists).
    """
    if not is_distributed():
        yield
        return
    init_distributed(device)
    if not is_main_process():
        barrier()
    yield
    # Not in a `finally`: when rank 0 fails, it exits and torchrun stops the waiting ranks,
    # instead of releasing them to redo the failed work.
    if is_main_process():
        barrier()
