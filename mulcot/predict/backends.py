"""Opening a backend from CLI-style arguments: the GGUF files of an export folder (the manifest's default, or a
quantization type) or of a text GGUF file, or a Hugging Face model for transformers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mulcot.errors import ModelError, MulcotError, NotFoundError
from mulcot.export.manifest import read_manifest
from mulcot.predict.config import PredictConfig
from mulcot.predict.gguf_backend import GGUFBackend
from mulcot.predict.hf_backend import HFBackend
from mulcot.predict.server_backend import ServerBackend
from mulcot.refs import resolve

BACKENDS = ("gguf", "hf", "server")


def find_gguf(path: str | os.PathLike[str], *, quant: str | None = None,
              mmproj: str | os.PathLike[str] | None = None) -> tuple[Path, Path | None]:  # fmt: skip
    """The text GGUF and vision projector to run, from an export folder (its manifest's default or ``quant``) or a
    text GGUF file (the projector beside it: the only ``mmproj*.gguf`` there). ``mmproj`` overrides the projector.
    The projector is None when none is found (text-only use)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise NotFoundError(f"GGUF file or export folder not found: {p}")
    if p.is_dir():
        manifest = read_manifest(p)
        folder = p
        if manifest is not None and manifest.get("text_gguf"):
            if quant:
                q = quant.lower()
                name = manifest.get("quantized", {}).get(q) or (
                    manifest["text_gguf"] if q == (manifest.get("outtype") or "").lower() else None
                )
                if name is None:
                    have = [*(manifest.get("quantized") or {}), manifest.get("outtype")]
                    raise NotFoundError(f"{p} has no {quant} GGUF (it has: {', '.join(str(h) for h in have if h)})")
            else:
                name = manifest.get("default_gguf") or manifest["text_gguf"]
            text = folder / name
            projector = folder / manifest["mmproj"] if manifest.get("mmproj") else None
        else:
            models = sorted(f for f in p.glob("*.gguf") if not f.name.startswith("mmproj") and ".partial" not in f.name)
            if quant:
                models = [f for f in models if quant.lower() in f.name.lower()]
            if not models:
                raise NotFoundError(f"no text model GGUF in {p}")
            if len(models) > 1:
                names = ", ".join(f.name for f in models)
                raise ModelError(f"{p} holds several model GGUFs ({names}): pass one file, or --quant")
            text, projector = models[0], None
    else:
        text, folder, projector = p, p.parent, None
    if projector is None:
        candidates = sorted(f for f in folder.glob("mmproj*.gguf") if ".partial" not in f.name)
        if len(candidates) == 1:
            projector = candidates[0]
        elif len(candidates) > 1 and mmproj is None:
            names = ", ".join(f.name for f in candidates)
            raise ModelError(f"{folder} holds several vision projectors ({names}): pass --mmproj FILE")
    if mmproj is not None:
        projector = Path(mmproj).expanduser()
        if not projector.exists():
            raise NotFoundError(f"vision projector (mmproj) GGUF not found: {projector}")
    return text, projector


def open_backend(
    backend: str,
    *,
    gguf: str | os.PathLike[str] | None = None,
    model: str | os.PathLike[str] | None = None,
    quant: str | None = None,
    mmproj: str | os.PathLike[str] | None = None,
    config: PredictConfig | None = None,
    store: Any = None,
    server: Any = None,
) -> GGUFBackend | HFBackend | ServerBackend:
    """A backend from CLI-style arguments: ``gguf`` (export folder or text GGUF), ``hf`` (``model`` folder) or
    ``server`` (a :class:`mulcot.serving.ServerConfig`)."""
    if backend == "server":
        if server is None:
            raise MulcotError("the server backend needs --server URL --served-model NAME")
        return ServerBackend(server, config)
    if backend == "gguf":
        if gguf is None:
            raise MulcotError("the gguf backend needs --gguf DIR|FILE (an export folder or a text GGUF)")
        ref = resolve(store, gguf, allow=("export", "gguf"), what="GGUF file or export folder")
        text, projector = find_gguf(ref.path or gguf, quant=quant, mmproj=mmproj)
        return GGUFBackend(text, projector, config)
    if backend == "hf":
        if model is None:
            raise MulcotError("the hf backend needs --model DIR (a merged export's hf/ folder, a model or a run)")
        return HFBackend(model, config, store)
    raise MulcotError(f"unknown backend '{backend}' (use one of: {', '.join(BACKENDS)})")
