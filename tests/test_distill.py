"""expand and distill on tiny models (compact vocabulary), CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mulcot.core.refs import resolve_run
from mulcot.errors import MulcotError
from mulcot.expand import ExpandConfig, expand
from mulcot.models import load_model
from mulcot.sample import SAMPLE_NAME
from mulcot.train.assistant import MultiTaskTrainer, train_assistant
from mulcot.train.collator import TASK_CLS, TASK_REA, MultiTaskCollator
from mulcot.train.config import DistillConfig, TrainConfig
from mulcot.train.losses import prediction_mask
from mulcot.train.soft_labels import item_key, open_source
from mulcot.train.student import DistillTrainer, distill, distill_items

FAST = dict(batch_size=2, grad_accum=1, max_pixels=56 * 56, lr=2e-3, lora_dropout=0.0, dev_max_new_tokens=8)


@pytest.fixture
def assistant(demo_store, compact_model, tmp_path):
    """A tiny assistant trained for two steps on D_t."""
    cfg = TrainConfig(dataset=SAMPLE_NAME, model=str(compact_model()), name="asst", runs_dir=str(tmp_path / "runs"),
                      epochs=1, max_train_items=4, dev_split=None, **FAST)
    return train_assistant(demo_store, cfg)


def _dcfg(compact_model, tmp_path, **kw) -> DistillConfig:
    base = dict(dataset=SAMPLE_NAME, model=str(compact_model()), name="stud", runs_dir=str(tmp_path / "runs"),
                assistant=str(tmp_path / "runs" / "asst"), dev_split=None, **FAST)
    return DistillConfig(**{**base, **kw})


def test_expand_refuses_other_splits(demo_store, assistant):
    for split in ("dev", "test"):
        with pytest.raises(MulcotError, match="training split only"):
            expand(demo_store, ExpandConfig(dataset=SAMPLE_NAME, assistant=assistant.folder, split=split))


def test_expand_stores_chains_resumes_and_keeps_only_correct(demo_store, assistant):
    cfg = ExpandConfig(dataset=SAMPLE_NAME, assistant=assistant.folder, n=2, limit=3, max_new_tokens=24,
                       max_pixels=56 * 56)
    first = expand(demo_store, cfg)
    assert first.generated == 6 and first.samples == 3
    assert sum(first.kept.values()) + sum(first.rejected.values()) == 6
    chains = demo_store.reasonings(dataset=SAMPLE_NAME, source="assistant", stage="expand")
    assert len(chains) == 6 and {c["run_id"] for c in chains} == {"asst"} and {c["split"] for c in chains} == {"train"}
    again = expand(demo_store, cfg)
    assert again.generated == 0 and again.skipped_done == 3
    # D_a holds exactly the fully parsed chains whose Prediction is the gold label: add some by hand
    samples = demo_store.samples(SAMPLE_NAME, "train")[:3]
    good = json.dumps({"x": 1})
    from mulcot.core.reasoning import Reasoning, parse_reasoning

    made = {}
    for s, label, kind in ((samples[0], samples[0]["label"], "right"),
                           (samples[1], "positive" if samples[1]["label"] != "positive" else "negative", "wrong"),
                           (samples[2], samples[2]["label"], "partial")):
        text = Reasoning("t", "i", "c", "f", label).to_text()
        if kind == "partial":
            text = text.split("\n\n", 1)[1]
        p = parse_reasoning(text)
        made[kind] = demo_store.add_reasoning(sample_id=s["id"], source="assistant", model="asst", stage="expand",
                                              raw=text, text=p.to_text(), fields=p.fields, prediction=p.prediction,
                                              parse_status=p.status, run_id="asst", final=True)
    assert good
    d_a = {r["id"] for r in demo_store.assistant_set(SAMPLE_NAME, "train", "asst")}
    assert made["right"] in d_a and made["wrong"] not in d_a and made["partial"] not in d_a
    ref = resolve_run(demo_store, assistant.folder)
    items = distill_items(demo_store, _dcfg(lambda: "unused", Path(assistant.folder).parent.parent), ref)
    assert len(items) == 34 + len(d_a)  # D_all = D_t ∪ D_a


def _batch_losses(demo_store, compact_model, tmp_path, assistant, modes):
    """The distill loss of one fixed batch under each soft-label mode (and plain multi-task SFT)."""
    model, processor, _ = load_model(compact_model())
    model.eval()
    collator = MultiTaskCollator(processor, "masc", max_pixels=56 * 56)
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "o"), report_to=[], use_cpu=True, label_names=[])
    ref = resolve_run(demo_store, assistant.folder)
    items = distill_items(demo_store, _dcfg(compact_model, tmp_path), ref)[:2]
    out = {}
    for name, kw in modes.items():
        cfg = _dcfg(compact_model, tmp_path, name=f"stud-{name}", **kw)
        hook = None
        if name != "sft":
            hook = open_source(demo_store, cfg, ref, items, None)
            hook.prepare(processor, collator, tmp_path / f"f-{name}")
        common = {"model": model, "args": args, "task_weights": (0.2, 0.8), "single_pass": True, "collator": collator}
        trainer = DistillTrainer(**common, soft_labels=hook) if hook else MultiTaskTrainer(**common)
        with torch.no_grad():
            out[name] = trainer.compute_loss(model, items)
        out[f"{name}-parts"] = {k: v[-1] for k, v in trainer._parts.items()}
    return out


def test_lambda_zero_is_sft_and_cached_equals_online(demo_store, compact_model, tmp_path, assistant):
    losses = _batch_losses(demo_store, compact_model, tmp_path, assistant, {
        "sft": {}, "zero": {"lam": 0.0, "soft_labels": "online"},
        "online": {"lam": 0.3}, "cache": {"lam": 0.3, "soft_labels": "cache", "top_k": 10**6},
    })
    assert torch.equal(losses["zero"], losses["sft"])
    assert losses["online-parts"]["kl_rea"] > 0
    assert torch.allclose(losses["cache"], losses["online"], rtol=1e-5), (losses["cache"], losses["online"])
    assert losses["cache"] != losses["sft"]


def test_lambda_zero_computes_no_soft_labels(demo_store, compact_model, tmp_path, assistant):
    """λ 0 trains on the hard loss alone (the same loss, test above), so nothing is asked of the assistant: no cache
    folder, no soft-label index."""
    cfg = _dcfg(compact_model, tmp_path, name="hard", lam=0.0, max_train_items=4, epochs=1)
    result = distill(demo_store, cfg)
    assert result.steps == 2 and not (Path(result.folder) / "soft_labels").exists()
    assert demo_store.soft_label_index("hard") == {}
    run = demo_store.get_run("hard")
    assert run["kind"] == "distill" and run["status"] == "done"
    assert not any(k.startswith("soft_labels_") for k in (run["metrics"] or {}))


def test_soft_labels_only_at_target_positions(demo_store, compact_model, tmp_path, assistant):
    model, processor, _ = load_model(compact_model())
    collator = MultiTaskCollator(processor, "masc", max_pixels=56 * 56)
    ref = resolve_run(demo_store, assistant.folder)
    items = distill_items(demo_store, _dcfg(compact_model, tmp_path), ref)[:2]
    cfg = _dcfg(compact_model, tmp_path, top_k=8)
    hook = open_source(demo_store, cfg, ref, items, None)
    hook.prepare(processor, collator, tmp_path / "f")
    batch = collator(items, (TASK_REA, TASK_CLS))
    labels = batch.pop("labels")
    batch.pop("task_ids")
    mask = prediction_mask(labels)
    with torch.no_grad():
        full = model(**batch).logits
    kl = hook.kl(items, (TASK_REA, TASK_CLS), batch, full[mask], mask)
    assert kl.shape == (int(mask.sum()),) and (kl > 0).all()
    # the KL reads the student's logits at target-predicting positions only
    changed = full.clone()
    changed[~mask] += 7.0
    assert torch.equal(hook.kl(items, (TASK_REA, TASK_CLS), batch, changed[mask], mask), kl)
    # and the model computes exactly those logits when asked with logits_to_keep
    with torch.no_grad():
        kept = model(**batch, logits_to_keep=mask).logits
    assert torch.allclose(kept, full[mask], atol=1e-5)
    index = demo_store.soft_label_index("stud")
    assert {item_key(items[0], TASK_CLS), item_key(items[0], TASK_REA)} <= set(index)
    assert all(v["k"] == 8 for v in index.values())


def test_tokenizer_mismatch_is_refused(demo_store, compact_model, tmp_path, assistant):
    cfg = _dcfg(compact_model, tmp_path, model=str(compact_model("qwen3-vl")))
    with pytest.raises(MulcotError, match="do not share a tokenizer"):
        distill(demo_store, cfg)


@pytest.mark.slow
def test_end_to_end_teacher_assistant_expand_student(demo_store, compact_model, tmp_path, assistant):
    summary = expand(demo_store, ExpandConfig(dataset=SAMPLE_NAME, assistant=assistant.folder, limit=6,
                                              max_new_tokens=16, max_pixels=56 * 56))
    assert summary.generated == 6
    cfg = _dcfg(compact_model, tmp_path, epochs=2, max_train_items=16, batch_size=4, dev_split="dev",
                max_dev_samples=4, top_k=16)
    result = distill(demo_store, cfg)
    log = [json.loads(x) for x in (Path(result.folder) / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert len(steps) == 8 and all("kl_rea" in r and "kl_cls" in r for r in steps)
    assert sum(r["loss"] for r in steps[-4:]) < sum(r["loss"] for r in steps[:4])
    run = demo_store.get_run("stud")
    assert run["kind"] == "distill" and run["status"] == "done"
    assert run["config"]["lam"] == 0.3 and run["config"]["tau"] == 2.0 and run["config"]["top_k"] == 16
    assert (Path(result.folder) / "adapter" / "adapter_config.json").is_file()
    assert list((Path(result.folder) / "soft_labels").glob("shard-*.safetensors"))


def test_distill_cli_passes_every_flag_to_the_run(demo_store, compact_model, tmp_path, assistant):
    """``mulcot distill`` shares its training flags with ``train-assistant``; what is typed is what the run
    records."""
    from typer.testing import CliRunner

    from mulcot.cli import app

    args = ["distill", SAMPLE_NAME, "--assistant", "asst", "--student", str(compact_model()), "--name", "cli-stud",
            "--db", str(demo_store.path), "--runs-dir", str(tmp_path / "runs"), "--no-dev", "--epochs", "1",
            "--max-train-items", "2", "--batch-size", "2", "--grad-accum", "1", "--max-pixels", "3136",
            "--lam", "0.5", "--tau", "1.5", "--top-k", "4", "--task-weights", "0.5,0.5", "--min-lr", "1e-5",
            "--two-pass", "--lora-r", "4", "--lora-dropout", "0", "--seed", "7", "--json"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["run"] == "cli-stud"
    config = demo_store.get_run("cli-stud")["config"]
    assert (config["lam"], config["tau"], config["top_k"], config["min_lr"], config["seed"]) == (0.5, 1.5, 4, 1e-5, 7)
    assert config["task_weights"] == [0.5, 0.5] and config["single_pass"] is False and config["dev_split"] is None
    assert config["lora_r"] == 4 and config["assistant"] == "asst" and config["model"] == str(compact_model())
    bad = CliRunner().invoke(app, [*args[:-1], "--task-weights", "0.5", "--name", "x"])
    assert bad.exit_code != 0 and "--task-weights '0.5' is not 'CLS,REA'" in bad.output
