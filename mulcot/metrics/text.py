"""Text-overlap reasoning metrics, per text or per pair: BLEU, ROUGE-L, METEOR and Distinct-n.

- BLEU: ``sacrebleu.sentence_bleu(pred, [ref], smooth_method="none", tokenize="13a",
  use_effective_order=False).score / 100`` (4-gram, no smoothing); corpus option: ``sacrebleu.corpus_bleu``
  with the same settings, / 100.
- ROUGE-L: the F of the ``rouge`` 1.0.1 package's ``rouge-l`` (summary-level union LCS over sentences split
  at ``.``, whitespace tokens, unique-word counts, case-sensitive, no stemming), reimplemented here with
  identical results and ~30x faster (:func:`rouge_l_f`). Where the package raises (a side with no sentence,
  e.g. ``""`` or ``"..."``), the score is 0.0.
- METEOR: ``nltk.translate.meteor_score.meteor_score([tb.tokenize(ref.lower())], tb.tokenize(pred.lower()))``
  with nltk's ``TreebankWordTokenizer`` and WordNet 3.0 (see :mod:`mulcot.metrics.wordnet`); WordNet look-ups and
  stems are memoised, which changes speed only.
- Distinct-n (n = 1, 2): per generated text, unique n-grams / total n-grams of its Treebank tokens
  (lowercased); a text with fewer than n tokens scores 0; the mean over texts. Corpus option: all n-grams
  pooled (Li et al., 2016).

``None`` in place of a text counts as the empty string.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any


@functools.lru_cache(maxsize=1)
def _treebank() -> Any:
    from nltk.tokenize import TreebankWordTokenizer

    return TreebankWordTokenizer()


def tokenize(text: str | None) -> list[str]:
    """Treebank tokens of the lowercased text (the tokens of METEOR and Distinct-n)."""
    return _treebank().tokenize((text or "").lower())


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(tokens: Sequence[str], n: int) -> float:
    """Unique n-grams / total n-grams of one token list; 0.0 when it has fewer than n tokens."""
    grams = _ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def corpus_distinct_n(token_lists: Iterable[Sequence[str]], n: int) -> float:
    """Unique / total n-grams with all texts' n-grams pooled (Li et al., 2016); 0.0 when there are none."""
    unique: set[tuple[str, ...]] = set()
    total = 0
    for tokens in token_lists:
        grams = _ngrams(tokens, n)
        unique.update(grams)
        total += len(grams)
    return len(unique) / total if total else 0.0


def _rouge_sentences(text: str) -> list[list[str]]:
    # Exactly rouge 1.0.1: split at ".", drop empty pieces, collapse whitespace, split on " " (so a blank
    # sentence is the single word "").
    return [" ".join(s.split()).split(" ") for s in text.split(".") if len(s) > 0]


def _lcs_words(x: Sequence[str], y: Sequence[str]) -> set[str]:
    """Words of the LCS of x and y chosen by rouge 1.0.1's back-tracking (diagonal on match, up if strictly
    greater, else left)."""
    n, m = len(x), len(y)
    table = [[0] * (m + 1)]
    prev = table[0]
    for i in range(n):
        xi = x[i]
        cur = [0] * (m + 1)
        left = 0
        for j in range(m):
            if xi == y[j]:
                left = prev[j] + 1
            else:
                up = prev[j + 1]
                if up > left:
                    left = up
            cur[j + 1] = left
        table.append(cur)
        prev = cur
    words: set[str] = set()
    i, j = n, m
    while i > 0 and j > 0:
        if x[i - 1] == y[j - 1]:
            words.add(x[i - 1])
            i -= 1
            j -= 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words


def rouge_l_f(pred: str | None, ref: str | None) -> float:
    """ROUGE-L F exactly as ``rouge.Rouge(metrics=["rouge-l"]).get_scores(pred, ref)[0]["rouge-l"]["f"]``
    (rouge 1.0.1, ``exclusive=True``), or 0.0 where that raises (a side without any sentence).

    With sentences split at ``.`` and whitespace words: LCS_u = number of distinct words in the union of the
    LCS(r_i, c_j) over reference sentences r_i and prediction sentences c_j; R = LCS_u / distinct reference
    words, P = LCS_u / distinct prediction words, F = 2PR / (P + R + 1e-8).
    """
    hyp = _rouge_sentences(pred or "")
    refs = _rouge_sentences(ref or "")
    if not hyp or not refs:
        return 0.0
    m = len({w for s in refs for w in s})
    n = len({w for s in hyp for w in s})
    hyp_sets = [set(s) for s in hyp]
    union: set[str] = set()
    for r in refs:
        r_set = set(r)
        for h, h_set in zip(hyp, hyp_sets, strict=True):
            common = r_set & h_set
            # The LCS's words are a subset of the common words: if those are all in the union already, the
            # union cannot grow, so the (costly) LCS is skipped without changing the result.
            if common and not common <= union:
                union |= _lcs_words(r, h)
    llcs = len(union)
    r_lcs, p_lcs = llcs / m, llcs / n
    return 2.0 * ((p_lcs * r_lcs) / (p_lcs + r_lcs + 1e-8))


@contextlib.contextmanager
def _quiet_sacrebleu() -> Iterator[None]:
    # sacrebleu logs "It is recommended to enable `effective_order`" on every sentence score.
    logger = logging.getLogger("sacrebleu")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


@functools.lru_cache(maxsize=1)
def _bleu() -> Any:
    from sacrebleu.metrics import BLEU

    return BLEU(smooth_method="none", tokenize="13a", effective_order=False)


def sentence_bleu(pred: str | None, ref: str | None) -> float:
    """``sacrebleu.sentence_bleu(pred, [ref], smooth_method="none", tokenize="13a",
    use_effective_order=False).score / 100``."""
    with _quiet_sacrebleu():
        return _bleu().sentence_score(pred or "", [ref or ""]).score / 100


def corpus_bleu(preds: Sequence[str | None], refs: Sequence[str | None]) -> float:
    """``sacrebleu.corpus_bleu(preds, [refs], smooth_method="none", tokenize="13a").score / 100``."""
    with _quiet_sacrebleu():
        return _bleu().corpus_score([p or "" for p in preds], [[r or "" for r in refs]]).score / 100


class _MemoWordNet:
    """A WordNet reader whose ``synsets(word)`` is memoised (METEOR asks for the same words again and
    again)."""

    def __init__(self, reader: Any):
        self._reader = reader
        self.synsets = functools.lru_cache(maxsize=200_000)(reader.synsets)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


@functools.lru_cache(maxsize=1)
def _memo_stemmer() -> Any:
    from nltk.stem.porter import PorterStemmer

    class _MemoPorter(PorterStemmer):
        def __init__(self) -> None:
            super().__init__()
            self._memo: dict[tuple[str, bool], str] = {}

        def stem(self, word: str, to_lowercase: bool = True) -> str:
            key = (word, to_lowercase)
            out = self._memo.get(key)
            if out is None:
                out = self._memo[key] = super().stem(word, to_lowercase)
            return out

    return _MemoPorter()


_MEMO_WORDNET: dict[int, _MemoWordNet] = {}


def _memo_wordnet(reader: Any) -> _MemoWordNet:
    memo = _MEMO_WORDNET.get(id(reader))
    if memo is None or memo._reader is not reader:
        memo = _MEMO_WORDNET[id(reader)] = _MemoWordNet(reader)
    return memo


def meteor(pred_tokens: Sequence[str], ref_tokens: Sequence[str], wordnet: Any) -> float:
    """nltk's ``meteor_score([ref_tokens], pred_tokens)`` (defaults alpha 0.9, beta 3, gamma 0.5, Porter
    stems, WordNet synonyms) on tokens from :func:`tokenize`; ``wordnet`` is a reader from
    :func:`mulcot.metrics.wordnet.ensure_wordnet`."""
    from nltk.translate.meteor_score import meteor_score

    return float(
        meteor_score(
            [list(ref_tokens)], list(pred_tokens), wordnet=_memo_wordnet(wordnet), stemmer=_memo_stemmer()
        )
    )
