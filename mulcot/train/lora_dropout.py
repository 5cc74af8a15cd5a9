"""LoRA dropout that keeps a one-byte mask instead of two float copies of each LoRA input.

peft computes ``lora_B(lora_A(dropout(x)))``. On the CPU, torch's dropout keeps its float noise for the backward pass
and ``lora_A`` keeps the dropped input for its weight gradient: two float tensors the size of ``x`` per LoRA module,
which ``x`` itself (kept by the frozen base layer anyway) and a boolean mask can replace. :func:`fuse_lora_dropout`
does that for every plain LoRA ``Linear`` of a peft model: its dropout becomes the identity and its ``lora_A`` applies
the same dropout (Bernoulli keep-mask, scaled by 1/(1-p), only in training mode) inside one autograd function that
saves ``x`` and the mask and recomputes the dropped input in the backward pass. The adapter's weights, names and
saved config are unchanged; on SmolLM2-135M with ~1,000 tokens per step it keeps ~1 GB less.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn


class _DropoutLinear(torch.autograd.Function):
    """y = (x ⊙ m / (1-p)) Wᵀ with m ~ Bernoulli(1-p); saves x and the boolean m, not the dropped input."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, p: float) -> torch.Tensor:
        mask = torch.empty(x.shape, dtype=torch.bool, device=x.device).bernoulli_(1.0 - p)
        scale = 1.0 / (1.0 - p)
        ctx.save_for_backward(x, mask, weight)
        ctx.scale = scale
        return (x * mask * scale) @ weight.t()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, mask, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad @ weight) * mask * ctx.scale
        if ctx.needs_input_grad[1]:
            dropped = (x * mask * ctx.scale).reshape(-1, x.shape[-1])
            grad_w = grad.reshape(-1, grad.shape[-1]).t() @ dropped
        return grad_x, grad_w, None


def _dropout_linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if self.training and self.mulcot_dropout > 0:
        return _DropoutLinear.apply(x, self.weight, self.mulcot_dropout)
    return nn.functional.linear(x, self.weight, self.bias)


def fuse_lora_dropout(model: Any) -> int:
    """Move the dropout of every plain LoRA ``Linear`` of a peft ``model`` into its ``lora_A`` (see the module
    docstring); returns how many adapters were changed. DoRA and other variants, biased ``lora_A`` layers and
    adapters without dropout are left as they are."""
    from peft.tuners.lora import Linear as LoraLinear

    changed = 0
    for module in model.modules():
        if not isinstance(module, LoraLinear):
            continue
        for name, dropout in list(module.lora_dropout.items()):
            lora_a = module.lora_A[name]
            variants = getattr(module, "lora_variant", {}) or {}
            if (not isinstance(dropout, nn.Dropout) or dropout.p <= 0 or name in variants
                    or type(lora_a) is not nn.Linear or lora_a.bias is not None):
                continue
            lora_a.mulcot_dropout = float(dropout.p)
            lora_a.forward = types.MethodType(_dropout_linear_forward, lora_a)
            module.lora_dropout[name] = nn.Identity()
            changed += 1
    return changed
