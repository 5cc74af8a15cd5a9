"""How sure a result is, and whether it beats answering one label for every post.

Every evaluation carries (``metrics["uncertainty"]``):

- ``intervals``: its headline accuracy and macro-F1 with 95 % percentile intervals of a bootstrap that resamples
  whole tweets (:func:`mulcot.metrics.paired.score_intervals`, the clusters of :func:`post_clusters`);
- ``majority``: the majority baseline — the most frequent gold label of another split (``EvalConfig.majority_from``,
  the training split by default), answered for every evaluated post — with its accuracy and macro-F1 and the
  paired comparison model − majority on the same posts (exact McNemar, paired bootstrap intervals; what
  ``eval compare`` shows for two stored results). Without such a split it holds a ``note`` saying why.

The majority label never comes from the evaluated split itself: that would use the gold labels being scored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from mulcot.core.labels import LABELS, normalize_label
from mulcot.metrics import classification_metrics
from mulcot.metrics.paired import paired_comparison, post_clusters, score_intervals
from mulcot.store import Store

NO_BASELINE = "none"


def majority_label(store: Store, dataset: str, split: str) -> tuple[str | None, dict[str, int]]:
    """The most frequent gold label of ``dataset/split`` (ties: the order of LABELS) and the label counts; None
    when the split has no labelled sample."""
    counts = Counter(label for s in store.samples(dataset, split) if (label := normalize_label(s["label"])))
    if not counts:
        return None, {}
    best = max(LABELS, key=lambda lab: (counts.get(lab, 0), -LABELS.index(lab)))
    return best, {lab: counts.get(lab, 0) for lab in LABELS}


def uncertainty(store: Store, dataset: str, split: str, posts: Sequence[dict[str, Any]], *,
                majority_from: str | None = "train", n_boot: int = 2000, seed: int = 0,
                samples: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The intervals of the posts' predictions and the majority comparison (see the module doc); ``posts`` are the
    result's per-post rows (``sample_id``, ``gold``, ``prediction``); ``samples``: the split's samples when the
    caller has them already (the tweet clusters come from them)."""
    clusters = post_clusters(samples if samples is not None else store.samples(dataset, split))
    gold = [p["gold"] for p in posts]
    pred = [p["prediction"] for p in posts]
    ids = [clusters.get(p["sample_id"], f"sample {p['sample_id']}") for p in posts]
    out: dict[str, Any] = {"intervals": score_intervals(gold, pred, clusters=ids, n_boot=n_boot, seed=seed)}
    out["majority"] = _majority(store, dataset, split, gold, pred, ids, majority_from, n_boot, seed)
    return out


def _majority(store: Store, dataset: str, split: str, gold: list[Any], pred: list[Any], clusters: list[Any],
              source: str | None, n_boot: int, seed: int) -> dict[str, Any]:
    if not source or source == NO_BASELINE:
        return {"note": "no majority baseline (majority_from none)"}
    if source == split:
        return {"note": f"no majority baseline: it would come from the evaluated split '{split}' itself"}
    if source not in store.splits(dataset):
        return {"note": f"no majority baseline: dataset '{dataset}' has no split '{source}' to take it from"}
    label, counts = majority_label(store, dataset, source)
    if label is None:
        return {"note": f"no majority baseline: {dataset}/{source} has no labelled sample"}
    answers = [label] * len(gold)
    scores = classification_metrics(gold, answers)
    return {"label": label, "from_split": source, "counts": counts, "accuracy": scores["accuracy"],
            "macro_f1": scores["macro_f1"], "weighted_f1": scores["weighted_f1"],
            "vs_model": paired_comparison(gold, answers, pred, clusters=clusters, n_boot=n_boot, seed=seed)}


def against_majority(metrics: dict[str, Any]) -> dict[str, Any]:
    """For a row of ``mulcot run``'s table: a result's 95 % intervals and its paired comparison with the majority
    baseline."""
    u = metrics.get("uncertainty") or {}
    out: dict[str, Any] = {}
    if u.get("intervals"):
        iv = u["intervals"]
        out["accuracy_ci"] = [iv["accuracy"]["low"], iv["accuracy"]["high"]]
        out["macro_f1_ci"] = [iv["macro_f1"]["low"], iv["macro_f1"]["high"]]
    vs = (u.get("majority") or {}).get("vs_model")
    if vs:
        boot = vs["bootstrap"]
        out["vs_majority"] = {"n": vs["n"], "accuracy": boot["accuracy"], "macro_f1": boot["macro_f1"],
                              "mcnemar_p": vs["mcnemar"]["p_value"]}
    return out


def majority_row(metrics: dict[str, Any]) -> dict[str, Any]:
    """The majority baseline as a row of the recipe's table (its F1 the one the task reports)."""
    maj = metrics["uncertainty"]["majority"]
    f1 = maj["macro_f1"] if metrics.get("f1_reported") == "macro_f1" else maj["weighted_f1"]
    return {"subject": f"majority ({maj['label']})", "accuracy": maj["accuracy"], "f1": f1, "baseline": True,
            "note": f"'{maj['label']}' for every post: the most frequent label of {maj['from_split']}"}
