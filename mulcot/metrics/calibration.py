"""Metrics from label probabilities (forced-choice scoring): ranking (AUROC), calibration (ECE, reliability
bins), and proper scores (log loss, Brier).

Probabilities are one row per post over :data:`mulcot.core.labels.LABELS` (positive, neutral, negative), given as a
mapping label → probability or a sequence in that order; each row must be finite, non-negative and sum to 1
(within 1e-4). The predicted label is the row's argmax (ties to the first in LABELS order).

Definitions:

- ``auroc``: one-vs-rest ROC AUC of each label (``sklearn.metrics.roc_auc_score`` of gold == label against that
  label's probability); None for a label the gold labels make undefined (no post of it, or only posts of it).
  ``auroc_macro_ovr``: their unweighted mean over the defined labels (equal to scikit-learn's
  ``roc_auc_score(multi_class="ovr", average="macro")`` when every label occurs); None when none is defined.
- ``ece``: top-label expected calibration error (Guo et al., 2017) with ``n_bins`` equal-width bins of the
  confidence c = max probability over [0, 1] (bin m holds (m/M, (m+1)/M], the first also 0):
  ECE = Σ_m |B_m| / n · |acc(B_m) − conf(B_m)|, acc = share of the bin's posts whose argmax is the gold label,
  conf = their mean confidence. With three labels c ≥ 1/3, so the lowest bins stay empty.
- ``bins``: the reliability diagram's points, one per bin (empty bins included with count 0).
- ``nll``: mean negative log-probability of the gold label (``sklearn.metrics.log_loss``, probabilities clipped
  at machine epsilon); ``brier``: mean over posts of Σ_labels (p − onehot)² (the multi-class Brier score, 0..2).

Recalibration (:func:`fit_label_bias`, :func:`apply_label_bias`): bias-corrected temperature scaling (BCTS,
Alexandari et al., 2020) — p'(y) ∝ exp(log p(y) / T + b_y) with b_positive = 0, the temperature T and the two other
offsets fitted by minimum log loss on a tuning set and applied unchanged to other posts. It keeps each label's
ranking of the posts (AUROC per label unchanged when only T moves) but moves the cut-offs between labels, which is
what a small model trained on a skewed label mix gets most wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mulcot.core.labels import LABELS, normalize_label
from mulcot.errors import MetricsError

DEFAULT_BINS = 10
LOG_FLOOR = 1e-12  # probabilities of exactly 0 (a constant model) enter the log as this


def probability_matrix(probs: Sequence[Mapping[str, float] | Sequence[float]]) -> np.ndarray:
    """The (n, 3) array of probabilities in LABELS order; raises :class:`MetricsError` naming the first bad row."""
    out = np.zeros((len(probs), len(LABELS)))
    for i, row in enumerate(probs):
        if isinstance(row, Mapping):
            named = {normalize_label(k): v for k, v in row.items()}
            missing = [lab for lab in LABELS if lab not in named]
            if missing:
                raise MetricsError(f"probabilities of post #{i + 1} have no {', '.join(missing)}")
            values = [named[lab] for lab in LABELS]
        else:
            values = list(row)
            if len(values) != len(LABELS):
                raise MetricsError(f"probabilities of post #{i + 1}: {len(values)} values, expected {len(LABELS)}")
        try:
            out[i] = [float(v) for v in values]
        except (TypeError, ValueError):
            raise MetricsError(f"probabilities of post #{i + 1} are not numbers: {values!r}") from None
        if not np.all(np.isfinite(out[i])) or np.any(out[i] < 0) or abs(out[i].sum() - 1) > 1e-4:
            raise MetricsError(f"probabilities of post #{i + 1} {values!r} are not a distribution over "
                               f"{', '.join(LABELS)} (non-negative, summing to 1)")
    return out


def _gold_index(gold: Sequence[object], n: int) -> np.ndarray:
    if len(gold) != n:
        raise MetricsError(f"{len(gold)} gold labels but {n} rows of probabilities")
    if not n:
        raise MetricsError("no samples to score")
    out = np.empty(n, dtype=np.int64)
    for i, value in enumerate(gold):
        label = normalize_label(value)
        if label is None:
            raise MetricsError(f"gold label #{i + 1} {value!r} is not one of {', '.join(LABELS)}")
        out[i] = LABELS.index(label)
    return out


def reliability_bins(gold: Sequence[object], probs: Sequence[Any], n_bins: int = DEFAULT_BINS) -> list[dict[str, Any]]:
    """Per equal-width confidence bin: its bounds, how many posts, their mean confidence and accuracy (None when
    empty); see the module doc."""
    p = probability_matrix(probs)
    g = _gold_index(gold, len(p))
    return _bins(g, p, n_bins)


def _bins(g: np.ndarray, p: np.ndarray, n_bins: int) -> list[dict[str, Any]]:
    if n_bins < 1:
        raise MetricsError(f"the number of calibration bins must be at least 1, not {n_bins}")
    conf = p.max(axis=1)
    correct = p.argmax(axis=1) == g
    # bin m holds (m/M, (m+1)/M]; confidence 0 goes to the first bin
    which = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    out = []
    for m in range(n_bins):
        inside = which == m
        count = int(inside.sum())
        out.append({
            "low": m / n_bins, "high": (m + 1) / n_bins, "count": count,
            "confidence": float(conf[inside].mean()) if count else None,
            "accuracy": float(correct[inside].mean()) if count else None,
        })
    return out


def expected_calibration_error(gold: Sequence[object], probs: Sequence[Any], n_bins: int = DEFAULT_BINS) -> float:
    """Top-label ECE with ``n_bins`` equal-width bins (see the module doc)."""
    bins = reliability_bins(gold, probs, n_bins)
    n = sum(b["count"] for b in bins)
    return sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])


def probability_metrics(gold: Sequence[object], probs: Sequence[Any], *, n_bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """AUROC per label and macro one-vs-rest, ECE with its reliability bins, log loss and Brier score of label
    probabilities against the gold labels (see the module doc for each definition)."""
    from sklearn.metrics import log_loss, roc_auc_score

    p = probability_matrix(probs)
    g = _gold_index(gold, len(p))
    auroc: dict[str, float | None] = {}
    for k, label in enumerate(LABELS):
        positives = int(np.sum(g == k))
        auroc[label] = float(roc_auc_score(g == k, p[:, k])) if 0 < positives < len(g) else None
    defined = [v for v in auroc.values() if v is not None]
    bins = _bins(g, p, n_bins)
    ece = sum(b["count"] / len(g) * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])
    onehot = np.eye(len(LABELS))[g]
    return {
        "n": len(g),
        "accuracy": float(np.mean(p.argmax(axis=1) == g)),
        "auroc": auroc,
        "auroc_macro_ovr": float(np.mean(defined)) if defined else None,
        "ece": float(ece),
        "ece_bins": n_bins,
        "bins": bins,
        "mean_confidence": float(p.max(axis=1).mean()),
        "nll": float(log_loss(g, np.clip(p, np.finfo(float).eps, 1.0), labels=list(range(len(LABELS))))),
        "brier": float(np.mean(np.sum((p - onehot) ** 2, axis=1))),
    }



def _recalibrated(logp: np.ndarray, temperature: float, bias: np.ndarray) -> np.ndarray:
    z = logp / temperature + bias
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_label_bias(gold: Sequence[object], probs: Sequence[Any]) -> dict[str, Any]:
    """Fit bias-corrected temperature scaling on tuning posts (see the module doc): returns ``temperature``, the
    per-label ``bias`` (positive fixed at 0), and the tuning set's log loss before and after (``nll_before``,
    ``nll_after``). T is kept in [0.05, 20] and each offset in [-10, 10], so a label absent from the tuning posts
    gets a bounded offset rather than minus infinity."""
    from scipy.optimize import minimize

    p = probability_matrix(probs)
    g = _gold_index(gold, len(p))
    logp = np.log(np.clip(p, LOG_FLOOR, 1.0))
    rows = np.arange(len(g))

    def nll(x: np.ndarray) -> float:
        q = _recalibrated(logp, float(np.exp(x[0])), np.concatenate([[0.0], x[1:]]))
        return float(-np.mean(np.log(np.clip(q[rows, g], LOG_FLOOR, 1.0))))

    bounds = [(np.log(0.05), np.log(20.0))] + [(-10.0, 10.0)] * (len(LABELS) - 1)
    fit = minimize(nll, np.zeros(len(LABELS)), method="L-BFGS-B", bounds=bounds)
    x = fit.x if fit.fun <= nll(np.zeros(len(LABELS))) else np.zeros(len(LABELS))
    return {"method": "bcts", "n": len(g), "temperature": float(np.exp(x[0])),
            "bias": {label: float(b) for label, b in zip(LABELS, np.concatenate([[0.0], x[1:]]), strict=True)},
            "nll_before": nll(np.zeros(len(LABELS))), "nll_after": nll(x)}


def apply_label_bias(probs: Sequence[Any], fit: Mapping[str, Any]) -> list[dict[str, float]]:
    """The probabilities recalibrated by a :func:`fit_label_bias` result, one mapping label → probability per
    post (the predicted label is each row's argmax)."""
    p = probability_matrix(probs)
    bias = np.array([float(fit["bias"].get(label, 0.0)) for label in LABELS])
    q = _recalibrated(np.log(np.clip(p, LOG_FLOOR, 1.0)), float(fit["temperature"]), bias)
    return [dict(zip(LABELS, map(float, row), strict=True)) for row in q]
