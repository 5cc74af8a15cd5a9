"""What both backends share: the decoding and input settings (:class:`PredictConfig`), the post asked about
(:class:`Post`) and one raw generation (:class:`Generated`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from mulcot.train.items import DEFAULT_MAX_PIXELS

SOURCE_GGUF = "student-gguf"
SOURCE_HF = "student-hf"
SOURCE_SERVER = "student-server"


@dataclass
class PredictConfig:
    """Decoding and input settings shared by both backends."""

    max_tokens: int = 512
    label_max_tokens: int = 32  # for the label prompt (P_label), whose answer is one line
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    n_threads: int | None = None  # llama.cpp threads (default: llama-cpp-python's, half the logical cores)
    ctx: int = 4096  # llama.cpp context length
    # read the GGUF into memory (False) or map it (True). Reading is the default: llama.cpp repacks Q4_K / Q8_0
    # weights for the CPU, and a mapped file then stays resident beside the repacked copy (+27% peak RSS measured)
    mmap: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS  # images are downsized (aspect kept) to at most this many pixels
    image_max_side: int | None = None  # ... and to at most this many pixels on their longer side
    batch_size: int = 4  # transformers backend
    device: str | None = None  # transformers backend
    dtype: str | None = None  # transformers backend
    ignore_eos: bool = False  # generate exactly max_tokens tokens (benchmarks)


@dataclass
class Generated:
    """One raw generation."""

    text: str
    token_ids: list[int] | None
    tokens_in: int | None
    tokens_out: int
    latency_s: float
    first_token_s: float | None = None
    finish_reason: str | None = None


@dataclass
class Post:
    """A post to predict: text, optional aspect (MASC), optional image (a path) and optional caption (the image in
    words, what a text-only backbone reads instead)."""

    text: str
    aspect: str | None = None
    image: str | os.PathLike[str] | None = None
    caption: str | None = None
