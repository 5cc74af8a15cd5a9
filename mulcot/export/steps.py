"""The export step runner: a trained student becomes files that run offline on a laptop.

Steps, each resumable (outputs are written under a temporary name and renamed when complete, so a file with its
final name is a finished one; a rerun skips the steps whose outputs exist and verify, and redoes those after a step
that produced new output):

1. ``merge`` (:mod:`~mulcot.export.merge`): the adapter merged into its base model, saved as a Hugging Face folder
   ``hf/``. A full model folder given as the source is converted as it is.
2. ``convert-text`` / ``convert-mmproj`` (:mod:`~mulcot.export.convert`): the text GGUF and the vision projector
   (mmproj) GGUF, in two converter processes side by side (a text-only backbone: the text GGUF alone).
3. ``quantize-<type>`` (:mod:`~mulcot.export.convert`): one GGUF per quantization type.
4. ``verify`` (with ``--verify N``, :mod:`~mulcot.export.verify`): every GGUF scored by forced choice on N posts
   against the merged model (agreement, accuracy difference with its paired interval); always rerun when asked.
5. ``manifest`` (:mod:`~mulcot.export.manifest`): ``manifest.json`` (with the verify figures) and an Ollama
   ``Modelfile``.

A failure raises :class:`~mulcot.errors.ExportError` naming the step; the converter's and quantizer's full output is
kept in ``logs/``.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mulcot.core.gguf import (
    _OUTTYPE_FTYPES,
    MANIFEST,
    QUANT_TYPES,
    check_gguf,
    gguf_names,
    outtype_mmproj,
    parse_quants,
    safe_name,
)
from mulcot.core.llamacpp import converter_script
from mulcot.core.refs import ExportSource, adapter_digest, check_name, resolve_source
from mulcot.errors import ExportError, MulcotError
from mulcot.events import Progress, emit
from mulcot.export.config import HF_DIR, LOG_DIR, ExportConfig, ExportResult, StepResult
from mulcot.export.convert import _failure_reason, convert_to_gguf, quantize_gguf
from mulcot.export.manifest import write_manifest
from mulcot.export.merge import merge_adapter, merged_folder_problem
from mulcot.export.ollama import MODELFILE
from mulcot.export.verify import verify_export, verify_posts
from mulcot.generation.base import PredictConfig

_MARKER = ".mulcot-export"

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
    if config.name is not None:
        check_name(config.name, "export name")
    quants = parse_quants(config.quants) if config.gguf else ()
    source = resolve_source(config.source, store, base_model=config.base_model)
    name = safe_name(config.name or source.run_id or source.path.name)
    posts = None
    if config.verify is not None:  # refused before anything is written: no store, dataset, split or samples
        posts = verify_posts(store, config.verify_dataset, config.verify_split, config.verify)
    if store is None:
        return _export(config, source, name, quants, progress, posts)
    record = {**asdict(config), "source_kind": source.kind, "base_model": source.base_model}
    with store.run(f"export-{name}", kind="export", dataset=None, config=record, output_dir=config.out) as run:
        result = _export(config, source, name, quants, progress, posts)
        run.metrics = result
    return result


class _Steps:
    """The run of one export: its steps in order, what each did, and whether an earlier step wrote new output (the
    later steps then redo theirs)."""

    def __init__(self, config: ExportConfig, out: Path, steps: list[str], progress: Progress | None):
        self.config, self.out, self.steps, self.progress = config, out, steps, progress
        self.results: list[StepResult] = []
        self.dirty = False

    def say(self, step: str, status: str, message: str = "") -> None:
        _say(self.progress, step, status, message, self.steps.index(step) + 1, len(self.steps))

    def record(self, step: str, status: str, outputs: list[Path], t0: float, message: str = "") -> None:
        self.results.append(StepResult(step, status, [str(p) for p in outputs], round(time.perf_counter() - t0, 3)))
        self.say(step, status, message)

    def merge(self, source: ExportSource) -> tuple[Path, str | None]:
        """Step 1: the adapter merged into its base model as ``hf/`` (a full model is converted as it is); returns
        the folder to convert and the adapter's sha256 (read once: merge check, merge stamp, manifest)."""
        t0 = time.perf_counter()
        hf_dir = self.out / HF_DIR
        if source.kind == "model":
            self.record("merge", "skipped", [source.path], t0, f"{source.path} is a full model: converted as it is")
            return source.path, None
        assert source.adapter is not None
        digest = adapter_digest(source.adapter)
        problem = merged_folder_problem(hf_dir, digest)
        if problem is None:
            self.record("merge", "skipped", [hf_dir], t0, f"{hf_dir} is already merged")
            return hf_dir, digest
        if problem == "a merge of a different adapter" and not self.config.force:
            raise ExportError("merge", f"{hf_dir} holds {problem}: pass --force to redo the export, or use "
                                       "another --out")
        self.say("merge", "start", f"merging {source.adapter} into {source.base_model}")
        try:
            merge_adapter(source.base_model, source.adapter, hf_dir, dtype=self.config.dtype, digest=digest,
                          progress=self.progress)
        except ExportError:
            raise
        except MulcotError as err:
            raise ExportError("merge", str(err)) from err
        except (OSError, RuntimeError, ValueError) as err:
            raise ExportError("merge", _failure_reason(str(err), type(err).__name__)) from err
        self.dirty = True
        self.record("merge", "done", [hf_dir], t0)
        return hf_dir, digest

    def convert(self, hf_dir: Path, roles: tuple[tuple[str, str], ...], names: dict[str, str], name: str) -> bool:
        """Step 2: the text GGUF and the vision projector, in two converter processes side by side; returns whether
        the text GGUF is new."""
        jobs: dict[str, tuple[str, Path, str, float]] = {}
        for step, role in roles:
            t0 = time.perf_counter()
            target = self.out / names[role]
            kind = self.config.outtype if role == "text" else outtype_mmproj(self.config.outtype)
            if not self.dirty and _gguf_ok(target, role, _OUTTYPE_FTYPES[kind] if role == "text" else None):
                self.record(step, "skipped", [target], t0, f"{target.name} exists and verifies")
            else:
                jobs[step] = (role, target, kind, t0)
        if not jobs:
            return False
        from concurrent.futures import ThreadPoolExecutor

        try:  # fetch/extract the converter once, before the processes start
            converter_script(llama_cpp_dir=self.config.llama_cpp_dir, progress=self.progress)
        except MulcotError as err:
            raise ExportError(next(iter(jobs)), str(err)) from err
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            futures = {}
            for step, (role, target, kind, _) in jobs.items():
                self.say(step, "start", f"llama.cpp converter → {target.name}")
                futures[step] = pool.submit(convert_to_gguf, hf_dir, target, mmproj=role == "mmproj", outtype=kind,
                                            llama_cpp_dir=self.config.llama_cpp_dir,
                                            log_file=self.out / LOG_DIR / f"{step}.log", model_name=name)
            errors = {step: f.exception() for step, f in futures.items()}
        for step, (_role, target, _, t0) in jobs.items():
            err = errors[step]
            if err is not None:
                if isinstance(err, MulcotError):
                    raise ExportError(step, str(err)) from err
                raise err
            self.record(step, "done", [target], t0)
        return "convert-text" in jobs

    def quantize(self, quants: tuple[str, ...], names: dict[str, str], text_new: bool) -> dict[str, str]:
        """Step 3: one GGUF per quantization type; returns type -> file."""
        out: dict[str, str] = {}
        for q in quants:
            step = f"quantize-{q}"
            t0 = time.perf_counter()
            target = self.out / names[q]
            if not (self.dirty or text_new) and _gguf_ok(target, "text", QUANT_TYPES[q]):
                self.record(step, "skipped", [target], t0, f"{names[q]} exists and verifies")
            else:
                self.say(step, "start", f"llama.cpp quantizer → {names[q]}")
                try:
                    quantize_gguf(self.out / names["text"], target, q, threads=self.config.threads,
                                  log_file=self.out / LOG_DIR / f"{step}.log")
                except MulcotError as err:
                    raise ExportError(step, str(err)) from err
                self.record(step, "done", [target], t0)
            out[q] = str(target)
        return out


def _export(config: ExportConfig, source: ExportSource, name: str, quants: tuple[str, ...], progress: Progress | None,
            posts: tuple[list[dict[str, Any]], str] | None = None) -> ExportResult:
    start = time.perf_counter()
    out = Path(config.out).expanduser()
    _prepare_out(out, config.force)
    # a text-only backbone (paper, Appendix G) has no vision projector: one text GGUF, no mmproj
    text_only = _text_only(str(source.path if source.kind == "model" else source.base_model))
    roles = (("convert-text", "text"),) if text_only else (("convert-text", "text"), ("convert-mmproj", "mmproj"))
    steps = ["merge"]
    if config.gguf:
        steps += [step for step, _ in roles] + [f"quantize-{q}" for q in quants]
    if posts is not None:
        steps.append("verify")
    steps.append("manifest")
    run = _Steps(config, out, steps, progress)

    hf_dir, digest = run.merge(source)
    result = ExportResult(out=str(out), name=name, family=_family(str(hf_dir)), source_kind=source.kind,
                          run_id=source.run_id, base_model=source.base_model, hf_dir=str(hf_dir))
    names = gguf_names(name, config.outtype, quants)
    if config.gguf:
        text_new = run.convert(hf_dir, roles, names, name)
        result.text_gguf = str(out / names["text"])
        result.mmproj_gguf = None if text_only else str(out / names["mmproj"])
        result.quantized = run.quantize(quants, names, text_new)
        # the smallest file is what a laptop runs by default
        order = [q for q in ("q4_k_m", "q4_k_s", "q4_0", "q5_k_m", "q5_k_s", "q6_k", "q8_0") if q in quants]
        result.default_gguf = result.quantized[order[0]] if order else result.text_gguf

    if posts is not None:  # each GGUF against the merged model, by forced choice
        t0 = time.perf_counter()
        run.say("verify", "start", f"scoring {len(posts[0])} posts of {config.verify_dataset}/{config.verify_split}")
        settings = PredictConfig(n_threads=config.threads, batch_size=8)
        result.verify = verify_export(result, posts[0], posts[1], dataset=str(config.verify_dataset),
                                      split=config.verify_split, config=settings, progress=progress)
        agree = ", ".join(f"{q} {100 * v['agreement']:.1f}%" for q, v in result.verify["gguf"].items())
        run.record("verify", "done", [], t0, f"agreement with the merged model: {agree}")

    # 4. manifest and Modelfile
    t0 = time.perf_counter()
    run.say("manifest", "start", "hashing files, writing manifest.json and Modelfile")
    try:
        manifest = write_manifest(out, result, source, config, quants, names, adapter_sha256=digest)
        result.verify = manifest.get("verify")
    except OSError as err:
        raise ExportError("manifest", f"cannot write the manifest: {err}") from err
    result.manifest = str(out / MANIFEST)
    result.modelfile = str(out / MODELFILE) if config.gguf else None
    run.record("manifest", "done", [Path(result.manifest)] + ([Path(result.modelfile)] if result.modelfile else []),
               t0, f"{len(manifest['files'])} files")
    result.steps = run.results
    result.wall_s = round(time.perf_counter() - start, 3)
    return result
