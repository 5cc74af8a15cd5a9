"""The export step runner: a trained student becomes files that run offline on a laptop.

Steps, each resumable (outputs are written under a temporary name and renamed when complete, so a file with its
final name is a finished one; a rerun skips the steps whose outputs exist and verify, and redoes those after a step
that produced new output):

1. ``merge`` (:mod:`~mulcot.export.merge`): the adapter merged into its base model, saved as a Hugging Face folder
   ``hf/``. A full model folder given as the source is converted as it is.
2. ``convert-text`` / ``convert-mmproj`` (:mod:`~mulcot.export.convert`): the text GGUF and the vision projector
   (mmproj) GGUF, in two converter processes side by side (a text-only backbone: the text GGUF alone).
3. ``quantize-<type>`` (:mod:`~mulcot.export.convert`): one GGUF per quantization type.
4. ``manifest`` (:mod:`~mulcot.export.manifest`): ``manifest.json`` and an Ollama ``Modelfile``.

A failure raises :class:`~mulcot.errors.ExportError` naming the step; the converter's and quantizer's full output is
kept in ``logs/``.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mulcot.errors import ExportError, MulcotError
from mulcot.events import Progress, emit
from mulcot.export.convert import _failure_reason, convert_to_gguf, quantize_gguf
from mulcot.export.gguf import (
    _OUTTYPE_FTYPES,
    OUTTYPES,
    QUANT_TYPES,
    check_gguf,
    gguf_names,
    outtype_mmproj,
    parse_quants,
    safe_name,
)
from mulcot.export.llamacpp import converter_script
from mulcot.export.manifest import MANIFEST, write_manifest
from mulcot.export.merge import merge_adapter, merged_folder_problem
from mulcot.export.ollama import MODELFILE
from mulcot.export.source import ExportSource, resolve_source
from mulcot.refs import adapter_digest, check_name

HF_DIR = "hf"
LOG_DIR = "logs"
_MARKER = ".mulcot-export"

@dataclass
class ExportConfig:
    """What to export and how (every field is a CLI option)."""

    source: str  # runs/<name>, an adapter folder, a run name in the store, or a full model folder
    out: str
    quants: tuple[str, ...] = ("q4_k_m",)
    gguf: bool = True  # False: stop after the merged Hugging Face folder
    outtype: str = "f16"  # f16 | bf16 | f32 for the converted text GGUF (the mmproj is f16, or f32 with f32)
    llama_cpp_dir: str | None = None  # a llama.cpp checkout / sdist (default: the installed version's sdist)
    name: str | None = None  # file name stem (default: the run name)
    base_model: str | None = None  # override the adapter's recorded base model
    dtype: str | None = None  # dtype to merge and save in (default: the base checkpoint's)
    threads: int | None = None  # quantizer threads (default: all cores)
    force: bool = False  # redo every step


@dataclass
class StepResult:
    step: str
    status: str  # done | skipped
    outputs: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class ExportResult:
    out: str
    name: str
    family: str
    source_kind: str
    run_id: str | None
    base_model: str
    hf_dir: str
    text_gguf: str | None = None
    mmproj_gguf: str | None = None
    quantized: dict[str, str] = field(default_factory=dict)
    default_gguf: str | None = None
    manifest: str | None = None
    modelfile: str | None = None
    steps: list[StepResult] = field(default_factory=list)
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _say(progress: Progress | None, step: str, status: str, message: str = "", index: int = 0, total: int = 0) -> None:
    """An export event (stage ``export``, kind = the step's status: start, done, skipped or info)."""
    emit(progress, "export", status, done=index, total=total, message=message, step=step, status=status)


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise MulcotError(f"--out {out} is a file, not a folder")
    if out.exists() and any(out.iterdir()) and not (out / _MARKER).is_file():
        raise MulcotError(f"{out} exists and is not a mulcot export folder: choose an empty or new --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / _MARKER).write_text("written by mulcot export\n", encoding="utf-8")
    if force:
        for child in out.iterdir():
            if child.name == _MARKER:
                continue
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()


def _family(model_dir: str) -> str:
    from mulcot.models import model_family

    return model_family(model_dir)


def _text_only(model: str) -> bool:
    from mulcot.models.loading import is_text_family

    return is_text_family(_family(model))


def _gguf_ok(path: Path, role: str, file_type: int | None = None) -> bool:
    if not path.is_file():
        return False
    try:
        info = check_gguf(path, role)
    except MulcotError:
        return False
    return file_type is None or info["file_type"] is None or int(info["file_type"]) == file_type


def export(config: ExportConfig, *, store: Any = None, progress: Progress | None = None) -> ExportResult:
    """Run the export steps (merge, convert, quantize, manifest) into ``config.out``; see the module docstring.
    With a store, the export is recorded as a run (kind ``export``)."""
    if config.outtype not in OUTTYPES:
        raise MulcotError(f"unknown --outtype '{config.outtype}' (use one of: {', '.join(OUTTYPES)})")
    if config.name is not None:
        check_name(config.name, "export name")
    quants = parse_quants(config.quants) if config.gguf else ()
    source = resolve_source(config.source, store, base_model=config.base_model)
    name = safe_name(config.name or source.run_id or source.path.name)
    if store is None:
        return _export(config, source, name, quants, progress)
    record = {**asdict(config), "source_kind": source.kind, "base_model": source.base_model}
    with store.run(f"export-{name}", kind="export", dataset=None, config=record, output_dir=config.out) as run:
        result = _export(config, source, name, quants, progress)
        run.metrics = result
    return result


def _export(config: ExportConfig, source: ExportSource, name: str, quants: tuple[str, ...],
            progress: Progress | None) -> ExportResult:  # fmt: skip
    start = time.perf_counter()
    out = Path(config.out).expanduser()
    _prepare_out(out, config.force)
    logs = out / LOG_DIR

    # a text-only backbone (paper, Appendix G) has no vision projector: one text GGUF, no mmproj
    text_only = _text_only(str(source.path if source.kind == "model" else source.base_model))
    roles = (("convert-text", "text"),) if text_only else (("convert-text", "text"), ("convert-mmproj", "mmproj"))
    steps = ["merge"]
    if config.gguf:
        steps += [step for step, _ in roles] + [f"quantize-{q}" for q in quants]
    steps.append("manifest")
    total = len(steps)
    results: list[StepResult] = []
    dirty = False  # an earlier step produced new output: later steps redo theirs

    def record(step: str, status: str, outputs: list[Path], t0: float, message: str = "") -> None:
        results.append(StepResult(step, status, [str(p) for p in outputs], round(time.perf_counter() - t0, 3)))
        _say(progress, step, status, message, steps.index(step) + 1, total)

    # 1. merge
    t0 = time.perf_counter()
    hf_dir = out / HF_DIR
    digest = None  # the adapter's sha256: read once, for the merge check, the merge stamp and the manifest
    if source.kind == "model":
        hf_dir = source.path
        record("merge", "skipped", [hf_dir], t0, f"{source.path} is a full model: converted as it is")
    else:
        assert source.adapter is not None
        digest = adapter_digest(source.adapter)
        problem = merged_folder_problem(hf_dir, digest)
        if problem is None:
            record("merge", "skipped", [hf_dir], t0, f"{hf_dir} is already merged")
        else:
            if problem == "a merge of a different adapter" and not config.force:
                raise ExportError("merge", f"{hf_dir} holds {problem}: pass --force to redo the export, or use "
                                           "another --out")  # fmt: skip
            _say(progress, "merge", "start", f"merging {source.adapter} into {source.base_model}", 1, total)
            try:
                merge_adapter(source.base_model, source.adapter, hf_dir, dtype=config.dtype, digest=digest,
                              progress=progress)  # fmt: skip
            except ExportError:
                raise
            except MulcotError as err:
                raise ExportError("merge", str(err)) from err
            except (OSError, RuntimeError, ValueError) as err:
                raise ExportError("merge", _failure_reason(str(err), type(err).__name__)) from err
            dirty = True
            record("merge", "done", [hf_dir], t0)
    family = _family(str(hf_dir))

    result = ExportResult(out=str(out), name=name, family=family, source_kind=source.kind, run_id=source.run_id,
                          base_model=source.base_model, hf_dir=str(hf_dir))  # fmt: skip
    names = gguf_names(name, config.outtype, quants)

    if config.gguf:
        # 2. convert: text model and vision projector, in two converter processes side by side
        jobs: dict[str, tuple[str, Path, str, float]] = {}
        for step, role in roles:
            t0 = time.perf_counter()
            target = out / names[role]
            kind = config.outtype if role == "text" else outtype_mmproj(config.outtype)
            if not dirty and _gguf_ok(target, role, _OUTTYPE_FTYPES[kind] if role == "text" else None):
                record(step, "skipped", [target], t0, f"{target.name} exists and verifies")
            else:
                jobs[step] = (role, target, kind, t0)
        if jobs:
            from concurrent.futures import ThreadPoolExecutor

            try:  # fetch/extract the converter once, before the processes start
                converter_script(llama_cpp_dir=config.llama_cpp_dir, progress=progress)
            except MulcotError as err:
                raise ExportError(next(iter(jobs)), str(err)) from err
            with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
                futures = {}
                for step, (role, target, kind, _) in jobs.items():
                    _say(progress, step, "start", f"llama.cpp converter → {target.name}", steps.index(step) + 1, total)
                    futures[step] = pool.submit(convert_to_gguf, hf_dir, target, mmproj=role == "mmproj", outtype=kind,
                                                llama_cpp_dir=config.llama_cpp_dir, log_file=logs / f"{step}.log",
                                                model_name=name)  # fmt: skip
                errors = {step: f.exception() for step, f in futures.items()}
            for step, (_role, target, _, t0) in jobs.items():
                err = errors[step]
                if err is not None:
                    if isinstance(err, MulcotError):
                        raise ExportError(step, str(err)) from err
                    raise err
                record(step, "done", [target], t0)
            text_new = "convert-text" in jobs
        else:
            text_new = False
        result.text_gguf = str(out / names["text"])
        result.mmproj_gguf = None if text_only else str(out / names["mmproj"])

        # 3. quantize
        for q in quants:
            step = f"quantize-{q}"
            t0 = time.perf_counter()
            target = out / names[q]
            if not (dirty or text_new) and _gguf_ok(target, "text", QUANT_TYPES[q]):
                record(step, "skipped", [target], t0, f"{names[q]} exists and verifies")
            else:
                _say(progress, step, "start", f"llama.cpp quantizer → {names[q]}", steps.index(step) + 1, total)
                try:
                    quantize_gguf(out / names["text"], target, q, threads=config.threads, log_file=logs / f"{step}.log")
                except MulcotError as err:
                    raise ExportError(step, str(err)) from err
                record(step, "done", [target], t0)
            result.quantized[q] = str(target)
        # the smallest file is what a laptop runs by default
        order = [q for q in ("q4_k_m", "q4_k_s", "q4_0", "q5_k_m", "q5_k_s", "q6_k", "q8_0") if q in quants]
        result.default_gguf = result.quantized[order[0]] if order else result.text_gguf

    # 4. manifest and Modelfile
    t0 = time.perf_counter()
    _say(progress, "manifest", "start", "hashing files, writing manifest.json and Modelfile", total, total)
    try:
        manifest = write_manifest(out, result, source, config, quants, names, adapter_sha256=digest)
    except OSError as err:
        raise ExportError("manifest", f"cannot write the manifest: {err}") from err
    result.manifest = str(out / MANIFEST)
    result.modelfile = str(out / MODELFILE) if config.gguf else None
    record("manifest", "done", [Path(result.manifest)] + ([Path(result.modelfile)] if result.modelfile else []), t0,
           f"{len(manifest['files'])} files")  # fmt: skip
    result.steps = results
    result.wall_s = round(time.perf_counter() - start, 3)
    return result
