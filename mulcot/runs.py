"""Finding a finished training run from what a user types: ``runs/NAME``, an adapter folder, or a run name."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mulcot.errors import NotFoundError
from mulcot.store import Store


@dataclass
class RunRef:
    """A trained adapter and where it came from."""

    run_id: str
    kind: str | None
    folder: Path
    adapter: Path
    base_model: str


def resolve_run(store: Store | None, ref: str | Path) -> RunRef:
    """Resolve ``ref`` (a run folder with ``adapter/``, an adapter folder, or a run name in the store)."""
    path = Path(ref)
    run = None
    if not path.exists() and store is not None:
        run = store.get_run(str(ref))
        if run is not None and run.get("output_dir"):
            path = Path(run["output_dir"])
    if not path.exists():
        raise NotFoundError(f"no run folder, adapter folder or run named '{ref}'")
    adapter = path / "adapter" if (path / "adapter" / "adapter_config.json").is_file() else path
    if not (adapter / "adapter_config.json").is_file():
        if (path / "best" / "adapter_config.json").is_file():
            raise NotFoundError(f"run {path} has not finished (no adapter/ yet): resume it with --resume first")
        raise NotFoundError(f"{path} holds no LoRA adapter (adapter_config.json)")
    folder = path if adapter != path else path.parent
    meta_file = adapter / "mulcot.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    base = meta.get("base") or json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise NotFoundError(f"{adapter} does not say which base model it adapts (base_model_name_or_path)")
    run_id = meta.get("run") or (run["id"] if run else folder.name)
    if run is None and store is not None:
        run = store.get_run(run_id)
    return RunRef(run_id=run_id, kind=run["kind"] if run else None, folder=folder, adapter=adapter, base_model=base)
