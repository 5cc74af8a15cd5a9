"""Per-post predictions of stored evaluation results: results compared post by post (``eval compare``) and
exported (``eval --per-post FILE``).

:func:`paired_results` compares stored results with the first one over the posts both scored: exact McNemar p, paired
bootstrap 95 % intervals of the accuracy and macro-F1 differences (other − first), resampling whole tweets
(:func:`post_clusters`), and the agreement rate (:mod:`mulcot.metrics.paired`). The prediction of a result
is its headline's (the label head's when it has one for every post, else the chain's own Prediction).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mulcot.core.labels import LABELS
from mulcot.errors import MulcotError
from mulcot.metrics.paired import paired_comparison, post_clusters
from mulcot.store import Store

__all__ = ["PER_POST_COLUMNS", "check_per_post_path", "paired_results", "per_post_rows", "post_clusters",
           "write_per_post"]

#: The per-post export's columns, in order.
PER_POST_COLUMNS = ("post_id", "dataset", "split", "gold", "prediction", *(f"p_{lab}" for lab in LABELS))


def _posts(store: Store, row: dict[str, Any]) -> dict[int, dict[str, Any]]:
    posts = store.eval_posts(row["id"])
    if not posts:
        raise MulcotError(f"evaluation result #{row['id']} has no per-post predictions (stored by an older mulcot): "
                          "evaluate again to compare post by post, or pass --no-paired")
    return {p["sample_id"]: p for p in posts}


def paired_results(store: Store, rows: Sequence[dict[str, Any]], *, n_boot: int = 2000, seed: int = 0,
                   confidence: float = 0.95) -> list[dict[str, Any] | None]:
    """For each stored result row after the first, its paired comparison with the first over the posts both scored
    (None for the first): ``{"against": first id, "n", "clusters", "agreement", "mcnemar", "bootstrap"}`` (see
    :func:`mulcot.metrics.paired.paired_comparison`; differences are this result − the first). Raises
    :class:`MulcotError` in one line when a result is on another dataset or split, shares no post with the first,
    or has no per-post predictions."""
    if len(rows) < 2:
        return [None] * len(rows)
    base = rows[0]
    for row in rows[1:]:
        if (row["dataset"], row["split"]) != (base["dataset"], base["split"]):
            raise MulcotError(
                f"results #{base['id']} ({base['dataset']}/{base['split']}) and #{row['id']} ({row['dataset']}/"
                f"{row['split']}) scored different posts: a paired comparison needs the same dataset and split "
                "(pass --no-paired to only put them side by side)"
            )
    clusters = post_clusters(store.samples(base["dataset"], base["split"]))
    first = _posts(store, base)
    out: list[dict[str, Any] | None] = [None]
    for row in rows[1:]:
        other = _posts(store, row)
        common = sorted(set(first) & set(other))
        if not common:
            raise MulcotError(f"results #{base['id']} and #{row['id']} share no post of {base['dataset']}/"
                              f"{base['split']}: nothing to compare post by post (pass --no-paired)")
        gold = [first[i]["gold"] for i in common]
        result = paired_comparison(gold, [first[i]["prediction"] for i in common],
                                   [other[i]["prediction"] for i in common],
                                   clusters=[clusters.get(i, f"sample {i}") for i in common], n_boot=n_boot,
                                   seed=seed, confidence=confidence)
        out.append({"against": base["id"], **result})
    return out


def per_post_rows(result: dict[str, Any], posts: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The export rows (:data:`PER_POST_COLUMNS`) of a result's per-post predictions."""
    return [{"post_id": p["key"], "dataset": result["dataset"], "split": result["split"], "gold": p["gold"],
             "prediction": p["prediction"], **{f"p_{lab}": p.get(f"p_{lab}") for lab in LABELS}}
            for p in posts]


def check_per_post_path(path: str | os.PathLike[str]) -> Path:
    """The export file, refused in one line unless it ends in ``.csv`` or ``.jsonl`` (checked before evaluating)."""
    out = Path(path)
    if out.suffix.lower() not in (".csv", ".jsonl"):
        raise MulcotError(f"--per-post {out}: name a .csv or .jsonl file")
    if out.is_dir():
        raise MulcotError(f"--per-post {out} is a folder: name a .csv or .jsonl file")
    return out


def write_per_post(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write per-post rows as CSV (``.csv``; missing values empty) or JSON Lines (``.jsonl``; missing values null),
    by the file's extension; raises :class:`MulcotError` for another extension or an unwritable file."""
    out = check_per_post_path(path)
    kind = out.suffix.lower()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8", newline="") as fh:
            if kind == ".csv":
                writer = csv.DictWriter(fh, fieldnames=list(PER_POST_COLUMNS))
                writer.writeheader()
                writer.writerows({k: "" if row.get(k) is None else row.get(k) for k in PER_POST_COLUMNS}
                                 for row in rows)
            else:
                for row in rows:
                    fh.write(json.dumps({k: row.get(k) for k in PER_POST_COLUMNS}, ensure_ascii=False) + "\n")
    except OSError as err:
        raise MulcotError(f"cannot write {out}: {err.strerror or err}") from None
    return out
