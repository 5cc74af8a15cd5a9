"""Stage 4, the student's joint learning on D_all = D_t ∪ D_a with the assistant's soft labels.

L = (1−λ)·(λ_cls·CE_cls + λ_rea·CE_rea) + λ·(λ_cls·KL_cls + λ_rea·KL_rea)  (:func:`mulcot.train.losses.distill_loss`)

KL(p_a ‖ p_s) compares the assistant's and the student's temperature-softened next-token distributions **at target
positions only** (the positions whose next token is part of the answer). The authors' released code also counts
prompt, image and padding positions; mulcot does not, so the soft term teaches what the student must say, not how
to echo its prompt.

Soft labels come cached (top-k on disk, the default) or online (the assistant resident):
:mod:`mulcot.train.soft_labels`. ``DistillTrainer`` is ``MultiTaskTrainer`` with the soft term added in
``compute_loss`` and nothing else.

Assistant and student must share the tokenizer (Qwen2.5-VL-7B → 3B, Qwen3-VL-8B → 2B do); their output layers may
differ in padding rows, so the KL uses the common vocabulary prefix.
"""

from __future__ import annotations

from typing import Any

from mulcot.core.inputs import TrainItem, mask_items, sample_item, teacher_items
from mulcot.core.refs import RunRef, adapter_digest, resolve_run
from mulcot.errors import MulcotError
from mulcot.store import Store
from mulcot.train import distributed as dist
from mulcot.train.assistant import MultiTaskTrainer
from mulcot.train.config import DistillConfig, deciding_settings, with_runs_dir
from mulcot.train.loop import Progress, TrainResult, allow_text_only, check_request, check_settings, fit
from mulcot.train.losses import distill_loss, position_tasks, target_ce, task_means
from mulcot.train.soft_labels import SoftLabelSource, source_class


class DistillTrainer(MultiTaskTrainer):
    """``MultiTaskTrainer`` whose loss adds the assistant's soft labels:
    L = (1−λ)·(λ_cls·CE_cls + λ_rea·CE_rea) + λ·(λ_cls·KL_cls + λ_rea·KL_rea)."""

    packing_allowed = False  # the soft labels are read row by row (one sequence per row)

    def __init__(self, *args: Any, soft_labels: SoftLabelSource, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.soft_labels = soft_labels

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        w_cls, w_rea = self.task_weights
        cfg = self.soft_labels.config
        f = self.forward_targets(model, inputs, self.tasks)
        tasks = position_tasks(f["mask"], f["task_ids"])
        ce = target_ce(f["logits"], f["labels"], f["mask"])
        kl = self.soft_labels.kl(inputs, self.tasks, f["batch"], f["logits"], f["mask"])
        loss, parts = distill_loss(task_means(ce, tasks), task_means(kl, tasks), w_cls, w_rea, cfg.lam, cfg.tau,
                                   cfg.tau_squared)
        self.record(parts)
        return (loss, None) if return_outputs else loss


def distill_items(store: Store, config: DistillConfig, ref: RunRef | None) -> list[TrainItem]:
    """D_all = D_t ∪ D_a as training items (one per chain; D_t alone without an assistant)."""
    items = teacher_items(store, config.dataset, config.split, allow_text_only=allow_text_only(store, config))
    if config.include_expanded and ref is not None:
        samples = {s["id"]: s for s in store.samples(config.dataset, config.split)}
        for c in store.assistant_set(config.dataset, config.split, ref.run_id):
            items.append(sample_item(samples[c["sample_id"]], c["text"], c["id"]))
    return mask_items(items, config.inputs)


def check_backbones(config: DistillConfig, ref: RunRef) -> None:
    """Refuse, in one line, a Qwen-VL student with a text-only assistant or the reverse: the soft labels of one
    are over prompts the other never sees (an image versus its caption)."""
    from mulcot.models.loading import is_text_family, model_family

    student, assistant = model_family(config.model), model_family(ref.base_model)
    if is_text_family(student) != is_text_family(assistant):
        kind = {True: "text-only", False: "vision-language (Qwen-VL)"}
        raise MulcotError(
            f"the student {config.model} is a {kind[is_text_family(student)]} model ({student}) but the assistant "
            f"{ref.run_id} is a {kind[is_text_family(assistant)]} one ({assistant}): distil between two text-only "
            "or two Qwen-VL models"
        )


def distill(store: Store, config: DistillConfig, *, resume: bool = False,
            progress: Progress | None = None) -> TrainResult:
    """Train the student on D_all with the hard and soft losses (the same run machinery as train-assistant).

    With λ = 0 the soft term weighs nothing: no soft labels are computed (no cache, no resident assistant, no
    server) and the step is the assistant's multi-task step on D_all — the same loss (tests/test_distill.py), packed
    where the backbone allows."""
    hard_only = config.lam == 0
    source = source_class(config.soft_labels)
    if not hard_only:
        source.check_settings(config)
    config = with_runs_dir(config, store.runs_dir)
    dist.setup(config.device)

    def prepare() -> tuple[RunRef | None, list[TrainItem], dict[str, Any]]:
        check_request(store, config, resume)
        ref = resolve_run(store, config.assistant, config.runs_dir) if config.assistant else None  # None: w/o Asst
        settings = deciding_settings(config, **({"assistant_sha256": adapter_digest(ref.adapter)} if ref else {}))
        check_settings(store, config, resume, settings)
        if ref is not None:
            check_backbones(config, ref)
        items = distill_items(store, config, ref)
        if config.max_train_items:  # (fit takes the same first N) soft labels only for what is trained on
            items = items[: config.max_train_items]
        if not hard_only:
            source.check_items(config, items)
        return ref, items, settings

    # every rank checks before any records the run; a refusal is one error, the same on every rank
    ref, items, settings = dist.everywhere(prepare)
    if hard_only:
        return fit(store, config, kind="distill", items=items, trainer_class=MultiTaskTrainer, settings=settings,
                   resume=resume, progress=progress)
    assert ref is not None  # DistillConfig refuses λ > 0 without an assistant
    soft = source(store, config, ref, items, progress, assistant_sha256=settings["assistant_sha256"])

    def extras(processor: Any, collator: Any, folder: Any) -> dict[str, Any]:
        soft.prepare(processor, collator, folder)
        return {"soft_labels": soft}

    result = fit(store, config, kind="distill", items=items, trainer_class=DistillTrainer, settings=settings,
                 extras=extras, resume=resume, progress=progress)
    if soft.stats is not None and dist.is_main():  # what this invocation's scoring did (runs show)
        metrics = (store.get_run(config.name) or {}).get("metrics") or {}
        store.update_run(config.name, metrics={**metrics, f"soft_labels_{soft.mode}": soft.stats})
    return result
