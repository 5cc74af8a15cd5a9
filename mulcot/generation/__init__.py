"""Generation (layer 2 of the house plan): the one interface through which expand, eval and predict ask a model.

- :mod:`~mulcot.generation.base`: :class:`Backend`, :class:`Post`, :class:`Request`, :class:`Generated`,
  :class:`PredictConfig` (decoding and input settings) and :class:`RunSummary`;
- the backends, one module each: :mod:`~mulcot.generation.hf` (transformers in-process),
  :mod:`~mulcot.generation.gguf` (llama.cpp) and :mod:`~mulcot.generation.server` (an OpenAI-compatible server);
- :func:`open_backend`: a backend from command-line style arguments, through :data:`BACKENDS`.

A new backend is a module with a :class:`Backend` subclass (``generate``, and an ``open`` classmethod taking the
keyword arguments of :func:`open_backend` it needs) plus one line in :data:`BACKENDS`.
"""

from __future__ import annotations

import importlib
from typing import Any

from mulcot.core.registry import load
from mulcot.generation.base import (
    SOURCE_GGUF,
    SOURCE_HF,
    SOURCE_SERVER,
    Backend,
    Generated,
    Post,
    PredictConfig,
    Request,
    RunSummary,
)

# kind -> "module:class"; the module is imported only when the backend is opened
BACKENDS: dict[str, str] = {
    "gguf": "mulcot.generation.gguf:GGUFBackend",
    "hf": "mulcot.generation.hf:HFBackend",
    "server": "mulcot.generation.server:ServerBackend",
}


def backend_class(kind: str) -> type[Backend]:
    """The class registered for ``kind``; refuses an unknown kind in one line."""
    return load(BACKENDS, kind, f"unknown backend '{kind}'")


def open_backend(kind: str, *, config: PredictConfig | None = None, store: Any = None, **args: Any) -> Backend:
    """A backend from command-line style arguments: ``gguf`` (``gguf=`` an export folder or text GGUF, ``quant=``,
    ``mmproj=``), ``hf`` (``model=`` a merged folder, model folder or run; ``adapter=``) or ``server`` (``server=`` a
    :class:`~mulcot.generation.server.ServerConfig`). Arguments a backend has no use for must be None."""
    return backend_class(kind).open(config=config or PredictConfig(), store=store, **args)


def __getattr__(name: str) -> Any:  # the backend classes, imported on first use
    for path in BACKENDS.values():
        module, cls = path.split(":")
        if cls == name:
            return getattr(importlib.import_module(module), cls)
    raise AttributeError(f"module 'mulcot.generation' has no attribute '{name}'")


__all__ = [
    "BACKENDS",
    "SOURCE_GGUF",
    "SOURCE_HF",
    "SOURCE_SERVER",
    "Backend",
    "Generated",
    "Post",
    "PredictConfig",
    "Request",
    "RunSummary",
    "backend_class",
    "open_backend",
]
