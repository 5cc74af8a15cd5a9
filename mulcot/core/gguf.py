"""GGUF files: the names and types of an export's GGUFs, and checks that read only a GGUF's header (fast on
multi-GB files) yet verify that its tensor data is all there.

Light (standard library, plus ``gguf`` for tensor sizes when a header is read): the GGUF backend checks its inputs
with it without loading the exporter. The export folder's ``manifest.json`` is read here too (:func:`read_manifest`;
:mod:`mulcot.export.manifest` writes it).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mulcot.errors import ModelError, MulcotError, NotFoundError

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
GGML_MAX_DIMS = 4  # ggml.h: a tensor has at most four dimensions; llama.cpp refuses a header claiming more


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
                "general.alignment")


class _Truncated(Exception):
    pass


GGML_MAX_DIMS = 4  # llama.cpp's limit on a tensor's dimensions


class _Reader:
    """Little-endian reads of a GGUF header in ``buf`` (an mmap of ``size`` bytes); past its end: _Truncated."""

    def __init__(self, buf: Any, size: int):
        self.buf, self.size, self.pos = buf, size, 0

    def take(self, n: int) -> int:
        if self.pos + n > self.size:
            raise _Truncated
        at = self.pos
        self.pos += n
        return at

    def unpack(self, fmt: str) -> Any:
        import struct

        return struct.unpack_from("<" + fmt, self.buf, self.take(struct.calcsize("<" + fmt)))[0]

    def string(self) -> bytes:
        n = self.unpack("Q")
        at = self.take(n)
        return bytes(self.buf[at : at + n])

    def skip_value(self, vtype: int) -> None:
        if vtype == 8:
            self.take(self.unpack("Q"))
        elif vtype == 9:
            etype, count = self.unpack("I"), self.unpack("Q")
            if etype in _SCALAR_SIZES:
                self.take(_SCALAR_SIZES[etype] * count)
            elif etype == 8:
                for _ in range(count):
                    self.take(self.unpack("Q"))
            else:
                raise ValueError(f"unknown array element type {etype}")
        elif vtype in _SCALAR_SIZES:
            self.take(_SCALAR_SIZES[vtype])
        else:
            raise ValueError(f"unknown value type {vtype}")


def _read_values(r: _Reader, n_kv: int) -> dict[str, Any]:
    """The key/values of ``_WANTED_KEYS`` (the others, and arrays, are skipped)."""
    values: dict[str, Any] = {}
    for _ in range(n_kv):
        key = r.string().decode("utf-8", "replace")
        vtype = r.unpack("I")
        if key in _WANTED_KEYS and vtype == 8:
            values[key] = r.string().decode("utf-8", "replace")
        elif key in _WANTED_KEYS and vtype in _SCALAR_FORMATS:
            values[key] = r.unpack(_SCALAR_FORMATS[vtype])
        else:
            r.skip_value(vtype)
    return values


def _tensor_data_end(r: _Reader, n_tensors: int) -> int:
    """Where the last tensor's data ends, relative to the start of the data section."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    end = 0
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.unpack("I")
        if n_dims > GGML_MAX_DIMS:
            raise ValueError(f"tensor {name.decode(errors='replace')[:80]} has {n_dims} dimensions (llama.cpp allows "
                             f"at most {GGML_MAX_DIMS})")
        dims = [r.unpack("Q") for _ in range(n_dims)]
        ttype, offset = r.unpack("I"), r.unpack("Q")
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
        except (ValueError, KeyError):
            raise ValueError(f"tensor {name.decode(errors='replace')[:80]} has unknown type {ttype}") from None
        count = 1
        for d in dims:
            count *= d
        end = max(end, offset + count // block * type_size)
    return end


def _parse_gguf(buf: Any, size: int) -> dict[str, Any]:
    """Parse a GGUF header (key/values and tensor infos) from ``buf`` (an mmap); checks that every tensor's data
    lies inside the file. Only the keys in ``_WANTED_KEYS`` are decoded; arrays are skipped."""
    r = _Reader(buf, size)
    if bytes(buf[0:4]) != GGUF_MAGIC:
        raise ValueError("bad magic")
    r.take(4)
    version = r.unpack("I")
    if version < 2 or version > 3:
        raise ValueError(f"unsupported GGUF version {version}")
    n_tensors, n_kv = r.unpack("Q"), r.unpack("Q")
    if n_tensors > 1 << 24 or n_kv > 1 << 24:
        raise ValueError("implausible tensor or key count")
    values = _read_values(r, n_kv)
    end = _tensor_data_end(r, n_tensors)
    alignment = int(values.get("general.alignment") or 32)
    data_start = -(-r.pos // alignment) * alignment
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


MANIFEST = "manifest.json"  # an export folder's list of its files (written by mulcot.export.manifest)
MANIFEST_FORMAT = "mulcot-export/1"


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """An export folder's manifest (None when the folder has none)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelError(f"{path} is not a readable export manifest: {err}") from err
