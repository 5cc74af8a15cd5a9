"""The MulCoT-RD authors' released JSON: an array of ``{id, text, aspect, label, image_id, image_path, cot}``.

``text`` already has the aspect filled in; ``cot`` is the teacher's reasoning, stored as a teacher chain. In the
release, stage-1 (predict) chains end with a quoted ``"Prediction": "label"`` and stage-2 (explain, gold label given)
chains with an unquoted ``"Prediction": label``; the stage is recorded from that.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from mulcot.datasets.common import ChainRow, RowOrProblem, SampleRow, json_items, map_label, new_id
from mulcot.errors import DataError

DEFAULT_TEACHER = "mulcot-rd-release"
_UNQUOTED_PREDICTION = re.compile(r'"Prediction"\s*:\s*[A-Za-z]')


def chain_stage(cot: str) -> str:
    """``explain`` for the release's stage-2 form (unquoted Prediction), else ``predict``."""
    return "explain" if _UNQUOTED_PREDICTION.search(cot) else "predict"


def read(path: Path, split: str, teacher: str = DEFAULT_TEACHER) -> Iterator[RowOrProblem]:
    """Rows (with their teacher chain) of one released split file."""
    file = str(path)
    seen: dict[str, int] = {}
    for number, item in json_items(path, ("id", "text", "label"), "samples"):
        if isinstance(item, DataError):
            yield item
            continue
        try:
            key = new_id(item, seen, file, number)
            label = map_label(item["label"], None, file, number, "label")
            text = item["text"] if isinstance(item["text"], str) else ""
            if not text.strip():
                raise DataError(f"item {number} has empty text", file=file, row=number, field="text")
            aspect = item.get("aspect")
            if aspect is not None and (not isinstance(aspect, str) or not aspect.strip()):
                raise DataError(f"item {number} has an empty aspect", file=file, row=number, field="aspect")
            image = item.get("image_path") or (f"{item['image_id']}.jpg" if item.get("image_id") else None)
            cot = item.get("cot")
            if cot is not None and not isinstance(cot, str):
                raise DataError(f"item {number}: 'cot' is not a string", file=file, row=number, field="cot")
        except DataError as problem:
            yield problem
            continue
        seen[key] = number
        chains = [ChainRow(raw=cot, stage=chain_stage(cot), model=teacher)] if cot and cot.strip() else []
        meta = {k: item[k] for k in ("image_id",) if k in item}
        yield SampleRow(
            split=split, key=key, text=text.strip(), raw_text=text, aspect=aspect.strip() if aspect else None,
            label=label, image_name=image, file=file, line=number, meta=meta, chains=chains,
        )
