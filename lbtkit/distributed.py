"""What a process started by ``accelerate launch`` (torchrun) knows of its siblings: whether it
is one, how many there are, its rank, and its share of a list.

The worker side of ``--num-processes``; the launcher side (starting the processes, relaying
signals to them) is ``lbtkit.launch``. Imports nothing of lbtkit: the training loop and every
analysis that splits work over processes use it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any


def in_launched_worker() -> bool:
    """True inside a process started by accelerate launch / torchrun."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextlib.contextmanager
def worker_accelerator(accelerator: Any = None) -> Iterator[Any]:
    """``accelerator`` if given; else, inside ``accelerate launch`` with several processes, a
    new Accelerator (CPU and gloo without CUDA) shut down on exit; else None (one process).

    For the analysis commands that split a grid over processes but train nothing."""
    owned = accelerator is None and launched_world_size() > 1
    if owned:
        import torch
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=not torch.cuda.is_available())
    try:
        yield accelerator
    finally:
        if owned:
            accelerator.end_training()


def shard(items: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """This process's share of ``items``: every ``world_size``-th one, starting at ``rank``.

    Strided rather than contiguous so that the expensive extrapolated ends of a grid (and the
    big batches after the small ones) are spread over the processes.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    return list(items[rank::world_size])


def process_rank(accelerator: Any) -> tuple[int, int]:
    """(rank, world size) of ``accelerator``; (0, 1) for None (one process)."""
    if accelerator is None:
        return 0, 1
    return accelerator.process_index, accelerator.num_processes
