"""The run both training stages share: check the request, record the run, load the model, put LoRA on it, hand
it to a Trainer subclass with the HF ``TrainingArguments``, keep the best epoch, and write ``runs/<name>/``.

The Trainer does everything else — gradient accumulation, AdamW, the reduce-on-plateau learning rate, checkpoints
and resume. :func:`fit` is called by :func:`mulcot.train.assistant.train_assistant` (``MultiTaskTrainer``) and
:func:`mulcot.train.student.distill` (``DistillTrainer``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mulcot.errors import MulcotError
from mulcot.events import Progress
from mulcot.store import Store
from mulcot.train import selection
from mulcot.train.checkpoints import atomic_copy, last_complete_checkpoint, save_adapter
from mulcot.train.config import TrainConfig, lora_target_modules

# (processor, collator, run folder) -> extra keyword arguments for the Trainer subclass (e.g. the soft labels)
TrainerExtras = Callable[[Any, Any, Path], dict[str, Any]]


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


def check_request(store: Store, config: Any, resume: bool) -> None:
    """Refuse, in one line, what cannot run: a taken name, nothing to resume, bad task weights."""
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
    weights = getattr(config, "task_weights", None)  # a DPO run has none
    if weights is not None and (sum(weights) <= 0 or min(weights) < 0):
        raise MulcotError("--task-weights must be two non-negative numbers, e.g. 0.2,0.8")


def allow_text_only(store: Store, config: TrainConfig) -> bool:
    """A dataset without images may train a text-only backbone, or a Qwen-VL one with --allow-text-only (the
    model's family is only looked up for a dataset without images)."""
    from mulcot.models.loading import is_text_family, model_family

    if config.allow_text_only or store.require_dataset(config.dataset)["has_images"]:
        return config.allow_text_only
    return is_text_family(model_family(config.model))


def fit(store: Store, config: TrainConfig, *, kind: str, items: list[Any], trainer_class: type,
        extras: TrainerExtras | None = None, resume: bool = False,
        progress: Progress | None = None) -> TrainResult:  # fmt: skip
    """Train (or resume) one LoRA run of ``trainer_class`` on ``items``; records it in the store as ``kind``."""
    from mulcot.models import load_model
    from mulcot.train.items import image_input, is_text_only, sample_items

    start = time.perf_counter()
    folder = config.folder
    task = store.require_dataset(config.dataset)["task"]
    if config.max_train_items:
        items = items[: config.max_train_items]
    dev_items = []
    if config.dev_split:
        if config.dev_split not in store.splits(config.dataset):
            raise MulcotError(f"dataset '{config.dataset}' has no split '{config.dev_split}' for dev evaluation "
                              "(pass --dev-split NAME, or --no-dev)")  # fmt: skip
        dev_items = sample_items(store, config.dataset, config.dev_split)[: config.max_dev_samples or None]
    model, processor, family = load_model(config.model, device=config.device, dtype=config.dtype,
                                          load_in_4bit=config.load_in_4bit)  # fmt: skip
    # what stood for the image: the pixels (Qwen-VL), or for a text-only backbone the caption or nothing
    recorded = {**config.public(), "family": family, **image_input(items, is_text_only(processor))}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(recorded, indent=2, default=str))
    with store.run(config.name, kind=kind, dataset=config.dataset, config=recorded,
                   output_dir=str(folder), resume_hint="resume with --resume") as run:  # fmt: skip
        try:
            result = _train(config, model, processor, task, items, dev_items, resume, progress, trainer_class,
                            extras)  # fmt: skip
        except Exception as exc:
            message = _oom_message(exc, config)
            if message:
                raise MulcotError(message) from None
            raise
        result.wall_s = time.perf_counter() - start
        run.metrics = {"best": result.best, "steps": result.steps, "train_loss": result.train_loss,
                       "history": result.history}  # fmt: skip
    return result


def _oom_message(exc: BaseException, config: TrainConfig) -> str | None:
    text = str(exc).lower()
    if "out of memory" in text or type(exc).__name__ == "OutOfMemoryError":
        return (f"out of memory at --batch-size {config.batch_size} and --max-pixels {config.max_pixels}: lower "
                "them (raise --grad-accum to keep the effective batch), use --gradient-checkpointing or "
                "--load-in-4bit; then --resume")  # fmt: skip
    return None


def add_lora(model: Any, config: TrainConfig) -> Any:
    """The base model with a fresh LoRA adapter (QLoRA preparation and gradient checkpointing as configured)."""
    from peft import LoraConfig, get_peft_model

    if config.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    from mulcot.models.loading import FAMILIES

    text_only = getattr(model.config, "model_type", None) not in FAMILIES
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=lora_target_modules(config.lora_targets, text_only=text_only),
                      task_type="CAUSAL_LM")  # fmt: skip
    model = get_peft_model(model, lora)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


def training_arguments(config: TrainConfig, model: Any, n_items: int, with_dev: bool) -> Any:
    """The HF ``TrainingArguments`` of a run: the paper's optimiser and plateau schedule, a checkpoint per epoch."""
    import torch
    from transformers import TrainingArguments

    device = str(next(model.parameters()).device)
    dtype = next(model.parameters()).dtype
    steps_per_epoch = max(1, math.ceil(n_items / (config.batch_size * config.grad_accum)))
    plateau = {"mode": "max", "factor": config.lr_factor, "patience": max(0, config.plateau_epochs - 1),
               "min_lr": config.min_lr, "threshold": 0.0}  # fmt: skip
    return TrainingArguments(
        output_dir=str(config.folder / "checkpoints"),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        num_train_epochs=config.epochs,
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        optim="adamw_torch",
        warmup_steps=config.warmup_steps,
        # halve on a dev-accuracy plateau; without a dev split there is nothing to watch: a constant lr
        lr_scheduler_type="reduce_lr_on_plateau" if with_dev else "constant",
        lr_scheduler_kwargs=plateau if with_dev else {},
        eval_strategy="epoch" if with_dev else "no",
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
        bf16=device.startswith("cuda") and dtype == torch.bfloat16,
        fp16=device.startswith("cuda") and dtype == torch.float16,
        label_names=[],
    )


def _train(config: TrainConfig, model: Any, processor: Any, task: str, items: list[Any], dev_items: list[Any],
           resume: bool, progress: Progress | None, trainer_class: type,
           extras: TrainerExtras | None) -> TrainResult:  # fmt: skip
    import torch
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from mulcot.train.callbacks import RunCallback, plot_curves
    from mulcot.train.items import MultiTaskCollator

    torch.manual_seed(config.seed)
    folder = config.folder
    model = add_lora(model, config)
    args = training_arguments(config, model, len(items), bool(dev_items))
    collator = MultiTaskCollator(processor, task, max_pixels=config.max_pixels)
    more = extras(processor, collator, folder) if extras else {}
    dev_eval = None
    if dev_items:
        dev_eval = selection.dev_evaluator(processor, task, dev_items, batch_size=config.dev_batch_size,
                                           max_new_tokens=config.dev_max_new_tokens,
                                           max_pixels=config.max_pixels)  # fmt: skip
    best_file = folder / "best" / "mulcot.json"
    best = json.loads(best_file.read_text())["best"] if resume and best_file.exists() else None

    def save_best(m: Any, metrics: dict) -> None:
        save_adapter(m, processor, folder / "best", {"best": metrics, "run": config.name, "base": config.model})

    callback = RunCallback(folder, progress, save_best, best)
    trainer = trainer_class(model=model, args=args, train_dataset=items, eval_dataset=dev_items or None,
                            task_weights=config.task_weights, single_pass=config.single_pass, collator=collator,
                            dev_eval=dev_eval, callbacks=[callback], **more)  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # progress goes through our callback; stdout stays clean for --json
    trainer.remove_callback(ProgressCallback)
    checkpoint = last_complete_checkpoint(folder / "checkpoints") if resume else None
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if callback.best is None:  # no dev split: the last state is the result
        save_best(trainer.model, {"epoch": trainer.state.epoch, "step": trainer.state.global_step})
    atomic_copy(folder / "best", folder / "adapter")
    plot_curves(folder)
    history = [r for r in trainer.state.log_history if "eval_accuracy" in r]
    return TrainResult(run=config.name, folder=str(folder), adapter=str(folder / "adapter"), best=callback.best,
                       steps=trainer.state.global_step, train_loss=output.training_loss, history=history,
                       wall_s=0.0)  # fmt: skip
