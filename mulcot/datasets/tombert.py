"""Twitter-2015/-2017 in the TomBERT TSV format (MASC).

Columns, read by position (the upstream test header is malformed): ``index, label, image file, text with the
aspect replaced by $T$, aspect``. Labels 0/1/2 = negative/neutral/positive. A first line whose label column is not
a number is a header.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mulcot.datasets.common import RowOrProblem, SampleRow, iter_lines, map_label, read_utf8
from mulcot.errors import DataError

LABEL_CODES = {"0": "negative", "1": "neutral", "2": "positive"}
PLACEHOLDER = "$T$"


def read(path: Path, split: str) -> Iterator[RowOrProblem]:
    """Rows of one split file."""
    file = str(path)
    text = read_utf8(path)
    seen: dict[str, int] = {}
    for number, line in iter_lines(text):
        cols = line.rstrip("\r").split("\t")
        if number == 1 and (len(cols) < 2 or not cols[1].strip().lstrip("-").isdigit()):
            continue  # header
        if len(cols) != 5:
            yield DataError(
                f"expected 5 tab-separated columns (index, label, image, text with $T$, aspect), found {len(cols)}",
                file=file, row=number,
            )
            continue
        index, raw_label, image, raw_text, aspect = (c.strip() for c in cols)
        try:
            if not index:
                raise DataError("empty index", file=file, row=number, field="index")
            if index in seen:
                raise DataError(f"duplicate index {index} (first on line {seen[index]})", file=file, row=number)
            label = map_label(raw_label, LABEL_CODES, file, number, "label")
            if not raw_text:
                raise DataError("empty text", file=file, row=number, field="text")
            if PLACEHOLDER not in raw_text:
                raise DataError("text has no $T$ placeholder for the aspect", file=file, row=number, field="text")
            if not aspect:
                raise DataError("empty aspect", file=file, row=number, field="aspect")
        except DataError as problem:
            yield problem
            continue
        seen[index] = number
        yield SampleRow(
            split=split, key=index, text=raw_text.replace(PLACEHOLDER, aspect), raw_text=raw_text, aspect=aspect,
            label=label, image_name=image or None, file=file, line=number,
        )
