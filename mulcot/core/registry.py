"""Registries of implementations named by ``"module:attribute"``, imported only when one is used: the generation
backends (:data:`mulcot.generation.BACKENDS`) and the soft-label sources (:data:`mulcot.train.soft_labels.SOURCES`)."""

from __future__ import annotations

import importlib
from typing import Any

from mulcot.errors import MulcotError


def load(registry: dict[str, str], key: str, refusal: str) -> Any:
    """The object registered under ``key``; an unknown key is refused in one line (``refusal``, then the known
    keys)."""
    if key not in registry:
        raise MulcotError(f"{refusal} (use one of: {', '.join(registry)})")
    module, name = registry[key].split(":")
    return getattr(importlib.import_module(module), name)
