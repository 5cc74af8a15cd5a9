"""Random-weight Qwen2.5-VL models of chosen sizes on the real Qwen2 vocabulary, for benchmarks (speed and memory
do not depend on weight values)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SIZES = {
    # text hidden, layers, heads, kv heads, intermediate; vision depth, hidden
    "tiny": dict(hidden=64, layers=2, heads=4, kv=2, inter=128, vdepth=4, vhidden=32),
    "medium": dict(hidden=512, layers=8, heads=8, kv=2, inter=1536, vdepth=4, vhidden=256),
    "large": dict(hidden=1024, layers=16, heads=16, kv=4, inter=3072, vdepth=8, vhidden=512),
    # Qwen2.5-VL-7B-Instruct's shapes (8.3B parameters with the vision tower)
    "7b": dict(hidden=3584, layers=28, heads=28, kv=4, inter=18944, vdepth=32, vhidden=1280, vinter=3420),
}


def config(size: str) -> Any:
    from mulcot.models.tiny import tiny_config

    spec = SIZES[size]
    cfg = tiny_config("qwen2.5-vl")
    t = cfg.text_config
    t.hidden_size, t.num_hidden_layers, t.num_attention_heads = spec["hidden"], spec["layers"], spec["heads"]
    t.num_key_value_heads, t.intermediate_size = spec["kv"], spec["inter"]
    t.head_dim = spec["hidden"] // spec["heads"]
    t.layer_types = ["full_attention"] * spec["layers"]
    half = t.head_dim // 2  # mrope splits the rotary half-dimension into (temporal, height, width) like Qwen's 16/24/24
    t.rope_parameters["mrope_section"] = [half // 4, 3 * half // 8, half - half // 4 - 3 * half // 8]
    t.initializer_range = 0.02
    v = cfg.vision_config
    v.depth, v.hidden_size, v.out_hidden_size = spec["vdepth"], spec["vhidden"], spec["hidden"]
    v.intermediate_size = spec.get("vinter", 2 * spec["vhidden"])
    return cfg


def build(size: str, dtype: Any = None) -> Any:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    dtype = dtype or torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # a 7B model is built in bf16 directly (32 GB less than fp32 then cast)
    try:
        return Qwen2_5_VLForConditionalGeneration(config(size)).to(dtype)
    finally:
        torch.set_default_dtype(previous)


def save(size: str, out: Path, processor_from: Path, dtype: Any = None) -> Path:
    """A complete model folder: random weights of ``size`` plus the tiny model's tokenizer and processor."""
    from mulcot.models import load_processor

    if (out / "config.json").is_file():
        return out
    build(size, dtype).save_pretrained(out)
    load_processor(processor_from, "qwen2.5-vl").save_pretrained(out)
    return out
