"""Qwen-VL model loading, image-only processors and the tiny offline test models.

Names are imported lazily (importing this package does not import torch/transformers until one is used).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    # loading
    "FAMILIES": "mulcot.models.loading",
    "load_model": "mulcot.models.loading",
    "load_with_adapter": "mulcot.models.loading",
    "adapter_base_model": "mulcot.models.loading",
    "model_family": "mulcot.models.loading",
    "family_of_model_type": "mulcot.models.loading",
    "model_class": "mulcot.models.loading",
    "default_device": "mulcot.models.loading",
    "check_device": "mulcot.models.loading",
    "resolve_dtype": "mulcot.models.loading",
    # processors
    "load_processor": "mulcot.models.processor",
    "processor_class": "mulcot.models.processor",
    "torchvision_available": "mulcot.models.processor",
    "ImageOnlyQwen2VLProcessor": "mulcot.models.processor",
    "ImageOnlyQwen2_5_VLProcessor": "mulcot.models.processor",
    "ImageOnlyQwen3VLProcessor": "mulcot.models.processor",
    # tiny models
    "build_tiny": "mulcot.models.tiny",
    "tiny_config": "mulcot.models.tiny",
    "load_tokenizer": "mulcot.models.tiny",
    "tokenizer_dir": "mulcot.models.tiny",
    "TINY_FAMILIES": "mulcot.models.tiny",
}

__all__ = [
    "FAMILIES",
    "TINY_FAMILIES",
    "ImageOnlyQwen2VLProcessor",
    "ImageOnlyQwen2_5_VLProcessor",
    "ImageOnlyQwen3VLProcessor",
    "adapter_base_model",
    "build_tiny",
    "check_device",
    "default_device",
    "family_of_model_type",
    "load_model",
    "load_processor",
    "load_tokenizer",
    "load_with_adapter",
    "model_class",
    "model_family",
    "processor_class",
    "resolve_dtype",
    "tiny_config",
    "tokenizer_dir",
    "torchvision_available",
]

if TYPE_CHECKING:  # pragma: no cover
    from mulcot.models.loading import (
        FAMILIES,
        adapter_base_model,
        check_device,
        default_device,
        family_of_model_type,
        load_model,
        load_with_adapter,
        model_class,
        model_family,
        resolve_dtype,
    )
    from mulcot.models.processor import (
        ImageOnlyQwen2_5_VLProcessor,
        ImageOnlyQwen2VLProcessor,
        ImageOnlyQwen3VLProcessor,
        load_processor,
        processor_class,
        torchvision_available,
    )
    from mulcot.models.tiny import FAMILIES as TINY_FAMILIES
    from mulcot.models.tiny import build_tiny, load_tokenizer, tiny_config, tokenizer_dir


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mulcot.models' has no attribute '{name}'")
    attr = "FAMILIES" if name == "TINY_FAMILIES" else name
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
