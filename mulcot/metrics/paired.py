"""Paired comparison of two prediction vectors on the same posts: is model B's score different from model A's?

- :func:`mcnemar_exact`: the exact McNemar test, a two-sided binomial test (p = 1/2) on the discordant posts
  (b = A right and B wrong, c = A wrong and B right): p = min(1, 2 · P[X ≤ min(b, c)]), X ~ Bin(b + c, 1/2);
  p = 1 when no post is discordant. Same value as ``scipy.stats.binomtest(b, b + c).pvalue`` and statsmodels'
  ``mcnemar(exact=True)``.
- :func:`paired_bootstrap`: percentile confidence intervals of the differences B − A of accuracy and macro-F1,
  resampling whole clusters with replacement (posts sharing one tweet — several aspects of it — are drawn together,
  since their answers are not independent), both models scored on the same draw; seeded, so a rerun gives the
  same interval.
- :func:`score_intervals`: one model's accuracy and macro-F1 with the same bootstrap's intervals.
- :func:`agreement`: the share of posts where both predictions are the same valid label.
- :func:`post_clusters`: which posts share one tweet (the bootstrap's clusters), from store samples.

Labels are normalised with :func:`mulcot.core.labels.normalize_label`; a prediction that is not a label counts as wrong
(as in :func:`mulcot.metrics.classification_metrics`, whose macro-F1 the bootstrap reproduces exactly on
the original sample: F1 per label = 2TP / (2TP + FP + FN), 0 when that is 0/0, an invalid prediction a false
negative of its gold label and a false positive of none).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mulcot.core.labels import LABELS, normalize_label
from mulcot.errors import MetricsError

#: How many bootstrap draws are scored at once (bounds memory: draws × clusters counts).
_CHUNK = 500


@dataclass(frozen=True)
class McNemar:
    """The exact McNemar test of two prediction vectors on the same posts."""

    n: int
    a_only: int  # b: posts A gets right and B gets wrong
    b_only: int  # c: posts B gets right and A gets wrong
    both: int
    neither: int
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Interval:
    """A difference B − A: observed value and its bootstrap percentile interval."""

    diff: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class PairedBootstrap:
    """Paired cluster bootstrap of the accuracy and macro-F1 differences B − A."""

    n: int
    clusters: int
    n_boot: int
    seed: int
    confidence: float
    accuracy_a: float
    accuracy_b: float
    macro_f1_a: float
    macro_f1_b: float
    accuracy: Interval
    macro_f1: Interval

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["accuracy"], out["macro_f1"] = self.accuracy.to_dict(), self.macro_f1.to_dict()
        return out


def _labels(values: Sequence[object]) -> np.ndarray:
    """Label indices into LABELS; -1 for a value that is not a label."""
    out = np.full(len(values), -1, dtype=np.int64)
    for i, v in enumerate(values):
        label = normalize_label(v)
        if label is not None:
            out[i] = LABELS.index(label)
    return out


def _check(gold: Sequence[object], pred_a: Sequence[object], pred_b: Sequence[object]) -> np.ndarray:
    if not (len(gold) == len(pred_a) == len(pred_b)):
        raise MetricsError(f"{len(gold)} gold labels, {len(pred_a)} predictions of A and {len(pred_b)} of B: a paired "
                           "comparison needs one of each per post")
    if not gold:
        raise MetricsError("no posts to compare")
    g = _labels(gold)
    bad = np.flatnonzero(g < 0)
    if bad.size:
        raise MetricsError(f"gold label #{bad[0] + 1} {gold[bad[0]]!r} is not one of {', '.join(LABELS)}")
    return g


def mcnemar_exact(gold: Sequence[object], pred_a: Sequence[object], pred_b: Sequence[object]) -> McNemar:
    """The exact (binomial) McNemar test of A against B on the same posts; see the module doc."""
    from scipy.stats import binom

    g = _check(gold, pred_a, pred_b)
    ra, rb = _labels(pred_a) == g, _labels(pred_b) == g
    b, c = int(np.sum(ra & ~rb)), int(np.sum(~ra & rb))
    p = 1.0 if b + c == 0 else min(1.0, 2.0 * float(binom.cdf(min(b, c), b + c, 0.5)))
    return McNemar(n=len(g), a_only=b, b_only=c, both=int(np.sum(ra & rb)), neither=int(np.sum(~ra & ~rb)),
                   p_value=p)


def agreement(pred_a: Sequence[object], pred_b: Sequence[object]) -> float:
    """Share of posts where both predictions are the same valid label (two unparseable answers do not agree)."""
    if len(pred_a) != len(pred_b):
        raise MetricsError(f"{len(pred_a)} predictions of A but {len(pred_b)} of B")
    if not pred_a:
        raise MetricsError("no posts to compare")
    a, b = _labels(pred_a), _labels(pred_b)
    return float(np.mean((a >= 0) & (a == b)))


def cluster_index(clusters: Sequence[Hashable] | None, n: int) -> tuple[np.ndarray, int]:
    """Each post's cluster number (0..k-1, in order of first appearance) and k; every post its own cluster when
    ``clusters`` is None."""
    if clusters is None:
        return np.arange(n), n
    if len(clusters) != n:
        raise MetricsError(f"{len(clusters)} cluster ids for {n} posts")
    numbers: dict[Hashable, int] = {}
    index = np.fromiter((numbers.setdefault(c, len(numbers)) for c in clusters), dtype=np.int64, count=n)
    return index, len(numbers)


def cluster_draws(n_clusters: int, n_boot: int, seed: int) -> np.ndarray:
    """The bootstrap draws: ``n_boot`` rows of ``n_clusters`` cluster numbers drawn with replacement
    (``numpy.random.default_rng(seed).integers``)."""
    return np.random.default_rng(seed).integers(0, n_clusters, size=(n_boot, n_clusters))


def _cluster_stats(g: np.ndarray, p: np.ndarray, index: np.ndarray, k: int) -> np.ndarray:
    """Per cluster: [size, correct, TP_0, FP_0, FN_0, TP_1, …] (columns 2.. per label of LABELS)."""
    cols = [np.ones_like(g), (p == g)]
    for lab in range(len(LABELS)):
        cols += [(p == lab) & (g == lab), (p == lab) & (g != lab), (p != lab) & (g == lab)]
    per_post = np.stack([c.astype(np.float64) for c in cols], axis=1)
    out = np.zeros((k, per_post.shape[1]))
    np.add.at(out, index, per_post)
    return out


def _scores(totals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and macro-F1 from summed cluster stats (rows = draws)."""
    acc = totals[:, 1] / totals[:, 0]
    f1s = []
    for lab in range(len(LABELS)):
        tp, fp, fn = (totals[:, 2 + 3 * lab + j] for j in range(3))
        denom = 2 * tp + fp + fn
        f1s.append(np.divide(2 * tp, denom, out=np.zeros_like(denom), where=denom > 0))
    return acc, np.mean(f1s, axis=0)


def bootstrap_differences(gold: Sequence[object], pred_a: Sequence[object], pred_b: Sequence[object],
                          clusters: Sequence[Hashable] | None, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The accuracy and macro-F1 differences B − A on each draw (a row of cluster numbers, see
    :func:`cluster_draws`)."""
    g = _check(gold, pred_a, pred_b)
    index, k = cluster_index(clusters, len(g))
    sa = _cluster_stats(g, _labels(pred_a), index, k)
    sb = _cluster_stats(g, _labels(pred_b), index, k)
    acc, f1 = [], []
    for start in range(0, len(draws), _CHUNK):
        chunk = draws[start : start + _CHUNK]
        weights = np.zeros((len(chunk), k))
        np.add.at(weights, (np.repeat(np.arange(len(chunk)), chunk.shape[1]), chunk.ravel()), 1.0)
        acc_a, f1_a = _scores(weights @ sa)
        acc_b, f1_b = _scores(weights @ sb)
        acc.append(acc_b - acc_a)
        f1.append(f1_b - f1_a)
    return np.concatenate(acc), np.concatenate(f1)


def paired_bootstrap(gold: Sequence[object], pred_a: Sequence[object], pred_b: Sequence[object], *,
                     clusters: Sequence[Hashable] | None = None, n_boot: int = 2000, seed: int = 0,
                     confidence: float = 0.95) -> PairedBootstrap:
    """Percentile bootstrap intervals of the accuracy and macro-F1 differences B − A on the same posts.

    ``clusters`` gives each post's cluster id (posts of one tweet share it); whole clusters are resampled, as many
    as there are, with replacement (every post its own cluster when None). The interval is the
    ((1 − confidence)/2, (1 + confidence)/2) quantiles (numpy's linear interpolation) of the ``n_boot``
    differences; the observed differences are those on the original posts. Raises :class:`MetricsError` on
    mismatched lengths, no posts, a gold value that is not a label, ``n_boot`` < 1 or a confidence outside (0, 1).
    """
    if n_boot < 1:
        raise MetricsError(f"n_boot must be at least 1, not {n_boot}")
    if not 0 < confidence < 1:
        raise MetricsError(f"confidence must be between 0 and 1, not {confidence}")
    g = _check(gold, pred_a, pred_b)
    index, k = cluster_index(clusters, len(g))
    observed = np.arange(k)[None, :]
    (acc_obs,), (f1_obs,) = bootstrap_differences(gold, pred_a, pred_b, clusters, observed)
    acc_a, f1_a = _scores(_cluster_stats(g, _labels(pred_a), index, k).sum(axis=0, keepdims=True))
    acc_b, f1_b = _scores(_cluster_stats(g, _labels(pred_b), index, k).sum(axis=0, keepdims=True))
    acc, f1 = bootstrap_differences(gold, pred_a, pred_b, clusters, cluster_draws(k, n_boot, seed))
    q = [(1 - confidence) / 2, (1 + confidence) / 2]
    acc_lo, acc_hi = np.quantile(acc, q)
    f1_lo, f1_hi = np.quantile(f1, q)
    return PairedBootstrap(
        n=len(g), clusters=k, n_boot=n_boot, seed=seed, confidence=confidence,
        accuracy_a=float(acc_a[0]), accuracy_b=float(acc_b[0]), macro_f1_a=float(f1_a[0]), macro_f1_b=float(f1_b[0]),
        accuracy=Interval(float(acc_obs), float(acc_lo), float(acc_hi)),
        macro_f1=Interval(float(f1_obs), float(f1_lo), float(f1_hi)),
    )


def paired_comparison(gold: Sequence[object], pred_a: Sequence[object], pred_b: Sequence[object], *,
                      clusters: Sequence[Hashable] | None = None, n_boot: int = 2000, seed: int = 0,
                      confidence: float = 0.95) -> dict[str, Any]:
    """McNemar, the paired bootstrap and the agreement rate of A and B on the same posts, as one dict (what
    ``eval compare`` shows and prints with ``--json``)."""
    boot = paired_bootstrap(gold, pred_a, pred_b, clusters=clusters, n_boot=n_boot, seed=seed, confidence=confidence)
    return {"n": boot.n, "clusters": boot.clusters, "agreement": agreement(pred_a, pred_b),
            "mcnemar": mcnemar_exact(gold, pred_a, pred_b).to_dict(), "bootstrap": boot.to_dict()}


def score_intervals(gold: Sequence[object], pred: Sequence[object], *, clusters: Sequence[Hashable] | None = None,
                    n_boot: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """One model's accuracy and macro-F1 with their cluster-bootstrap percentile intervals (the same draws and
    clusters as :func:`paired_bootstrap`): ``{"n", "clusters", "n_boot", "seed", "confidence", "accuracy":
    Interval, "macro_f1": Interval}`` as a dict (each interval's ``diff`` is the observed score).

    It is the paired bootstrap against a model that never answers (accuracy and every F1 exactly 0 on every draw),
    so the two intervals agree with ``eval compare`` by construction."""
    boot = paired_bootstrap(gold, [None] * len(pred), pred, clusters=clusters, n_boot=n_boot, seed=seed,
                            confidence=confidence)
    return {"n": boot.n, "clusters": boot.clusters, "n_boot": n_boot, "seed": seed, "confidence": confidence,
            "accuracy": boot.accuracy.to_dict(), "macro_f1": boot.macro_f1.to_dict()}


def post_clusters(samples: Iterable[dict[str, Any]]) -> dict[int, int]:
    """Per sample id, the number of its tweet: samples sharing an image (its sha256, else its file name) or a text
    (the post with the aspect filled in) belong to one tweet — several aspects of one tweet are several samples.
    Linked transitively (union-find), so a cluster never splits one tweet."""
    parent: dict[Any, Any] = {}

    def find(x: Any) -> Any:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    ids = []
    for s in samples:
        node = ("sample", s["id"])
        ids.append(s["id"])
        keys = [("text", (s.get("text") or "").strip())] if (s.get("text") or "").strip() else []
        image = (s.get("image_sha256") or s.get("image_name")) if s.get("has_image", 1) else None
        if image:
            keys.append(("image", image))
        for key in keys:
            a, b = find(node), find(key)
            if a != b:
                parent[a] = b
    numbers: dict[Any, int] = {}
    return {sid: numbers.setdefault(find(("sample", sid)), len(numbers)) for sid in ids}
