"""Summaries of an LLM judge's verdicts (``mulcot judge``), shared by ``mulcot judge --report`` and ``mulcot eval``:

- **rubric**: per judge model, rubric version and chain group (the teacher's ``stage1`` and ``stage2``, then
  ``assistant``, ``student``, ...): chains judged, failed, the mean of each criterion and of the chain means, cost;
- **leakage**: per judge and group, how often the judge names the gold label from the chain alone (no post, no
  Prediction); a stage-2 rate well above stage 1's says the label given to the teacher shows in its wording;
- **agreement with people** (chains that carry TUI ratings): Spearman's ρ between the judge's chain mean and the
  people's mean rating ((faithfulness + usefulness) / 2, averaged over ratings), and Cohen's κ on good/bad, where a
  score is *good* at :data:`GOOD_AT` or above (on the 1-5 scale: 4 and 5 good, 1-3 bad) for judge and people alike.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from typing import Any

from mulcot.core.rubric import CRITERIA
from mulcot.store.judgements import FAILED, JUDGED, LEAKAGE, RUBRIC

GOOD_AT = 3.5  # a chain whose score (judge mean, or people's mean rating) is at least this is "good"
GROUP_ORDER = ("stage1", "stage2", "teacher", "assistant", "student")


def _order(key: tuple) -> tuple:
    group = key[-1]
    return (*key[:-1], GROUP_ORDER.index(group) if group in GROUP_ORDER else 9, group)


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _grouped(rows: list[dict[str, Any]]) -> list[tuple[tuple, list[dict[str, Any]]]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["judge_model"], r["rubric_version"], r["group"])].append(r)
    return [(key, groups[key]) for key in sorted(groups, key=_order)]


def rubric_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rubric verdicts (``Store.judgements`` rows of kind rubric) summarised per judge, version and group."""
    out = []
    for (judge, version, group), members in _grouped(rows):
        judged = [r for r in members if r["status"] == JUDGED]
        costs = [r["cost_usd"] for r in members if r["cost_usd"] is not None]
        out.append({
            "judge": judge, "rubric_version": version, "group": group, "judged": len(judged),
            "failed": sum(1 for r in members if r["status"] == FAILED),
            **{name: _mean([r["scores"][name] for r in judged if name in r["scores"]]) for name in CRITERIA},
            "mean": _mean([r["mean"] for r in judged]), "cost_usd": round(sum(costs), 6) if costs else None,
        })
    return out


def leakage_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Leakage verdicts summarised per judge and group: chains judged (with a gold label), how many gave the label
    away, the rate."""
    out = []
    for (judge, version, group), members in _grouped(rows):
        judged = [r for r in members if r["status"] == JUDGED and r["leaked"] is not None]
        leaked = sum(1 for r in judged if r["leaked"])
        out.append({"judge": judge, "rubric_version": version, "group": group, "judged": len(judged),
                    "failed": sum(1 for r in members if r["status"] == FAILED), "leaked": leaked,
                    "rate": round(leaked / len(judged), 4) if judged else None})
    return out


def _number(value: Any) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 4)


def agreement(pairs: list[tuple[float, float]]) -> dict[str, Any]:
    """Agreement of judge scores with people's ratings over (judge, people) pairs: n, Spearman's ρ (and its p),
    Cohen's κ on good/bad (:data:`GOOD_AT`); None where undefined (fewer than 2 chains, or a constant side)."""
    out: dict[str, Any] = {"n": len(pairs), "spearman": None, "spearman_p": None, "kappa": None, "good_at": GOOD_AT}
    if len(pairs) < 2:
        return out
    from scipy.stats import spearmanr
    from sklearn.metrics import cohen_kappa_score

    judge, people = [p[0] for p in pairs], [p[1] for p in pairs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant side: undefined, reported as None
        if len(set(judge)) > 1 and len(set(people)) > 1:
            rho = spearmanr(judge, people)
            out["spearman"], out["spearman_p"] = _number(rho.statistic), _number(rho.pvalue)
        good_j, good_p = [int(v >= GOOD_AT) for v in judge], [int(v >= GOOD_AT) for v in people]
        if len(set(good_j) | set(good_p)) > 1:
            out["kappa"] = _number(cohen_kappa_score(good_j, good_p))
    return out


def agreement_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Agreement per judge model and rubric version (``Store.rated_judgements`` rows)."""
    groups: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        groups[(r["judge_model"], r["rubric_version"])].append((r["mean"], r["rating"]))
    return [{"judge": k[0], "rubric_version": k[1], **agreement(v)} for k, v in sorted(groups.items())]


def judge_summary(rows: list[dict[str, Any]], rated: list[dict[str, Any]]) -> dict[str, Any]:
    """The three summaries of verdict rows (rubric and leakage mixed) and of their rated chains."""
    return {"criteria": list(CRITERIA), "rubric": rubric_table([r for r in rows if r["kind"] == RUBRIC]),
            "leakage": leakage_table([r for r in rows if r["kind"] == LEAKAGE]), "agreement": agreement_table(rated)}
