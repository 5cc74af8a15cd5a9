"""The transformers backend, for comparison with the GGUF one: a Hugging Face folder (a merged export's ``hf/``), a
run or adapter folder (base + adapter) or a run name, through :func:`mulcot.train.generation.generate`, on the same
image pixels."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mulcot.errors import ModelError
from mulcot.predict.config import SOURCE_HF, Generated, Post, PredictConfig
from mulcot.predict.images import _png, prepare_image


class HFBackend:
    """transformers on a Hugging Face folder (a merged export's ``hf/``), a run / adapter folder (base + adapter)
    or a run name, through :func:`mulcot.train.generation.generate`."""

    kind = "hf"
    source = SOURCE_HF

    def __init__(self, model: str | os.PathLike[str], config: PredictConfig | None = None, store: Any = None):
        from mulcot.export.source import resolve_source
        from mulcot.models import load_model, load_with_adapter

        self.config = config or PredictConfig()
        source = resolve_source(model, store)
        if source.kind == "model":
            self.model, self.processor, self.family = load_model(source.path, device=self.config.device,
                                                                 dtype=self.config.dtype)  # fmt: skip
            self.name = source.path.resolve().name
            if self.name == "hf":  # an export's hf/ folder: name it after the export
                self.name = f"{source.path.resolve().parent.name}-hf"
        else:
            base, self.processor, self.family = load_model(source.base_model, device=self.config.device,
                                                           dtype=self.config.dtype)  # fmt: skip
            self.model = load_with_adapter(base, source.adapter)
            self.name = source.run_id or Path(model).name
        from mulcot.models.loading import is_text_family

        self.text_only = is_text_family(self.family)
        self.has_vision = not self.text_only

    def close(self) -> None:
        self.model = None

    def __enter__(self) -> HFBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate(self, posts: Sequence[Post], prompt: str, task: str) -> list[Generated]:
        from mulcot.train.generation import GenerationConfig, generate
        from mulcot.train.items import TrainItem

        cfg = self.config
        limit = cfg.label_max_tokens if prompt == "label" else cfg.max_tokens
        gen = GenerationConfig(max_new_tokens=limit, do_sample=cfg.temperature > 0,
                               temperature=cfg.temperature or 1.0, top_p=cfg.top_p, batch_size=cfg.batch_size,
                               max_pixels=cfg.max_pixels, seed=cfg.seed)  # fmt: skip
        items = []
        for i, post in enumerate(posts):
            image = None
            if post.image is not None and not self.has_vision:
                raise ModelError(f"{self.name} is a text-only {self.family} model and cannot read images: "
                                 "leave out the image (a text-only backbone reads a caption, if the store has one)")
            if post.image is not None:  # the same pixels as the GGUF backend, handed over as an in-memory PNG
                image = io.BytesIO(_png(prepare_image(post.image, cfg.max_pixels, cfg.image_max_side)))
            items.append(TrainItem(sample_id=i, text=post.text, aspect=post.aspect, label="", image_path=image,  # type: ignore[arg-type]
                                   chain=None, caption=post.caption))  # fmt: skip
        out: list[Generated] = []
        tok = self.processor.tokenizer
        for startat in range(0, len(items), cfg.batch_size):
            chunk = items[startat : startat + cfg.batch_size]
            t0 = time.perf_counter()
            answers = generate(self.model, self.processor, chunk, prompt, task, gen)
            each = (time.perf_counter() - t0) / len(chunk)
            for answer in answers:
                text = answer[0]
                n_out = len(tok.encode(text, add_special_tokens=False))
                out.append(Generated(text=text, token_ids=None, tokens_in=None, tokens_out=n_out, latency_s=each))
        return out
