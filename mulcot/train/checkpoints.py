"""Files of a run that must never be half-written: the adapters (``adapter/``, ``best/``: written beside, then
swapped into place so that at every moment the folder holds a whole adapter, old or new) and the Trainer's
checkpoints (only complete ones are resumed from)."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system or
    filesystem cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _aside(dest: Path, what: str) -> Path:
    return dest.with_name(f"{dest.name}.{what}")


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    """``mulcot.json`` written whole or not at all (a ``.part`` renamed into place): the last file of a save, so
    that its presence means the adapter is complete."""
    part = folder / "mulcot.json.part"
    part.write_text(json.dumps(meta, indent=2, default=str))
    os.replace(part, folder / "mulcot.json")


def is_complete_adapter(path: Path) -> bool:
    """A whole saved adapter: its config, its weights and ``mulcot.json`` (written last)."""
    return (
        (path / "adapter_config.json").is_file()
        and any(path.glob("adapter_model.*"))
        and (path / "mulcot.json").is_file()
    )


def recover(dest: Path) -> None:
    """Finish a swap that a kill interrupted, where the system could not swap atomically: without ``dest``, the new
    folder (``dest.tmp``, complete) or else the old one (``dest.old``) takes its place; a leftover old one goes."""
    tmp, old = _aside(dest, "tmp"), _aside(dest, "old")
    if not dest.exists():
        if tmp.is_dir() and is_complete_adapter(tmp):
            os.replace(tmp, dest)
        elif old.is_dir():
            os.replace(old, dest)
    if old.exists() and dest.exists():
        shutil.rmtree(old, ignore_errors=True)


def swap_into_place(tmp: Path, dest: Path) -> None:
    """Put the whole folder ``tmp`` at ``dest``. At every moment ``dest`` holds the old folder or the new one: one
    atomic exchange where the system has it, else two renames whose gap :func:`recover` closes."""
    if dest.exists():
        if _exchange(tmp, dest):
            shutil.rmtree(tmp)  # now the old one
            return
        old = _aside(dest, "old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(_aside(dest, "old"), ignore_errors=True)


def _fresh_tmp(dest: Path) -> Path:
    recover(dest)  # a swap a kill interrupted is finished first, so a new tmp never stands for a whole adapter
    tmp = _aside(dest, "tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    return tmp


def atomic_copy(src: Path, dest: Path) -> None:
    """``src`` copied to ``dest`` (see :func:`swap_into_place`)."""
    tmp = _fresh_tmp(dest)
    shutil.copytree(src, tmp)
    swap_into_place(tmp, dest)


def save_adapter(model: Any, processor: Any, dest: Path, meta: dict[str, Any]) -> None:
    """A PEFT model's adapter, its processor and ``meta`` (``mulcot.json``, last) as ``dest``, swapped into place."""
    tmp = _fresh_tmp(dest)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    write_meta(tmp, meta)
    swap_into_place(tmp, dest)


def save_trained_adapter(trainer: Any, processor: Any, dest: Path, meta: dict[str, Any]) -> None:
    """The trainer's adapter, its processor and ``meta`` as ``dest``, written beside and swapped into place.

    Called on every rank: the Trainer gathers a sharded model's weights (DeepSpeed ZeRO-3, FSDP) and writes them
    from the main process only, which alone writes the rest."""
    from mulcot.train import distributed as dist

    main = dist.is_main()
    tmp = _fresh_tmp(dest) if main else _aside(dest, "tmp")
    dist.barrier()
    trainer.save_model(str(tmp))
    if main:
        (tmp / "training_args.bin").unlink(missing_ok=True)
        processor.save_pretrained(tmp)
        write_meta(tmp, meta)
        swap_into_place(tmp, dest)
    dist.barrier()


def resume_best(folder: Path) -> dict[str, Any] | None:
    """The best epoch's metrics an interrupted run had kept (``best/mulcot.json``), after finishing any swap of
    ``best/`` or ``adapter/`` that a kill interrupted; None when it had none yet."""
    for name in ("best", "adapter"):
        recover(folder / name)
    best_file = folder / "best" / "mulcot.json"
    if not best_file.is_file():
        return None
    return json.loads(best_file.read_text()).get("best")


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint that was written to the end (a kill during saving leaves one without its trainer
    state); incomplete newer ones are removed so the Trainer's own rotation does not trip on them."""
    if not folder.is_dir():
        return None
    found = sorted(
        (p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for path in found:
        if (path / "trainer_state.json").is_file() and any(path.glob("adapter_model.*")):
            return path
        shutil.rmtree(path, ignore_errors=True)
    return None
