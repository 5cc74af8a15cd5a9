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
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mulcot.core.refs import check_name
from mulcot.errors import MulcotError
from mulcot.events import Progress
from mulcot.store import Store
from mulcot.store.runs import RunRecord
from mulcot.train import distributed as dist
from mulcot.train import selection
from mulcot.train.checkpoints import atomic_copy, last_complete_checkpoint, resume_best, save_trained_adapter
from mulcot.train.config import REPORT_TO, TrainConfig, changed_settings, lora_target_modules, settings_hash

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
    # how it ran: processes, backend, and whether the Trainer sharded the model (FSDP, DeepSpeed)
    launch: dict[str, Any] | None = None


RESUME_HINT = "run the same command with --resume to continue"


def check_request(store: Store, config: Any, resume: bool) -> None:
    """Refuse, in one line, what cannot run: an unsafe or taken name, nothing to resume, bad task weights."""
    check_name(config.name)
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
    check_tracker(config.report_to)


def check_settings(store: Store, config: Any, resume: bool, settings: dict[str, Any]) -> None:
    """A resume continues the run as it was started: refuse, in one line naming them, settings that would change
    what it learns (:func:`mulcot.train.config.deciding_settings`)."""
    existing = store.get_run(config.name) if resume else None
    if existing is None:
        return
    changed = changed_settings(type(config), existing.get("config") or {}, settings)
    if changed:
        raise MulcotError(f"run '{config.name}' was started with other settings: {'; '.join(changed)}: resume with "
                          "the run's own settings, or start a new run with another --name")


_TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}


def check_tracker(report_to: str) -> None:
    """Refuse an unknown tracker, or one whose package is not installed, before any model is loaded."""
    import importlib.util

    if report_to not in REPORT_TO:
        raise MulcotError(f"--report-to '{report_to}' is not one of {', '.join(REPORT_TO)}")
    packages = _TRACKER_PACKAGES.get(report_to, ())
    if packages and not any(importlib.util.find_spec(p) for p in packages):
        raise MulcotError(f"--report-to {report_to} needs the '{packages[0]}' package: pip install {packages[0]}")


def allow_text_only(store: Store, config: TrainConfig) -> bool:
    """A dataset without images may train a text-only backbone, or a Qwen-VL one with --allow-text-only (the
    model's family is only looked up for a dataset without images)."""
    from mulcot.models.loading import is_text_family, model_family

    if config.allow_text_only or store.require_dataset(config.dataset)["has_images"]:
        return config.allow_text_only
    return is_text_family(model_family(config.model))


def fit(store: Store, config: TrainConfig, *, kind: str, items: list[Any], trainer_class: type,
        settings: dict[str, Any], extras: TrainerExtras | None = None, resume: bool = False,
        progress: Progress | None = None) -> TrainResult:
    """Train (or resume) one LoRA run of ``trainer_class`` on ``items``; records it in the store as ``kind``, with
    its deciding ``settings`` (:func:`check_settings` compares a resume with them).

    Under torchrun / accelerate launch every rank calls this; the Trainer trains data-parallel (DDP, DeepSpeed or
    FSDP as configured) and only the main process writes the store, the run folder and the progress."""
    from mulcot.core.inputs import image_input, is_text_only, mask_items, sample_items
    from mulcot.models import load_model

    start = time.perf_counter()
    dist.setup(config.device)
    main = dist.is_main()
    progress = progress if main else None
    folder = config.folder
    if config.max_train_items:
        items = items[: config.max_train_items]

    def prepare() -> tuple[Any, ...]:
        task = store.require_dataset(config.dataset)["task"]
        dev_items = []
        if config.dev_split:
            if config.dev_split not in store.splits(config.dataset):
                raise MulcotError(f"dataset '{config.dataset}' has no split '{config.dev_split}' for dev "
                                  "evaluation (pass --dev-split NAME, or --no-dev)")
            dev_items = mask_items(sample_items(store, config.dataset, config.dev_split), config.inputs)
            dev_items = dev_items[: config.max_dev_samples or None]
        device = train_device(config)
        # before the weights are read: with DeepSpeed ZeRO-3 the arguments make from_pretrained load them sharded
        args = training_arguments(config, device, len(items), bool(dev_items))
        model, processor, family = load_model(config.model, device=device, dtype=config.dtype,
                                              load_in_4bit=config.load_in_4bit)
        check_zero3_images(config, items + dev_items, is_text_only(processor))
        return task, dev_items, args, model, processor, family

    task, dev_items, args, model, processor, family = dist.everywhere(prepare)
    # what stood for the image: the pixels (Qwen-VL), or for a text-only backbone the caption or nothing
    recorded = {**config.public(), **settings, "family": family, **image_input(items, is_text_only(processor)),
                "world_size": dist.world_size(),
                "effective_batch": config.batch_size * config.grad_accum * dist.world_size()}
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(recorded, indent=2, default=str))
    record = (
        store.run(config.name, kind=kind, dataset=config.dataset, config=recorded, output_dir=str(folder),
                  settings_hash=settings_hash(settings), resume_hint=RESUME_HINT)
        if main
        else nullcontext(RunRecord(id=config.name))
    )
    with record as run:
        try:
            result = _train(config, args, model, processor, task, items, dev_items, resume, progress,
                            trainer_class, extras)
        except Exception as exc:
            message = _oom_message(exc, config)
            if message:
                raise MulcotError(message) from None
            raise
        result.wall_s = time.perf_counter() - start
        run.metrics = {"best": result.best, "steps": result.steps, "train_loss": result.train_loss,
                       "history": result.history, "world_size": dist.world_size(), "launch": result.launch}
    return result


def train_device(config: TrainConfig) -> str:
    """Where this process trains: ``--device``, else the best device here; under a launcher each rank takes its
    own GPU (``cuda`` means ``cuda:LOCAL_RANK``)."""
    from mulcot.models.loading import check_device, default_device

    device = check_device(config.device) if config.device else default_device()
    if dist.is_distributed() and device == "cuda":
        device = f"cuda:{dist.local_rank()}"
    return device


def _oom_message(exc: BaseException, config: TrainConfig) -> str | None:
    text = str(exc).lower()
    if "out of memory" in text or type(exc).__name__ == "OutOfMemoryError":
        return (f"out of memory at --batch-size {config.batch_size} and --max-pixels {config.max_pixels}: lower "
                "them (raise --grad-accum to keep the effective batch), use --gradient-checkpointing or "
                "--load-in-4bit; then --resume")
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
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    from mulcot.train.lora_dropout import fuse_lora_dropout

    fuse_lora_dropout(model)  # the same dropout, a boolean mask kept instead of two float copies per LoRA input
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


def check_distributed(config: TrainConfig, device: str) -> None:
    """Refuse, in one line, what cannot run under the configured launch (DeepSpeed/FSDP options, two passes)."""
    if config.deepspeed:
        from importlib.util import find_spec

        if find_spec("deepspeed") is None:
            raise MulcotError("--deepspeed needs DeepSpeed: pip install deepspeed (on a machine with CUDA)")
        _json_file(config.deepspeed, "--deepspeed")
    if config.fsdp_config:
        _json_file(config.fsdp_config, "--fsdp-config")
    if config.deepspeed and config.fsdp:
        raise MulcotError("--deepspeed and --fsdp are two ways to shard: pick one")
    if (config.deepspeed or config.fsdp) and not device.startswith("cuda"):
        # on CPUs accelerate leaves FSDP off without a word (measured): refuse rather than pretend to shard
        raise MulcotError(f"--deepspeed and --fsdp shard a model across GPUs, but this run trains on {device}: "
                          "drop them (plain DDP runs on CPUs with gloo)")
    if dist.is_distributed() and not config.single_pass:
        raise MulcotError("--two-pass runs two forward passes per step, which data-parallel training cannot "
                          "synchronise: drop --two-pass under torchrun")


def _json_file(path: str, flag: str) -> dict[str, Any]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise MulcotError(f"{flag} {path}: no such file")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise MulcotError(f"{flag} {path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None


def check_zero3_images(config: TrainConfig, items: list[Any], text_only: bool) -> None:
    """Refuse ZeRO-3 on a Qwen-VL run whose posts are not all with an image: ranks whose batches differ in
    vision-tower calls wait for each other forever (QwenLM/Qwen3-VL #126)."""
    if text_only or not config.deepspeed or not sharded(config):
        return
    bare = sum(1 for it in items if it.image_path is None)
    if bare:
        raise MulcotError(f"{bare} of the {len(items)} training and dev posts have no image, and DeepSpeed ZeRO-3 "
                          "hangs when one rank's batch has an image and another's has none: use ZeRO-2 "
                          "(examples/deepspeed/ds_z2_config.json) or FSDP")


def sharded(config: TrainConfig) -> bool:
    """Whether the weights are sharded across ranks (ZeRO-3 or FSDP): then every rank must join every forward
    pass, generation included (``synced_gpus``)."""
    if config.fsdp:
        return True
    if config.deepspeed:
        stage = _json_file(config.deepspeed, "--deepspeed").get("zero_optimization", {}).get("stage")
        return stage == 3
    return False


def training_arguments(config: TrainConfig, device: str, n_items: int, with_dev: bool) -> Any:
    """The HF ``TrainingArguments`` of a run: the paper's optimiser and plateau schedule, a checkpoint per epoch,
    and the launch (DDP with gloo on CPU / NCCL on GPU, or DeepSpeed / FSDP as configured)."""
    from transformers import TrainingArguments

    from mulcot.models.loading import resolve_dtype

    check_distributed(config, device)
    dtype = resolve_dtype(config.dtype, device)
    import torch

    world = dist.world_size()
    steps_per_epoch = max(1, math.ceil(n_items / (config.batch_size * config.grad_accum * world)))
    plateau = {"mode": "max", "factor": config.lr_factor, "patience": max(0, config.plateau_epochs - 1),
               "min_lr": config.min_lr, "threshold": 0.0}
    launch: dict[str, Any] = {}
    if world > 1:
        launch["ddp_backend"] = "nccl" if device.startswith("cuda") else "gloo"
        # with LoRA on the language model only, every adapter weight is used in every step (one forward pass over
        # both tasks), so DDP need not search the graph for unused ones (for a PEFT model the Trainer would turn
        # that search on); LoRA on the vision tower goes unused in a step without images
        launch["ddp_find_unused_parameters"] = config.lora_targets != "language"
    if config.deepspeed:
        launch["deepspeed"] = str(Path(config.deepspeed).expanduser())
    if config.fsdp:
        launch["fsdp"] = True if config.fsdp.strip().lower() in ("true", "1", "yes") else config.fsdp
        if config.fsdp_config:
            launch["fsdp_config"] = str(Path(config.fsdp_config).expanduser())
    return TrainingArguments(
        output_dir=str(config.folder / "checkpoints"),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        num_train_epochs=config.epochs,
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        # the fused kernel (the Trainer's default since torch 2.8): one call per step for the ~400 LoRA tensors
        # instead of ~10 small ops each, which on a CPU's shared threads cost more than the update itself
        optim="adamw_torch_fused",
        warmup_steps=config.warmup_steps,
        # a linear warm-up, then: halve on a dev-accuracy plateau (the trainers run it with the warm-up, see
        # mulcot.train.schedule); without a dev split there is nothing to watch: a constant lr
        lr_scheduler_type="reduce_lr_on_plateau" if with_dev else "constant_with_warmup",
        lr_scheduler_kwargs=plateau if with_dev else {},
        eval_strategy="epoch" if with_dev else "no",
        metric_for_best_model="accuracy",  # what the plateau scheduler watches; the best epoch uses "select"
        greater_is_better=True,
        save_strategy="steps",
        save_steps=config.save_steps or steps_per_epoch,
        save_total_limit=2,
        logging_steps=1,
        report_to=[] if config.report_to == "none" else [config.report_to],
        run_name=config.name,
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=config.seed,
        use_cpu=device == "cpu",
        bf16=device.startswith("cuda") and dtype == torch.bfloat16,
        fp16=device.startswith("cuda") and dtype == torch.float16,
        label_names=[],
        **launch,
    )


def _train(config: TrainConfig, args: Any, model: Any, processor: Any, task: str, items: list[Any],
           dev_items: list[Any], resume: bool, progress: Progress | None, trainer_class: type,
           extras: TrainerExtras | None) -> TrainResult:
    import torch
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from mulcot.train.callbacks import RunCallback, plot_curves, route_trackers
    from mulcot.train.collator import MultiTaskCollator

    torch.manual_seed(config.seed)
    folder = config.folder
    main = dist.is_main()
    model = add_lora(model, config)
    collator = MultiTaskCollator(processor, task, max_pixels=config.max_pixels)
    more = dist.everywhere(lambda: extras(processor, collator, folder)) if extras else {}
    dev_eval = None
    if dev_items:
        dev_eval = selection.dev_evaluator(processor, task, dev_items, batch_size=config.dev_batch_size,
                                           max_new_tokens=config.dev_max_new_tokens, max_pixels=config.max_pixels,
                                           synced_gpus=sharded(config))
    best = dist.on_main(lambda: resume_best(folder)) if resume else None
    trainer: Any = None

    def save_best(metrics: dict) -> None:  # every rank: a sharded model's weights are gathered to save them
        save_trained_adapter(trainer, processor, folder / "best",
                             {"best": metrics, "run": config.name, "base": config.model, "inputs": config.inputs})

    callback = RunCallback(folder, progress, save_best, best)
    trainer = trainer_class(model=model, args=args, train_dataset=items, eval_dataset=dev_items or None,
                            task_weights=config.task_weights, single_pass=config.single_pass, collator=collator,
                            dev_eval=dev_eval, packing=config.packing, callbacks=[callback], **more)
    route_trackers(trainer, folder)
    trainer.remove_callback(PrinterCallback)  # progress goes through our callback; stdout stays clean for --json
    trainer.remove_callback(ProgressCallback)
    # the main process picks (and tidies) the checkpoint; every rank resumes from the same one
    checkpoint = dist.on_main(lambda: last_complete_checkpoint(folder / "checkpoints") if resume else None)
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if callback.best is None:  # no dev split: the last state is the result
        save_best({"epoch": trainer.state.epoch, "step": trainer.state.global_step})
    if main:
        atomic_copy(folder / "best", folder / "adapter")
        plot_curves(folder)
    dist.barrier()
    history = [r for r in trainer.state.log_history if "eval_accuracy" in r]
    launch = {"world_size": trainer.args.world_size, "backend": trainer.args.ddp_backend,
              "fsdp": bool(trainer.is_fsdp_enabled), "deepspeed": bool(trainer.is_deepspeed_enabled)}
    device = next(trainer.model.parameters()).device
    if device.type == "cuda":  # every rank's peak, as the main process records it
        launch["peak_gpu_mib"] = dist.gather(round(torch.cuda.max_memory_allocated(device) / 2**20))
    return TrainResult(run=config.name, folder=str(folder), adapter=str(folder / "adapter"), best=callback.best,
                       steps=trainer.state.global_step, train_loss=output.training_loss, history=history,
                       wall_s=0.0, launch=launch)
