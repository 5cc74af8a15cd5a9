"""Stage 2: the assistant learns teacher reasoning with multi-task LoRA (HF Trainer + peft).

``MultiTaskTrainer`` overrides only ``compute_loss`` (the multi-task objective of :mod:`mulcot.train.losses`) and
``evaluate`` (dev accuracy from generated ``"Prediction"`` answers, :mod:`mulcot.train.selection`). Everything else
is the Trainer's (:mod:`mulcot.train.loop`). The best epoch (dev accuracy, ties broken by macro-F1 on MASC or
weighted-F1 on MSA) is kept in ``runs/<name>/best/`` as it is found, and copied to ``runs/<name>/adapter/`` when the
run finishes.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from transformers import SchedulerType, Trainer

from mulcot.core.inputs import mask_items, teacher_items
from mulcot.store import Store
from mulcot.train import distributed as dist
from mulcot.train.collator import TASK_CLS, TASK_REA
from mulcot.train.config import TrainConfig, deciding_settings, with_runs_dir
from mulcot.train.loop import Progress, TrainResult, allow_text_only, check_request, check_settings, fit
from mulcot.train.losses import multitask_loss, position_tasks, prediction_mask, target_ce, task_means
from mulcot.train.packing import enable_packing
from mulcot.train.schedule import WarmupPlateau, plateau_metric


class MultiTaskTrainer(Trainer):
    """HF Trainer with the multi-task loss and generation-based dev evaluation.

    ``packing`` (default) trains a text-only backbone on padding-free batches (:mod:`mulcot.train.packing`) where the
    model supports them; other models, and ``packing=False``, get right-padded batches."""

    packing_allowed = True  # a subclass whose loss reads padded rows (the student's soft labels) turns it off

    def __init__(self, *args: Any, task_weights: tuple[float, float], collator: Any, single_pass: bool = True,
                 dev_eval: Callable[[Any], dict[str, float]] | None = None, packing: bool = True,
                 **kwargs: Any):
        super().__init__(*args, data_collator=lambda items: items, **kwargs)
        self.task_weights = task_weights
        self.single_pass = single_pass
        self.collator = collator
        self.dev_eval = dev_eval
        self.packed = bool(packing and self.packing_allowed and enable_packing(self.model))
        self.loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean
        self._parts: dict[str, list[float]] = defaultdict(list)

    @property
    def tasks(self) -> tuple[int, ...]:
        """The tasks with a non-zero weight, reasoning first."""
        w_cls, w_rea = self.task_weights
        return tuple(t for t, w in ((TASK_REA, w_rea), (TASK_CLS, w_cls)) if w > 0)

    def forward_targets(self, model: Any, items: Any, tasks: tuple[int, ...]) -> dict[str, Any]:
        """Collate, run the model and return logits at the target-predicting positions only ([N, V])."""
        batch = self._prepare_inputs(self.collator(items, tasks, packed=self.packed))
        labels, task_ids = batch.pop("labels"), batch.pop("task_ids")
        mask = prediction_mask(labels)
        extra = {"use_cache": False} if self.packed else {}  # a cache would keep the packed keys and values
        logits = model(**batch, logits_to_keep=mask, **extra).logits
        return {"batch": batch, "labels": labels, "task_ids": task_ids, "mask": mask, "logits": logits}

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """L = λ_cls·CE_cls + λ_rea·CE_rea over target tokens (:func:`mulcot.train.losses.multitask_loss`)."""
        w_cls, w_rea = self.task_weights
        tasks = self.tasks
        if self.single_pass or len(tasks) == 1:
            f = self.forward_targets(model, inputs, tasks)
            loss, parts = multitask_loss(f["logits"], f["labels"], f["mask"], f["task_ids"], w_cls, w_rea)
        else:  # one forward pass per task (to compare with the single pass)
            means = {}
            for task in tasks:
                f = self.forward_targets(model, inputs, (task,))
                ce = target_ce(f["logits"], f["labels"], f["mask"])
                means[task] = task_means(ce, position_tasks(f["mask"], f["task_ids"]))[task]
            zero = next(iter(means.values())) * 0
            loss = w_cls * means.get(TASK_CLS, zero) + w_rea * means.get(TASK_REA, zero)
            parts = {k: float(means.get(t, zero).detach()) for k, t in (("ce_cls", TASK_CLS), ("ce_rea", TASK_REA))}
        self.record(parts)
        return (loss, None) if return_outputs else loss

    def record(self, parts: dict[str, float]) -> None:
        """Keep a step's loss parts (ce_cls, ce_rea, …) to log their mean with the loss."""
        for key, value in parts.items():
            self._parts[key].append(value)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs:
            means = {key: sum(values) / len(values) for key, values in self._parts.items() if values}
            for values in self._parts.values():
                values.clear()
            # the Trainer averages the loss over ranks; average its parts the same way
            ranks = dist.gather(means)
            for key in means:
                logs[key] = round(sum(r[key] for r in ranks if key in r) / sum(1 for r in ranks if key in r), 6)
        super().log(logs, *args, **kwargs)

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        """The plateau schedule with its warm-up (:class:`mulcot.train.schedule.WarmupPlateau`); the Trainer's own
        ``reduce_lr_on_plateau`` would ignore ``warmup_steps``. Any other schedule is the Trainer's."""
        if self.lr_scheduler is None and self.args.lr_scheduler_type == SchedulerType.REDUCE_ON_PLATEAU:
            self.lr_scheduler = WarmupPlateau(optimizer or self.optimizer,
                                              self.args.get_warmup_steps(num_training_steps),
                                              **(self.args.lr_scheduler_kwargs or {}))
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        if self.dev_eval is None:
            return {}
        start = time.perf_counter()
        raw = self.dev_eval(self.model)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in raw.items()}
        metrics[f"{metric_key_prefix}_runtime"] = round(time.perf_counter() - start, 3)
        watched = plateau_metric(metrics, self.args.metric_for_best_model or "accuracy")
        if isinstance(self.lr_scheduler, WarmupPlateau) and watched is not None:
            self.lr_scheduler.plateau_step(watched, self.state.global_step)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def prediction_step(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - evaluate is overridden
        raise NotImplementedError


def train_assistant(store: Store, config: TrainConfig, *, resume: bool = False, progress: Progress | None = None,
                    items: list[Any] | None = None) -> TrainResult:
    """Train (or resume) the assistant on D_t (or ``items``); records the run and writes ``runs/<name>/`` (beside the
    database unless ``config.runs_dir`` says where)."""
    config = with_runs_dir(config, store.runs_dir)
    settings = deciding_settings(config)
    dist.setup(config.device)

    def prepare() -> list[Any]:
        check_request(store, config, resume)
        check_settings(store, config, resume, settings)
        store.require_dataset(config.dataset)
        if items is not None:
            return mask_items(items, config.inputs)
        return mask_items(teacher_items(store, config.dataset, config.split,
                                        allow_text_only=allow_text_only(store, config)), config.inputs)

    # every rank checks before any records the run; a refusal is one error, the same on every rank
    items = dist.everywhere(prepare)
    return fit(store, config, kind="train-assistant", items=items, trainer_class=MultiTaskTrainer, settings=settings,
               resume=resume, progress=progress)
