"""Stage 6, export: a trained student becomes files that run offline on a laptop.

Steps, each resumable (outputs are written under a temporary name and renamed when complete, so a file with its
final name is a finished one; a rerun skips the steps whose outputs exist and verify):

1. ``merge``: the LoRA adapter is merged into its base model (peft ``merge_and_unload``) and saved as a complete
   Hugging Face folder ``hf/`` (safetensors weights, config, generation config, tokenizer, processor and image
   processor configs, chat template) that ``from_pretrained`` loads alone (through mulcot's image-only processor
   classes when torchvision is absent). A full model folder given as the source is converted as it is.
2. ``convert-text`` / ``convert-mmproj``: llama.cpp's own converter (the one matching the installed
   llama-cpp-python, see :mod:`mulcot.llamacpp`), run as a subprocess of this interpreter, writes the text GGUF and
   the vision projector (mmproj) GGUF.
3. ``quantize-<type>``: the runtime's own quantizer (``llama_cpp.llama_model_quantize``), in a subprocess so a
   crash in C cannot take the caller down, writes one GGUF per quantization type (the mmproj stays 16-bit).
4. ``manifest``: ``manifest.json`` (files, sizes, sha256, source run, base model, quantization types, versions)
   and an Ollama ``Modelfile``.

A failure raises :class:`~mulcot.errors.ExportError` naming the step; the converter's and quantizer's full output is
kept in ``logs/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from mulcot.errors import ExportError, ModelError, MulcotError, NotFoundError
from mulcot.runs import adapter_digest, resolve_run, sha256_file

MANIFEST = "manifest.json"
MODELFILE = "Modelfile"
HF_DIR = "hf"
LOG_DIR = "logs"
MERGE_STAMP = "mulcot_merge.json"
_MARKER = ".mulcot-export"
MANIFEST_FORMAT = "mulcot-export/1"

# llama_ftype values of llama.cpp (llama_cpp.LLAMA_FTYPE_MOSTLY_*), checked against llama-cpp-python 0.3.36.
QUANT_TYPES: dict[str, int] = {
    "q8_0": 7,
    "q6_k": 18,
    "q5_k_m": 17,
    "q5_k_s": 16,
    "q4_k_m": 15,
    "q4_k_s": 14,
    "q4_0": 2,
}
OUTTYPES = ("f16", "bf16", "f32")
# general.file_type of the converter's outputs
_OUTTYPE_FTYPES = {"f32": 0, "f16": 1, "bf16": 32}
GGUF_MAGIC = b"GGUF"

Progress = Callable[["ExportEvent"], None]


@dataclass
class ExportEvent:
    """One progress report: ``status`` is ``start``, ``done``, ``skipped`` or ``info``."""

    step: str
    status: str
    message: str = ""
    index: int = 0
    total: int = 0


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


@dataclass
class ExportSource:
    """What is exported: a trained adapter on its base model, or a full model folder."""

    kind: str  # run | adapter | model
    path: Path
    base_model: str
    adapter: Path | None = None
    run_id: str | None = None
    task: str | None = None


# --------------------------------------------------------------------------------------------------- helpers


def _say(progress: Progress | None, step: str, status: str, message: str = "", index: int = 0, total: int = 0) -> None:
    if progress is not None:
        progress(ExportEvent(step=step, status=status, message=message, index=index, total=total))


def package_versions() -> dict[str, str | None]:
    """Versions of the packages an export depends on (None when one is not installed)."""
    out: dict[str, str | None] = {}
    for dist in ("mulcot", "llama-cpp-python", "transformers", "peft", "torch", "gguf"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def safe_name(name: str) -> str:
    """A file-name-safe stem (letters, digits, ``.``, ``_``, ``-``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")
    return cleaned or "model"


def gguf_names(name: str, outtype: str, quants: Iterable[str]) -> dict[str, str]:
    """File names of an export's GGUFs: ``text``, ``mmproj`` and one per quantization type."""
    names = {
        "text": f"{name}-{outtype.upper()}.gguf",
        "mmproj": f"mmproj-{name}-{outtype_mmproj(outtype).upper()}.gguf",
    }
    for q in quants:
        names[q] = f"{name}-{q.upper()}.gguf"
    return names


def outtype_mmproj(outtype: str) -> str:
    """The vision projector is converted to f16 (f32 when the text model is f32): mtmd's default."""
    return "f32" if outtype == "f32" else "f16"


def parse_quants(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """Quantization types from ``q8_0,q4_k_m`` (case-insensitive; ``none`` or empty for none)."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        q = item.strip().lower().replace("-", "_")
        if not q or q == "none":
            continue
        if q not in QUANT_TYPES:
            raise MulcotError(f"unknown quantization type '{item.strip()}' (known: {', '.join(QUANT_TYPES)})")
        if q not in out:
            out.append(q)
    return tuple(out)


# --------------------------------------------------------------------------------------------------- GGUF checks


_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value types
_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_WANTED_KEYS = ("general.architecture", "general.type", "general.file_type", "clip.projector_type", "general.name",
                "general.alignment")  # fmt: skip


class _Truncated(Exception):
    pass


def _parse_gguf(buf: Any, size: int) -> dict[str, Any]:
    """Parse a GGUF header (key/values and tensor infos) from ``buf`` (an mmap); checks that every tensor's data
    lies inside the file. Only the keys in ``_WANTED_KEYS`` are decoded; arrays are skipped."""
    import struct

    pos = 0

    def take(n: int) -> int:
        nonlocal pos
        if pos + n > size:
            raise _Truncated
        at = pos
        pos += n
        return at

    def unpack(fmt: str) -> Any:
        n = struct.calcsize("<" + fmt)
        return struct.unpack_from("<" + fmt, buf, take(n))[0]

    def string() -> bytes:
        n = unpack("Q")
        at = take(n)
        return bytes(buf[at : at + n])

    def skip_value(vtype: int) -> None:
        if vtype == 8:
            take(unpack("Q"))
        elif vtype == 9:
            etype, count = unpack("I"), unpack("Q")
            if etype in _SCALAR_SIZES:
                take(_SCALAR_SIZES[etype] * count)
            elif etype == 8:
                for _ in range(count):
                    take(unpack("Q"))
            else:
                raise ValueError(f"unknown array element type {etype}")
        elif vtype in _SCALAR_SIZES:
            take(_SCALAR_SIZES[vtype])
        else:
            raise ValueError(f"unknown value type {vtype}")

    if bytes(buf[0:4]) != GGUF_MAGIC:
        raise ValueError("bad magic")
    take(4)
    version = unpack("I")
    if version < 2 or version > 3:
        raise ValueError(f"unsupported GGUF version {version}")
    n_tensors, n_kv = unpack("Q"), unpack("Q")
    if n_tensors > 1 << 24 or n_kv > 1 << 24:
        raise ValueError("implausible tensor or key count")
    values: dict[str, Any] = {}
    for _ in range(n_kv):
        key = string().decode("utf-8", "replace")
        vtype = unpack("I")
        if key in _WANTED_KEYS and vtype == 8:
            values[key] = string().decode("utf-8", "replace")
        elif key in _WANTED_KEYS and vtype in _SCALAR_FORMATS:
            values[key] = unpack(_SCALAR_FORMATS[vtype])
        else:
            skip_value(vtype)
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    end = 0
    for _ in range(n_tensors):
        name = string()
        dims = [unpack("Q") for _ in range(unpack("I"))]
        ttype, offset = unpack("I"), unpack("Q")
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
        except (ValueError, KeyError):
            raise ValueError(f"tensor {name.decode(errors='replace')} has unknown type {ttype}") from None
        count = 1
        for d in dims:
            count *= d
        end = max(end, offset + count // block * type_size)
    alignment = int(values.get("general.alignment") or 32)
    data_start = -(-pos // alignment) * alignment
    if data_start + end > size:
        raise _Truncated
    return {
        "version": version,
        "architecture": values.get("general.architecture"),
        "type": values.get("general.type"),
        "file_type": values.get("general.file_type"),
        "projector_type": values.get("clip.projector_type"),
        "name": values.get("general.name"),
        "tensors": n_tensors,
    }


def inspect_gguf(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Header facts of a GGUF file: ``architecture``, ``type`` (``model``/``mmproj``), ``file_type``,
    ``projector_type``, ``name``, ``tensors``. Reads only the header (fast on multi-GB files) and checks that the
    tensor data is all there. Raises :class:`ModelError` for a file that is not a complete, readable GGUF."""
    import mmap

    p = Path(path)
    try:
        with open(p, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 24 or fh.read(4) != GGUF_MAGIC:
                raise ModelError(f"{p} is not a GGUF file (bad magic: corrupt, truncated or another format)")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse_gguf(buf, size)
    except _Truncated:
        raise ModelError(f"{p} is a corrupt GGUF file (truncated: its tensor data is incomplete)") from None
    except (ValueError, UnicodeDecodeError, OverflowError) as err:
        raise ModelError(f"{p} is a corrupt GGUF file ({err})") from err
    except OSError as err:
        raise ModelError(f"cannot read {p}: {err.strerror or err}") from err


def check_gguf(path: str | os.PathLike[str], role: str) -> dict[str, Any]:
    """Verify that ``path`` is a readable GGUF of ``role`` (``text`` model or ``mmproj`` vision projector); returns
    :func:`inspect_gguf`'s facts, or raises a one-line :class:`NotFoundError` / :class:`ModelError`."""
    p = Path(path)
    what = "vision projector (mmproj) GGUF" if role == "mmproj" else "text model GGUF"
    if not p.exists():
        raise NotFoundError(f"{what} not found: {p}")
    if p.is_dir():
        raise ModelError(f"{p} is a folder, not a {what}")
    info = inspect_gguf(p)
    is_projector = info["type"] == "mmproj" or info["architecture"] == "clip" or info["projector_type"] is not None
    if role == "mmproj" and not is_projector:
        raise ModelError(f"{p} is not a vision projector (mmproj) GGUF (it is a '{info['architecture']}' model)")
    if role != "mmproj":
        if is_projector:
            raise ModelError(f"{p} is a vision projector (mmproj), not the text model GGUF")
        if not info["architecture"]:
            raise ModelError(f"{p} is a corrupt GGUF file (no general.architecture)")
    if info["tensors"] == 0:
        raise ModelError(f"{p} is a corrupt GGUF file (no tensors)")
    return info


# ----------------------------------------------------------------------------------------------------- source


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


# ------------------------------------------------------------------------------------------------------ merge


def _checkpoint_dtype(model_dir: str) -> str | None:
    path = Path(model_dir).expanduser() / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for holder in (config, config.get("text_config") or {}):
        for key in ("dtype", "torch_dtype"):
            if isinstance(holder.get(key), str):
                return holder[key]
    return None


def merged_folder_problem(folder: Path, digest: str | None = None) -> str | None:
    """Why ``folder`` is not a complete merged export (None when it is)."""
    if not folder.is_dir():
        return "missing"
    needed = ("config.json", "generation_config.json", "tokenizer_config.json", "preprocessor_config.json")
    missing = [n for n in needed if not (folder / n).is_file()]
    if not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors")
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.json").is_file():
        missing.append("tokenizer.json")
    if missing:
        return f"incomplete (missing {', '.join(missing)})"
    if digest is not None:
        stamp = folder / MERGE_STAMP
        try:
            recorded = json.loads(stamp.read_text(encoding="utf-8")).get("adapter_sha256")
        except (OSError, ValueError):
            recorded = None
        if recorded != digest:
            return "a merge of a different adapter"
    return None


def merge_adapter(
    base_model: str,
    adapter: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    dtype: str | None = None,
    digest: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Merge the LoRA ``adapter`` into ``base_model`` and save a complete Hugging Face folder at ``dest``.

    The merge is computed in float32 on the CPU, then saved in ``dtype`` (default: the base checkpoint's dtype).
    The processor (tokenizer, chat template, image processor) is the adapter folder's when it has one (training
    saves it there), else the base model's. ``dest`` appears only when complete.
    """
    from mulcot.models import load_model, load_with_adapter, resolve_dtype
    from mulcot.models.loading import quiet_progress_bars
    from mulcot.models.processor import load_processor

    adapter = Path(adapter).expanduser()
    dest = Path(dest)
    save_dtype = resolve_dtype(dtype or _checkpoint_dtype(base_model) or "fp32", "cpu")
    if progress:
        progress(f"Loading {base_model} (float32, CPU) and the adapter {adapter}")
    base, processor, family = load_model(base_model, device="cpu", dtype="fp32")
    peft_model = load_with_adapter(base, adapter)
    if progress:
        progress("Merging the LoRA weights into the base model")
    merged = peft_model.merge_and_unload()
    merged = merged.to(save_dtype)
    if (adapter / "tokenizer_config.json").is_file():
        try:
            processor = load_processor(adapter, family)
        except (OSError, ValueError, TypeError, MulcotError):  # an adapter folder without a usable processor
            pass
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    if progress:
        progress(f"Saving the merged model ({str(save_dtype).removeprefix('torch.')}) to {dest}")
    with quiet_progress_bars():
        merged.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    processor.image_processor.save_pretrained(tmp)  # preprocessor_config.json, as the real checkpoints ship it
    stamp = {
        "merged_by": "mulcot.export.merge_adapter",
        "base_model": base_model,
        "adapter": str(adapter),
        "adapter_sha256": digest or adapter_digest(adapter),
        "family": family,
        "dtype": str(save_dtype).removeprefix("torch."),
    }
    (tmp / MERGE_STAMP).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
    del merged, peft_model, base
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


# ---------------------------------------------------------------------------------------------------- convert


def _failure_reason(output: str, fallback: str) -> str:
    """The most telling line of a tool's output: the last error-looking line, else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"error|exception|failed|not supported|cannot|can not", line, re.IGNORECASE):
            return line[:400]
    return (lines[-1] if lines else fallback)[:400]


def _run_tool(tool: str, cmd: list[str], tmp: Path, log_file: str | os.PathLike[str] | None,
              env: dict[str, str] | None = None) -> None:  # fmt: skip
    """Run llama.cpp's ``tool`` (converter or quantizer) writing ``tmp``; its output goes to ``log_file``.
    Raises :class:`ModelError` with the telling line (and removes ``tmp``) when it fails."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    except OSError as err:  # pragma: no cover - no interpreter
        raise ModelError(f"cannot run llama.cpp's {tool}: {err}") from err
    output = (done.stdout or "") + (done.stderr or "")
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        Path(log_file).write_text(" ".join(cmd) + "\n\n" + output, encoding="utf-8")
    if done.returncode == 0 and tmp.is_file():
        return
    tmp.unlink(missing_ok=True)
    if "No module named 'llama_cpp'" in output:
        raise ModelError(f"llama.cpp's {tool} needs llama-cpp-python, which is not installed: "
                         "pip install llama-cpp-python")  # fmt: skip
    reason = _failure_reason(output, f"the {tool} exited with {done.returncode}")
    where = f" (full log: {log_file})" if log_file else ""
    raise ModelError(f"llama.cpp's {tool} failed: {reason}{where}")


def convert_to_gguf(
    hf_dir: str | os.PathLike[str],
    outfile: str | os.PathLike[str],
    *,
    mmproj: bool = False,
    outtype: str = "f16",
    llama_cpp_dir: str | os.PathLike[str] | None = None,
    log_file: str | os.PathLike[str] | None = None,
    model_name: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Run llama.cpp's ``convert_hf_to_gguf.py`` (``--mmproj`` for the vision projector) on ``hf_dir``.

    Raises :class:`ModelError` with the converter's telling line; its whole output goes to ``log_file``."""
    from mulcot.llamacpp import converter_script

    if outtype not in OUTTYPES:
        raise MulcotError(f"unknown --outtype '{outtype}' (use one of: {', '.join(OUTTYPES)})")
    script = converter_script(llama_cpp_dir=llama_cpp_dir, progress=progress)
    out = Path(outfile)
    tmp = out.with_name(out.stem + ".partial.gguf")
    tmp.unlink(missing_ok=True)
    cmd = [sys.executable, str(script), str(hf_dir), "--outfile", str(tmp), "--outtype", outtype]
    if mmproj:
        cmd.append("--mmproj")
    if model_name:
        cmd += ["--model-name", model_name]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    _run_tool("converter", cmd, tmp, log_file, env=env)
    check_gguf(tmp, "mmproj" if mmproj else "text")
    os.replace(tmp, out)
    return out


# --------------------------------------------------------------------------------------------------- quantize


def _quantize_main(argv: list[str]) -> int:
    """Subprocess entry point: ``SRC DST FTYPE THREADS`` → llama.cpp's quantizer; returns its status (0 = ok)."""
    import ctypes

    import llama_cpp

    src, dst, ftype, threads = argv[0], argv[1], int(argv[2]), int(argv[3])
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    return int(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)))


def quantize_gguf(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    qtype: str,
    *,
    threads: int | None = None,
    log_file: str | os.PathLike[str] | None = None,
) -> Path:
    """Quantize the text GGUF ``src`` to ``qtype`` (``q8_0``, ``q4_k_m``, ...) with llama.cpp's own quantizer
    (``llama_cpp.llama_model_quantize``, run in a subprocess); ``dest`` appears only when complete."""
    qtype = parse_quants(qtype)[0] if qtype else ""
    if not qtype:
        raise MulcotError("no quantization type given")
    ftype = QUANT_TYPES[qtype]
    out = Path(dest)
    tmp = out.with_name(out.stem + ".partial.gguf")
    tmp.unlink(missing_ok=True)
    code = "import sys; from mulcot.export import _quantize_main; sys.exit(_quantize_main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, str(src), str(tmp), str(ftype), str(threads or os.cpu_count() or 1)]
    _run_tool("quantizer", cmd, tmp, log_file)
    info = check_gguf(tmp, "text")
    if info["file_type"] is not None and int(info["file_type"]) != ftype:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"the quantizer wrote file type {info['file_type']}, not {qtype} ({ftype})")
    os.replace(tmp, out)
    return out


# --------------------------------------------------------------------------------------------- Modelfile


# Qwen's chat format (ChatML) in Ollama's Go template language: system turn when there is one, then user and
# assistant turns, ending with an open assistant turn.
OLLAMA_QWEN_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ if $last }}<|im_start|>assistant
{{ end }}
{{- else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- end }}"""

# The system turn the Qwen2.5-VL chat template adds when a conversation has none: the student was trained with it.
QWEN25_DEFAULT_SYSTEM = "You are a helpful assistant."


def modelfile_text(
    family: str,
    text_gguf: str,
    mmproj_gguf: str | None,
    *,
    name: str = "student",
    max_tokens: int = 512,
    ctx: int = 4096,
) -> str:
    """An Ollama ``Modelfile`` for the exported student (paths relative to the export folder)."""
    lines = [
        f"# Ollama Modelfile for the MulCoT-RD student '{name}' ({family}), written by mulcot export.",
        f"#   ollama create {name.lower()} -f Modelfile",
        "# Ask it with mulcot's reasoning prompt (P_cot) and an image; it answers with the five fields",
        "# Text_analysis, Image_analysis, Conflict_resolution, Final_conclusion and Prediction.",
        f"FROM ./{text_gguf}",
    ]
    if mmproj_gguf:
        lines += ["# The vision projector: Ollama takes a projector GGUF as a second FROM.", f"FROM ./{mmproj_gguf}"]
    lines.append(f'TEMPLATE """{OLLAMA_QWEN_TEMPLATE}"""')
    if family in ("qwen2.5-vl", "qwen2-vl"):
        lines.append(f'SYSTEM """{QWEN25_DEFAULT_SYSTEM}"""')
    lines += [
        "# Greedy decoding, as the student is evaluated.",
        "PARAMETER temperature 0",
        "PARAMETER top_k 1",
        "PARAMETER top_p 1",
        "PARAMETER repeat_penalty 1",
        f"PARAMETER num_ctx {ctx}",
        f"PARAMETER num_predict {max_tokens}",
        'PARAMETER stop "<|im_end|>"',
        'PARAMETER stop "<|im_start|>"',
        'PARAMETER stop "<|endoftext|>"',
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------ export


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


def _gguf_ok(path: Path, role: str, file_type: int | None = None) -> bool:
    if not path.is_file():
        return False
    try:
        info = check_gguf(path, role)
    except MulcotError:
        return False
    return file_type is None or info["file_type"] is None or int(info["file_type"]) == file_type


def export(config: ExportConfig, *, store: Any = None, progress: Progress | None = None) -> ExportResult:
    """Run the export steps (merge, convert, quantize, manifest) into ``config.out``; see the module docstring."""
    start = time.perf_counter()
    if config.outtype not in OUTTYPES:
        raise MulcotError(f"unknown --outtype '{config.outtype}' (use one of: {', '.join(OUTTYPES)})")
    quants = parse_quants(config.quants) if config.gguf else ()
    source = resolve_source(config.source, store, base_model=config.base_model)
    name = safe_name(config.name or source.run_id or source.path.name)
    out = Path(config.out).expanduser()
    _prepare_out(out, config.force)
    logs = out / LOG_DIR

    steps = ["merge"]
    if config.gguf:
        steps += ["convert-text", "convert-mmproj"] + [f"quantize-{q}" for q in quants]
    steps.append("manifest")
    total = len(steps)
    results: list[StepResult] = []
    dirty = False  # an earlier step produced new output: later steps redo theirs

    def record(step: str, status: str, outputs: list[Path], t0: float, message: str = "") -> None:
        results.append(StepResult(step, status, [str(p) for p in outputs], round(time.perf_counter() - t0, 3)))
        _say(progress, step, status, message, steps.index(step) + 1, total)

    def say(step: str) -> Callable[[str], None]:
        return lambda message: _say(progress, step, "info", message, steps.index(step) + 1, total)

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
                              progress=say("merge"))  # fmt: skip
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
        for step, role in (("convert-text", "text"), ("convert-mmproj", "mmproj")):
            t0 = time.perf_counter()
            target = out / names[role]
            kind = config.outtype if role == "text" else outtype_mmproj(config.outtype)
            if not dirty and _gguf_ok(target, role, _OUTTYPE_FTYPES[kind] if role == "text" else None):
                record(step, "skipped", [target], t0, f"{target.name} exists and verifies")
            else:
                jobs[step] = (role, target, kind, t0)
        if jobs:
            from concurrent.futures import ThreadPoolExecutor

            from mulcot.llamacpp import converter_script

            try:  # fetch/extract the converter once, before the processes start
                converter_script(llama_cpp_dir=config.llama_cpp_dir, progress=say(next(iter(jobs))))
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
        result.mmproj_gguf = str(out / names["mmproj"])

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


def _previous_hashes(out: Path) -> dict[str, dict[str, Any]]:
    try:
        old = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
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
            "mtime_ns": stat.st_mtime_ns}  # fmt: skip


def write_manifest(out: Path, result: ExportResult, source: ExportSource, config: ExportConfig,
                   quants: tuple[str, ...], names: dict[str, str], *,
                   adapter_sha256: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Write ``manifest.json`` (and, with GGUF files, the ``Modelfile``); returns the manifest."""
    from mulcot import llamacpp
    from mulcot.prompts import PROMPT_NAMES, TASKS, get_prompt

    previous = _previous_hashes(out)
    files: list[dict[str, Any]] = []
    hf_dir = Path(result.hf_dir)
    if hf_dir.resolve().parent == out.resolve():
        for f in sorted(p for p in hf_dir.rglob("*") if p.is_file()):
            files.append(_file_entry(out, f, "hf", None, previous))
    if result.text_gguf:
        files.append(_file_entry(out, Path(result.text_gguf), "gguf-text", config.outtype, previous))
        files.append(_file_entry(out, Path(result.mmproj_gguf or ""), "gguf-mmproj", outtype_mmproj(config.outtype),
                                 previous))  # fmt: skip
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
    }
    tmp = out / (MANIFEST + ".partial")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST)
    return manifest


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """An export folder's manifest (None when the folder has none)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelError(f"{path} is not a readable export manifest: {err}") from err
