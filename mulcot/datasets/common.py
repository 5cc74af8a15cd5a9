"""Shared pieces of the importers: the row record, problems, file reading and image checks."""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from mulcot.core.labels import normalize_label
from mulcot.errors import DataError

SPLIT_NAMES = ("train", "dev", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "dev": "dev",
    "val": "dev",
    "valid": "dev",
    "validation": "dev",
    "test": "test",
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


@dataclass
class ChainRow:
    """A reasoning chain that comes with the data (the authors' release, a mulcot JSONL export)."""

    raw: str
    source: str = "teacher"
    stage: str = "predict"
    model: str | None = None
    prompt_version: str | None = None


@dataclass
class SampleRow:
    """One sample as read from a file, before image checks."""

    split: str
    key: str
    text: str
    raw_text: str
    aspect: str | None
    label: str | None
    image_name: str | None
    file: str
    line: int
    meta: dict[str, Any] = field(default_factory=dict)
    chains: list[ChainRow] = field(default_factory=list)
    image_path: str | None = None
    image_sha256: str | None = None

    @property
    def has_image(self) -> bool:
        return self.image_sha256 is not None

    def record(self) -> dict[str, Any]:
        """The store's sample columns."""
        return {
            "split": self.split, "key": self.key, "text": self.text, "raw_text": self.raw_text,
            "aspect": self.aspect, "label": self.label, "image_name": self.image_name,
            "image_path": self.image_path, "image_sha256": self.image_sha256, "has_image": self.has_image,
            "meta": self.meta,
        }


# A reader yields either a row or a problem (a DataError naming file, line and what is wrong).
RowOrProblem = SampleRow | DataError


def split_from_name(path: Path) -> str | None:
    """``train.tsv`` -> train, ``valid.json`` -> dev, ``t15-test.json`` -> test; None when the name has no split."""
    stem = path.stem.lower()
    return _SPLIT_ALIASES.get(stem) or _SPLIT_ALIASES.get(re.split(r"[-_.]", stem)[-1])


def name_without_split(path: Path) -> str | None:
    """``t15-test.json`` -> t15; None when the stem is only a split name or has none."""
    parts = re.split(r"([-_.])", path.stem)
    if len(parts) >= 3 and _SPLIT_ALIASES.get(parts[-1].lower()):
        return "".join(parts[:-2]) or None
    return None


def normalize_split(split: str) -> str:
    return _SPLIT_ALIASES.get(split.lower(), split)


def read_utf8(path: Path) -> str:
    """A whole text file as UTF-8; non-UTF-8 bytes name the line they are on."""
    if not path.exists():
        raise DataError("file not found", file=str(path))
    if path.is_dir():
        raise DataError("is a folder, expected a file", file=str(path))
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"bytes that are not UTF-8 at byte {exc.start}: re-encode the file as UTF-8",
            file=str(path),
            row=line,
        ) from None
    if not text.strip():
        raise DataError("the file is empty", file=str(path))
    return text


def read_json(path: Path) -> Any:
    """Parse a JSON file; syntax errors name the line."""
    text = read_utf8(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON ({exc.msg}, column {exc.colno})", file=str(path), row=exc.lineno) from None


def json_items(path: Path, required: tuple[str, ...], what: str) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """``(number, item)`` for each item of a JSON array file (numbered from 1), or ``(number, problem)`` for an item
    that is not an object or lacks one of ``required``. A file that is not a JSON array of ``what`` is refused."""
    file = str(path)
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"expected a JSON array of {what}, found {type(data).__name__}", file=file)
    for number, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            yield number, DataError(f"item {number} is not an object", file=file, row=number)
            continue
        missing = next((name for name in required if name not in item), None)
        if missing is not None:
            yield number, DataError(f"item {number} has no '{missing}'", file=file, row=number, field=missing)
            continue
        yield number, item


def new_id(item: dict[str, Any], seen: dict[str, int], file: str, number: int) -> str:
    """The item's id, refused when an earlier accepted item of the file had it (``seen``: id -> item number)."""
    key = str(item["id"]).strip()
    if key in seen:
        raise DataError(f"duplicate id {key} (first is item {seen[key]})", file=file, row=number)
    return key


def map_label(value: Any, mapping: dict[Any, str] | None, file: str, line: int, field_name: str) -> str:
    """A label from a raw value: through ``mapping`` (numeric codes) or by name."""
    if mapping is not None:
        key = value.strip() if isinstance(value, str) else value
        for candidate in (key, str(key)):
            if candidate in mapping:
                return mapping[candidate]
        allowed = ", ".join(f"{k}={v}" for k, v in mapping.items() if isinstance(k, str))
        raise DataError(f"unknown label value {value!r} (expected {allowed})", file=file, row=line, field=field_name)
    label = normalize_label(value)
    if label is None:
        raise DataError(
            f"unknown label {value!r} (expected positive, neutral or negative)",
            file=file,
            row=line,
            field=field_name,
        )
    return label


class ImageChecker:
    """Resolves image names against a root folder and checks them once each: the file exists, stays inside the
    root, is non-empty and decodes with Pillow; records its sha256."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self._cache: dict[str, tuple[str, str] | str] = {}

    def check(self, name: str) -> tuple[str, str]:
        """(absolute path, sha256) for an image name, or raise ValueError with the problem."""
        cached = self._cache.get(name)
        if cached is None:
            try:
                cached = self._check(name)
            except ValueError as exc:
                cached = str(exc)
            self._cache[name] = cached
        if isinstance(cached, str):
            raise ValueError(cached)
        return cached

    def _check(self, name: str) -> tuple[str, str]:
        if not name or not name.strip():
            raise ValueError("no image file named")
        candidate = Path(name)
        path = (candidate if candidate.is_absolute() else self.root / candidate).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"image path '{name}' leads outside the image folder {self.root}")
        if not path.is_file():
            raise ValueError(f"image '{name}' not found in {self.root}")
        data = path.read_bytes()
        if not data:
            raise ValueError(f"image '{name}' is an empty (zero-byte) file")
        try:
            with warnings.catch_warnings():
                # Pillow warns above MAX_IMAGE_PIXELS and refuses at twice that: both are a problem row here, since
                # decoding such an image (a few KB of PNG can claim 20000x20000) would take gigabytes
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    im.draft("RGB", (64, 64))  # JPEG: decode at reduced scale, still reads every byte
                    im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ValueError(f"image '{name}' is too large to decode safely ({_bomb_size(exc)}): downsize it") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ValueError(f"image '{name}' does not decode ({exc})") from None
        return str(path), hashlib.sha256(data).hexdigest()


def _bomb_size(exc: Exception) -> str:
    """'400,000,000 pixels, over Pillow's limit of 89,478,485' from a decompression-bomb error or warning."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return f"{size}, over Pillow's limit of {Image.MAX_IMAGE_PIXELS or 0:,}"


def iter_lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its newline) for non-blank lines."""
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line
