"""``mulcot eval --calibrate-on SPLIT``: the label head recalibrated on a tuning split, reported on the evaluated one.

A small model's label head is often biased towards one label (a student that says "neutral" too often loses to the
majority answer while ranking the posts well: its AUROC is high, its accuracy is not). Bias-corrected temperature
scaling (:func:`mulcot.metrics.calibration.fit_label_bias`: one temperature and a per-label offset on the
log-probabilities, four numbers at most) is fitted on the same model's forced-choice answers to **another** split of
the dataset — the tuning posts — and applied, unchanged, to the evaluated posts. The choice is made on the tuning
set and reported once on the report set; nothing of the evaluated split's gold labels is used to fit it.

The block ``metrics["recalibrated"]`` holds the fit, the recalibrated label head's classification and probability
metrics with their 95 % intervals, its paired comparison with the raw label head and with the majority answer
(exact McNemar, tweet-clustered paired bootstrap), and per post the recalibrated prediction and probabilities
(also in ``per_sample.jsonl``). The tuning split's label answers are generated where missing and stored like any
eval's, so a second evaluation asks nothing again.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from mulcot.core.labels import LABELS
from mulcot.errors import MulcotError
from mulcot.evaluate.config import EvalConfig
from mulcot.metrics import classification_metrics
from mulcot.metrics.calibration import apply_label_bias, fit_label_bias, probability_metrics
from mulcot.metrics.paired import paired_comparison, post_clusters, score_intervals
from mulcot.store import Store


def check_calibration_split(store: Store, config: EvalConfig) -> None:
    """Refuses, in one line and before anything is generated, a calibration split that cannot be one."""
    split = config.calibrate_on
    if split is None:
        return
    if split == config.split:
        raise MulcotError(f"--calibrate-on {split} is the evaluated split itself: fit on another split (the tuning "
                          "posts, e.g. --calibrate-on dev) so that the evaluated posts' gold labels choose nothing")
    if split not in store.splits(config.dataset):
        raise MulcotError(f"--calibrate-on {split}: dataset '{config.dataset}' has no split '{split}' (splits: "
                          f"{', '.join(store.splits(config.dataset))})")
    if not any(s["label"] for s in store.samples(config.dataset, split)):
        raise MulcotError(f"--calibrate-on {split}: {config.dataset}/{split} has no gold labels to fit on")


def tuning_config(config: EvalConfig) -> EvalConfig:
    """The settings that ask the same model for its label answers on the calibration split (no chains)."""
    assert config.calibrate_on is not None
    return replace(config, split=config.calibrate_on, limit=None, max_chains=0, probes=None, calibrate_on=None,
                   per_post=None)


def recalibrate(config: EvalConfig, posts: list[dict[str, Any]],
                probs: dict[int, dict[str, float]] | None, gold_fit: dict[int, str],
                fit_probs: dict[int, dict[str, float]] | None, majority: dict[str, Any] | None,
                samples: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """The ``recalibrated`` block (see the module doc) for the evaluated ``posts`` (per-post rows with ``sample_id``,
    ``gold`` and ``label_prediction``) whose label probabilities are ``probs``, fitted on the calibration split's
    gold labels ``gold_fit`` and label probabilities ``fit_probs`` (None: its answers carry none); and per sample id
    its recalibrated prediction and probabilities. ``majority`` is the result's majority block; ``samples`` the
    evaluated split's samples (their tweets are the bootstrap's clusters)."""
    split = config.calibrate_on
    assert split is not None
    if not probs or any(p["sample_id"] not in probs for p in posts):
        raise MulcotError("--calibrate-on needs the label head's probabilities on every evaluated post: evaluate "
                          "with --label-scoring choice")
    fit_ids = [i for i in gold_fit if fit_probs and i in fit_probs]
    if not fit_ids:
        raise MulcotError(f"--calibrate-on {split}: the label answers on {config.dataset}/{split} carry no "
                          "probabilities (stored by --label-scoring generate): evaluate with --label-scoring choice")
    fit = fit_label_bias([gold_fit[i] for i in fit_ids], [fit_probs[i] for i in fit_ids])

    ids = [p["sample_id"] for p in posts]
    gold = [p["gold"] for p in posts]
    raw = [p["label_prediction"] for p in posts]
    fixed = apply_label_bias([probs[i] for i in ids], fit)
    pred = [max(LABELS, key=q.__getitem__) for q in fixed]
    clusters_of = post_clusters(samples)
    clusters = [clusters_of.get(i, f"sample {i}") for i in ids]
    out: dict[str, Any] = {
        "on": split, "method": fit["method"], "n_fit": fit["n"], "temperature": fit["temperature"],
        "bias": fit["bias"], "fit_nll_before": fit["nll_before"], "fit_nll_after": fit["nll_after"],
        "label": classification_metrics(gold, pred),
        "probabilities": probability_metrics(gold, fixed),
        "intervals": score_intervals(gold, pred, clusters=clusters),
        "vs_label_head": paired_comparison(gold, raw, pred, clusters=clusters),
    }
    if majority and majority.get("label"):
        answers = [majority["label"]] * len(gold)
        out["vs_majority"] = {"label": majority["label"], "from_split": majority["from_split"],
                              **paired_comparison(gold, answers, pred, clusters=clusters)}
    per_post = {i: {"recalibrated_prediction": p, "recalibrated_probabilities": q}
                for i, p, q in zip(ids, pred, fixed, strict=True)}
    return out, per_post


def recalibrated_row(label: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """The ``label`` model's recalibrated label head as a row of ``mulcot run``'s table, with its interval and its
    comparison with the majority answer (the shape of :func:`mulcot.evaluate.baseline.against_majority`)."""
    r = metrics["recalibrated"]
    scores, iv = r["label"], r["intervals"]
    row: dict[str, Any] = {
        "subject": f"{label} recalibrated on {r['on']}", "accuracy": scores["accuracy"],
        "f1": scores["macro_f1"] if metrics.get("f1_reported") == "macro_f1" else scores["weighted_f1"],
        "accuracy_ci": [iv["accuracy"]["low"], iv["accuracy"]["high"]],
        "macro_f1_ci": [iv["macro_f1"]["low"], iv["macro_f1"]["high"]],
    }
    vs = r.get("vs_majority")
    if vs:
        boot = vs["bootstrap"]
        row["vs_majority"] = {"n": vs["n"], "accuracy": boot["accuracy"], "macro_f1": boot["macro_f1"],
                              "mcnemar_p": vs["mcnemar"]["p_value"]}
    return row
