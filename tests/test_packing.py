"""Padding-free multi-task batches (mulcot.train.packing) on tiny real models: the same per-task losses and
gradients as padded batches, generation unchanged, and Qwen-VL kept on padded batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mulcot.core.inputs import teacher_items
from mulcot.models import load_model
from mulcot.sample import SAMPLE_NAME
from mulcot.train.assistant import MultiTaskTrainer
from mulcot.train.collator import IGNORE, TASK_CLS, TASK_REA, MultiTaskCollator
from mulcot.train.packing import PACKED_SDPA, pack, supports_packing


def _trainer(model, collator, tmp_path: Path, packing: bool) -> MultiTaskTrainer:
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "o"), report_to=[], use_cpu=True, label_names=[])
    return MultiTaskTrainer(model=model, args=args, task_weights=(0.2, 0.8), collator=collator, packing=packing)


def _text_model(kind: str, tiny_text_model, tmp_path: Path) -> Path:
    """The conftest's tiny Qwen2 text model, or a tiny Llama / Qwen3 on its tokenizer and chat template."""
    path = tiny_text_model()
    if kind == "qwen2":
        return path
    import shutil

    from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    ref = AutoConfig.from_pretrained(path)
    common = dict(vocab_size=ref.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, bos_token_id=ref.bos_token_id,
                  eos_token_id=ref.eos_token_id, pad_token_id=ref.pad_token_id)
    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM)}
    config_class, model_class = classes[kind]
    out = tmp_path / kind
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model_class(config_class(**common)).save_pretrained(out)
    for f in path.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens", "vocab", "merges")):
            shutil.copy(f, out / f.name)
    return out


def test_pack_keeps_sequences_apart(demo_store, tiny_text_model):
    _, processor, _ = load_model(tiny_text_model())
    items = teacher_items(demo_store, SAMPLE_NAME, "train")[:2]
    collator = MultiTaskCollator(processor, "masc")
    padded = collator(items)
    packed = collator(items, packed=True)
    lengths = padded["attention_mask"].sum(1).tolist()
    assert packed["input_ids"].shape == (1, sum(lengths)) and padded["input_ids"].numel() > sum(lengths)
    assert packed["cu_seq_lens_q"].tolist() == [0, *torch.tensor(lengths).cumsum(0).tolist()]
    assert packed["max_length_q"] == max(lengths)
    starts = packed["cu_seq_lens_q"][:-1].tolist()
    assert packed["position_ids"][0, starts].tolist() == [0] * 4  # positions restart with each sequence
    assert (packed["labels"][0, starts] == IGNORE).all()  # no target crosses into the next sequence
    rows = [packed["input_ids"][0, s:e] for s, e in zip(starts, packed["cu_seq_lens_q"][1:].tolist(), strict=True)]
    for row, ids, n in zip(rows, padded["input_ids"], lengths, strict=True):
        assert row.tolist() == ids[:n].tolist()
    tasks = [packed["task_ids"][0, s].item() for s in starts]
    assert tasks == [TASK_REA, TASK_REA, TASK_CLS, TASK_CLS] == padded["task_ids"].tolist()
    with pytest.raises(ValueError, match="right-padded"):
        pack({**padded, "attention_mask": padded["attention_mask"].flip(1)})


@pytest.mark.parametrize("kind", ["qwen2", "llama", "qwen3"])
def test_packed_step_equals_padded_step(kind, demo_store, tiny_text_model, tmp_path):
    """Per-task losses and LoRA gradients of a packed batch equal the padded batch's (same model, same items)."""
    from peft import LoraConfig, get_peft_model

    model, processor, _ = load_model(_text_model(kind, tiny_text_model, tmp_path))
    assert supports_packing(model)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                                             target_modules=["q_proj", "v_proj", "down_proj"]))
    items = teacher_items(demo_store, SAMPLE_NAME, "train")[:3]
    collator = MultiTaskCollator(processor, "masc")
    results = []
    for packing in (False, True):
        trainer = _trainer(model, collator, tmp_path, packing)
        assert trainer.packed is packing
        model.zero_grad()
        loss = trainer.compute_loss(model, items)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.item(), {k: v[0] for k, v in trainer._parts.items()}, grads))
    (loss_pad, parts_pad, grads_pad), (loss_pack, parts_pack, grads_pack) = results
    assert abs(loss_pad - loss_pack) < 1e-5
    assert parts_pad.keys() == parts_pack.keys() == {"ce_cls", "ce_rea"}
    for key in parts_pad:
        assert abs(parts_pad[key] - parts_pack[key]) < 1e-5, key
    for name, grad in grads_pad.items():
        assert torch.allclose(grad, grads_pack[name], atol=1e-6, rtol=1e-4), name
    assert model.get_base_model().config._attn_implementation == PACKED_SDPA


def test_two_packed_passes_equal_one(demo_store, tiny_text_model, tmp_path):
    model, processor, _ = load_model(tiny_text_model())
    items = teacher_items(demo_store, SAMPLE_NAME, "train")[:3]
    collator = MultiTaskCollator(processor, "masc")
    losses = []
    for single in (True, False):
        trainer = _trainer(model, collator, tmp_path, packing=True)
        trainer.single_pass = single
        assert trainer.packed
        with torch.no_grad():
            losses.append(trainer.compute_loss(model, items).item())
    assert abs(losses[0] - losses[1]) < 1e-5, losses


def test_generation_is_unchanged_by_the_packed_attention(demo_store, tiny_text_model):
    from mulcot.generation.hf import GenerationConfig, generate
    from mulcot.train.packing import enable_packing

    model, processor, _ = load_model(tiny_text_model())
    items = teacher_items(demo_store, SAMPLE_NAME, "train")[:3]  # a batch of prompts of unequal lengths
    config = GenerationConfig(max_new_tokens=8)
    before = generate(model, processor, items, "label", "masc", config)
    assert enable_packing(model) and model.config._attn_implementation == PACKED_SDPA
    assert generate(model, processor, items, "label", "masc", config) == before


def test_qwen_vl_keeps_padded_batches(demo_store, compact_model, tmp_path):
    model, processor, _ = load_model(compact_model())
    assert not supports_packing(model)
    trainer = _trainer(model, MultiTaskCollator(processor, "masc", max_pixels=56 * 56), tmp_path, packing=True)
    assert trainer.packed is False
    items = teacher_items(demo_store, SAMPLE_NAME, "train")[:2]
    with torch.no_grad():
        loss = trainer.compute_loss(model, items)
    assert torch.isfinite(loss) and set(trainer._parts) == {"ce_cls", "ce_rea"}
