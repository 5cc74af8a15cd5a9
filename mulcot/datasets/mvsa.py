"""MVSA-Single / MVSA-Multiple (coarse-grained MSA): the raw archive and CLMLF's JSON splits.

Raw archive: ``data/<id>.txt`` and ``data/<id>.jpg`` beside ``labelResultAll.txt`` (a header line, then
``<id>\\t<text_label>,<image_label>``; MVSA-Multiple has three annotator pairs per row). Standard cleaning: for
Multiple, per modality the label that at least 2 of 3 annotators gave, else the post is dropped; then equal labels →
that label, neutral + X → X, positive vs negative → dropped.

CLMLF JSON: an array of ``{"id", "text", "emotion_label"}`` with 0/1/2 = positive/neutral/negative (note: not
TomBERT's order); images are ``<id>.jpg`` in the archive's ``data/`` folder.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mulcot.core.labels import normalize_label
from mulcot.datasets.common import RowOrProblem, SampleRow, iter_lines, json_items, map_label, new_id, read_utf8
from mulcot.errors import DataError

CLMLF_CODES = {"0": "positive", "1": "neutral", "2": "negative", 0: "positive", 1: "neutral", 2: "negative"}
LABEL_FILE = "labelResultAll.txt"


@dataclass
class Dropped:
    """A row left out on purpose (annotator disagreement), not an error."""

    file: str
    line: int
    reason: str


def clean_labels(pairs: Sequence[tuple[str, str]]) -> tuple[str | None, str]:
    """The post label from (text, image) annotator pairs, or (None, why it was dropped)."""
    if len(pairs) == 1:
        text_label, image_label = pairs[0]
    else:
        votes = []
        for modality, values in (("text", [p[0] for p in pairs]), ("image", [p[1] for p in pairs])):
            label, count = Counter(values).most_common(1)[0]
            if count < 2:
                return None, f"annotators disagree on the {modality} label ({', '.join(values)})"
            votes.append(label)
        text_label, image_label = votes
    if text_label == image_label:
        return text_label, ""
    if text_label == "neutral":
        return image_label, ""
    if image_label == "neutral":
        return text_label, ""
    return None, f"text says {text_label}, image says {image_label}"


def _split_for(key: str, ratio: Sequence[float] | None, default: str) -> str:
    if not ratio:
        return default
    point = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF * sum(ratio)
    edge = 0.0
    for name, share in zip(("train", "dev", "test"), ratio, strict=False):
        edge += share
        if point <= edge:
            return name
    return "test"


def _read_post_text(path: Path) -> tuple[str, str]:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        # The public MVSA archive mixes encodings; Windows-1252 is what the odd files are.
        return data.decode("cp1252", errors="replace"), "cp1252"


def _id_problem(key: str) -> str | None:
    """Why an id from ``labelResultAll.txt`` cannot name files in ``data/`` (None when it can): ids are file names,
    checked like image paths, so a hostile label file cannot make the importer read ``data/../../x.txt``."""
    if any(ch in key for ch in "/\\\0") or key in (".", "..") or Path(key).is_absolute():
        return f"id {key!r} is not a plain file name: ids name files in data/ (no folders, no absolute paths)"
    return None


def read_raw(root: Path, split: str, split_ratio: Sequence[float] | None = None) -> Iterator[RowOrProblem | Dropped]:
    """Rows of a raw MVSA archive folder."""
    label_file = root / LABEL_FILE
    if not label_file.is_file():
        raise DataError(f"no {LABEL_FILE} here: point PATH at the unpacked MVSA folder", file=str(root))
    data_dir = root / "data"
    file = str(label_file)
    seen: dict[str, int] = {}
    for number, line in iter_lines(read_utf8(label_file)):
        if number == 1 and not line.split("\t")[0].strip().isdigit():
            continue  # header
        cols = [c.strip() for c in line.split("\t") if c.strip()]
        if len(cols) not in (2, 4):
            yield DataError(
                f"expected an id and 1 or 3 'text,image' label pairs, found {len(cols)} columns",
                file=file,
                row=number,
            )
            continue
        key = cols[0]
        pairs = []
        try:
            if (why := _id_problem(key)) is not None:
                raise DataError(why, file=file, row=number, field="id")
            if key in seen:
                raise DataError(f"duplicate id {key} (first on line {seen[key]})", file=file, row=number)
            for pair in cols[1:]:
                parts = pair.split(",")
                labels = [normalize_label(p) for p in parts]
                if len(parts) != 2 or None in labels:
                    raise DataError(f"bad label pair {pair!r} (expected e.g. positive,neutral)", file=file, row=number)
                pairs.append((labels[0], labels[1]))
        except DataError as problem:
            yield problem
            continue
        seen[key] = number
        label, why = clean_labels(pairs)
        if label is None:
            yield Dropped(file, number, why)
            continue
        text_file = data_dir / f"{key}.txt"
        if not text_file.is_file():
            yield DataError(f"text file data/{key}.txt not found", file=file, row=number)
            continue
        if not text_file.resolve().is_relative_to(data_dir.resolve()):  # a link out of the archive
            yield DataError(f"text file data/{key}.txt leads outside {data_dir}", file=file, row=number)
            continue
        text, encoding = _read_post_text(text_file)
        text = " ".join(text.split())
        if not text:
            yield DataError(f"data/{key}.txt is empty", file=file, row=number, field="text")
            continue
        meta = {"annotations": [list(p) for p in pairs]}
        if encoding != "utf-8":
            meta["encoding"] = encoding
        yield SampleRow(
            split=_split_for(key, split_ratio, split), key=key, text=text, raw_text=text, aspect=None, label=label,
            image_name=f"{key}.jpg", file=file, line=number, meta=meta,
        )


def read_clmlf(path: Path, split: str) -> Iterator[RowOrProblem]:
    """Rows of one CLMLF split file."""
    file = str(path)
    seen: dict[str, int] = {}
    for number, item in json_items(path, ("id", "text", "emotion_label"), "{id, text, emotion_label}"):
        if isinstance(item, DataError):
            yield item
            continue
        try:
            key = new_id(item, seen, file, number)
            label = map_label(item["emotion_label"], CLMLF_CODES, file, number, "emotion_label")
            text = item["text"] if isinstance(item["text"], str) else ""
            if not text.strip():
                raise DataError(f"item {number} has empty text", file=file, row=number, field="text")
        except DataError as problem:
            yield problem
            continue
        seen[key] = number
        yield SampleRow(
            split=split, key=key, text=text.strip(), raw_text=text, aspect=None, label=label,
            image_name=f"{key}.jpg", file=file, line=number,
        )
