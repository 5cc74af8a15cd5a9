"""Batched generation with a Hugging Face model, Qwen-VL or text-only (optionally with a LoRA adapter): greedy or
sampling, left padding, stopping at the end of the turn. Shared by dev evaluation, expand, eval and predict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mulcot.events import Progress, emit
from mulcot.prompts import get_prompt
from mulcot.train.items import DEFAULT_MAX_PIXELS, TrainItem, is_text_only, load_image, render_prompt, user_message


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
             config: GenerationConfig | None = None, progress: Progress | None = None) -> list[list[str]]:  # fmt: skip
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
            }  # fmt: skip
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
