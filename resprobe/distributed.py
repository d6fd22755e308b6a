"""torch.distributed, used only when a run is started by ``torchrun`` (``WORLD_SIZE`` > 1).

Work is sharded by image batches: batch ``b`` goes to rank ``b % world``. Each probe gathers its
per-image values (with their image indices, so rank 0 restores the data order) and reduces its
sums on rank 0, which computes the result and writes the files. A single process runs the same code
with every helper a no-op, so a distributed result equals the single-process one (sums of floats up
to their rounding order).

Backends: gloo on CPUs, NCCL on GPUs. Collectives time out after ``RESPROBE_DIST_TIMEOUT`` seconds
(default 600): a rank that fails stops the run with its error instead of leaving the others waiting
(``torchrun`` also stops the remaining ranks when one exits with an error).
"""
from __future__ import annotations

import datetime
import os
from typing import Any, Optional

import numpy as np
import torch

__all__ = ["rank", "world", "is_main", "init", "shutdown", "gather_rows", "gather_lists", "reduce_sum", "broadcast",
           "barrier", "active", "shard"]

_ACTIVE = False


def active() -> bool:
    return _ACTIVE and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if active() else 0


def world() -> int:
    return torch.distributed.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init(device: str = "cpu") -> bool:
    """Join the process group ``torchrun`` set up (no-op without it); returns whether distributed."""
    global _ACTIVE
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not torch.distributed.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        timeout = datetime.timedelta(seconds=float(os.environ.get("RESPROBE_DIST_TIMEOUT", "600")))
        torch.distributed.init_process_group(backend=backend, timeout=timeout)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    _ACTIVE = True
    return True


def shutdown(finished: bool = False) -> None:
    """Leave the process group. ``finished``: this rank's work ended without an error; it then waits for the
    others (rank 0 writes the result after the rest are done) so that every rank tears down gloo together — a
    rank that destroyed its group and exited while rank 0 was still connected aborted at exit in 4 of 24 runs
    ("terminate called without an active exception", exit status -6, and torchrun stopped rank 0 before it
    wrote anything). After an error no rank waits: the others are stopped by torchrun. The wait has no
    short timeout (rank 0 may write for longer than a collective's): a rank that dies ends it through torchrun."""
    global _ACTIVE
    if active():
        if finished:
            if torch.distributed.get_backend() == "gloo":
                torch.distributed.monitored_barrier(timeout=datetime.timedelta(days=1))
            else:
                torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    _ACTIVE = False


def shard(n_batches: int) -> range:
    """The batch numbers this rank processes."""
    return range(rank(), n_batches, world())


def barrier() -> None:
    if active():
        torch.distributed.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _gather(obj: Any) -> Optional[list]:
    if not active():
        return [obj]
    out = [None] * world() if is_main() else None
    torch.distributed.gather_object(obj, out, dst=0)
    return out


def gather_rows(idx: np.ndarray, arrays: dict[str, np.ndarray]) -> Optional[dict[str, np.ndarray]]:
    """Per-image arrays from every rank, concatenated on rank 0 in image order (``idx``: the images'
    positions in the data set). Other ranks get None."""
    parts = _gather((np.asarray(idx), {k: np.asarray(v) for k, v in arrays.items()}))
    if parts is None:
        return None
    if len(parts) == 1 and bool(np.all(parts[0][0][1:] >= parts[0][0][:-1])):  # one process, in order: no copy
        return dict(parts[0][1])
    allidx = np.concatenate([p[0] for p in parts])
    order = np.argsort(allidx, kind="stable")
    return {k: np.concatenate([p[1][k] for p in parts])[order] for k in arrays}


def reduce_sum(values: Any) -> Any:
    """Sum of a number, array or nested dict/list of them over ranks (on rank 0; others get None); a dict key
    that some ranks lack is summed over the ranks that have it."""
    parts = _gather(values)
    if parts is None:
        return None
    return _sum(parts)


def gather_lists(values: dict) -> Optional[dict]:
    """``{key: list}`` from every rank, the lists concatenated per key (on rank 0; others get None)."""
    parts = _gather(values)
    if parts is None:
        return None
    return {k: [x for p in parts for x in p.get(k, [])] for k in values}


def _sum(parts: list) -> Any:
    first = parts[0]
    if isinstance(first, dict):   # a key missing on a rank (it had nothing to add: no batch) counts zero
        keys = list(dict.fromkeys(k for p in parts for k in p))
        return {k: _sum([p[k] for p in parts if k in p]) for k in keys}
    if isinstance(first, (list, tuple)):
        return type(first)(_sum([p[i] for p in parts]) for i in range(len(first)))
    if isinstance(first, np.ndarray):
        return np.sum(np.stack(parts), axis=0)
    return sum(parts[1:], first)
