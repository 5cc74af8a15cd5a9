"""Metrics from label probabilities (mulcot.metrics.calibration) against values computed by hand and by
scikit-learn; balanced accuracy in classification_metrics; the reliability diagram."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mulcot.core.labels import LABELS
from mulcot.errors import MetricsError
from mulcot.metrics import classification_metrics
from mulcot.metrics.calibration import (
    expected_calibration_error,
    probability_matrix,
    probability_metrics,
    reliability_bins,
)

P, U, N = LABELS
GOLD = [P, P, U, N, N]
PROBS = [  # positive, neutral, negative
    (0.75, 0.15, 0.10),  # right, confidence .75
    (0.20, 0.55, 0.25),  # wrong (neutral), .55
    (0.02, 0.95, 0.03),  # right, .95
    (0.45, 0.12, 0.43),  # wrong (positive), .45
    (0.05, 0.18, 0.77),  # right, .77
]


def test_hand_values():
    m = probability_metrics(GOLD, PROBS)
    assert m["n"] == 5 and m["accuracy"] == pytest.approx(3 / 5)
    # bins (0.7, 0.8]: two right posts at .75 and .77; (0.5, 0.6]: one wrong at .55; (0.9, 1]: right at .95;
    # (0.4, 0.5]: wrong at .45
    ece = 2 / 5 * abs(1 - 0.76) + 1 / 5 * 0.55 + 1 / 5 * 0.05 + 1 / 5 * 0.45
    assert ece == pytest.approx(0.306)
    assert m["ece"] == pytest.approx(ece, abs=1e-12) and m["ece_bins"] == 10
    assert expected_calibration_error(GOLD, PROBS) == pytest.approx(ece, abs=1e-12)
    full = [(round(b["low"], 6), b["count"], b["confidence"], b["accuracy"]) for b in m["bins"] if b["count"]]
    assert full == [(0.4, 1, pytest.approx(0.45), 0.0), (0.5, 1, pytest.approx(0.55), 0.0),
                    (0.7, 2, pytest.approx(0.76), 1.0), (0.9, 1, pytest.approx(0.95), 1.0)]
    assert len(m["bins"]) == 10 and sum(b["count"] for b in m["bins"]) == 5
    # AUROC one-vs-rest: positive scores .75/.20 against .02/.45/.05 win 5 of 6 pairs; the others separate fully
    assert m["auroc"] == {P: pytest.approx(5 / 6), U: 1.0, N: 1.0}
    assert m["auroc_macro_ovr"] == pytest.approx((5 / 6 + 2) / 3)
    gold_probs = [0.75, 0.20, 0.95, 0.43, 0.77]
    assert m["nll"] == pytest.approx(-sum(math.log(x) for x in gold_probs) / 5)
    brier = [0.25**2 + 0.15**2 + 0.10**2, 0.80**2 + 0.55**2 + 0.25**2, 0.02**2 + 0.05**2 + 0.03**2,
             0.45**2 + 0.12**2 + 0.57**2, 0.05**2 + 0.18**2 + 0.23**2]
    assert m["brier"] == pytest.approx(sum(brier) / 5)
    assert m["mean_confidence"] == pytest.approx((0.75 + 0.55 + 0.95 + 0.45 + 0.77) / 5)


def test_against_sklearn_on_random_probabilities():
    from sklearn.metrics import log_loss, roc_auc_score

    rng = np.random.default_rng(0)
    gold_idx = rng.integers(0, 3, 200)
    probs = rng.dirichlet([1, 1, 1], 200)
    gold = [LABELS[i] for i in gold_idx]
    m = probability_metrics(gold, probs.tolist(), n_bins=15)
    assert m["auroc_macro_ovr"] == pytest.approx(roc_auc_score(gold_idx, probs, multi_class="ovr", average="macro"))
    assert m["nll"] == pytest.approx(log_loss(gold_idx, probs))
    # ECE by a plain loop over the posts
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    total = 0.0
    for k in range(15):
        inside = [i for i in range(200) if k / 15 < conf[i] <= (k + 1) / 15]
        if inside:
            total += len(inside) / 200 * abs(np.mean(pred[inside] == gold_idx[inside]) - np.mean(conf[inside]))
    assert m["ece"] == pytest.approx(total, abs=1e-12)


def test_mappings_and_undefined_auroc():
    probs = [{"negative": 0.1, "neutral": 0.2, "positive": 0.7}, {"Positive": 0.4, "neu": 0.5, "neg": 0.1}]
    assert probability_matrix(probs).tolist() == [[0.7, 0.2, 0.1], [0.4, 0.5, 0.1]]
    m = probability_metrics([P, U], probs)
    assert m["auroc"][N] is None and m["auroc"][P] == 1.0 and m["auroc_macro_ovr"] == 1.0
    m = probability_metrics([P, P], probs)
    assert m["auroc"] == {P: None, U: None, N: None} and m["auroc_macro_ovr"] is None
    bins = reliability_bins([P], [(1.0, 0.0, 0.0)], n_bins=4)
    assert bins[-1]["count"] == 1 and bins[-1]["accuracy"] == 1.0 and bins[0]["accuracy"] is None


@pytest.mark.parametrize(
    ("probs", "match"),
    [([(0.5, 0.5)], "2 values"), ([(0.5, 0.6, 0.1)], "not a distribution"), ([(1.2, -0.2, 0.0)], "not a dist"),
     ([{"positive": 1.0}], "no neutral, negative"), ([("a", 0, 0)], "not numbers")],
)
def test_bad_probabilities(probs, match):
    with pytest.raises(MetricsError, match=match):
        probability_metrics([P], probs)


def test_bad_gold_and_lengths():
    with pytest.raises(MetricsError, match="2 gold labels but 1 rows"):
        probability_metrics([P, U], [(1, 0, 0)])
    with pytest.raises(MetricsError, match="gold label #1 'maybe'"):
        probability_metrics(["maybe"], [(1, 0, 0)])
    with pytest.raises(MetricsError, match="at least 1"):
        probability_metrics([P], [(1, 0, 0)], n_bins=0)


def test_balanced_accuracy_and_recall():
    from sklearn.metrics import balanced_accuracy_score

    gold, pred = [P, P, U, N], [P, U, U, "no idea"]
    m = classification_metrics(gold, pred)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert {lab: m["per_label"][lab]["recall"] for lab in LABELS} == {P: 0.5, U: 1.0, N: 0.0}
    # a label absent from the gold labels is left out of the mean, as scikit-learn does
    gold, pred = [P, U, U], [P, P, U]
    m = classification_metrics(gold, pred)
    assert m["balanced_accuracy"] == pytest.approx((1 + 0.5) / 2) == balanced_accuracy_score(gold, pred)


def test_reliability_diagram(tmp_path):
    from PIL import Image

    from mulcot.evaluate.report import plot_reliability

    m = probability_metrics(GOLD, PROBS)
    out = plot_reliability([("label prompt (n=5)", m)], tmp_path / "reliability.png", title="tiny")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 200


def test_label_bias_recovers_a_shifted_cut_off():
    """Posts drawn from a known model, scored by a copy of it with its labels shifted (neutral +1.5, negative −1):
    the fit on half the posts finds offsets that undo the shift, and the other half's log loss and accuracy
    improve."""
    from mulcot.metrics.calibration import apply_label_bias, fit_label_bias

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 3)) * 2.0
    true = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    gold = [LABELS[rng.choice(3, p=row)] for row in true]
    shifted = np.exp(logits + [0.0, 1.5, -1.0])
    shifted /= shifted.sum(axis=1, keepdims=True)
    fit = fit_label_bias(gold[:2000], shifted[:2000])
    assert fit["bias"][P] == 0.0
    assert fit["bias"][U] == pytest.approx(-1.5, abs=0.25) and fit["bias"][N] == pytest.approx(1.0, abs=0.25)
    assert fit["temperature"] == pytest.approx(1.0, abs=0.15) and fit["nll_after"] < fit["nll_before"]
    fixed = apply_label_bias(shifted[2000:], fit)
    before, after = probability_metrics(gold[2000:], shifted[2000:]), probability_metrics(gold[2000:], fixed)
    assert after["nll"] < before["nll"] and after["accuracy"] > before["accuracy"]
    assert all(sum(row.values()) == pytest.approx(1.0) for row in fixed)


def test_label_bias_is_bounded_and_keeps_a_constant_model():
    """A label missing from the tuning posts gets a bounded offset; a 0/1 model stays usable (no log of 0)."""
    from mulcot.metrics.calibration import apply_label_bias, fit_label_bias

    fit = fit_label_bias([U, U, P], [(0.0, 1.0, 0.0)] * 3)
    assert -10.0 <= fit["bias"][N] <= 10.0 and 0.05 <= fit["temperature"] <= 20.0
    assert math.isfinite(fit["nll_after"]) and fit["nll_after"] <= fit["nll_before"]
    assert all(math.isfinite(v) for row in apply_label_bias([(0.0, 1.0, 0.0)], fit) for v in row.values())
