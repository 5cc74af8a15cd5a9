"""What a string on the command line names — the one resolver.

:func:`resolve` answers for every command that takes a model: a run (``runs/NAME``, its folder, or its name in the
store), an adapter folder (``adapter/``, a ``best/`` checkpoint or any PEFT folder), a model folder
(``config.json``), an export folder (``manifest.json`` / GGUF files), a GGUF file, or else a hub id — and
:func:`looks_like_path` is the one rule that tells a folder a user means from a hub id. ``expand``, ``distill``,
``eval --model``, ``export``, ``predict`` and model loading all go through here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mulcot.errors import ModelError, MulcotError, NotFoundError
from mulcot.store import Store

KINDS = ("run", "adapter", "model", "export", "gguf", "hub")
# A name that becomes a file or folder name (datasets, runs, exports): letters, digits, '.', '_' and '-', starting
# with a letter or digit, so never '..', never a path ('a/b', '../x', '/x') and never hidden.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def check_name(name: str, what: str = "run name", flag: str = "--name") -> str:
    """``name`` when it is a safe name (:data:`NAME`), else a one-line refusal naming ``flag``."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise MulcotError(f"{what} {name!r} may use only letters, digits, '.', '_' and '-' (starting with a letter "
                          f"or digit, at most 200): pass another {flag}")
    return name


def looks_like_path(spec: str | os.PathLike[str]) -> bool:
    """True for what a user means as a folder or file (``./x``, ``/x``, ``~/x``, ``a/b/c``, ``x.gguf``), not a hub
    id (``org/name``)."""
    spec = str(spec)
    if spec.startswith((".", "/", "~", os.sep)) or spec.count("/") > 1 or spec.endswith(".gguf"):
        return True
    return os.sep != "/" and os.sep in spec


@dataclass
class RunRef:
    """A trained adapter and where it came from."""

    run_id: str  # the run's name: the adapter's mulcot.json, the store's run, else its folder's name
    kind: str | None  # the run's kind in the store (assistant, student, ...), None when the store has no such run
    folder: Path | None  # the run folder holding adapter/ (None: an adapter folder outside any run)
    adapter: Path
    base_model: str
    inputs: str = "all"  # what the run was trained on (TrainConfig.inputs): expand and eval show it the same


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
            path = store.run_folder(run) or Path(runs_dir) / str(ref)  # type: ignore[union-attr]
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
            or _json(adapter / "adapter_config.json").get("base_model_name_or_path"))
    if not base:
        raise NotFoundError(f"{adapter} does not say which base model it adapts (base_model_name_or_path)")
    inputs = meta.get("inputs") or ((run or {}).get("config") or {}).get("inputs") or "all"
    return RunRef(run_id=str(run_id), kind=run["kind"] if run else None, folder=folder, adapter=adapter,
                  base_model=str(base), inputs=str(inputs))


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


@dataclass
class Ref:
    """What a command-line string names (:func:`resolve`)."""

    kind: str  # one of KINDS
    spec: str
    path: Path | None = None  # the folder or file (None for a hub id or a run whose folder is its adapter's parent)
    run: RunRef | None = None  # for kind run / adapter

    @property
    def model(self) -> str:
        """The model to load: the base model of an adapter, else the folder or hub id itself."""
        if self.run is not None:
            return self.run.base_model
        return str(self.path) if self.path is not None else self.spec


def _is_export(path: Path) -> bool:
    return (path / "manifest.json").is_file() or any(path.glob("*.gguf"))


def resolve(store: Store | None, spec: str | os.PathLike[str], runs_dir: str | os.PathLike[str] = "runs", *,
            allow: tuple[str, ...] = KINDS, what: str = "model") -> Ref:
    """What ``spec`` names, as one of ``allow``'s kinds; anything else is refused in one line naming ``what`` the
    command wanted. A hub id is only recognised, not fetched (loading does that)."""
    text = str(spec)
    path = Path(text).expanduser()
    ref: Ref
    adapter = find_adapter(path) if path.is_dir() else None
    if path.is_file():
        if path.suffix != ".gguf":
            raise MulcotError(f"{path} is a file, not a {what} (a folder, a GGUF file, a run name or a hub id)")
        ref = Ref("gguf", text, path)
    elif path.is_dir() and adapter is None and (path / "config.json").is_file():
        ref = Ref("model", text, path)
    elif path.is_dir() and adapter is None and _is_export(path):
        ref = Ref("export", text, path)
    elif path.is_dir() and adapter is None and not (path / "best" / "adapter_config.json").is_file():
        raise MulcotError(f"{text} is neither a run folder (with adapter/), an adapter folder (adapter_config.json), "
                          "a model folder (config.json) nor an export folder (GGUF files)")
    elif path.is_dir() or (store is not None and store.get_run(text) is not None) or (Path(runs_dir) / text).is_dir():
        run = resolve_run(store, text, runs_dir)
        kind = "adapter" if (path / "adapter_config.json").is_file() or run.folder is None else "run"
        ref = Ref(kind, text, run.folder if kind == "run" else run.adapter, run)
    elif looks_like_path(text) or "hub" not in allow:
        if "hub" in allow:
            raise NotFoundError(f"model folder not found: {text}")
        if "run" in allow:
            raise NotFoundError(f"no run folder, adapter folder or run named '{text}'")
        raise NotFoundError(f"{what} not found: {text}")
    else:
        ref = Ref("hub", text)
    if ref.kind not in allow:
        want = ", ".join("run" if k == "adapter" else k for k in allow if k != "adapter")
        raise MulcotError(f"{text} is {'an' if ref.kind[0] in 'aeiou' else 'a'} {ref.kind}, but this needs a {what} "
                          f"({want})")
    return ref


@dataclass
class ExportSource:
    """What is exported: a trained adapter on its base model, or a full model folder."""

    kind: str  # run | adapter | model
    path: Path
    base_model: str
    adapter: Path | None = None
    run_id: str | None = None
    task: str | None = None
    inputs: str = "all"  # what the run was trained on (TrainConfig.inputs): the export records it for its users


def resolve_source(source: str | os.PathLike[str], store: Any = None, *, base_model: str | None = None) -> ExportSource:
    """What ``source`` names (:func:`resolve`): ``runs/<name>`` (a run folder with ``adapter/``), an
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
                        adapter=ref.run.adapter, run_id=ref.run.run_id, task=task, inputs=ref.run.inputs)


def trained_inputs(path: str | os.PathLike[str]) -> str:
    """What the model at ``path`` was trained to see (``TrainConfig.inputs``): an adapter folder's ``mulcot.json``,
    or the export manifest of a GGUF file, an export folder or its merged ``hf/`` folder; ``all`` when none says."""
    from mulcot.core.gguf import MANIFEST, MANIFEST_FORMAT

    p = Path(path).expanduser()
    folder = p if p.is_dir() else p.parent
    said = [_json(folder / "mulcot.json")]
    manifests = (_json(folder / MANIFEST), _json(folder.parent / MANIFEST))
    said += [m for m in manifests if m.get("format") == MANIFEST_FORMAT]
    return next((str(m["inputs"]) for m in said if m.get("inputs")), "all")
