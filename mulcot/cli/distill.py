"""``mulcot expand`` and ``mulcot distill``: data expansion by the assistant and the student's joint learning."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mulcot.cli.common import DbOption, JsonOption, console, err_console, open_store, print_json
from mulcot.cli.train import parse_weights, print_result, training_progress
from mulcot.labels import LABELS


def expand(
    dataset: Annotated[str, typer.Argument(help="Dataset whose training split the assistant expands.")],
    assistant: Annotated[str, typer.Option(help="The trained assistant: runs/NAME, an adapter folder or a run name.")],
    split: Annotated[str, typer.Option(help="Only 'train' is accepted (other splits would leak labels).")] = "train",
    n: Annotated[int, typer.Option(help="Chains to sample per training sample.")] = 1,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.7,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(help="Token limit per chain.")] = 512,
    batch_size: Annotated[int, typer.Option(help="Samples per generation batch.")] = 8,
    max_pixels: Annotated[int, typer.Option(help="Images are downsized to at most this many pixels.")] = 280 * 280,
    limit: Annotated[int | None, typer.Option(help="Only the first N training samples.")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    device: Annotated[str | None, typer.Option(help="cuda, mps or cpu (default: best available).")] = None,
    dtype: Annotated[str | None, typer.Option(help="bf16, fp16 or fp32.")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Have the trained assistant write chains for the training split; the correct ones form D_a."""
    from mulcot.expand import ExpandConfig
    from mulcot.expand import expand as run

    store = open_store(db)
    cfg = ExpandConfig(dataset=dataset, assistant=assistant, split=split, n=n, temperature=temperature, top_p=top_p,
                       max_new_tokens=max_new_tokens, batch_size=batch_size, max_pixels=max_pixels, limit=limit,
                       seed=seed, device=device, dtype=dtype)  # fmt: skip
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, disable=as_json, transient=True) as bar:  # fmt: skip
        task = bar.add_task(f"expanding {dataset}/train", total=None)
        summary = run(store, cfg, progress=lambda done, total: bar.update(task, completed=done, total=total))
    if as_json:
        print_json(summary.as_dict())
        return
    table = Table(title=f"expand {escape(dataset)}/train with {escape(summary.run_id)}")
    for col in ("gold label", "kept (D_a)", "rejected"):
        table.add_column(col, justify="left" if col == "gold label" else "right")
    for label in LABELS:
        table.add_row(label, str(summary.kept.get(label, 0)), str(summary.rejected.get(label, 0)))
    console.print(table)
    console.print(
        f"chains generated now {summary.generated} (samples already done {summary.skipped_done}); unparsed "
        f"{summary.unparsed}; assistant on train: acc {summary.accuracy:.4f}, w-F1 {summary.weighted_f1:.4f}, "
        f"m-F1 {summary.macro_f1:.4f}; D_a = {summary.assistant_set} chains; {summary.wall_s:.1f} s",
        highlight=False,
    )


def distill(
    dataset: Annotated[str, typer.Argument(help="Dataset with teacher chains (and the assistant's expansion).")],
    assistant: Annotated[str, typer.Option(help="The trained assistant: runs/NAME, an adapter folder or a run name.")],
    student: Annotated[str, typer.Option(help="Student base model: hub id (Qwen/Qwen2.5-VL-3B-Instruct) or folder.")],
    name: Annotated[str | None, typer.Option(help="Run name (default: student-DATASET).")] = None,
    lam: Annotated[float, typer.Option(help="λ: weight of the soft (KL) loss against the hard (CE) loss.")] = 0.3,
    tau: Annotated[float, typer.Option(help="τ: softmax temperature of the soft labels.")] = 2.0,
    tau_squared: Annotated[bool, typer.Option(help="Scale the soft loss by τ² (Hinton et al.).")] = False,
    soft_labels: Annotated[str, typer.Option(help="cache (top-k on disk, frugal) or online (assistant resident).")] = (
        "cache"
    ),
    top_k: Annotated[int, typer.Option(help="Cached soft labels: top-k log-probs per target position.")] = 32,
    no_expanded: Annotated[bool, typer.Option("--no-expanded", help="Train on D_t only (skip D_a).")] = False,
    split: Annotated[str, typer.Option(help="Training split.")] = "train",
    dev_split: Annotated[str, typer.Option(help="Dev split for per-epoch evaluation.")] = "dev",
    no_dev: Annotated[bool, typer.Option("--no-dev", help="Skip dev evaluation (keeps the last epoch).")] = False,
    task_weights: Annotated[str, typer.Option(help="λ_cls,λ_rea (paper 0.2,0.8).")] = "0.2,0.8",
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha.")] = 32,
    lora_dropout: Annotated[float, typer.Option(help="LoRA dropout.")] = 0.05,
    lora_targets: Annotated[str, typer.Option(help="language, all, or module names.")] = "language",
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 3e-4,
    batch_size: Annotated[int, typer.Option(help="Chains per micro-batch (each gives 2 sequences).")] = 2,
    grad_accum: Annotated[int, typer.Option(help="Gradient accumulation steps.")] = 20,
    epochs: Annotated[float, typer.Option(help="Epochs at most.")] = 20,
    plateau_epochs: Annotated[int, typer.Option(help="Halve the lr after this many epochs without dev gain.")] = 2,
    max_pixels: Annotated[int, typer.Option(help="Images are downsized to at most this many pixels.")] = 280 * 280,
    device: Annotated[str | None, typer.Option(help="cuda, mps or cpu (default: best available).")] = None,
    dtype: Annotated[str | None, typer.Option(help="bf16, fp16 or fp32.")] = None,
    load_in_4bit: Annotated[bool, typer.Option(help="QLoRA through bitsandbytes.")] = False,
    gradient_checkpointing: Annotated[bool, typer.Option(help="Trade compute for memory.")] = False,
    save_steps: Annotated[int | None, typer.Option(help="Checkpoint every N steps (default: epoch).")] = None,
    max_train_items: Annotated[int | None, typer.Option(help="Use only the first N chains.")] = None,
    max_dev_samples: Annotated[int | None, typer.Option(help="Evaluate on the first N dev samples.")] = None,
    allow_text_only: Annotated[bool, typer.Option(help="Train on a dataset imported without images.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    runs_dir: Annotated[Path, typer.Option(help="Where run folders go.")] = Path("runs"),
    resume: Annotated[bool, typer.Option(help="Continue the run from its last checkpoint.")] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train the student on D_all = D_t ∪ D_a: L = (1−λ)·(hard CE) + λ·(KL to the assistant at target positions)."""
    from mulcot.distill import DistillConfig
    from mulcot.distill import distill as run

    store = open_store(db)
    cfg = DistillConfig(
        dataset=dataset, model=student, name=name or f"student-{dataset}", split=split,
        dev_split=None if no_dev else dev_split, task_weights=parse_weights(task_weights), lora_r=lora_r,
        lora_alpha=lora_alpha, lora_dropout=lora_dropout, lora_targets=lora_targets, lr=lr, batch_size=batch_size,
        grad_accum=grad_accum, epochs=epochs, plateau_epochs=plateau_epochs, max_pixels=max_pixels, device=device,
        dtype=dtype, load_in_4bit=load_in_4bit, gradient_checkpointing=gradient_checkpointing, save_steps=save_steps,
        max_train_items=max_train_items, max_dev_samples=max_dev_samples, allow_text_only=allow_text_only, seed=seed,
        runs_dir=str(runs_dir), assistant=assistant, lam=lam, tau=tau, tau_squared=tau_squared,
        soft_labels=soft_labels, top_k=top_k, include_expanded=not no_expanded,
    )  # fmt: skip
    bar, progress = training_progress(as_json)
    with bar:
        result = run(store, cfg, resume=resume, progress=progress)
    summary = {"run": result.run, "folder": result.folder, "adapter": result.adapter, "best": result.best,
               "steps": result.steps, "train_loss": result.train_loss, "wall_s": round(result.wall_s, 1)}  # fmt: skip
    if as_json:
        print_json(summary)
        return
    print_result(summary)
