"""Reasoning metrics of generated reasoning against the teacher's reasoning (the reference).

:func:`reasoning_metrics` runs the chosen metrics of :data:`REASONING_METRICS` — Sim
(:mod:`~mulcot.metrics.sim`), METEOR, BLEU, ROUGE-L and Distinct-1/2
(:mod:`~mulcot.metrics.text`) — and, like the MulCoT-RD authors, averages per pair; corpus-level BLEU
and Distinct are options. Loading (the Sim model, WordNet) is timed apart from scoring. ``None`` in place of a
text counts as the empty string.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mulcot.errors import MetricsError, WordNetMissingError
from mulcot.events import Progress, emit
from mulcot.metrics import text as overlap
from mulcot.metrics.sim import default_sim_model_path, load_sim_model, sim_scores
from mulcot.metrics.sim_cache import EmbeddingCache

#: Reasoning metrics, in report order.
REASONING_METRICS: tuple[str, ...] = ("sim", "meteor", "bleu", "rouge_l", "distinct_1", "distinct_2")
#: Metrics with a corpus-level variant (``corpus=True``).
CORPUS_METRICS: tuple[str, ...] = ("bleu", "distinct_1", "distinct_2")



@dataclass
class ReasoningScores:
    """Reasoning metrics of predictions against references.

    ``per_pair[m]``: one score per pair (for Distinct-n: per generated text). ``means[m]``: their mean (the
    authors' numbers). ``corpus[m]``: corpus-level BLEU / Distinct-n, filled when ``corpus=True``.
    ``unavailable[m]``: why metric m was not computed, with the one-line fix (e.g. WordNet missing for
    METEOR). ``load_seconds``: model loading (``sim_model``, ``wordnet``), kept apart from ``score_seconds``
    (per metric, plus ``tokenize``). ``sim_cache``: with an embedding cache, its folder and how many distinct
    texts came from it (``cached``) or were embedded (``embedded``).
    """

    n: int
    metrics: tuple[str, ...]
    per_pair: dict[str, list[float]] = field(default_factory=dict)
    means: dict[str, float] = field(default_factory=dict)
    corpus: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    load_seconds: dict[str, float] = field(default_factory=dict)
    score_seconds: dict[str, float] = field(default_factory=dict)
    sim_model: str | None = None
    sim_cache: dict[str, Any] | None = None

    @property
    def headline(self) -> dict[str, float | None]:
        """Per requested metric: the corpus-level value when computed, else the per-pair mean; None when
        unavailable."""
        return {m: self.corpus.get(m, self.means.get(m)) for m in self.metrics}

    def available(self, metric: str) -> bool:
        """Whether ``metric`` was computed."""
        return metric in self.means

    @property
    def total_score_seconds(self) -> float:
        """Scoring time, loading excluded."""
        return sum(self.score_seconds.values())

    def to_dict(self, *, per_pair: bool = False) -> dict[str, Any]:
        """A JSON-ready dict; per-pair lists only when asked."""
        out = asdict(self)
        out["metrics"] = list(self.metrics)
        out["headline"] = self.headline
        if not per_pair:
            out.pop("per_pair")
        return out


def normalize_metric_names(metrics: Iterable[str] | None) -> tuple[str, ...]:
    """Canonical names (in report order) of the chosen reasoning metrics (None: all); accepts ``rouge-l``,
    ``distinct1``, … Raises :class:`MetricsError` on an unknown name."""
    return _normalize_metric_names(metrics)


def _normalize_metric_names(metrics: Iterable[str] | None) -> tuple[str, ...]:
    if metrics is None:
        return REASONING_METRICS
    if isinstance(metrics, str):
        metrics = [metrics]
    chosen = set()
    for m in metrics:
        key = m.strip().lower().replace("-", "_")
        key = {"rougel": "rouge_l", "distinct1": "distinct_1", "distinct2": "distinct_2"}.get(key, key)
        if key not in REASONING_METRICS:
            raise MetricsError(
                f"unknown reasoning metric {m!r}; choose from {', '.join(REASONING_METRICS)}"
            )
        chosen.add(key)
    return tuple(m for m in REASONING_METRICS if m in chosen)


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def reasoning_metrics(
    preds: Sequence[str | None],
    refs: Sequence[str | None],
    *,
    sim_model: str | os.PathLike[str] | Any | None = None,
    corpus: bool = False,
    metrics: Iterable[str] | None = None,
    progress: Progress | None = None,
    nltk_data_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    batch_size: int = 64,
    embedding_cache: bool | str | os.PathLike[str] | None = None,
) -> ReasoningScores:
    """Score generated reasoning ``preds`` against reference reasoning ``refs`` (pairwise, same order).

    ``metrics``: a subset of :data:`REASONING_METRICS` (default all). ``sim_model``: a folder, a Hugging Face
    id or a loaded SentenceTransformer (default: the offline all-MiniLM-L6-v2, see :func:`load_sim_model`).
    ``corpus``: also compute corpus-level BLEU and Distinct-n (``ReasoningScores.corpus``).
    ``nltk_data_dir``: where to look for WordNet (default: see
    :func:`mulcot.metrics.wordnet.search_dirs`); when it is missing, METEOR is listed in ``unavailable``
    with the fix and the other metrics still run.
    ``progress`` receives an event per step of scoring (``message`` = the metric). ``embedding_cache``: True keeps Sim
    embeddings on disk under :func:`default_embedding_cache_dir`, a path keeps them there, None/False does
    not (see :class:`EmbeddingCache`; only for models loaded by :func:`load_sim_model`). Raises
    :class:`MetricsError` on different lengths, no pairs, an unknown metric or an unloadable Sim model.
    """
    if len(preds) != len(refs):
        raise MetricsError(f"{len(preds)} predictions but {len(refs)} references")
    if not preds:
        raise MetricsError("no reasoning pairs to score")
    chosen = _normalize_metric_names(metrics)
    preds = [p or "" for p in preds]
    refs = [r or "" for r in refs]
    scores = ReasoningScores(n=len(preds), metrics=chosen)
    wordnet_reader = _load_wordnet(scores, nltk_data_dir) if "meteor" in chosen else None
    if "sim" in chosen:
        _score_sim(scores, preds, refs, sim_model, device, batch_size, embedding_cache, progress)
    tokens: dict[str, list[str]] = {}
    if "distinct_1" in chosen or "distinct_2" in chosen or wordnet_reader is not None:
        start = time.perf_counter()
        for text in preds + refs if wordnet_reader is not None else preds:
            if text not in tokens:
                tokens[text] = overlap.tokenize(text)
        scores.score_seconds["tokenize"] = time.perf_counter() - start
    pairwise = {
        "meteor": lambda p, r: overlap.meteor(tokens[p], tokens[r], wordnet_reader),
        "bleu": overlap.sentence_bleu,
        "rouge_l": overlap.rouge_l_f,
    }
    for metric, score in pairwise.items():
        if metric in chosen and (metric != "meteor" or wordnet_reader is not None):
            _score_pairs(scores, metric, score, preds, refs, progress)
    if corpus and "bleu" in chosen:
        scores.corpus["bleu"] = overlap.corpus_bleu(preds, refs)
    for k in (1, 2):
        name = f"distinct_{k}"
        if name in chosen:
            start = time.perf_counter()
            scores.per_pair[name] = [overlap.distinct_n(tokens[p], k) for p in preds]
            if corpus:
                scores.corpus[name] = overlap.corpus_distinct_n((tokens[p] for p in preds), k)
            scores.score_seconds[name] = time.perf_counter() - start
            emit(progress, "eval", message=name, done=len(preds), total=len(preds))
    scores.means = {m: _mean(scores.per_pair[m]) for m in chosen if m in scores.per_pair}
    return scores


def _load_wordnet(scores: ReasoningScores, nltk_data_dir: str | os.PathLike[str] | None) -> Any:
    """WordNet for METEOR (timed apart), or None with the fix listed in ``unavailable``."""
    from mulcot.metrics import wordnet as wn

    start = time.perf_counter()
    reader = None
    try:
        reader = wn.ensure_wordnet(nltk_data_dir)
    except WordNetMissingError as err:
        scores.unavailable["meteor"] = str(err)
    scores.load_seconds["wordnet"] = time.perf_counter() - start
    return reader


def _score_sim(scores: ReasoningScores, preds: list[str], refs: list[str], sim_model: Any, device: str | None,
               batch_size: int, embedding_cache: Any, progress: Progress | None) -> None:
    """Sim per pair: the model loaded (timed apart) unless given, embeddings through the cache when asked."""
    start = time.perf_counter()
    if sim_model is not None and hasattr(sim_model, "encode"):
        st_model = sim_model
        scores.sim_model = type(sim_model).__name__
    else:
        st_model = load_sim_model(sim_model, device=device)
        scores.sim_model = str(default_sim_model_path() if sim_model is None else sim_model)
    scores.load_seconds["sim_model"] = time.perf_counter() - start
    start = time.perf_counter()
    cache = None
    if embedding_cache is not None and embedding_cache is not False:
        cache = EmbeddingCache.for_model(st_model, None if embedding_cache is True else embedding_cache)
    stats: dict[str, Any] = {}
    scores.per_pair["sim"] = sim_scores(st_model, preds, refs, batch_size=batch_size, progress=progress, cache=cache,
                                        stats=stats)
    if cache is not None:
        scores.sim_cache = {"dir": str(cache.folder), **stats}
    scores.score_seconds["sim"] = time.perf_counter() - start


def _score_pairs(scores: ReasoningScores, metric: str, score: Any, preds: list[str], refs: list[str],
                 progress: Progress | None) -> None:
    """One pairwise metric over every (prediction, reference), timed, with a progress event every 64 pairs."""
    start = time.perf_counter()
    values = []
    for i, (p, r) in enumerate(zip(preds, refs, strict=True), 1):
        values.append(score(p, r))
        if i == len(preds) or i % 64 == 0:
            emit(progress, "eval", message=metric, done=i, total=len(preds))
    scores.per_pair[metric] = values
    scores.score_seconds[metric] = time.perf_counter() - start
