"""Finding a trained LoRA adapter from what a user types: ``runs/NAME``, an adapter folder, or a run name.

The one resolver behind ``expand``, ``distill``, ``eval --model``, ``export`` and ``predict --backend hf``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mulcot.errors import ModelError, NotFoundError
from mulcot.store import Store


@dataclass
class RunRef:
    """A trained adapter and where it came from."""

    run_id: str  # the run's name: the adapter's mulcot.json, the store's run, else its folder's name
    kind: str | None  # the run's kind in the store (assistant, student, ...), None when the store has no such run
    folder: Path | None  # the run folder holding adapter/ (None: an adapter folder outside any run)
    adapter: Path
    base_model: str


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot read {path}: {err}") from err
    return data if isinstance(data, dict) else {}


def find_adapter(path: Path) -> tuple[Path, Path | None] | None:
    """``(adapter, run folder)`` when ``path`` is a run folder with ``adapter/`` or an adapter folder, else None."""
    if (path / "adapter_config.json").is_file():
        return path, (path.parent if path.name in ("adapter", "best") else None)
    if (path / "adapter" / "adapter_config.json").is_file():
        return path / "adapter", path
    return None


def resolve_run(store: Store | None, ref: str | os.PathLike[str], runs_dir: str | os.PathLike[str] = "runs") -> RunRef:
    """Resolve ``ref``: a run folder with ``adapter/``, an adapter folder (``adapter/``, a ``best/`` checkpoint or
    any PEFT folder), a run name in the store, or a folder under ``runs_dir``."""
    path = Path(ref).expanduser()
    run = None
    if not path.exists():
        run = store.get_run(str(ref)) if store is not None else None
        if run is not None:
            path = Path(run["output_dir"]) if run.get("output_dir") else Path(runs_dir) / str(ref)
        elif (Path(runs_dir) / str(ref)).is_dir():
            path = Path(runs_dir) / str(ref)
        else:
            raise NotFoundError(f"no run folder, adapter folder or run named '{ref}'")
    found = find_adapter(path)
    if found is None:
        if run is not None and not path.is_dir():
            raise NotFoundError(f"run '{run['id']}' is in the store but its folder {path} is gone")
        if (path / "best" / "adapter_config.json").is_file() or (run is not None and path.is_dir()):
            what = f"run {path}" + (f" ({run['kind']}, {run['status']})" if run else "")
            raise NotFoundError(f"{what} has not finished (no adapter/ yet): resume its training with --resume first")
        raise NotFoundError(f"{path} holds no LoRA adapter (adapter_config.json)")
    adapter, folder = found
    meta = _json(adapter / "mulcot.json")
    run_id = meta.get("run") or (run["id"] if run else None) or (folder.name if folder else adapter.name)
    if run is None and store is not None:
        run = store.get_run(run_id)
    base = (meta.get("base") or ((run or {}).get("config") or {}).get("model")
            or _json(adapter / "adapter_config.json").get("base_model_name_or_path"))  # fmt: skip
    if not base:
        raise NotFoundError(f"{adapter} does not say which base model it adapts (base_model_name_or_path)")
    return RunRef(run_id=str(run_id), kind=run["kind"] if run else None, folder=folder, adapter=adapter,
                  base_model=str(base))  # fmt: skip


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def adapter_digest(adapter: str | os.PathLike[str]) -> str:
    """sha256 over an adapter's weights and its adapter_config.json: what makes two adapters the same."""
    adapter = Path(adapter)
    files = sorted(adapter.glob("adapter_model*.safetensors")) or sorted(adapter.glob("adapter_model*.bin"))
    if not files:
        raise ModelError(f"{adapter} has no adapter weights (adapter_model.safetensors)")
    digest = hashlib.sha256()
    for f in files + [adapter / "adapter_config.json"]:
        digest.update(f.name.encode())
        digest.update(sha256_file(f).encode())
    return digest.hexdigest()
