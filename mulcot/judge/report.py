"""``mulcot judge --report``: the judge's verdicts on one dataset summarised (:mod:`mulcot.metrics.judge`: rubric
means per chain group, leakage rates, agreement with people's ratings)."""

from __future__ import annotations

from typing import Any

from mulcot.metrics.judge import judge_summary
from mulcot.store import Store


def judge_report(store: Store, dataset: str, *, split: str | None = None,
                 judge_model: str | None = None) -> dict[str, Any]:
    """The summaries of :func:`mulcot.metrics.judge.judge_summary` for one dataset (optionally one split, one
    judge)."""
    store.require_dataset(dataset)
    rows = store.judgements(dataset=dataset, split=split, judge_model=judge_model)
    rated = [r for r in store.rated_judgements(dataset=dataset, split=split)
             if judge_model is None or r["judge_model"] == judge_model]
    return {"dataset": dataset, "split": split, **judge_summary(rows, rated)}
