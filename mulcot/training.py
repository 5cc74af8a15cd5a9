"""Stage 2: the assistant learns teacher reasoning with multi-task LoRA (HF Trainer + peft).

``MultiTaskTrainer`` overrides only ``compute_loss`` (the multi-task objective of :mod:`mulcot.losses`) and
``evaluate`` (dev accuracy from generated ``"Prediction"`` answers). Everything else — gradient accumulation,
AdamW, reduce-on-plateau learning rate, checkpoints and resume — is the Trainer's. The best epoch (dev accuracy,
ties broken by macro-F1 on MASC or weighted-F1 on MSA) is kept in ``runs/<name>/best/`` as it is found, and copied
to ``runs/<name>/adapter/`` when the run finishes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mulcot.errors import MulcotError
from mulcot.store import Store

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Language model only: Qwen-VL vision blocks also have gate/up/down_proj, which a plain suffix match would hit
# (as the authors' code does: --lora-targets all).
LANGUAGE_ONLY = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"

Progress = Callable[[dict[str, Any]], None]


@dataclass
class TrainConfig:
    """A training run's settings (all are CLI flags and recipe keys)."""

    dataset: str
    model: str
    name: str
    split: str = "train"
    dev_split: str | None = "dev"
    task_weights: tuple[float, float] = (0.2, 0.8)  # (λ_cls, λ_rea): the paper; (0.5, 0.5) is the authors' code
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str = "language"  # language | all | comma-separated module names
    lr: float = 3e-4
    batch_size: int = 2
    grad_accum: int = 20
    epochs: float = 20
    plateau_epochs: int = 2  # halve the lr after this many epochs without a dev gain
    lr_factor: float = 0.5
    min_lr: float = 1e-6
    max_pixels: int = 280 * 280
    single_pass: bool = True
    device: str | None = None
    dtype: str | None = None
    load_in_4bit: bool = False
    gradient_checkpointing: bool = False
    seed: int = 42
    max_train_items: int | None = None
    max_dev_samples: int | None = None
    save_steps: int | None = None  # None: a checkpoint each epoch
    allow_text_only: bool = False
    runs_dir: str = "runs"
    dev_batch_size: int = 8
    dev_max_new_tokens: int = 16
    warmup_steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        return asdict(self)


def run_dir(config: TrainConfig) -> Path:
    return Path(config.runs_dir) / config.name


def lora_target_modules(spec: str) -> str | list[str]:
    """peft ``target_modules`` for ``language`` (default), ``all`` (suffix match, vision MLPs too) or a list."""
    if spec == "language":
        return LANGUAGE_ONLY
    if spec == "all":
        return list(LORA_TARGETS)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise MulcotError("--lora-targets is empty: use language, all, or module names like q_proj,v_proj")
    return names


def selection_score(accuracy: float, f1: float) -> float:
    """Dev accuracy, ties broken by F1: accuracies of n samples differ by ≥ 1/n, so 1e-6·F1 decides only ties
    (for dev sets under a million samples)."""
    return accuracy + 1e-6 * f1


def _trainer_classes() -> tuple[type, type]:
    """Build the Trainer subclass and the callback lazily (transformers is heavy to import)."""
    from transformers import Trainer, TrainerCallback

    from mulcot.losses import distill_loss, multitask_loss, position_tasks, prediction_mask, target_ce, task_means
    from mulcot.sft_data import TASK_CLS, TASK_REA

    class MultiTaskTrainer(Trainer):
        """HF Trainer with the multi-task loss and generation-based dev evaluation."""

        def __init__(self, *args: Any, task_weights: tuple[float, float], single_pass: bool, collator: Any,
                     dev_eval: Callable[[Any], dict[str, float]] | None = None, loss_hook: Any = None,
                     **kwargs: Any):  # fmt: skip
            super().__init__(*args, data_collator=lambda items: items, **kwargs)
            self.task_weights = task_weights
            self.single_pass = single_pass
            self.collator = collator
            self.dev_eval = dev_eval
            self.loss_hook = loss_hook  # distillation: adds the soft (KL) term
            self.loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean
            self._parts: dict[str, list[float]] = defaultdict(list)

        def _forward(self, model: Any, items: Any, tasks: tuple[int, ...]) -> dict[str, Any]:
            """Collate, run the model and return logits at the target-predicting positions only ([N, V])."""
            batch = self._prepare_inputs(self.collator(items, tasks))
            labels, task_ids = batch.pop("labels"), batch.pop("task_ids")
            mask = prediction_mask(labels)
            logits = model(**batch, logits_to_keep=mask).logits
            return {"batch": batch, "labels": labels, "task_ids": task_ids, "mask": mask, "logits": logits}

        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:  # fmt: skip
            w_cls, w_rea = self.task_weights
            tasks = tuple(t for t, w in ((TASK_REA, w_rea), (TASK_CLS, w_cls)) if w > 0)
            if self.loss_hook is not None:
                f = self._forward(model, inputs, tasks)
                pos_tasks = position_tasks(f["mask"], f["task_ids"])
                ce = target_ce(f["logits"], f["labels"], f["mask"])
                kl = self.loss_hook.kl(inputs, tasks, f["batch"], f["logits"], f["mask"])
                cfg = self.loss_hook.config
                loss, parts = distill_loss(task_means(ce, pos_tasks), task_means(kl, pos_tasks), w_cls, w_rea,
                                           cfg.lam, cfg.tau, cfg.tau_squared)  # fmt: skip
            elif self.single_pass or len(tasks) == 1:
                f = self._forward(model, inputs, tasks)
                loss, parts = multitask_loss(f["logits"], f["labels"], f["mask"], f["task_ids"], w_cls, w_rea)
            else:  # one forward pass per task (to compare with the single pass)
                means = {}
                for task in tasks:
                    f = self._forward(model, inputs, (task,))
                    ce = target_ce(f["logits"], f["labels"], f["mask"])
                    means[task] = task_means(ce, position_tasks(f["mask"], f["task_ids"]))[task]
                zero = next(iter(means.values())) * 0
                loss = w_cls * means.get(TASK_CLS, zero) + w_rea * means.get(TASK_REA, zero)
                parts = {k: float(means.get(t, zero).detach()) for k, t in (("ce_cls", TASK_CLS), ("ce_rea", TASK_REA))}
            for key, value in parts.items():
                self._parts[key].append(value)
            return (loss, None) if return_outputs else loss

        def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            if "loss" in logs:
                for key, values in self._parts.items():
                    if values:
                        logs[key] = round(sum(values) / len(values), 6)
                    values.clear()
            super().log(logs, *args, **kwargs)

        def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None,
                     metric_key_prefix: str = "eval") -> dict[str, float]:  # fmt: skip
            if self.dev_eval is None:
                return {}
            start = time.perf_counter()
            raw = self.dev_eval(self.model)
            metrics = {f"{metric_key_prefix}_{k}": v for k, v in raw.items()}
            metrics[f"{metric_key_prefix}_runtime"] = round(time.perf_counter() - start, 3)
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

        def prediction_step(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - evaluate is overridden
            raise NotImplementedError

    class RunCallback(TrainerCallback):
        """Per-step JSONL log, best-epoch tracking and progress events."""

        def __init__(self, folder: Path, progress: Progress | None, save_best: Callable[[Any, dict], None],
                     best: dict[str, Any] | None):  # fmt: skip
            self.folder = folder
            self.progress = progress
            self.save_best = save_best
            self.best = best
            self.started = time.perf_counter()

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.progress:
                self.progress({"event": "begin", "step": state.global_step, "total": state.max_steps})

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            record = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), **(logs or {})}
            with (self.folder / "log.jsonl").open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            if self.progress:
                self.progress({"event": "log", "total": state.max_steps, **record})

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.progress:
                self.progress({"event": "step", "step": state.global_step, "total": state.max_steps,
                               "elapsed": time.perf_counter() - self.started})  # fmt: skip

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None,
                        model: Any = None, **kwargs: Any) -> None:  # fmt: skip
            metrics = metrics or {}
            score = metrics.get("eval_select")
            if score is None:
                return
            if self.best is None or score > self.best["eval_select"]:
                self.best = {**metrics, "epoch": round(state.epoch or 0, 4), "step": state.global_step}
                self.save_best(kwargs.get("model") or model, self.best)
            if self.progress:
                self.progress({"event": "eval", "epoch": state.epoch, "metrics": metrics, "best": self.best})

    return MultiTaskTrainer, RunCallback


def dev_evaluator(processor: Any, task: str, items: list[Any], *, batch_size: int, max_new_tokens: int,
                  max_pixels: int) -> Callable[[Any], dict[str, float]]:  # fmt: skip
    """A function model -> dev metrics from the label prompt (greedy ``"Prediction"`` answers)."""
    from mulcot.evaluate.metrics import classification_metrics
    from mulcot.generation import GenerationConfig, generate
    from mulcot.reasoning import parse_reasoning

    gold = [it.label for it in items]
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size, max_pixels=max_pixels)

    def evaluate(model: Any) -> dict[str, float]:
        answers = generate(model, processor, items, "label", task, cfg)
        preds = [parse_reasoning(a[0]).prediction or "invalid" for a in answers]
        m = classification_metrics(gold, preds)
        f1 = m["macro_f1"] if task == "masc" else m["weighted_f1"]
        return {
            "accuracy": m["accuracy"],
            "macro_f1": m["macro_f1"],
            "weighted_f1": m["weighted_f1"],
            "select": selection_score(m["accuracy"], f1),
            "invalid": preds.count("invalid") / len(preds),
        }

    return evaluate


@dataclass
class TrainResult:
    run: str
    folder: str
    adapter: str
    best: dict[str, Any] | None
    steps: int
    train_loss: float | None
    history: list[dict[str, Any]]
    wall_s: float


def _atomic_copy(src: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def _save_adapter(model: Any, processor: Any, dest: Path, meta: dict[str, Any]) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    (tmp / "mulcot.json").write_text(json.dumps(meta, indent=2, default=str))
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint that was written to the end (a kill during saving leaves one without its trainer
    state); incomplete newer ones are removed so the Trainer's own rotation does not trip on them."""
    if not folder.is_dir():
        return None
    found = sorted(
        (p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for path in found:
        if (path / "trainer_state.json").is_file() and any(path.glob("adapter_model.*")):
            return path
        shutil.rmtree(path, ignore_errors=True)
    return None


def plot_curves(folder: Path) -> Path | None:
    """Loss per step and dev accuracy per epoch as ``curves.png``."""
    log = folder / "log.jsonl"
    if not log.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    dev = [r for r in rows if "eval_accuracy" in r]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    if train:
        a.plot([r["step"] for r in train], [r["loss"] for r in train], label="loss")
        for key in ("ce_cls", "ce_rea"):
            if any(key in r for r in train):
                a.plot([r["step"] for r in train if key in r], [r[key] for r in train if key in r], label=key)
    a.set_xlabel("step")
    a.set_title("training loss")
    a.legend()
    if dev:
        b.plot([r["epoch"] for r in dev], [r["eval_accuracy"] for r in dev], marker="o", label="accuracy")
        b.plot([r["epoch"] for r in dev], [r["eval_macro_f1"] for r in dev], marker="x", label="macro-F1")
        b.legend()
    b.set_xlabel("epoch")
    b.set_title("dev")
    fig.tight_layout()
    out = folder / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def train_assistant(store: Store, config: TrainConfig, *, resume: bool = False, progress: Progress | None = None,
                    items: list[Any] | None = None, kind: str = "train-assistant",
                    loss_hook: Any = None) -> TrainResult:  # fmt: skip
    """Train (or resume) a multi-task LoRA run; records it in the store and writes ``runs/<name>/``."""
    from mulcot.sft_data import sample_items, teacher_items

    start = time.perf_counter()
    folder = run_dir(config)
    existing = store.get_run(config.name)
    if existing is not None and not resume:
        raise MulcotError(
            f"run '{config.name}' already exists ({existing['status']}): pass --resume to continue it, "
            "or choose another --name"
        )
    if resume and existing is None:
        raise MulcotError(f"no run named '{config.name}' to resume")
    if resume and existing is not None and existing["status"] == "done":
        raise MulcotError(f"run '{config.name}' is already finished: nothing to resume")
    if sum(config.task_weights) <= 0 or min(config.task_weights) < 0:
        raise MulcotError("--task-weights must be two non-negative numbers, e.g. 0.2,0.8")
    dataset = store.require_dataset(config.dataset)
    task = dataset["task"]
    if items is None:
        items = teacher_items(store, config.dataset, config.split, allow_text_only=config.allow_text_only)
    if config.max_train_items:
        items = items[: config.max_train_items]
    dev_items = []
    if config.dev_split:
        if config.dev_split not in store.splits(config.dataset):
            raise MulcotError(f"dataset '{config.dataset}' has no split '{config.dev_split}' for dev evaluation "
                              "(pass --dev-split NAME, or --no-dev)")  # fmt: skip
        dev_items = sample_items(store, config.dataset, config.dev_split)[: config.max_dev_samples or None]

    from mulcot.models import load_model

    model, processor, family = load_model(config.model, device=config.device, dtype=config.dtype,
                                          load_in_4bit=config.load_in_4bit)  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config.public(), indent=2, default=str))
    store.create_run(config.name, kind=kind, dataset=config.dataset,
                     config={**config.public(), "family": family}, output_dir=str(folder))  # fmt: skip
    try:
        result = _train(store, config, model, processor, task, items, dev_items, folder, resume, progress, loss_hook)
    except KeyboardInterrupt:
        store.update_run(config.name, status="interrupted", error="interrupted: resume with --resume")
        raise
    except Exception as exc:
        message = _oom_message(exc, config)
        store.update_run(config.name, status="failed", error=message or str(exc)[:500])
        if message:
            raise MulcotError(message) from None
        raise
    result.wall_s = time.perf_counter() - start
    store.update_run(config.name, status="done", metrics={"best": result.best, "steps": result.steps,
                                                          "train_loss": result.train_loss,
                                                          "history": result.history})  # fmt: skip
    return result


def _oom_message(exc: BaseException, config: TrainConfig) -> str | None:
    text = str(exc).lower()
    if "out of memory" in text or type(exc).__name__ == "OutOfMemoryError":
        return (f"out of memory at --batch-size {config.batch_size} and --max-pixels {config.max_pixels}: lower "
                "them (raise --grad-accum to keep the effective batch), use --gradient-checkpointing or "
                "--load-in-4bit; then --resume")  # fmt: skip
    return None


def _train(store: Store, config: TrainConfig, model: Any, processor: Any, task: str, items: list[Any],
           dev_items: list[Any], folder: Path, resume: bool, progress: Progress | None,
           loss_hook: Any = None) -> TrainResult:  # fmt: skip
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import TrainingArguments

    from mulcot.sft_data import MultiTaskCollator

    MultiTaskTrainer, RunCallback = _trainer_classes()
    torch.manual_seed(config.seed)
    if config.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=lora_target_modules(config.lora_targets), task_type="CAUSAL_LM")  # fmt: skip
    model = get_peft_model(model, lora)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    device = str(next(model.parameters()).device)
    steps_per_epoch = max(1, math.ceil(len(items) / (config.batch_size * config.grad_accum)))
    bf16 = device.startswith("cuda") and next(model.parameters()).dtype == torch.bfloat16
    fp16 = device.startswith("cuda") and next(model.parameters()).dtype == torch.float16
    args = TrainingArguments(
        output_dir=str(folder / "checkpoints"),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        num_train_epochs=config.epochs,
        learning_rate=config.lr,
        optim="adamw_torch",
        warmup_steps=config.warmup_steps,
        # halve on a dev-accuracy plateau; without a dev split there is nothing to watch: a constant lr
        lr_scheduler_type="reduce_lr_on_plateau" if dev_items else "constant",
        lr_scheduler_kwargs={
            "mode": "max",
            "factor": config.lr_factor,
            "patience": max(0, config.plateau_epochs - 1),
            "min_lr": config.min_lr,
            "threshold": 0.0,
        }
        if dev_items
        else {},
        eval_strategy="epoch" if dev_items else "no",
        metric_for_best_model="accuracy",  # what the plateau scheduler watches; the best epoch uses "select"
        greater_is_better=True,
        save_strategy="steps",
        save_steps=config.save_steps or steps_per_epoch,
        save_total_limit=2,
        logging_steps=1,
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=config.seed,
        use_cpu=device == "cpu",
        bf16=bf16,
        fp16=fp16,
        label_names=[],
    )
    collator = MultiTaskCollator(processor, task, max_pixels=config.max_pixels)
    if loss_hook is not None:
        loss_hook.prepare(processor, collator, folder)
    dev_eval = None
    if dev_items:
        dev_eval = dev_evaluator(processor, task, dev_items, batch_size=config.dev_batch_size,
                                 max_new_tokens=config.dev_max_new_tokens, max_pixels=config.max_pixels)  # fmt: skip
    best_file = folder / "best" / "mulcot.json"
    best = json.loads(best_file.read_text())["best"] if resume and best_file.exists() else None

    def save_best(m: Any, metrics: dict) -> None:
        _save_adapter(m, processor, folder / "best", {"best": metrics, "run": config.name, "base": config.model})

    callback = RunCallback(folder, progress, save_best, best)
    trainer = MultiTaskTrainer(model=model, args=args, train_dataset=items, eval_dataset=dev_items or None,
                               task_weights=config.task_weights,
                               single_pass=config.single_pass, collator=collator, dev_eval=dev_eval,
                               loss_hook=loss_hook,
                               callbacks=[callback])  # fmt: skip
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)  # progress goes through our callback; stdout stays clean for --json
    trainer.remove_callback(ProgressCallback)
    checkpoint = last_complete_checkpoint(folder / "checkpoints") if resume else None
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if callback.best is None:  # no dev split: the last state is the result
        save_best(trainer.model, {"epoch": trainer.state.epoch, "step": trainer.state.global_step})
    _atomic_copy(folder / "best", folder / "adapter")
    plot_curves(folder)
    history = [r for r in trainer.state.log_history if "eval_accuracy" in r]
    return TrainResult(run=config.name, folder=str(folder), adapter=str(folder / "adapter"), best=callback.best,
                       steps=trainer.state.global_step, train_loss=output.training_loss, history=history,
                       wall_s=0.0)  # fmt: skip
