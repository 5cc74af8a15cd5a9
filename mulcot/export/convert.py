"""Export steps 2 and 3: llama.cpp's own tools, each run as a subprocess of this interpreter.

* ``convert-text`` / ``convert-mmproj``: the converter matching the installed llama-cpp-python (see
  :mod:`mulcot.core.llamacpp`) writes the text GGUF and the vision projector (mmproj) GGUF;
* ``quantize-<type>``: the runtime's own quantizer (``llama_cpp.llama_model_quantize``), in a subprocess so a crash
  in C cannot take the caller down, writes one GGUF per quantization type (the mmproj stays 16-bit).

Each tool writes under a temporary name, and its output is checked before it gets its final name. A tool's whole
output goes to a log file; a failure raises :class:`~mulcot.errors.ModelError` with its most telling line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from mulcot.core.gguf import OUTTYPES, QUANT_TYPES, check_gguf, parse_quants
from mulcot.core.llamacpp import converter_script
from mulcot.errors import ModelError, MulcotError
from mulcot.events import Progress


def _failure_reason(output: str, fallback: str) -> str:
    """The most telling line of a tool's output: the last error-looking line, else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"error|exception|failed|not supported|cannot|can not", line, re.IGNORECASE):
            return line[:400]
    return (lines[-1] if lines else fallback)[:400]


def _run_tool(tool: str, cmd: list[str], tmp: Path, log_file: str | os.PathLike[str] | None,
              env: dict[str, str] | None = None) -> None:
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
                         "pip install llama-cpp-python")
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
    progress: Progress | None = None,
) -> Path:
    """Run llama.cpp's ``convert_hf_to_gguf.py`` (``--mmproj`` for the vision projector) on ``hf_dir``.

    Raises :class:`ModelError` with the converter's telling line; its whole output goes to ``log_file``."""
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
    code = "import sys; from mulcot.export.convert import _quantize_main; sys.exit(_quantize_main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, str(src), str(tmp), str(ftype), str(threads or os.cpu_count() or 1)]
    _run_tool("quantizer", cmd, tmp, log_file)
    info = check_gguf(tmp, "text")
    if info["file_type"] is not None and int(info["file_type"]) != ftype:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"the quantizer wrote file type {info['file_type']}, not {qtype} ({ftype})")
    os.replace(tmp, out)
    return out
