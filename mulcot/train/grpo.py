"""Reinforcement learning (``mulcot grpo``, beyond the paper): GRPO of a trained assistant's or student's LoRA
adapter on its own sampled chains, through TRL's ``GRPOTrainer`` — no RL loop of mulcot's own.

Each optimizer step takes ``batch_size × grad_accum`` training posts, renders their P_cot prompt (the prompt every
assistant and student is trained and evaluated on; for a text-only backbone the image becomes its caption, as in
training), samples ``group_size`` chains per post at ``temperature``, scores each with the weighted rewards of
:mod:`mulcot.train.rewards` (label correct against gold, the five fields parse, the Prediction agrees with the
starting run's label head), and moves the policy towards the chains that beat their group's mean, with β times a
KL penalty to the reference. The reference is the **starting adapter**, not the base model: TRL, given a PEFT model
that already carries an adapter and β > 0, copies it into a frozen ``ref`` adapter (``GRPOTrainer.__init__``, TRL
1.16); the run refuses to start when that copy is missing. Dropout is off (TRL's ``disable_dropout``), so the first
step's policy equals its reference and its logged KL is 0.

Everything else is the HF Trainer's, as for ``mulcot dpo``: checkpoints (``runs/<name>/checkpoints``, ``--resume``),
the per-step ``log.jsonl`` (``reward``, ``rewards/<name>/mean`` per component, ``kl``, ``loss``, completion
lengths) and ``curves.png``. The trained adapter lands in ``runs/<name>/adapter/`` (the ``ref`` copy dropped), so
``eval --model``, ``export``, ``predict`` and a further ``dpo``/``grpo`` take the run like any other.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from mulcot.core.prompts import get_prompt
from mulcot.core.refs import adapter_digest, resolve_run
from mulcot.errors import ModelError, MulcotError
from mulcot.events import Progress
from mulcot.store import Store
from mulcot.store.runs import RunRecord
from mulcot.train.checkpoints import last_complete_checkpoint, save_adapter
from mulcot.train.config import RLConfig, deciding_settings, settings_hash, with_runs_dir
from mulcot.train.dpo import REF_ADAPTER, _quiet_datasets, trl_arguments
from mulcot.train.loop import RESUME_HINT, TrainResult, _oom_message, check_request, check_settings
from mulcot.train.pairs import EVAL_SPLITS
from mulcot.train.rewards import FUNCTIONS, REWARDS

REWARD_KEYS = ("reward", "kl", *(f"rewards/{name}/mean" for name in REWARDS))


def prompt_items(store: Store, dataset: str, split: str, max_prompts: int | None) -> tuple[list[Any], str]:
    """The labelled posts of a training split as items (no chains), and the dataset's task; refuses an evaluation
    split and a split without gold labels (the label reward needs them), in one line each."""
    from mulcot.core.inputs import sample_item

    ds = store.require_dataset(dataset)
    if split.lower() in EVAL_SPLITS:
        raise MulcotError(f"GRPO trains on training posts only: '{split}' is an evaluation split and its gold labels "
                          "must not train anything (use --split train)")
    if split not in store.splits(dataset):
        raise MulcotError(f"dataset '{dataset}' has no split '{split}' (splits: {', '.join(store.splits(dataset))})")
    items = [sample_item(s) for s in store.samples(dataset, split) if s["label"]]
    if not items:
        raise MulcotError(f"{dataset}/{split} has no gold labels: GRPO's label reward needs them (import the "
                          "labelled split, or label the posts first)")
    return items[:max_prompts] if max_prompts else items, ds["task"]


def prompt_rows(items: list[Any], task: str, label_heads: dict[int, str], *, text_only: bool,
                max_pixels: int) -> list[dict[str, Any]]:
    """TRL's conversational prompt rows: the post's P_cot as the user turn, its gold label and the starting label
    head's answer (the reward columns), and for a Qwen-VL backbone the post's image in ``images``."""
    from mulcot.core.images import load_image
    from mulcot.core.inputs import render_prompt

    template = get_prompt("cot", task)
    rows = []
    for item in items:
        row: dict[str, Any] = {"prompt": [{"role": "user", "content": render_prompt(template, item, text_only)}],
                               "gold": item.label, "label_head": label_heads[item.sample_id],
                               "sample_id": item.sample_id}
        if not text_only:
            row["images"] = [load_image(item.image_path, max_pixels)] if item.image_path else []
        rows.append(row)
    return rows


def grpo_arguments(config: RLConfig, model: Any, n_prompts: int, vision_lora: bool = False) -> Any:
    """TRL's ``GRPOConfig`` for a run (:func:`mulcot.train.dpo.trl_arguments`): ``batch_size`` prompts ×
    ``group_size`` completions per micro-batch, dropout off, at most ``steps`` optimizer steps."""
    from trl import GRPOConfig

    return trl_arguments(GRPOConfig, config, model, n_prompts, vision_lora, num_generations=config.group_size,
                         per_device_train_batch_size=config.batch_size * config.group_size, beta=config.beta,
                         temperature=config.temperature, max_completion_length=config.max_new_tokens,
                         reward_weights=list(config.reward_weights),
                         disable_dropout=True,  # the first step's policy is then exactly its reference: KL 0
                         max_steps=config.steps or -1)


def grpo(store: Store, config: RLConfig, *, resume: bool = False, progress: Progress | None = None) -> TrainResult:
    """GRPO of the run ``config.model`` on the labelled posts of ``config.dataset``; records the run (kind
    ``grpo``) and writes ``runs/<name>/`` with ``adapter/``. Refuses, in one line, bad settings, a start that is not
    a trained run of a family mulcot loads, and a split without gold labels — before the store changes.

    Under torchrun / accelerate launch every rank calls this and the Trainer trains data-parallel (DDP): each rank
    loads the model on its own device, the prompts and label heads are the main process's (``prompts.json``), and
    only the main process writes the store, the run folder and the progress."""
    from mulcot.core.inputs import is_text_only, mask_items
    from mulcot.models import load_model
    from mulcot.models.loading import load_with_adapter, model_family
    from mulcot.train import distributed as dist
    from mulcot.train.loop import train_device

    start = time.perf_counter()
    config = with_runs_dir(config, store.runs_dir)
    dist.setup(config.device)
    main = dist.is_main()
    progress = progress if main else None
    folder = config.folder

    def prepare() -> tuple[Any, list[Any], str, dict[str, Any], str]:
        check_request(store, config, resume)
        ref = resolve_run(store, config.model, config.runs_dir)
        family = model_family(ref.base_model)  # a base of a family mulcot cannot load is refused here, in one line
        settings = deciding_settings(config, leave_out=("model",), start_sha256=adapter_digest(ref.adapter))
        check_settings(store, config, resume, settings)
        items, task = prompt_items(store, config.dataset, config.split, config.max_prompts)
        return ref, mask_items(items, ref.inputs), task, settings, family  # shown as the run was trained on them

    ref, items, task, settings, family = dist.everywhere(prepare)

    def load() -> tuple[Any, Any]:
        base, processor, _ = load_model(ref.base_model, device=train_device(config), dtype=config.dtype)
        return load_with_adapter(base, ref.adapter, is_trainable=True), processor

    model, processor = dist.everywhere(load)
    text_only = is_text_only(processor)
    # the starting label head's answers (the agreement reward's column), kept with the run for its resume
    heads = dist.on_main(lambda: _label_heads(model, processor, items, task, config, folder / "prompts.json",
                                              resume))
    items = [i for i in items if i.sample_id in heads]
    recorded = {**config.public(), **settings, "family": family, "base_model": ref.base_model, "start_run": ref.run_id,
                "start_adapter": str(ref.adapter), "inputs": ref.inputs, "prompts": len(items),
                "rewards": list(REWARDS),
                "world_size": dist.world_size(),
                "prompts_per_step": config.batch_size * config.grad_accum * dist.world_size()}
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(recorded, indent=2, default=str))
    record = (
        store.run(config.name, kind="grpo", dataset=config.dataset, config=recorded, output_dir=str(folder),
                  settings_hash=settings_hash(settings), resume_hint=RESUME_HINT)
        if main
        else nullcontext(RunRecord(id=config.name))
    )
    with record as run:
        rows = prompt_rows(items, task, heads, text_only=text_only, max_pixels=config.max_pixels)
        try:
            result = _train(config, model, processor, rows, text_only, ref, resume, progress)
        except Exception as exc:
            message = _oom_message(exc, config)  # type: ignore[arg-type]
            if message:
                raise MulcotError(message) from None
            raise
        result.wall_s = time.perf_counter() - start
        run.metrics = {"steps": result.steps, "train_loss": result.train_loss, "last": result.best,
                       "prompts": len(items), "world_size": dist.world_size(), "launch": result.launch}
    return result


def _label_heads(model: Any, processor: Any, items: list[Any], task: str, config: RLConfig, path: Path,
                 resume: bool) -> dict[int, str]:
    """sample id -> the starting run's label-head answer (forced choice over the three labels), for the run's
    prompts: scored once and written to ``prompts.json`` at the start, read back on resume (so posts added to the
    store meanwhile do not shift the run's data)."""
    from mulcot.generation.choice import score_labels

    if resume and path.is_file():
        kept = {int(k): v for k, v in json.loads(path.read_text()).items()}
        missing = sorted(set(kept) - {i.sample_id for i in items})
        if missing:
            raise MulcotError(f"{len(missing)} of the run's {len(kept)} posts are no longer in the store (e.g. sample "
                              f"{missing[0]}): start a new run with another --name")
        return kept
    choices = score_labels(model, processor, items, task, max_pixels=config.max_pixels)
    heads = {c.sample_id: c.prediction for c in choices}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({str(k): v for k, v in heads.items()}))
    return heads


def _train(config: RLConfig, model: Any, processor: Any, rows: list[dict[str, Any]], text_only: bool, ref: Any,
           resume: bool, progress: Progress | None) -> TrainResult:
    import torch
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import GRPOTrainer

    from mulcot.generation.server import vision_lora_tensors
    from mulcot.train import distributed as dist
    from mulcot.train.callbacks import RunCallback, plot_curves, route_trackers

    torch.manual_seed(config.seed)
    folder = config.folder
    args = grpo_arguments(config, model, len(rows), vision_lora=vision_lora_tensors(ref.adapter) > 0)
    callback = RunCallback(folder, progress, lambda metrics: None, None)  # no dev evaluation: no best epoch
    with _quiet_datasets():
        trainer = GRPOTrainer(model=model, reward_funcs=[FUNCTIONS[name] for name in REWARDS], args=args,
                              train_dataset=Dataset.from_list(rows),
                              processing_class=processor.tokenizer if text_only else processor,
                              callbacks=[callback])
    policy = trainer.accelerator.unwrap_model(trainer.model)
    if config.beta > 0 and REF_ADAPTER not in policy.peft_config:
        raise ModelError("TRL did not keep a copy of the starting adapter as the GRPO reference (the KL would be to "
                         "the base model): this TRL/peft pairing is not supported")
    route_trackers(trainer, folder)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    # the main process chooses (and tidies) the checkpoint to resume from; every rank resumes from it
    checkpoint = dist.on_main(lambda: last_complete_checkpoint(folder / "checkpoints")) if resume else None
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if REF_ADAPTER in policy.peft_config:
        policy.delete_adapter(REF_ADAPTER)
    logged = [r for r in trainer.state.log_history if "reward" in r]
    last = {"step": trainer.state.global_step, "epoch": trainer.state.epoch,
            **{k: logged[-1][k] for k in REWARD_KEYS if logged and logged[-1].get(k) is not None}}
    if dist.is_main():  # DDP: every rank holds the same whole adapter
        meta = {"run": config.name, "base": ref.base_model, "from": ref.run_id, "kind": "grpo", "last": last,
                "inputs": ref.inputs}
        save_adapter(policy, processor, folder / "adapter", meta)
        plot_curves(folder)
    dist.barrier()
    launch = {"world_size": trainer.args.world_size, "backend": trainer.args.ddp_backend, "fsdp": False,
              "deepspeed": False}
    return TrainResult(run=config.name, folder=str(folder), adapter=str(folder / "adapter"), best=last,
                       steps=trainer.state.global_step, train_loss=output.training_loss, history=logged,
                       wall_s=0.0, launch=launch)
