"""Qwen-VL processors that work without torchvision: images only, no video processor.

transformers 5.x builds the Qwen-VL video processors (and the default image processor) on torchvision,
which does not install beside the CPU torch here. These subclasses take only ``image_processor`` and
``tokenizer``, so they construct, save and reload with the PIL image processor (``Qwen2VLImageProcessorPil``).
``AutoProcessor`` on a folder saved without a video processor returns just the tokenizer, so always load
through :func:`load_processor`. Saved folders name the upstream processor class, so a user with torchvision
can still use ``AutoProcessor``.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any, ClassVar

from transformers import ProcessorMixin, Qwen2_5_VLProcessor, Qwen2VLProcessor, Qwen3VLProcessor

from mulcot.errors import ModelError


def torchvision_available() -> bool:
    """True when torchvision can be imported (then the stock processors may be used)."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:  # a torchvision that does not match torch fails at import
        return False
    return True


class _ImageOnlyProcessorMixin:
    """Drops the video processor of a Qwen-VL processor: its parts are the image processor and tokenizer."""

    upstream_class: ClassVar[str]

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
        **kwargs: Any,
    ):
        # ProcessorMixin pairs positional sub-processors with the names in *this* signature, so the video
        # processor slot (None) is dropped there.
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    def __call__(self, images: Any = None, text: Any = None, videos: Any = None, **kwargs: Any):
        if videos is not None:
            raise ModelError("video inputs are not supported by mulcot's image-only Qwen-VL processor")
        return super().__call__(images=images, text=text, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["processor_class"] = self.upstream_class
        return out

    def save_pretrained(self, save_directory: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Any:
        files = super().save_pretrained(save_directory, *args, **kwargs)
        tidy_tokenizer_config(Path(save_directory) / "tokenizer_config.json", self.upstream_class)
        return files


def tidy_tokenizer_config(path: Path, processor_class: str | None = None) -> None:
    """Drop load-time keys transformers 5.x writes into ``tokenizer_config.json`` (``is_local``,
    ``local_files_only``) and name the upstream processor class instead of mulcot's subclass."""
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    changed = False
    for key in ("is_local", "local_files_only"):
        changed |= config.pop(key, None) is not None
    if processor_class and config.get("processor_class", processor_class) != processor_class:
        config["processor_class"] = processor_class
        changed = True
    if changed:
        text = json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        path.write_text(text, encoding="utf-8")


class ImageOnlyQwen2VLProcessor(_ImageOnlyProcessorMixin, Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without a video processor."""

    upstream_class = "Qwen2VLProcessor"


class ImageOnlyQwen2_5_VLProcessor(_ImageOnlyProcessorMixin, Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without a video processor."""

    upstream_class = "Qwen2_5_VLProcessor"


class ImageOnlyQwen3VLProcessor(_ImageOnlyProcessorMixin, Qwen3VLProcessor):
    """``Qwen3VLProcessor`` without a video processor."""

    upstream_class = "Qwen3VLProcessor"


PROCESSOR_CLASSES: dict[str, type[ProcessorMixin]] = {
    "qwen2-vl": ImageOnlyQwen2VLProcessor,
    "qwen2.5-vl": ImageOnlyQwen2_5_VLProcessor,
    "qwen3-vl": ImageOnlyQwen3VLProcessor,
}


def processor_class(family: str) -> type[ProcessorMixin]:
    """The image-only processor class for a model family (``qwen2.5-vl``, ``qwen3-vl``, ``qwen2-vl``)."""
    try:
        return PROCESSOR_CLASSES[family]
    except KeyError:
        known = ", ".join(PROCESSOR_CLASSES)
        raise ModelError(f"no processor for model family '{family}' (known: {known})") from None


def load_processor(path_or_id: str | os.PathLike[str], family: str, **kwargs: Any) -> ProcessorMixin:
    """Load a Qwen-VL processor from a folder or hub id.

    With torchvision installed the stock ``AutoProcessor`` is tried first; otherwise (or if it yields no image
    processor) the image-only class for ``family`` is used, with the PIL image processor.
    """
    if torchvision_available():
        from transformers import AutoProcessor

        try:
            processor = AutoProcessor.from_pretrained(str(path_or_id), **kwargs)
        except (OSError, ValueError, TypeError, ImportError):
            processor = None
        if isinstance(processor, ProcessorMixin) and getattr(processor, "image_processor", None) is not None:
            return processor
    return processor_class(family).from_pretrained(str(path_or_id), **kwargs)
