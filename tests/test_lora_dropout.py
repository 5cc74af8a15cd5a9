"""LoRA dropout fused into lora_A (mulcot.train.lora_dropout): the same function and gradients as dropout followed
by the linear layer, less memory kept for the backward pass, and the adapter unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mulcot.train.lora_dropout import _DropoutLinear, fuse_lora_dropout


def test_dropout_linear_matches_dropout_then_linear():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 12, requires_grad=True)
    weight = torch.randn(5, 12, requires_grad=True)
    p = 0.3
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        y = _DropoutLinear.apply(x, weight, p)
    (y * torch.arange(5.0)).sum().backward()
    grads = x.grad.clone(), weight.grad.clone()
    x.grad = weight.grad = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)  # the same keep-mask, drawn the same way
        mask = torch.empty(x.shape, dtype=torch.bool).bernoulli_(1 - p)
    ref = (x * mask / (1 - p)) @ weight.t()
    (ref * torch.arange(5.0)).sum().backward()
    assert 0 < (~mask).sum() < mask.numel()  # some inputs dropped, not all
    assert torch.allclose(y, ref, atol=1e-6)
    assert torch.allclose(grads[0], x.grad, atol=1e-6) and torch.allclose(grads[1], weight.grad, atol=1e-6)


def _lora_model(dropout: float):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2))
        return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, init_lora_weights=False,
                                               target_modules=["q_proj", "v_proj", "down_proj"]))


def _saved_bytes(model, ids) -> int:
    seen: dict[int, int] = {}

    def pack(t):
        seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids).logits.sum()
    return sum(seen.values())


def test_fused_model_keeps_less_and_evaluates_the_same(tmp_path):
    ids = torch.randint(0, 64, (2, 40))
    plain, fused = _lora_model(0.1), _lora_model(0.1)
    assert fuse_lora_dropout(fused) == 6  # q, v, down in 2 layers
    assert fuse_lora_dropout(_lora_model(0.0)) == 0  # no dropout: nothing to move
    assert fused.state_dict().keys() == plain.state_dict().keys()
    plain.eval()
    fused.eval()
    with torch.no_grad():  # eval mode: no dropout, the same function
        assert torch.allclose(plain(ids).logits, fused(ids).logits, atol=1e-6)
    plain.train()
    fused.train()
    assert _saved_bytes(fused, ids) < _saved_bytes(plain, ids)
    # training mode drops inputs: two calls differ, and gradients reach lora_A and lora_B
    out = fused(ids).logits
    assert not torch.allclose(out, fused(ids).logits)
    out.sum().backward()
    grads = {n: p.grad for n, p in fused.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())
    fused.save_pretrained(tmp_path / "adapter")
    assert '"lora_dropout": 0.1' in (tmp_path / "adapter" / "adapter_config.json").read_text()


@pytest.mark.parametrize("p", [0.05, 0.5])
def test_fused_dropout_rate(p):
    torch.manual_seed(0)
    layer = nn.Linear(200, 3, bias=False)
    from mulcot.train.lora_dropout import _dropout_linear_forward

    layer.mulcot_dropout = p
    x = torch.ones(50, 200)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0] = 1.0
        kept = _dropout_linear_forward(layer, x)[:, 0] * (1 - p)  # = number of kept inputs per row
    assert abs(kept.mean().item() / 200 - (1 - p)) < 0.02
