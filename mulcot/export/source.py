"""What an export starts from: a run folder, an adapter folder, a run name in the store (a trained adapter on its
base model), or a full Hugging Face model folder (exported without a merge)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mulcot.refs import resolve


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
    """What ``source`` names (:func:`mulcot.refs.resolve`): ``runs/<name>`` (a run folder with ``adapter/``), an
    adapter folder, a run name in the store, or a full Hugging Face model folder (exported without a merge)."""
    ref = resolve(store, source, allow=("run", "adapter", "model"), what="run or model folder to export")
    if ref.run is None:
        assert ref.path is not None
        return ExportSource(kind="model", path=ref.path, base_model=str(ref.path))
    task = None
    if store is not None:
        run = store.get_run(ref.run.run_id)
        if run is not None and run.get("dataset"):
            ds = store.get_dataset(run["dataset"])
            task = ds["task"] if ds else None
    assert ref.path is not None
    return ExportSource(kind=ref.kind, path=ref.path, base_model=base_model or ref.run.base_model,
                        adapter=ref.run.adapter, run_id=ref.run.run_id, task=task)  # fmt: skip
