"""The assistant's soft labels for the student's KL term: one small interface
(:class:`~mulcot.train.soft_labels.base.SoftLabelSource`), three sources chosen by ``--soft-labels``:

- ``cache`` (default, memory-frugal): the resident assistant's top-k, computed once and cached on disk
  (:mod:`~mulcot.train.soft_labels.cache`);
- ``online``: the assistant resident beside the student, full KL per batch (:mod:`~mulcot.train.soft_labels.online`);
- ``server``: the assistant's top-k from an OpenAI-compatible server, cached like ``cache``
  (:mod:`~mulcot.train.soft_labels.server`).

A new source is one module with a :class:`SoftLabelSource` subclass and one line in :data:`SOURCES`.
"""

from __future__ import annotations

from typing import Any

from mulcot.core.registry import load
from mulcot.train.soft_labels.base import SoftLabelSource, TopKSource, cache_source, check_tokenizers, item_key
from mulcot.train.soft_labels.cache import SoftLabelCache, assistant_top_k, build_soft_label_cache

# --soft-labels value -> "module:class"
SOURCES: dict[str, str] = {
    "cache": "mulcot.train.soft_labels.cache:CachedSource",
    "online": "mulcot.train.soft_labels.online:OnlineSource",
    "server": "mulcot.train.soft_labels.server:ServerSource",
}


def source_class(mode: str) -> type[SoftLabelSource]:
    """The source registered for ``--soft-labels MODE``; refuses an unknown one in one line."""
    return load(SOURCES, mode, f"unknown --soft-labels '{mode}'")


def open_source(store: Any, config: Any, ref: Any, items: list[Any], progress: Any = None) -> SoftLabelSource:
    """The soft-label source of a distill run (``config.soft_labels``)."""
    return source_class(config.soft_labels)(store, config, ref, items, progress)


__all__ = [
    "SOURCES",
    "SoftLabelCache",
    "SoftLabelSource",
    "TopKSource",
    "assistant_top_k",
    "build_soft_label_cache",
    "cache_source",
    "check_tokenizers",
    "item_key",
    "open_source",
    "source_class",
]
