"""Plain JSONL, one post per line: ``{"text", "image", "aspect"?, "label"?, "id"?, "split"?}``.

``label`` may be a name (positive/neutral/negative) or absent (unlabelled posts, e.g. for prediction). ``id``
defaults to the line number; ``split`` to the one given on the command line or in the file name. A ``$T$`` in the
text is replaced by the aspect.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from mulcot.datasets.common import RowOrProblem, SampleRow, iter_lines, map_label, normalize_split, read_utf8
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
            label=label, image_name=image or None, file=file, line=number,
        )  # fmt: skip
