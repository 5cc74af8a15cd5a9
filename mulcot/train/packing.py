"""Padding-free multi-task batches for text-only backbones: every sequence of a batch (both tasks' sequences of every
item) is concatenated into one row, with position ids that restart at 0 for each sequence, and attention stays
inside each sequence.

Why: a multi-task batch holds long reasoning sequences and short label sequences; padded to one width, the label
rows are mostly padding, which every layer computes on. Packed, a step computes only real tokens, and attention
costs the sum of the sequences' squared lengths rather than the row's.

How: the packed batch carries the ``cu_seq_lens_q``/``cu_seq_lens_k`` boundaries that transformers passes to the
attention function (the flash-attention varlen convention, ``DataCollatorWithFlattening``'s). On the CPU (and any
device without flash-attention) mulcot registers one attention function, :data:`PACKED_SDPA`, with transformers'
``AttentionInterface``: given the boundaries it runs causal SDPA on each sequence; without them (generation, dev
evaluation) it is transformers' own SDPA attention. The losses are unchanged: they read the labels and the tasks
position by position (:func:`mulcot.train.losses.position_tasks`).

Which models: text-only decoders whose rotary positions come from 1-D position ids and whose attention is SDPA (see
:func:`supports_packing`); Qwen-VL models (3-D mrope positions computed from the padded batch) keep the padded
batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

PACKED_SDPA = "mulcot_packed_sdpa"
# text-only decoders whose attention takes 1-D position ids and no extra per-layer masking (checked with tiny models
# in tests/test_packing.py); any other model trains on padded batches
PACKABLE_MODEL_TYPES = ("llama", "qwen2", "qwen3")


def packed_sdpa(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                cu_seq_lens_q: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Causal SDPA on each packed sequence ([1, heads, tokens, dim] in, [1, tokens, heads, dim] out); without
    ``cu_seq_lens_q`` it is transformers' SDPA attention."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if query.shape[0] != 1:
        raise ValueError("packed attention expects one row (batch size 1)")
    gqa = query.shape[1] != key.shape[1]
    bounds = cu_seq_lens_q.tolist()
    outs = []
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        q, k, v = query[:, :, s:e], key[:, :, s:e], value[:, :, s:e]
        outs.append(F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True,
                                                   enable_gqa=gqa))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make :data:`PACKED_SDPA` a transformers attention implementation (with SDPA's mask); idempotent."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(PACKED_SDPA, packed_sdpa)
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)


def _base(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def supports_packing(model: Any) -> bool:
    """Whether ``model`` (a transformers model, possibly under PEFT) trains on packed batches: a text-only decoder of
    :data:`PACKABLE_MODEL_TYPES` with SDPA attention, no sliding window and no attention logit soft-capping."""
    config = getattr(_base(model), "config", None)
    if config is None or getattr(config, "model_type", None) not in PACKABLE_MODEL_TYPES:
        return False
    if getattr(config, "_attn_implementation", None) not in ("sdpa", PACKED_SDPA):
        return False
    if getattr(config, "use_sliding_window", False) or getattr(config, "attn_logit_softcapping", None):
        return False
    layer_types = getattr(config, "layer_types", None) or ()
    return all(t == "full_attention" for t in layer_types)


def enable_packing(model: Any) -> bool:
    """Switch a packable model's attention to :data:`PACKED_SDPA` (the same results on unpacked inputs); returns
    whether packed batches may be fed to it."""
    if not supports_packing(model):
        return False
    register()
    base = _base(model)
    if base.config._attn_implementation != PACKED_SDPA:
        base.set_attn_implementation(PACKED_SDPA)
    return True


def pack(batch: dict[str, Any]) -> dict[str, Any]:
    """A right-padded batch (``input_ids``, ``attention_mask``, ``labels`` [rows, width], ``task_ids`` [rows]) as one
    row without padding: ``input_ids``, ``labels``, ``position_ids`` and per-token ``task_ids`` [1, tokens], and the
    sequence boundaries (``cu_seq_lens_q/k``, ``max_length_q/k``). Labels keep -100 on every sequence's first token
    (a prompt token), so no target crosses from one sequence into the next."""
    lengths = batch["attention_mask"].sum(dim=1)
    keep = batch["attention_mask"].bool()
    width = batch["input_ids"].shape[1]
    if not bool((keep == (torch.arange(width)[None, :] < lengths[:, None])).all()):
        raise ValueError("pack() expects right-padded rows")
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = lengths.cumsum(0)
    longest = int(lengths.max())
    tasks = batch["task_ids"][:, None].expand_as(keep)
    return {
        "input_ids": batch["input_ids"][keep][None],
        "labels": batch["labels"][keep][None],
        "task_ids": tasks[keep][None],
        "position_ids": torch.cat([torch.arange(int(n)) for n in lengths])[None],
        "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest,
    }
