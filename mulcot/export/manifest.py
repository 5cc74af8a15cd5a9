"""Export step 4, ``manifest``: ``manifest.json`` (files with sizes and sha256, source run, base model, quantization
types, prompt versions, package versions, and ``--verify``'s figures) and, with GGUF files, the Ollama
``Modelfile``. A rerun hashes only the files whose size or modification time changed, and keeps an earlier
``verify`` section while the GGUFs it describes are unchanged."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mulcot.core import llamacpp
from mulcot.core.gguf import MANIFEST, MANIFEST_FORMAT, outtype_mmproj
from mulcot.core.refs import adapter_digest, sha256_file
from mulcot.errors import MulcotError
from mulcot.export.ollama import MODELFILE, modelfile_text

if TYPE_CHECKING:
    from mulcot.core.refs import ExportSource
    from mulcot.export.config import ExportConfig, ExportResult



def package_versions() -> dict[str, str | None]:
    """Versions of the packages an export depends on (None when one is not installed)."""
    out: dict[str, str | None] = {}
    for dist in ("mulcot", "llama-cpp-python", "transformers", "peft", "torch", "gguf"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _previous(out: Path) -> dict[str, Any]:
    try:
        old = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return old if isinstance(old, dict) else {}


def _previous_hashes(old: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in old.get("files", []) if isinstance(f, dict) and "path" in f}


def _file_entry(out: Path, path: Path, role: str, kind: str | None, previous: dict[str, dict[str, Any]]) -> dict:
    rel = os.path.relpath(path, out)
    stat = path.stat()
    old = previous.get(rel)
    if old and old.get("bytes") == stat.st_size and old.get("mtime_ns") == stat.st_mtime_ns and old.get("sha256"):
        digest = old["sha256"]
    else:
        digest = sha256_file(path)
    return {"path": rel, "role": role, "type": kind, "bytes": stat.st_size, "sha256": digest,
            "mtime_ns": stat.st_mtime_ns}


def _verify_section(new: dict[str, Any] | None, old: dict[str, Any] | None,
                    files: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``--verify``'s figures with each GGUF's sha256 (new), else an earlier export's when the files are the same."""
    from mulcot.export.verify import still_valid

    if new is None:
        return old if still_valid(old, files) else None
    digests = {f["path"]: f["sha256"] for f in files}
    for entry in new["gguf"].values():
        entry["sha256"] = digests.get(entry["file"])
    return new


def write_manifest(out: Path, result: ExportResult, source: ExportSource, config: ExportConfig,
                   quants: tuple[str, ...], names: dict[str, str], *,
                   adapter_sha256: str | None = None) -> dict[str, Any]:
    """Write ``manifest.json`` (and, with GGUF files, the ``Modelfile``); returns the manifest."""
    from mulcot.core.prompts import PROMPT_NAMES, TASKS, get_prompt

    old = _previous(out)
    previous = _previous_hashes(old)
    files: list[dict[str, Any]] = []
    hf_dir = Path(result.hf_dir)
    if hf_dir.resolve().parent == out.resolve():
        for f in sorted(p for p in hf_dir.rglob("*") if p.is_file()):
            files.append(_file_entry(out, f, "hf", None, previous))
    if result.text_gguf:
        files.append(_file_entry(out, Path(result.text_gguf), "gguf-text", config.outtype, previous))
        if result.mmproj_gguf:  # a text-only backbone has no vision projector
            files.append(_file_entry(out, Path(result.mmproj_gguf), "gguf-mmproj", outtype_mmproj(config.outtype),
                                     previous))
    for q, path in result.quantized.items():
        files.append(_file_entry(out, Path(path), "gguf-quant", q, previous))
    modelfile = None
    if result.default_gguf:
        modelfile = out / MODELFILE
        text = modelfile_text(
            result.family,
            Path(result.default_gguf).name,
            Path(result.mmproj_gguf).name if result.mmproj_gguf else None,
            name=result.name,
        )
        modelfile.write_text(text, encoding="utf-8")
        files.append(_file_entry(out, modelfile, "modelfile", None, previous))
    converter = None
    if config.gguf:
        try:
            converter = str(llamacpp.converter_script(llama_cpp_dir=config.llama_cpp_dir))
        except MulcotError:  # pragma: no cover - it ran a moment ago
            converter = None
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": result.name,
        "family": result.family,
        "created_at": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "source": {
            "kind": source.kind,
            "path": str(source.path),
            "run": source.run_id,
            "adapter": str(source.adapter) if source.adapter else None,
            "adapter_sha256": adapter_sha256 or (adapter_digest(source.adapter) if source.adapter else None),
            "task": source.task,
        },
        "base_model": source.base_model,
        "inputs": source.inputs,  # what the model was trained to see: predict and eval show its posts the same way
        "hf_dir": os.path.relpath(hf_dir, out) if hf_dir.resolve().parent == out.resolve() else str(hf_dir),
        "outtype": config.outtype if config.gguf else None,
        "quant_types": list(quants),
        "text_gguf": names["text"] if result.text_gguf else None,
        "mmproj": names["mmproj"] if result.mmproj_gguf else None,
        "quantized": {q: names[q] for q in result.quantized},
        "default_gguf": Path(result.default_gguf).name if result.default_gguf else None,
        "modelfile": MODELFILE if modelfile else None,
        "prompts": {n: {t: get_prompt(n, t).version for t in TASKS} for n in PROMPT_NAMES if n in ("cot", "label")},
        "converter": converter,
        "llama_cpp_python": llamacpp.installed_version(),
        "versions": package_versions(),
        "files": files,
        "verify": _verify_section(result.verify, old.get("verify"), files),
    }
    tmp = out / (MANIFEST + ".partial")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST)
    return manifest
