"""Qwen-VL processors that work without torchvision (images only, no video processor), and the text-only one.

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


_PROBE_USER, _PROBE_ANSWER = "mulcot-probe-user", "mulcot-probe-answer"


class TextProcessor:
    """The processor of a text-only backbone: its tokenizer behind the Qwen-VL processor's interface.

    ``apply_chat_template`` takes the same messages as a Qwen-VL processor (content as a list of parts) and joins
    their text parts; an image part is refused in one line (the image of a text-only backbone travels as text, in
    the prompt). ``answer_marker`` (the text the template puts before an assistant answer) and ``end_of_turn_id``
    (the token that ends it) are read off the chat template, so masks and stopping work for any template.
    """

    text_only = True

    def __init__(self, tokenizer: Any, name: str = "the model"):
        self.tokenizer = tokenizer
        self.name = name
        if not getattr(tokenizer, "chat_template", None):
            raise ModelError(
                f"{name} has no chat template (tokenizer_config.json / chat_template.jinja): mulcot needs one to "
                "build prompts and answers; use an instruct/chat model"
            )
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.answer_marker, self.end_of_turn_id = self._read_template()

    def _read_template(self) -> tuple[str, int]:
        tok = self.tokenizer
        user = [{"role": "user", "content": _PROBE_USER}]
        try:
            bare = tok.apply_chat_template(user, tokenize=False)
            prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
            full = tok.apply_chat_template(user + [{"role": "assistant", "content": _PROBE_ANSWER}], tokenize=False)
        except Exception as err:  # a template that cannot render a plain user/assistant exchange
            problem = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelError(f"the chat template of {self.name} cannot render a chat turn: {problem}") from err
        marker = prompt[len(bare) :] if prompt.startswith(bare) else ""
        if not marker.strip() or _PROBE_ANSWER not in full:
            raise ModelError(f"the chat template of {self.name} has no generation prompt for an assistant turn")
        after = full[full.index(_PROBE_ANSWER) + len(_PROBE_ANSWER) :]
        special = set(tok.all_special_ids) | {i for t, i in tok.get_added_vocab().items() if t.startswith("<")}
        ends = [i for i in tok.encode(after, add_special_tokens=False) if i in special]
        end = ends[0] if ends else tok.eos_token_id
        if end is None:
            raise ModelError(f"the chat template of {self.name} does not end an assistant turn with a special token")
        return marker, end

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        flat = []
        for message in messages:
            content = message["content"]
            if isinstance(content, list):
                if any(part.get("type") == "image" for part in content):
                    raise ModelError(
                        f"{self.name} is a text-only model and cannot read images (its image travels as a caption)"
                    )
                content = "".join(part.get("text", "") for part in content)
            flat.append({**message, "content": content})
        return self.tokenizer.apply_chat_template(flat, **kwargs)

    def __call__(self, text: Any = None, images: Any = None, **kwargs: Any) -> Any:
        if images:
            raise ModelError(f"{self.name} is a text-only model and cannot read images")
        # the chat template already wrote any begin-of-sequence token
        return self.tokenizer(text, add_special_tokens=False, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Any:
        for key in ("is_local", "local_files_only"):
            self.tokenizer.init_kwargs.pop(key, None)
        files = self.tokenizer.save_pretrained(save_directory, *args, **kwargs)
        tidy_tokenizer_config(Path(save_directory) / "tokenizer_config.json")
        return files

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike[str], **kwargs: Any) -> TextProcessor:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path_or_id), **kwargs)
        return cls(tokenizer, str(path_or_id))


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
    processor) the image-only class for ``family`` is used, with the PIL image processor. A text-only family gets
    a :class:`TextProcessor`.
    """
    if family not in PROCESSOR_CLASSES:
        return TextProcessor.from_pretrained(path_or_id, **kwargs)  # type: ignore[return-value]
    if torchvision_available():
        from transformers import AutoProcessor

        try:
            processor = AutoProcessor.from_pretrained(str(path_or_id), **kwargs)
        except (OSError, ValueError, TypeError, ImportError):
            processor = None
        if isinstance(processor, ProcessorMixin) and getattr(processor, "image_processor", None) is not None:
            return processor
    return processor_class(family).from_pretrained(str(path_or_id), **kwargs)
