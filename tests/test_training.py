"""train-assistant on tiny models (compact vocabulary), CPU."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import loss_lines, wait_until
from typer.testing import CliRunner

from mulcot.cli import app
from mulcot.core.inputs import teacher_items
from mulcot.errors import MulcotError
from mulcot.models import load_model
from mulcot.sample import SAMPLE_NAME
from mulcot.train.assistant import MultiTaskTrainer as Trainer
from mulcot.train.assistant import train_assistant
from mulcot.train.collator import IGNORE, TASK_CLS, TASK_REA, MultiTaskCollator
from mulcot.train.config import TrainConfig

FAST = dict(batch_size=2, grad_accum=1, max_pixels=56 * 56, lr=2e-3, lora_dropout=0.0, dev_max_new_tokens=8)


def _cfg(model: Path, tmp_path: Path, **kw) -> TrainConfig:
    return TrainConfig(dataset=SAMPLE_NAME, model=str(model), name=kw.pop("name", "a"), runs_dir=str(tmp_path / "runs"),
                       **{**FAST, **kw})


def test_masks_token_by_token(demo_store, compact_model):
    model, processor, _ = load_model(compact_model())
    items = teacher_items(demo_store, SAMPLE_NAME, "train")[:2]
    collator = MultiTaskCollator(processor, "masc", max_pixels=56 * 56)
    batch = collator(items)
    assert batch["task_ids"].tolist() == [TASK_REA, TASK_REA, TASK_CLS, TASK_CLS]
    tok = processor.tokenizer
    for row, (item, task) in enumerate([(items[0], TASK_REA), (items[1], TASK_REA), (items[0], TASK_CLS),
                                        (items[1], TASK_CLS)]):
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        target = labels != IGNORE
        _, expected = collator.sequences(item, task)
        assert tok.decode(ids[target]) == expected + "<|im_end|>"
        # the targets are one contiguous span right after "<|im_start|>assistant\n"
        positions = target.nonzero().flatten().tolist()
        assert positions == list(range(positions[0], positions[-1] + 1))
        marker = collator.answer_marker
        assert ids[positions[0] - len(marker) : positions[0]].tolist() == marker
        assert tok.decode(marker) == "<|im_start|>assistant\n"
        assert (labels[batch["attention_mask"][row] == 0] == IGNORE).all()
        assert (labels[ids == model.config.image_token_id] == IGNORE).all()
    assert (batch["input_ids"] == model.config.image_token_id).any()


def test_one_pass_equals_two_passes(demo_store, compact_model, tmp_path):
    model, processor, _ = load_model(compact_model())
    model.eval()
    items = teacher_items(demo_store, SAMPLE_NAME, "train")[:3]
    collator = MultiTaskCollator(processor, "masc", max_pixels=56 * 56)
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "o"), report_to=[], use_cpu=True, label_names=[])
    losses = []
    for single in (True, False):
        trainer = Trainer(model=model, args=args, task_weights=(0.2, 0.8), single_pass=single, collator=collator)
        with torch.no_grad():
            losses.append(trainer.compute_loss(model, items).item())
        assert set(trainer._parts) == {"ce_cls", "ce_rea"}
    assert math.isclose(losses[0], losses[1], rel_tol=1e-5), losses


def test_training_lowers_the_loss_and_writes_the_run(demo_store, compact_model, tmp_path):
    cfg = _cfg(compact_model(), tmp_path, epochs=3, batch_size=4, max_dev_samples=6)
    events = []
    result = train_assistant(demo_store, cfg, progress=events.append)
    folder = Path(result.folder)
    log = [json.loads(x) for x in (folder / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    per_epoch = 9  # 34 chains / batch 4
    assert result.steps == 3 * per_epoch and len(steps) == 3 * per_epoch
    first = sum(r["loss"] for r in steps[:per_epoch]) / per_epoch
    last = sum(r["loss"] for r in steps[-per_epoch:]) / per_epoch
    assert last < first - 0.5, (first, last)
    assert all("ce_cls" in r and "ce_rea" in r for r in steps)
    assert len([r for r in log if "eval_accuracy" in r]) == 3
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/tokenizer.json",
                 "adapter/mulcot.json", "curves.png", "config.json"):
        assert (folder / name).is_file(), name
    run = demo_store.get_run("a")
    assert run["status"] == "done" and run["kind"] == "train-assistant" and run["metrics"]["best"]["epoch"] >= 1
    assert {e["event"] for e in events} >= {"begin", "step", "log", "eval"}
    # the saved adapter loads on its base and generates
    from mulcot.generation.hf import GenerationConfig, generate
    from mulcot.models import load_with_adapter

    base, processor, _ = load_model(compact_model())
    tuned = load_with_adapter(base, folder / "adapter")
    items = teacher_items(demo_store, SAMPLE_NAME, "train")[:2]
    out = generate(tuned, processor, items, "label", "masc", GenerationConfig(max_new_tokens=6, max_pixels=3136))
    assert len(out) == 2 and all(isinstance(x[0], str) for x in out)


def test_plateau_halves_the_lr_and_best_epoch_breaks_ties(demo_store, compact_model, tmp_path, monkeypatch):
    """Scripted dev metrics: accuracy 0.5, 0.5, 0.5, 0.6, 0.6 (F1 rising on the last) -> the lr halves after
    epochs 2 and 3 bring no accuracy gain; the best epoch is 5 (same accuracy as 4, better F1)."""
    script = iter([(0.5, 0.5), (0.5, 0.4), (0.5, 0.9), (0.6, 0.5), (0.6, 0.7)])

    def scripted(*args, **kwargs):
        def evaluate(model):
            acc, f1 = next(script)
            return {"accuracy": acc, "macro_f1": f1, "weighted_f1": f1, "select": acc + 1e-6 * f1}

        return evaluate

    monkeypatch.setattr("mulcot.train.selection.dev_evaluator", scripted)
    cfg = _cfg(compact_model(), tmp_path, epochs=5, max_train_items=2, lr=1e-3)
    result = train_assistant(demo_store, cfg)
    log = [json.loads(x) for x in (Path(result.folder) / "log.jsonl").read_text().splitlines()]
    lr_by_epoch = {math.ceil(r["epoch"] - 1e-9): r["learning_rate"] for r in log if "learning_rate" in r}
    assert lr_by_epoch == {1: 1e-3, 2: 1e-3, 3: 1e-3, 4: 5e-4, 5: 5e-4}
    assert result.best["epoch"] == 5 and result.best["eval_accuracy"] == 0.6


def _logged_lrs(folder: str) -> list[float]:
    rows = [json.loads(x) for x in (Path(folder) / "log.jsonl").read_text().splitlines()]
    return [r["learning_rate"] for r in rows if "loss" in r]


def test_warmup_ramps_then_holds_without_dev(demo_store, compact_model, tmp_path):
    """--no-dev: a linear warm-up over 4 optimizer steps, then the constant lr (read from log.jsonl)."""
    cfg = _cfg(compact_model(), tmp_path, epochs=3, max_train_items=4, dev_split=None, warmup_steps=4, lr=1e-3)
    lrs = _logged_lrs(train_assistant(demo_store, cfg).folder)
    assert lrs == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3], abs=1e-12)


def test_warmup_then_plateau_halving(demo_store, compact_model, tmp_path, monkeypatch):
    """With a dev split: the lr ramps over 3 steps (one step per epoch), the epochs still warming up do not count
    for the plateau, and two flat epochs after it halve the lr."""

    def scripted(*args, **kwargs):
        return lambda model: {"accuracy": 0.5, "macro_f1": 0.5, "weighted_f1": 0.5, "select": 0.5}

    monkeypatch.setattr("mulcot.train.selection.dev_evaluator", scripted)
    cfg = _cfg(compact_model(), tmp_path, epochs=7, max_train_items=2, warmup_steps=3, lr=1e-3)
    lrs = _logged_lrs(train_assistant(demo_store, cfg).folder)
    # evaluations after steps 1-2 are inside the warm-up; 3 sets the best, 4 and 5 bring no gain -> halved from 6
    assert lrs == pytest.approx([0.0, 1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3, 5e-4, 5e-4], abs=1e-12)


def test_warmup_plateau_state_round_trips():
    """The scheduler's checkpoint is plain data (the Trainer reloads it with weights_only=True) and resumes the
    same schedule."""
    import io

    from mulcot.train.schedule import WarmupPlateau

    def make():
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
        return opt, WarmupPlateau(opt, 2, mode="max", factor=0.5, patience=0, min_lr=1e-6, threshold=0.0)

    opt, sched = make()
    for step, metric in ((1, 0.5), (2, 0.5), (3, 0.5), (4, 0.5)):
        opt.step()
        sched.step()
        sched.plateau_step(metric, step)
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    opt2, sched2 = make()
    sched2.load_state_dict(torch.load(buf, weights_only=True))
    sched.step()
    sched2.step()
    assert sched2.get_last_lr() == sched.get_last_lr() == [2.5e-4]  # step 2 sets the best, 3 and 4 halve


def test_bad_input(demo_store, compact_model, tmp_path):
    with pytest.raises(MulcotError, match="model folder not found"):
        train_assistant(demo_store, _cfg(tmp_path / "nope", tmp_path))
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(MulcotError, match="supports Qwen-VL models .* and text-only causal LMs"):
        train_assistant(demo_store, _cfg(plain, tmp_path))
    from mulcot.datasets import import_dataset
    from mulcot.sample import SAMPLE_DIR

    import_dataset(demo_store, "twitter-tsv", SAMPLE_DIR, name="bare")
    with pytest.raises(MulcotError, match="no teacher reasoning"):
        train_assistant(demo_store, TrainConfig(dataset="bare", model=str(compact_model()), name="b",
                                                runs_dir=str(tmp_path / "runs")))
    import_dataset(demo_store, "twitter-tsv", SAMPLE_DIR, name="textonly", no_images=True)
    with pytest.raises(MulcotError, match="without images"):
        train_assistant(demo_store, TrainConfig(dataset="textonly", model=str(compact_model()), name="c",
                                                runs_dir=str(tmp_path / "runs")))
    assert demo_store.list_runs() == []  # nothing half-written was registered


def test_cli_errors_are_one_line(tmp_path):
    db = tmp_path / "e.db"
    r = CliRunner().invoke(app, ["train-assistant", "nope", "--model", str(tmp_path / "m"), "--db", str(db)])
    assert r.exit_code == 1 and "no dataset named 'nope'" in r.output and "Traceback" not in r.output


@pytest.mark.slow
def test_kill_then_resume_matches_an_uninterrupted_run(demo_store, compact_model, tmp_path):
    model = compact_model()
    db = demo_store.path
    common = ["train-assistant", SAMPLE_NAME, "--model", str(model), "--db", str(db), "--runs-dir",
              str(tmp_path / "runs"), "--epochs", "2", "--batch-size", "2", "--grad-accum", "1", "--max-pixels",
              "3136", "--max-train-items", "12", "--max-dev-samples", "3", "--save-steps", "1", "--lr", "1e-3",
              "--lora-dropout", "0", "--json"]
    exe = str(Path(sys.executable).parent / "mulcot")
    full = subprocess.run([exe, *common, "--name", "full"], capture_output=True, text=True)
    assert full.returncode == 0, full.stderr
    full_out = json.loads(full.stdout)

    proc = subprocess.Popen([exe, *common, "--name", "cut"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "runs" / "cut" / "log.jsonl"
    wait_until(lambda: loss_lines(log) >= 4, 300)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "runs" / "cut" / "adapter").exists()
    again = subprocess.run([exe, *common, "--name", "cut"], capture_output=True, text=True)
    assert again.returncode != 0 and "--resume" in again.stderr
    resumed = subprocess.run([exe, *common, "--name", "cut", "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    out = json.loads(resumed.stdout)
    assert out["steps"] == full_out["steps"] == 12
    steps = {}
    for line in log.read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            steps[r["step"]] = r["loss"]  # a step redone after the kill overwrites the lost one
    full_steps = {json.loads(x)["step"]: json.loads(x)["loss"] for x in
                  (tmp_path / "runs" / "full" / "log.jsonl").read_text().splitlines() if '"loss"' in x}
    assert sorted(steps) == sorted(full_steps) == list(range(1, 13))
    assert abs(steps[12] - full_steps[12]) < 0.05 * abs(full_steps[12])
