"""Plain JSONL, one post per line (what ``mulcot data export NAME FILE.jsonl`` writes, read back here):

- ``text`` (required): the post; a ``$T$`` in it stands for the aspect and is replaced by it;
- ``image``: the image file, a path relative to the image folder (``--images``, by default the JSONL file's own
  folder); it must stay inside that folder; absent or null: a text-only post (with ``--no-images``, ignored);
- ``aspect``: the target of aspect-level (MASC) posts; given on any line, the dataset is aspect-level;
- ``label``: positive, neutral or negative (or absent: unlabelled posts, e.g. to predict);
- ``id``: the post's id within its split (default: the line number);
- ``split``: train, dev/val/validation or test (default: ``--split``, else from the file name, else train);
- ``chains``: reasoning chains that come with the post, each ``{"source", "stage", "raw" or "text", "model"?,
  "prompt_version"?}`` (as the export writes them); stored as imported chains.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mulcot.datasets.common import (
    ChainRow,
    RowOrProblem,
    SampleRow,
    iter_lines,
    map_label,
    normalize_split,
    read_utf8,
)
from mulcot.errors import DataError


def read(path: Path, split: str) -> Iterator[RowOrProblem]:
    """Rows of one JSONL file."""
    file = str(path)
    seen: dict[tuple[str, str], int] = {}
    for number, line in iter_lines(read_utf8(path)):
        try:
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON ({exc.msg})", file=file, row=number) from None
            if not isinstance(item, dict):
                raise DataError("line is not a JSON object", file=file, row=number)
            text = item.get("text")
            if not isinstance(text, str) or not text.strip():
                raise DataError("missing or empty text", file=file, row=number, field="text")
            aspect = item.get("aspect")
            if aspect is not None and (not isinstance(aspect, str) or not aspect.strip()):
                raise DataError("aspect is empty or not a string", file=file, row=number, field="aspect")
            if "$T$" in text and not aspect:
                raise DataError("text has $T$ but no aspect", file=file, row=number, field="aspect")
            label = None
            if item.get("label") is not None:
                label = map_label(item["label"], None, file, number, "label")
            image = item.get("image")
            if image is not None and not isinstance(image, str):
                raise DataError("image is not a path string", file=file, row=number, field="image")
            chains = _chains(item.get("chains"), file, number)
            row_split = normalize_split(str(item.get("split") or split))
            key = str(item.get("id", number)).strip()
            if (row_split, key) in seen:
                raise DataError(f"duplicate id {key} (first on line {seen[(row_split, key)]})", file=file, row=number)
        except DataError as problem:
            yield problem
            continue
        seen[(row_split, key)] = number
        aspect = aspect.strip() if aspect else None
        yield SampleRow(
            split=row_split, key=key, text=text.replace("$T$", aspect or "").strip(), raw_text=text, aspect=aspect,
            label=label, image_name=image or None, file=file, line=number, chains=chains,
        )


def _chains(value: Any, file: str, line: int) -> list[ChainRow]:
    """The ``chains`` of one line: a list of ``{source, stage, raw or text, model?, prompt_version?}``."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise DataError("chains is not a list of objects", file=file, row=line, field="chains")
    out = []
    for i, chain in enumerate(value, start=1):
        where = f"chain {i}"
        if not isinstance(chain, dict):
            raise DataError(f"{where} is not an object", file=file, row=line, field="chains")
        raw = chain.get("raw") if chain.get("raw") is not None else chain.get("text")
        for name, val in (("source", chain.get("source")), ("stage", chain.get("stage")), ("raw or text", raw)):
            if not isinstance(val, str) or not val.strip():
                raise DataError(f"{where} has no {name} string", file=file, row=line, field="chains")
        for name in ("model", "prompt_version"):
            if chain.get(name) is not None and not isinstance(chain[name], str):
                raise DataError(f"{where}: {name} is not a string", file=file, row=line, field="chains")
        out.append(ChainRow(raw=raw, source=chain["source"].strip(), stage=chain["stage"].strip(),
                            model=chain.get("model"), prompt_version=chain.get("prompt_version")))
    return out
