"""What an export starts from: a run folder, an adapter folder, a run name in the store (a trained adapter on its
base model), or a full Hugging Face model folder (exported without a merge)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mulcot.runs import resolve_run


@dataclass
class ExportSource:
    """What is exported: a trained adapter on its base model, or a full model folder."""

    kind: str  # run | adapter | model
    path: Path
    base_model: str
    adapter: Path | None = None
    run_id: str | None = None
    task: str | None = None


def resolve_source(source: str | os.PathLike[str], store: Any = None, *, base_model: str | None = None) -> ExportSource:
    """What ``source`` names: ``runs/<name>`` (a run folder with ``adapter/``), an adapter folder, a run name in the
    store, or a full Hugging Face model folder (exported without a merge)."""
    path = Path(source).expanduser()
    is_adapter = (path / "adapter_config.json").is_file() or (path / "adapter" / "adapter_config.json").is_file()
    if path.is_dir() and (path / "config.json").is_file() and not is_adapter:
        return ExportSource(kind="model", path=path, base_model=str(path))
    ref = resolve_run(store, source)
    task = None
    if store is not None:
        run = store.get_run(ref.run_id)
        if run is not None and run.get("dataset"):
            ds = store.get_dataset(run["dataset"])
            task = ds["task"] if ds else None
    kind = "adapter" if (path / "adapter_config.json").is_file() or ref.folder is None else "run"
    return ExportSource(kind=kind, path=ref.folder if ref.folder is not None and kind == "run" else ref.adapter,
                        base_model=base_model or ref.base_model, adapter=ref.adapter, run_id=ref.run_id,
                        task=task)  # fmt: skip
