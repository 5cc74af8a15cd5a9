"""Two files of chains scored against each other with the reasoning metrics (``mulcot eval score``).

:func:`read_chain_file` reads a JSON array or JSONL of chains; :func:`score_files` pairs two such files by order.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mulcot.errors import DataError, MulcotError
from mulcot.evaluate.config import METRIC_DEFINITIONS
from mulcot.events import Progress
from mulcot.metrics import ReasoningScores, reasoning_metrics


def read_chain_file(path: str | os.PathLike[str], *, field_name: str = "text") -> list[str]:
    """Chains from a file: a JSON array (of strings, or of objects with a ``field_name`` string) or JSONL (one
    object with a ``field_name`` string, or one JSON string, per non-blank line). Raises :class:`DataError`
    naming the file and line on any problem."""
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise DataError("file not found", file=name)
    if p.is_dir():
        raise DataError("is a folder, not a file of chains", file=name)
    try:
        content = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text ({err.reason} at byte {err.start})", file=name) from None
    except OSError as err:
        raise DataError(f"cannot read: {err.strerror or err}", file=name) from None
    stripped = content.lstrip()
    if not stripped:
        raise DataError("empty file: expected a JSON array of chains or JSONL with a "
                        f"'{field_name}' field per line", file=name)

    def take(value: Any, line: int) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, dict):
            if field_name not in value:
                raise DataError(f"no '{field_name}' field (keys: {', '.join(map(str, value)) or 'none'})", file=name,
                                row=line)
            text = value[field_name]
            if text is None:
                return ""
            if not isinstance(text, str):
                raise DataError(f"'{field_name}' is {type(text).__name__}, not text", file=name, row=line)
            return text
        raise DataError(f"expected an object with a '{field_name}' field or a string, got "
                        f"{type(value).__name__}", file=name, row=line)

    if stripped.startswith("["):
        try:
            return [take(value, line) for value, line in _json_array_items(content)]
        except json.JSONDecodeError as err:
            raise DataError(f"not valid JSON ({err.msg}, column {err.colno})", file=name, row=err.lineno) from None
    out = []
    for lineno, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"not valid JSON ({err.msg}, column {err.colno})", file=name, row=lineno) from None
        out.append(take(value, lineno))
    return out


def _json_array_items(content: str) -> Iterator[tuple[Any, int]]:
    """The elements of a JSON array, each with the line it starts on; raises JSONDecodeError (with the line)."""
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    pos = ws.match(content, 0).end() + 1  # type: ignore[union-attr]  # past "["
    pos = ws.match(content, pos).end()  # type: ignore[union-attr]
    if content.startswith("]", pos):
        end = ws.match(content, pos + 1).end()  # type: ignore[union-attr]
        if end != len(content):
            raise json.JSONDecodeError("Extra data", content, end)
        return
    while True:
        value, end = decoder.raw_decode(content, pos)
        yield value, content.count("\n", 0, pos) + 1
        pos = ws.match(content, end).end()  # type: ignore[union-attr]
        if content.startswith(",", pos):
            pos = ws.match(content, pos + 1).end()  # type: ignore[union-attr]
            continue
        if content.startswith("]", pos):
            end = ws.match(content, pos + 1).end()  # type: ignore[union-attr]
            if end != len(content):
                raise json.JSONDecodeError("Extra data", content, end)
            return
        raise json.JSONDecodeError("Expecting ',' delimiter", content, pos)


@dataclass
class FileScores:
    """What :func:`score_files` returns."""

    preds: str
    refs: str
    scores: ReasoningScores

    def to_dict(self, *, per_pair: bool = True) -> dict[str, Any]:
        return {"preds": self.preds, "refs": self.refs, "n": self.scores.n, **self.scores.to_dict(per_pair=per_pair),
                "definitions": METRIC_DEFINITIONS}


def score_files(preds: str | os.PathLike[str], refs: str | os.PathLike[str], *, field_name: str = "text",
                progress: Progress | None = None, **options: Any) -> FileScores:
    """Score the chains of ``preds`` against those of ``refs`` (paired by order) with the reasoning metrics;
    ``options`` go to :func:`mulcot.metrics.reasoning_metrics` (sim_model, corpus, metrics, nltk_data_dir,
    embedding_cache, …)."""
    p = read_chain_file(preds, field_name=field_name)
    r = read_chain_file(refs, field_name=field_name)
    if not p:
        raise DataError("no chains in the file", file=str(preds))
    if not r:
        raise DataError("no chains in the file", file=str(refs))
    if len(p) != len(r):
        raise MulcotError(f"{preds} has {len(p)} chains but {refs} has {len(r)}: they are paired by order")

    scores = reasoning_metrics(p, r, progress=progress, **options)
    return FileScores(preds=str(preds), refs=str(refs), scores=scores)
