"""llama.cpp's own Hugging Face → GGUF converter, matching the installed llama-cpp-python runtime.

The converter is not vendored: it is taken from the llama-cpp-python source distribution of the
*installed* version (``vendor/llama.cpp``), downloaded once with pip and cached under
``$MULCOT_CACHE/llama.cpp/<version>/`` (default ``~/.cache/mulcot``). Only what conversion needs is
extracted (~8 MB): ``convert_hf_to_gguf.py``, ``convert_lora_to_gguf.py``, ``conversion/``, ``gguf-py/`` and
``models/ggml-vocab-qwen2.gguf`` (the real Qwen2 vocabulary, used to build tiny test models). A llama.cpp
checkout, an extracted sdist or an sdist archive can be given instead (argument, or env
``MULCOT_LLAMA_CPP_DIR``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

from mulcot.errors import ModelError, NotFoundError
from mulcot.events import INFO, Progress, emit

DIST_NAME = "llama-cpp-python"
CONVERTER_SCRIPT = "convert_hf_to_gguf.py"
LORA_CONVERTER_SCRIPT = "convert_lora_to_gguf.py"
QWEN2_VOCAB = "models/ggml-vocab-qwen2.gguf"
_EXTRACT_FILES = (CONVERTER_SCRIPT, LORA_CONVERTER_SCRIPT, QWEN2_VOCAB)
_EXTRACT_DIRS = ("conversion", "gguf-py")
_COMPLETE_MARKER = ".mulcot-complete"
_ENV_DIR = "MULCOT_LLAMA_CPP_DIR"


def cache_root() -> Path:
    """mulcot's cache folder: ``$MULCOT_CACHE``, else ``$XDG_CACHE_HOME/mulcot``, else ``~/.cache/mulcot``."""
    if env := os.environ.get("MULCOT_CACHE"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "mulcot"


def installed_version() -> str | None:
    """Version of the installed llama-cpp-python, or None when it is not installed."""
    try:
        return metadata.version(DIST_NAME)
    except metadata.PackageNotFoundError:
        return None


def _say(progress: Progress | None, message: str) -> None:
    emit(progress, "export", INFO, message=message, step="converter")


def _llama_cpp_root(path: Path) -> Path | None:
    """The folder holding ``convert_hf_to_gguf.py`` inside a checkout or an extracted sdist, if any."""
    for candidate in (path, path / "vendor" / "llama.cpp"):
        if (candidate / CONVERTER_SCRIPT).is_file():
            return candidate
    return None


def _user_dir(given: str | os.PathLike[str], progress: Progress | None) -> Path:
    path = Path(given).expanduser()
    if not path.exists():
        raise NotFoundError(f"llama.cpp folder not found: {path}")
    if path.is_file():
        if not path.name.endswith((".tar.gz", ".tgz")):
            raise ModelError(f"{path} is neither a llama.cpp folder nor a llama-cpp-python .tar.gz sdist")
        version = path.name.removesuffix(".tar.gz").removesuffix(".tgz").rpartition("-")[2] or "local"
        dest = cache_root() / "llama.cpp" / f"{version}-from-{_short_hash(str(path.resolve()))}"
        if not (dest / _COMPLETE_MARKER).is_file():
            _say(progress, f"Extracting llama.cpp's converter from {path.name}")
            _extract_atomically(path, dest)
        return dest
    root = _llama_cpp_root(path)
    if root is None:
        raise ModelError(
            f"{path} has no {CONVERTER_SCRIPT} (expected a llama.cpp checkout or a llama-cpp-python sdist)"
        )
    if not (root / "gguf-py").is_dir():
        raise ModelError(f"{root} has {CONVERTER_SCRIPT} but no gguf-py/ folder beside it")
    return root


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:10]


def converter_dir(
    llama_cpp_dir: str | os.PathLike[str] | None = None,
    *,
    version: str | None = None,
    progress: Progress | None = None,
) -> Path:
    """Folder holding llama.cpp's ``convert_hf_to_gguf.py`` (with ``gguf-py/`` beside it).

    ``llama_cpp_dir`` (or env ``MULCOT_LLAMA_CPP_DIR``) may be a llama.cpp checkout, an extracted
    llama-cpp-python sdist, or the sdist ``.tar.gz``. Otherwise the sdist of ``version`` (default: the
    installed llama-cpp-python) is downloaded once with pip and the converter extracted into the cache.
    """
    given = llama_cpp_dir if llama_cpp_dir is not None else os.environ.get(_ENV_DIR) or None
    if given is not None:
        return _user_dir(given, progress)
    version = version or installed_version()
    if version is None:
        raise ModelError(
            "llama-cpp-python is not installed, so the matching llama.cpp converter is unknown: install it "
            f"(pip install llama-cpp-python) or point {_ENV_DIR} at a llama.cpp checkout"
        )
    dest = cache_root() / "llama.cpp" / version
    if (dest / _COMPLETE_MARKER).is_file():
        return dest
    with tempfile.TemporaryDirectory(prefix="mulcot-sdist-") as tmp:
        sdist = _download_sdist(version, Path(tmp), progress)
        _say(progress, f"Extracting llama.cpp's converter into {dest}")
        _extract_atomically(sdist, dest)
    return dest


def converter_script(
    name: str = CONVERTER_SCRIPT,
    llama_cpp_dir: str | os.PathLike[str] | None = None,
    *,
    progress: Progress | None = None,
) -> Path:
    """Path of one converter script (``convert_hf_to_gguf.py`` or ``convert_lora_to_gguf.py``).

    Run it with the current interpreter (``sys.executable``); it puts its own ``gguf-py`` on ``sys.path``.
    """
    script = converter_dir(llama_cpp_dir, progress=progress) / name
    if not script.is_file():
        raise ModelError(f"this llama.cpp has no {name} (looked in {script.parent})")
    return script


def qwen2_vocab_path(
    llama_cpp_dir: str | os.PathLike[str] | None = None, *, progress: Progress | None = None
) -> Path:
    """Path of llama.cpp's ``models/ggml-vocab-qwen2.gguf`` (the real Qwen2 vocabulary, no weights).

    Without llama-cpp-python installed, any version already in the cache is used.
    """
    if llama_cpp_dir is None and not os.environ.get(_ENV_DIR) and installed_version() is None:
        cached = sorted((cache_root() / "llama.cpp").glob(f"*/{QWEN2_VOCAB}"))
        if cached:
            return cached[-1]
    path = converter_dir(llama_cpp_dir, progress=progress) / QWEN2_VOCAB
    if not path.is_file():
        raise ModelError(f"this llama.cpp has no {QWEN2_VOCAB} (looked in {path.parent.parent})")
    return path


def _download_sdist(version: str, into: Path, progress: Progress | None) -> Path:
    """``pip download`` the llama-cpp-python sdist of ``version`` into ``into``; returns the archive."""
    _say(progress, f"Downloading the llama-cpp-python {version} source distribution (~77 MB, once)")
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--disable-pip-version-check", "--quiet", f"{DIST_NAME}=={version}", "-d", str(into),
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as err:  # pragma: no cover - no interpreter to run pip with
        raise ModelError(f"cannot run pip to download the llama.cpp converter: {err}") from err
    archives = sorted(into.glob("*.tar.gz"))
    if done.returncode != 0 or not archives:
        lines = [line.strip() for line in (done.stderr or done.stdout or "").splitlines() if line.strip()]
        reason = lines[-1] if lines else f"pip exited with {done.returncode}"
        raise ModelError(
            f"could not download the llama-cpp-python {version} sdist to get llama.cpp's converter "
            f"(no network or pip?): {reason}. Set {_ENV_DIR} to a llama.cpp checkout or the sdist .tar.gz "
            "instead"
        )
    return archives[0]


def _wanted(rel: str) -> bool:
    return rel in _EXTRACT_FILES or any(rel.startswith(d + "/") for d in _EXTRACT_DIRS)


def _extract_atomically(archive: Path, dest: Path) -> None:
    """Extract the converter's files from ``archive`` into ``dest`` (via a sibling temp folder + rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        found = _extract_converter(archive, tmp)
        if CONVERTER_SCRIPT not in found:
            raise ModelError(f"{archive.name} holds no vendor/llama.cpp/{CONVERTER_SCRIPT}")
        (tmp / _COMPLETE_MARKER).write_text(f"{archive.name}\n", encoding="utf-8")
        if dest.exists():  # a stale, incomplete extraction (or another process won the race)
            if (dest / _COMPLETE_MARKER).is_file():
                return
            shutil.rmtree(dest)
        try:
            os.replace(tmp, dest)
        except OSError:
            if not (dest / _COMPLETE_MARKER).is_file():
                raise
    except tarfile.TarError as err:
        raise ModelError(f"cannot read {archive}: {err}") from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _extract_converter(archive: Path, into: Path) -> set[str]:
    """Copy the wanted members of ``vendor/llama.cpp`` (or a bare llama.cpp tree) into ``into``."""
    found: set[str] = set()
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            parts = member.name.split("/")
            # <top>/vendor/llama.cpp/<rel> (llama-cpp-python sdist) or <top>/<rel> (llama.cpp archive)
            if len(parts) > 3 and parts[1:3] == ["vendor", "llama.cpp"]:
                rel_parts = parts[3:]
            else:
                rel_parts = parts[1:]
            rel = "/".join(rel_parts)
            if not rel or ".." in rel_parts or not _wanted(rel):
                continue
            source = tar.extractfile(member)
            if source is None:
                continue
            target = into.joinpath(*rel_parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)
            found.add(rel)
    return found
