"""Paired comparison statistics (mulcot.metrics.paired): exact McNemar against hand values, scipy and
statsmodels; the cluster bootstrap against a plain loop over the same draws with scikit-learn."""

from __future__ import annotations

import importlib.util
from math import comb

import numpy as np
import pytest

from mulcot.core.labels import LABELS
from mulcot.errors import MetricsError
from mulcot.metrics import classification_metrics
from mulcot.metrics.paired import (
    agreement,
    bootstrap_differences,
    cluster_draws,
    cluster_index,
    mcnemar_exact,
    paired_bootstrap,
    paired_comparison,
)

P, U, N = LABELS  # positive, neutral, negative


def _discordant(b: int, c: int, both: int = 0, neither: int = 0) -> tuple[list[str], list[str], list[str]]:
    """Gold and two prediction vectors with b posts only A gets right, c only B, ``both`` and ``neither``."""
    gold = [P] * (b + c + both + neither)
    a = [P] * b + [N] * c + [P] * both + [U] * neither
    bb = [U] * b + [P] * c + [P] * both + ["It is not positive"] * neither
    return gold, a, bb


def test_mcnemar_hand_values():
    # b = 3, c = 0: 2 · P[X ≤ 0] = 2 / 8
    m = mcnemar_exact(*_discordant(3, 0, both=5, neither=2))
    assert (m.n, m.a_only, m.b_only, m.both, m.neither) == (10, 3, 0, 5, 2)
    assert m.p_value == pytest.approx(0.25, abs=1e-12)
    # b = 5, c = 1: 2 · (C(6,0) + C(6,1)) / 2^6
    assert mcnemar_exact(*_discordant(5, 1)).p_value == pytest.approx(14 / 64, abs=1e-12)
    # balanced discordance: capped at 1; no discordant post at all: 1
    assert mcnemar_exact(*_discordant(4, 4)).p_value == 1.0
    assert mcnemar_exact(*_discordant(0, 0, both=3)).p_value == 1.0
    # symmetric in A and B
    g, a, b = _discordant(7, 2, both=4)
    assert mcnemar_exact(g, a, b).p_value == mcnemar_exact(g, b, a).p_value


@pytest.mark.parametrize(("b", "c"), [(1, 0), (11, 0), (3, 9), (20, 7), (40, 29), (100, 80), (13, 13)])
def test_mcnemar_equals_scipy_binomtest(b, c):
    from scipy.stats import binomtest

    got = mcnemar_exact(*_discordant(b, c, both=10, neither=3)).p_value
    assert got == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-12, abs=1e-15)
    tail = sum(comb(b + c, k) for k in range(min(b, c) + 1)) / 2 ** (b + c)  # by hand, exact integers
    assert got == pytest.approx(min(1.0, 2 * tail), rel=1e-12)


@pytest.mark.skipif(importlib.util.find_spec("statsmodels") is None, reason="statsmodels is not installed")
@pytest.mark.parametrize(("b", "c"), [(3, 9), (20, 7), (1, 0)])
def test_mcnemar_equals_statsmodels(b, c):
    from statsmodels.stats.contingency_tables import mcnemar

    table = [[10, b], [c, 3]]
    assert mcnemar_exact(*_discordant(b, c, both=10, neither=3)).p_value == pytest.approx(
        mcnemar(table, exact=True).pvalue, rel=1e-12
    )


def test_findings_majority_example():
    """FINDINGS round 3: λ_cls 0.8 right on 100 of 150 dev posts (answers neutral/positive 110/40) against the
    majority's 89 (89 gold neutral, 46 positive, 15 negative): exact McNemar p = 0.11. The counts that fit: 75
    neutral and 25 positive posts right."""
    gold = [U] * 89 + [P] * 46 + [N] * 15
    majority = [U] * 150
    model = [U] * 75 + [P] * 14 + [P] * 25 + [U] * 21 + [U] * 14 + [P] * 1
    assert sum(g == p for g, p in zip(gold, model, strict=True)) == 100
    assert (model.count(U), model.count(P)) == (110, 40)
    m = mcnemar_exact(gold, majority, model)
    assert (m.a_only, m.b_only) == (14, 25) and round(m.p_value, 2) == 0.11
    # the same 11-post gap split 5 / 16 would have been significant
    model = [U] * 84 + [P] * 5 + [P] * 16 + [U] * 30 + [U] * 15
    m = mcnemar_exact(gold, majority, model)
    assert (m.a_only, m.b_only) == (5, 16) and round(m.p_value, 3) == 0.027


def test_agreement():
    assert agreement([P, U, N, "junk"], [P, N, N, "junk"]) == 0.5  # two unparseable answers do not agree
    assert agreement(["Positive", " neg "], [P, N]) == 1.0
    with pytest.raises(MetricsError):
        agreement([P], [P, U])
    with pytest.raises(MetricsError):
        agreement([], [])


def _loop_differences(gold, a, b, clusters, draws):
    """The reference: each draw's posts listed out, scored with scikit-learn."""
    members: dict[object, list[int]] = {}
    for i, c in enumerate(clusters):
        members.setdefault(c, []).append(i)
    order = list(members)
    acc, f1 = [], []
    for row in draws:
        idx = [i for k in row for i in members[order[k]]]
        ma = classification_metrics([gold[i] for i in idx], [a[i] for i in idx])
        mb = classification_metrics([gold[i] for i in idx], [b[i] for i in idx])
        acc.append(mb["accuracy"] - ma["accuracy"])
        f1.append(mb["macro_f1"] - ma["macro_f1"])
    return np.array(acc), np.array(f1)


def _random_case(seed: int, n: int = 60):
    rng = np.random.default_rng(seed)
    gold = [LABELS[i] for i in rng.integers(0, 3, n)]
    a = [LABELS[i] if i < 3 else "unparseable" for i in rng.integers(0, 4, n)]
    b = [g if rng.random() < 0.6 else LABELS[rng.integers(0, 3)] for g in gold]
    clusters = [f"tweet{t}" for t in np.sort(rng.integers(0, n // 2, n))]
    return gold, a, b, clusters


def test_bootstrap_differences_equal_a_loop_with_sklearn():
    gold, a, b, clusters = _random_case(1)
    _, k = cluster_index(clusters, len(gold))
    draws = cluster_draws(k, 40, seed=5)
    acc, f1 = bootstrap_differences(gold, a, b, clusters, draws)
    ref_acc, ref_f1 = _loop_differences(gold, a, b, clusters, draws)
    np.testing.assert_allclose(acc, ref_acc, atol=1e-12)
    np.testing.assert_allclose(f1, ref_f1, atol=1e-12)


def test_paired_bootstrap_interval_and_observed_values():
    gold, a, b, clusters = _random_case(2)
    boot = paired_bootstrap(gold, a, b, clusters=clusters, n_boot=300, seed=7)
    ma, mb = classification_metrics(gold, a), classification_metrics(gold, b)
    assert boot.accuracy_a == pytest.approx(ma["accuracy"]) and boot.accuracy_b == pytest.approx(mb["accuracy"])
    assert boot.macro_f1_a == pytest.approx(ma["macro_f1"]) and boot.macro_f1_b == pytest.approx(mb["macro_f1"])
    assert boot.accuracy.diff == pytest.approx(mb["accuracy"] - ma["accuracy"])
    assert boot.macro_f1.diff == pytest.approx(mb["macro_f1"] - ma["macro_f1"])
    _, k = cluster_index(clusters, len(gold))
    ref_acc, ref_f1 = _loop_differences(gold, a, b, clusters, cluster_draws(k, 300, seed=7))
    assert (boot.accuracy.low, boot.accuracy.high) == pytest.approx(tuple(np.quantile(ref_acc, [0.025, 0.975])))
    assert (boot.macro_f1.low, boot.macro_f1.high) == pytest.approx(tuple(np.quantile(ref_f1, [0.025, 0.975])))
    assert boot.accuracy.low <= boot.accuracy.diff <= boot.accuracy.high
    assert (boot.n, boot.clusters, boot.n_boot, boot.seed) == (60, k, 300, 7)
    # seeded: the same seed gives the same interval, another seed another one
    assert paired_bootstrap(gold, a, b, clusters=clusters, n_boot=300, seed=7) == boot
    assert paired_bootstrap(gold, a, b, clusters=clusters, n_boot=300, seed=8) != boot


def test_whole_clusters_are_resampled():
    """Each tweet's post repeated three times, as three aspects that always agree: resampling whole tweets gives
    exactly the intervals of one post per tweet; resampling posts would narrow them."""
    gold, a, b, _ = _random_case(3, n=40)
    tripled = [x for x in gold for _ in range(3)], [x for x in a for _ in range(3)], [x for x in b for _ in range(3)]
    clusters = [i for i in range(40) for _ in range(3)]
    single = paired_bootstrap(gold, a, b, n_boot=400, seed=3)
    grouped = paired_bootstrap(*tripled, clusters=clusters, n_boot=400, seed=3)
    assert grouped.clusters == 40 and grouped.n == 120
    assert (grouped.accuracy.low, grouped.accuracy.high) == pytest.approx((single.accuracy.low, single.accuracy.high))
    assert (grouped.macro_f1.low, grouped.macro_f1.high) == pytest.approx((single.macro_f1.low, single.macro_f1.high))
    naive = paired_bootstrap(*tripled, n_boot=400, seed=3)
    assert naive.accuracy.high - naive.accuracy.low < grouped.accuracy.high - grouped.accuracy.low


def test_identical_predictions_give_a_zero_interval():
    gold, a, _, clusters = _random_case(4)
    boot = paired_bootstrap(gold, a, list(a), clusters=clusters, n_boot=50)
    assert boot.accuracy.to_dict() == {"diff": 0.0, "low": 0.0, "high": 0.0}
    assert boot.macro_f1.to_dict() == {"diff": 0.0, "low": 0.0, "high": 0.0}


def test_paired_comparison_dict_and_bad_input():
    gold, a, b = _discordant(6, 1, both=3, neither=2)
    out = paired_comparison(gold, a, b, n_boot=100)
    assert out["n"] == out["clusters"] == 12 and out["agreement"] == pytest.approx(3 / 12)
    assert out["mcnemar"]["a_only"] == 6 and out["bootstrap"]["accuracy"]["diff"] == pytest.approx(-5 / 12)
    with pytest.raises(MetricsError, match="gold label #1 'maybe'"):
        mcnemar_exact(["maybe"], [P], [P])
    with pytest.raises(MetricsError, match="one of each per post"):
        paired_bootstrap([P, U], [P], [P, U])
    with pytest.raises(MetricsError, match="cluster ids"):
        paired_bootstrap([P, U], [P, U], [P, U], clusters=[1])
    with pytest.raises(MetricsError, match="n_boot"):
        paired_bootstrap([P], [P], [P], n_boot=0)
    with pytest.raises(MetricsError, match="confidence"):
        paired_bootstrap([P], [P], [P], confidence=1.0)
