"""Files of a run that must never be half-written: the adapter (written beside, then renamed into place) and the
Trainer's checkpoints (only complete ones are resumed from)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


def atomic_copy(src: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def save_adapter(model: Any, processor: Any, dest: Path, meta: dict[str, Any]) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    (tmp / "mulcot.json").write_text(json.dumps(meta, indent=2, default=str))
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def save_trained_adapter(trainer: Any, processor: Any, dest: Path, meta: dict[str, Any]) -> None:
    """The trainer's adapter, its processor and ``meta`` as ``dest``, written beside and renamed into place.

    Called on every rank: the Trainer gathers a sharded model's weights (DeepSpeed ZeRO-3, FSDP) and writes them
    from the main process only, which alone writes the rest."""
    from mulcot.train import distributed as dist

    main = dist.is_main()
    tmp = dest.with_name(dest.name + ".tmp")
    if main and tmp.exists():
        shutil.rmtree(tmp)
    dist.barrier()
    trainer.save_model(str(tmp))
    if main:
        (tmp / "training_args.bin").unlink(missing_ok=True)
        processor.save_pretrained(tmp)
        (tmp / "mulcot.json").write_text(json.dumps(meta, indent=2, default=str))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    dist.barrier()


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
