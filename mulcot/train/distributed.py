"""Training under ``torchrun`` / ``accelerate launch``: who this process is, and the few collectives mulcot needs
around the Trainer (which does the data-parallel training itself).

One rule: only the main process writes the store, the run folder, the curves and the progress; the others read,
compute their share and wait at barriers. A check that can fail runs where it must and its outcome is shared, so
every rank stops with the same one-line error instead of the others hanging at the next collective.

Outside a launcher (no ``WORLD_SIZE``/``RANK`` in the environment) everything here is a no-op: world size 1,
rank 0, main.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, TypeVar

from mulcot.errors import MulcotError

T = TypeVar("T")


class RankError(MulcotError):
    """An error raised on every rank with the same message; only the main process reports it."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def world_size() -> int:
    """The number of processes of this job (``WORLD_SIZE`` set by torchrun / accelerate launch; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    """This process's global rank (0 outside a launcher)."""
    return int(os.environ.get("RANK", "0") or 0)


def local_rank() -> int:
    """This process's rank on its node (its GPU index under torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_main() -> bool:
    """True on the process that writes (rank 0, or the only process)."""
    return rank() == 0


def is_distributed() -> bool:
    return world_size() > 1


def setup(device: str | None = None) -> None:
    """Join the process group once (NCCL on CUDA, gloo on CPU) and pin this rank's GPU; the Trainer (accelerate)
    finds the group already there. A no-op in a single process."""
    if not is_distributed():
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    _terminate_as_interrupt()
    on_gpu = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if on_gpu:
        torch.cuda.set_device(local_rank())
    try:
        dist.init_process_group(backend="nccl" if on_gpu else "gloo", timeout=timedelta(minutes=30))
    except (RuntimeError, ValueError) as exc:
        raise MulcotError(
            f"rank {rank()} could not join the process group ({str(exc).splitlines()[0]}): check MASTER_ADDR/"
            "MASTER_PORT and that every node runs the same launcher command"
        ) from None


def _terminate_as_interrupt() -> None:
    """When one rank dies the launcher stops the others with SIGTERM: end like Ctrl-C (the run is recorded as
    interrupted and can be resumed) instead of vanishing with the run left ``running``."""
    import signal

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        try:
            signal.signal(signal.SIGTERM, interrupt)
        except ValueError:  # not the main thread: leave the signal as it is
            pass


def _group() -> bool:
    if not is_distributed():
        return False
    import torch.distributed as dist

    return dist.is_initialized()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if _group():
        import torch.distributed as dist

        dist.barrier()


def gather(value: T) -> list[T]:
    """``value`` of every rank, in rank order, on every rank (``[value]`` in a single process)."""
    if not _group():
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def broadcast(value: T) -> T:
    """The main process's ``value`` on every rank."""
    if not _group():
        return value
    import torch.distributed as dist

    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


def _outcome(fn: Callable[[], T]) -> tuple[T | None, tuple[str, str, int] | None]:
    try:
        return fn(), None
    except MulcotError as exc:
        return None, (type(exc).__name__, str(exc), getattr(exc, "exit_code", 1))


def _raise_first(errors: Iterable[tuple[int, tuple[str, str, int] | None]]) -> None:
    for who, err in errors:
        if err is not None:
            _name, message, code = err
            prefix = "" if who == 0 or not is_distributed() else f"rank {who}: "
            raise RankError(prefix + message, code)


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on the main process only and give its result to every rank; a :class:`MulcotError` it raises is
    raised on every rank (as :class:`RankError`), so none is left waiting."""
    if not _group():
        return fn()
    result, error = _outcome(fn) if is_main() else (None, None)
    result, error = broadcast((result, error))
    _raise_first([(0, error)])
    return result  # type: ignore[return-value]


def everywhere(fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank; if any raises a :class:`MulcotError`, every rank raises the first one."""
    if not _group():
        return fn()
    result, error = _outcome(fn)
    _raise_first(enumerate(gather(error)))
    return result  # type: ignore[return-value]


def shard(items: list[T]) -> tuple[list[T], int]:
    """This rank's share of ``items`` (every world_size-th, starting at its rank), padded by repeating its last
    item so every rank has the same count (sharded models need every rank in every forward); returns the share
    and how many of it are real."""
    n, r = world_size(), rank()
    mine = items[r::n]
    per_rank = -(-len(items) // n) if items else 0
    real = len(mine)
    if mine and len(mine) < per_rank:
        mine = mine + [mine[-1]] * (per_rank - len(mine))
    elif not mine and per_rank:
        mine = [items[-1]] * per_rank
        real = 0
    return mine, real


def unshard(parts: list[list[T]], total: int) -> list[T]:
    """Put every rank's results (each the real part of its :func:`shard`) back in the original order."""
    n = len(parts)
    out: list[Any] = [None] * total
    for r, part in enumerate(parts):
        for i, value in enumerate(part):
            out[r + i * n] = value
    return out


def gather_sharded(items: list[Any], fn: Callable[[list[Any]], list[T]]) -> list[T]:
    """``fn`` over ``items`` split across ranks, results gathered in the items' order on every rank."""
    if not _group():
        return fn(items)
    mine, real = shard(items)
    results = fn(mine)[:real]
    return unshard(gather(results), len(items))
