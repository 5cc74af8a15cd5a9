"""The transformers backend: a Hugging Face model (Qwen-VL or text-only, optionally with a LoRA adapter) in this
process. :func:`generate` is the batched decoder (greedy or sampling, left padding, stopping at the end of the turn)
that dev evaluation during training uses directly; :class:`HFBackend` puts it behind the generation interface
(:mod:`mulcot.generation.base`) for expand, eval and predict.

A backend opened on a Hugging Face folder (a merged export's ``hf/``), a run or adapter folder (base + adapter) or a
run name sees the same image pixels as the GGUF backend: each image is downsized once and handed over losslessly.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mulcot.core.images import DEFAULT_MAX_PIXELS, load_image, png_bytes
from mulcot.core.inputs import TrainItem, is_text_only, render_prompt, user_message
from mulcot.core.prompts import get_prompt
from mulcot.errors import ModelError, MulcotError
from mulcot.events import Progress, emit
from mulcot.generation.base import SOURCE_HF, Backend, Generated, Post, PredictConfig

if TYPE_CHECKING:
    from mulcot.generation.choice import LabelChoice


@dataclass
class GenerationConfig:
    """How to decode."""

    max_new_tokens: int = 512
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 1.0
    num_return_sequences: int = 1
    batch_size: int = 8
    max_pixels: int = DEFAULT_MAX_PIXELS
    seed: int | None = None
    # a model sharded across ranks (ZeRO-3, FSDP) generates only if every rank runs every step together
    synced_gpus: bool = False


def generate(model: Any, processor: Any, items: Sequence[TrainItem], prompt: str, task: str,
             config: GenerationConfig | None = None, progress: Progress | None = None) -> list[list[str]]:
    """Generate for each item with the ``prompt`` template (``cot`` or ``label``) of ``task``; returns, per item,
    ``num_return_sequences`` decoded answers (special tokens stripped)."""
    import torch

    cfg = config or GenerationConfig()
    template = get_prompt(prompt, task)
    tok = processor.tokenizer
    text_only = is_text_only(processor)
    end_of_turn = getattr(processor, "end_of_turn_id", None)
    if end_of_turn is None:
        end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")
    end_ids = list(dict.fromkeys(i for i in (end_of_turn, tok.eos_token_id) if i is not None))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed)
    out: list[list[str]] = []
    try:
        for start in range(0, len(items), cfg.batch_size):
            chunk = items[start : start + cfg.batch_size]
            texts, images = [], []
            for item in chunk:
                with_image = item.image_path is not None and not text_only
                messages = [user_message(render_prompt(template, item, text_only), with_image)]
                texts.append(processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
                if with_image:
                    images.append(load_image(item.image_path, cfg.max_pixels))
            tok.padding_side = "left"
            batch = processor(text=texts, images=images or None, padding=True, return_tensors="pt").to(device)
            kwargs: dict[str, Any] = {
                "max_new_tokens": cfg.max_new_tokens, "do_sample": cfg.do_sample, "eos_token_id": end_ids,
                "pad_token_id": tok.pad_token_id, "num_return_sequences": cfg.num_return_sequences,
            }
            if cfg.do_sample:
                kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            if cfg.synced_gpus:
                kwargs["synced_gpus"] = True
            with torch.inference_mode():
                generated = model.generate(**batch, **kwargs)
            new = generated[:, batch["input_ids"].shape[1] :]
            decoded = tok.batch_decode(new, skip_special_tokens=True)
            n = cfg.num_return_sequences
            out.extend([d.strip() for d in decoded[i * n : (i + 1) * n]] for i in range(len(chunk)))
            emit(progress, "generate", done=len(out), total=len(items))
    finally:
        tok.padding_side = "right"
        if was_training:
            model.train()
    return out


class HFBackend(Backend):
    """transformers on a Hugging Face folder (a merged export's ``hf/``), a run / adapter folder (base + adapter),
    a run name, or a base model with ``adapter`` given, through :func:`generate`."""

    kind = "hf"
    source = SOURCE_HF

    def __init__(self, model: str | os.PathLike[str], config: PredictConfig | None = None, store: Any = None, *,
                 adapter: str | os.PathLike[str] | None = None):
        from mulcot.core.refs import resolve_source, trained_inputs
        from mulcot.models import load_model, load_with_adapter
        from mulcot.models.loading import is_text_family

        self.config = config or PredictConfig()
        cfg = self.config
        if adapter is not None:  # a base model and its adapter, named by the caller
            base, self.processor, self.family = load_model(model, device=cfg.device, dtype=cfg.dtype,
                                                           load_in_4bit=cfg.load_in_4bit)
            self.model = load_with_adapter(base, adapter)
            self.name = Path(adapter).name
            self.inputs = trained_inputs(adapter)
        else:
            source = resolve_source(model, store)
            if source.kind == "model":
                self.model, self.processor, self.family = load_model(source.path, device=cfg.device, dtype=cfg.dtype,
                                                                     load_in_4bit=cfg.load_in_4bit)
                self.name = source.path.resolve().name
                if self.name == "hf":  # an export's hf/ folder: name it after the export
                    self.name = f"{source.path.resolve().parent.name}-hf"
                self.inputs = trained_inputs(source.path)
            else:
                base, self.processor, self.family = load_model(source.base_model, device=cfg.device, dtype=cfg.dtype,
                                                               load_in_4bit=cfg.load_in_4bit)
                self.model = load_with_adapter(base, source.adapter)
                self.name = source.run_id or Path(model).name
                self.inputs = source.inputs
        self.text_only = is_text_family(self.family)

    @classmethod
    def open(cls, *, config: PredictConfig, store: Any = None, model: str | os.PathLike[str] | None = None,
             adapter: str | os.PathLike[str] | None = None, **_: Any) -> HFBackend:
        """A merged folder, a model folder or hub id, a run (folder or name), or a base model with ``adapter``."""
        if model is None:
            raise MulcotError("the hf backend needs --model DIR (a merged export's hf/ folder, a model or a run)")
        return cls(model, config, store, adapter=adapter)

    def close(self) -> None:
        self.model = None

    def batch_size(self) -> int:
        return self.config.batch_size

    def _items(self, posts: Sequence[Post]) -> list[TrainItem]:
        cfg = self.config
        items = []
        for i, post in enumerate(posts):
            image = None
            if post.image is not None and self.text_only:
                raise ModelError(f"{self.name} is a text-only {self.family} model and cannot read images: "
                                 "leave out the image (a text-only backbone reads a caption, if the store has one)")
            if post.image is not None:  # the same pixels as the GGUF backend, handed over as an in-memory PNG
                image = io.BytesIO(png_bytes(load_image(post.image, cfg.max_pixels, cfg.image_max_side)))
            items.append(TrainItem(sample_id=i, text=post.text, aspect=post.aspect, label="", image_path=image,  # type: ignore[arg-type]
                                   chain=None, caption=post.caption))
        return items

    def _decode(self, prompt: str, n: int = 1, seed: int | None = None) -> GenerationConfig:
        cfg = self.config
        return GenerationConfig(max_new_tokens=cfg.max_tokens_for(prompt), do_sample=cfg.temperature > 0,
                                temperature=cfg.temperature or 1.0, top_p=cfg.top_p, batch_size=cfg.batch_size,
                                max_pixels=cfg.max_pixels, seed=cfg.seed if seed is None else seed,
                                num_return_sequences=n)

    def sample(self, posts: Sequence[Post], prompt: str, task: str, n: int, seed: int | None) -> list[list[Generated]]:
        """``n`` answers per post in one pass per batch (``num_return_sequences``), the batch seeded with ``seed``."""
        items = self._items(posts)
        tok = self.processor.tokenizer
        out: list[list[Generated]] = []
        gen = self._decode(prompt, n, seed)
        for startat in range(0, len(items), gen.batch_size):
            chunk = items[startat : startat + gen.batch_size]
            t0 = time.perf_counter()
            answers = generate(self.model, self.processor, chunk, prompt, task, gen)
            each = (time.perf_counter() - t0) / (len(chunk) * n)
            for texts in answers:
                out.append([Generated(text=t, token_ids=None, tokens_in=None, latency_s=each,
                                      tokens_out=len(tok.encode(t, add_special_tokens=False)))
                            for t in texts])
        return out

    def generate(self, posts: Sequence[Post], prompt: str, task: str) -> list[Generated]:
        return [answers[0] for answers in self.sample(posts, prompt, task, 1, None)]

    def cannot_score_labels(self, posts: Sequence[Post] = ()) -> str | None:
        return None

    def score_labels(self, posts: Sequence[Post], task: str) -> list[LabelChoice]:
        """Forced choice through :func:`mulcot.generation.choice.score_labels`, ``batch_size`` posts at once (the
        common prefix run once for text-only backbones; full sequences for Qwen-VL, the same pixels as generation)."""
        from mulcot.generation.choice import score_labels

        cfg = self.config
        return score_labels(self.model, self.processor, self._items(posts), task, batch_size=cfg.batch_size,
                            max_pixels=cfg.max_pixels)
