"""Preference optimisation (``mulcot dpo``, the paper's future work): DPO of a trained assistant's or student's
LoRA adapter on pairs of its dataset's chains (:mod:`mulcot.train.pairs`), through TRL's ``DPOTrainer``.

The loss is TRL's (``--loss sigmoid`` is DPO: −log σ(β·[(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) −
log π_ref(y_l|x))]); ``ipo``, ``hinge``, ``robust``, … are its variants). The reference policy π_ref is the
**starting adapter**, not the base model: the adapter is loaded as PEFT's trainable ``default`` adapter, and TRL,
given a PEFT model that already carries an adapter and no reference model, copies it into a frozen ``ref``
adapter and computes the reference log-probs with that one active (``DPOTrainer.__init__``, TRL ≥ 1.x). The run
refuses to start when that copy is missing, rather than silently comparing against the base model.

Everything else is the HF Trainer's: checkpoints (``runs/<name>/checkpoints``, resumed with ``--resume``), the
per-step ``log.jsonl`` (loss, ``rewards/margins``, ``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies``)
and ``curves.png``. The trained adapter lands in ``runs/<name>/adapter/`` (the ``ref`` copy dropped), so ``eval
--model``, ``export``, ``predict`` and a further ``dpo`` take the run like any other.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from mulcot.core.prompts import get_prompt
from mulcot.core.refs import RunRef, adapter_digest, resolve_run
from mulcot.errors import ModelError, MulcotError
from mulcot.events import Progress
from mulcot.store import Store
from mulcot.store.runs import RunRecord
from mulcot.train.checkpoints import last_complete_checkpoint, save_adapter
from mulcot.train.config import DPO_LOSSES, PreferenceConfig, deciding_settings, settings_hash, with_runs_dir
from mulcot.train.loop import RESUME_HINT, TrainResult, _oom_message, check_request, check_settings
from mulcot.train.pairs import PairSet, build_pairs, parse_sources

REF_ADAPTER = "ref"  # the name TRL gives the frozen copy of the starting adapter
REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def preference_rows(pairs: PairSet, *, text_only: bool, max_pixels: int, inputs: str = "all") -> list[dict[str, Any]]:
    """TRL's conversational preference rows: the pair's P_cot prompt (for a text-only backbone the image becomes its
    caption, as in training), the chosen and rejected chains as assistant turns, and for a Qwen-VL backbone the
    sample's image (downsized to ``max_pixels``) in ``images``. The posts are shown as the starting run was trained
    on them (``inputs``: without images, or without text)."""
    from mulcot.core.images import load_image
    from mulcot.core.inputs import mask_items, render_prompt, sample_item

    template = get_prompt("cot", pairs.task)
    rows = []
    for p in pairs.pairs:
        item = mask_items([sample_item(pairs.samples[p.sample_id])], inputs)[0]
        row: dict[str, Any] = {
            "prompt": [{"role": "user", "content": render_prompt(template, item, text_only)}],
            "chosen": [{"role": "assistant", "content": p.chosen}],
            "rejected": [{"role": "assistant", "content": p.rejected}],
        }
        if not text_only:
            row["images"] = [load_image(item.image_path, max_pixels)] if item.image_path else []
        rows.append(row)
    return rows


def trl_arguments(cls: type, config: Any, model: Any, n_rows: int, vision_lora: bool = False, **own: Any) -> Any:
    """A TRL trainer's config (``cls``: ``DPOConfig``, ``GRPOConfig``) for a run, with what every mulcot TRL run
    shares: AdamW with linear decay after ``warmup_steps``, a checkpoint per epoch of ``n_rows`` rows (or
    ``save_steps``), a log line per step, the run's tracker, mixed precision only on a GPU; under a launcher DDP over
    NCCL (GPU) or gloo (CPU), searching for unused weights only when the adapter has LoRA on the vision tower (unused
    in a step without images). ``own`` adds the trainer's own settings."""
    import torch

    from mulcot.train import distributed as dist

    device = str(next(model.parameters()).device)
    dtype = next(model.parameters()).dtype
    world = dist.world_size()
    steps_per_epoch = max(1, math.ceil(n_rows / (config.batch_size * config.grad_accum * world)))
    launch: dict[str, Any] = {}
    if world > 1:
        launch = {"ddp_backend": "nccl" if device.startswith("cuda") else "gloo",
                  "ddp_find_unused_parameters": vision_lora}
    return cls(
        output_dir=str(config.folder / "checkpoints"),
        gradient_accumulation_steps=config.grad_accum,
        num_train_epochs=config.epochs,
        learning_rate=config.lr,
        lr_scheduler_type="linear",
        warmup_steps=config.warmup_steps,
        optim="adamw_torch",
        activation_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing=None,  # TRL defaults the old name to True, which transformers 5 warns about
        save_strategy="steps",
        save_steps=config.save_steps or steps_per_epoch,
        save_total_limit=2,
        logging_steps=1,
        report_to=[] if config.report_to == "none" else [config.report_to],
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=config.seed,
        use_cpu=device == "cpu",
        bf16=device.startswith("cuda") and dtype == torch.bfloat16,
        fp16=device.startswith("cuda") and dtype == torch.float16,
        **launch,
        **own,
    )


def dpo_arguments(config: PreferenceConfig, model: Any, n_pairs: int, vision_lora: bool = False) -> Any:
    """TRL's ``DPOConfig`` for a run (:func:`trl_arguments`): β, the loss, no truncation by default."""
    from trl import DPOConfig

    return trl_arguments(DPOConfig, config, model, n_pairs, vision_lora, beta=config.beta, loss_type=[config.loss],
                         max_length=config.max_length,  # None: truncating a Qwen-VL prompt would cut its image tokens
                         per_device_train_batch_size=config.batch_size)


def dpo(store: Store, config: PreferenceConfig, *, resume: bool = False,
        progress: Progress | None = None) -> TrainResult:
    """DPO of the run ``config.model`` on the pairs of ``config.dataset``; records the run (kind ``dpo``) and
    writes ``runs/<name>/`` with ``adapter/``. Refuses, in one line, bad settings and a dataset without pairs.

    Under torchrun / accelerate launch every rank calls this and the Trainer trains data-parallel (DDP): each rank
    loads the model on its own device, the pairs are the main process's (``pairs.json``), and only the main
    process writes the store, the run folder and the progress."""
    from mulcot.core.inputs import is_text_only
    from mulcot.models import load_model
    from mulcot.models.loading import load_with_adapter
    from mulcot.train import distributed as dist
    from mulcot.train.loop import train_device

    if config.loss not in DPO_LOSSES:
        raise MulcotError(f"--loss '{config.loss}' is not one of TRL's DPO losses: {', '.join(DPO_LOSSES)}")
    if config.beta <= 0:
        raise MulcotError("--beta must be positive")
    sources = parse_sources(config.sources)
    start = time.perf_counter()
    config = with_runs_dir(config, store.runs_dir)
    dist.setup(config.device)
    main = dist.is_main()
    progress = progress if main else None
    folder = config.folder

    def prepare() -> tuple[Any, PairSet, dict[str, Any]]:
        check_request(store, config, resume)
        ref = resolve_run(store, config.model, config.runs_dir)
        settings = deciding_settings(config, leave_out=("model",), start_sha256=adapter_digest(ref.adapter))
        check_settings(store, config, resume, settings)
        pairs = build_pairs(store, config.dataset, config.split, sources)
        if not pairs.pairs:
            raise MulcotError(
                f"no preference pairs in {config.dataset}/{config.split} from {','.join(sources)}: see `mulcot data "
                f"pairs {config.dataset}` (pairs need a correct chain and a wrong, failed or lower-rated one of the "
                "same sample)"
            )
        if config.max_pairs:
            pairs.pairs = pairs.pairs[: config.max_pairs]
        return ref, pairs, settings

    ref, pairs, settings = dist.everywhere(prepare)
    # every rank trains on the pairs the main process kept (read back from pairs.json on resume)
    kept = dist.on_main(lambda: _keep_pairs(pairs, folder / "pairs.json", resume))
    found = {(p.chosen_id, p.rejected_id): p for p in pairs.pairs}
    pairs.pairs = [found[k] for k in kept]

    def load() -> tuple[Any, Any, str]:
        base, processor, family = load_model(ref.base_model, device=train_device(config), dtype=config.dtype)
        return load_with_adapter(base, ref.adapter, is_trainable=True), processor, family

    model, processor, family = dist.everywhere(load)
    text_only = is_text_only(processor)
    recorded = {**config.public(), **settings, "family": family, "base_model": ref.base_model, "start_run": ref.run_id,
                "start_adapter": str(ref.adapter), "inputs": ref.inputs, "pairs": pairs.summary(),
                "world_size": dist.world_size(),
                "effective_batch": config.batch_size * config.grad_accum * dist.world_size()}
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(recorded, indent=2, default=str))
    record = (
        store.run(config.name, kind="dpo", dataset=config.dataset, config=recorded, output_dir=str(folder),
                  settings_hash=settings_hash(settings), resume_hint=RESUME_HINT)
        if main
        else nullcontext(RunRecord(id=config.name))
    )
    with record as run:
        try:
            result = _train(config, model, processor, pairs, text_only, ref, resume, progress)
        except Exception as exc:
            message = _oom_message(exc, config)  # type: ignore[arg-type]
            if message:
                raise MulcotError(message) from None
            raise
        result.wall_s = time.perf_counter() - start
        run.metrics = {"steps": result.steps, "train_loss": result.train_loss, "last": result.best,
                       "pairs": len(pairs.pairs), "world_size": dist.world_size(), "launch": result.launch}
    return result


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    import datasets

    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def _keep_pairs(pairs: PairSet, path: Any, resume: bool) -> list[tuple[int, int]]:
    """A run trains on the pairs it started with: they are written to ``pairs.json`` (chosen and rejected chain
    ids) at the start and read back on resume, so chains added to the store meanwhile do not shift its data.
    Returns the run's pairs as (chosen id, rejected id)."""
    if resume and path.is_file():
        kept = [(int(a), int(b)) for a, b in json.loads(path.read_text())]
        found = {(p.chosen_id, p.rejected_id) for p in pairs.pairs}
        missing = [k for k in kept if k not in found]
        if missing:
            raise MulcotError(f"{len(missing)} of the run's {len(kept)} pairs are no longer in the store (e.g. chains "
                              f"{missing[0][0]} / {missing[0][1]}): start a new run with another --name")
        return kept
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([[p.chosen_id, p.rejected_id] for p in pairs.pairs]))
    return [(p.chosen_id, p.rejected_id) for p in pairs.pairs]


def _train(config: PreferenceConfig, model: Any, processor: Any, pairs: PairSet, text_only: bool, ref: RunRef,
           resume: bool, progress: Progress | None) -> TrainResult:
    import torch
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import DPOTrainer

    from mulcot.train import distributed as dist
    from mulcot.train.callbacks import RunCallback, plot_curves, route_trackers

    torch.manual_seed(config.seed)
    folder = config.folder
    rows = preference_rows(pairs, text_only=text_only, max_pixels=config.max_pixels, inputs=ref.inputs)
    from mulcot.generation.server import vision_lora_tensors

    args = dpo_arguments(config, model, len(rows), vision_lora=vision_lora_tensors(ref.adapter) > 0)
    callback = RunCallback(folder, progress, lambda metrics: None, None)  # no dev evaluation: no best epoch
    with _quiet_datasets():  # TRL tokenizes a text-only dataset with datasets' map, which draws a bar on stderr
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=processor.tokenizer if text_only else processor,
                             callbacks=[callback])
    policy = trainer.accelerator.unwrap_model(trainer.model)
    if REF_ADAPTER not in policy.peft_config:
        raise ModelError("TRL did not keep a copy of the starting adapter as the DPO reference (the reference would "
                         "be the base model): this TRL/peft pairing is not supported")
    route_trackers(trainer, folder)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    # the main process chooses (and tidies) the checkpoint to resume from; every rank resumes from it
    checkpoint = dist.on_main(lambda: last_complete_checkpoint(folder / "checkpoints")) if resume else None
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    policy.delete_adapter(REF_ADAPTER)
    logged = [r for r in trainer.state.log_history if "rewards/margins" in r]
    last = {"step": trainer.state.global_step, "epoch": trainer.state.epoch,
            **{k: logged[-1][k] for k in REWARD_KEYS if logged and k in logged[-1]}}
    if dist.is_main():  # DDP: every rank holds the same whole adapter
        meta = {"run": config.name, "base": ref.base_model, "from": ref.run_id, "kind": "dpo", "last": last,
                "inputs": ref.inputs}
        save_adapter(policy, processor, folder / "adapter", meta)
        plot_curves(folder)
    dist.barrier()
    launch = {"world_size": trainer.args.world_size, "backend": trainer.args.ddp_backend, "fsdp": False,
              "deepspeed": False}
    return TrainResult(run=config.name, folder=str(folder), adapter=str(folder / "adapter"), best=last,
                       steps=trainer.state.global_step, train_loss=output.training_loss, history=logged,
                       wall_s=0.0, launch=launch)
