"""``mulcot train-assistant``: multi-task LoRA training of a Qwen-VL assistant on teacher reasoning."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from mulcot.cli.common import DbOption, JsonOption, console, err_console, open_store, print_json
from mulcot.errors import MulcotError


def parse_weights(value: str) -> tuple[float, float]:
    try:
        cls, rea = (float(x) for x in value.split(","))
    except ValueError:
        raise MulcotError(f"--task-weights '{value}' is not 'CLS,REA', e.g. 0.2,0.8") from None
    return cls, rea


def training_progress(as_json: bool) -> tuple[Progress, Any]:
    """A rich progress bar (loss, lr, it/s, ETA) and the library callback that feeds it."""
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, disable=as_json, transient=False,
    )  # fmt: skip
    task = bar.add_task("training", total=None, info="")
    state: dict[str, Any] = {"info": ""}

    def progress(event: dict[str, Any]) -> None:
        if event["event"] in ("begin", "step"):
            bar.update(task, description="training", completed=event["step"], total=event["total"])
        elif event["event"] == "log" and "loss" in event:
            state["info"] = f"loss {event['loss']:.4f} lr {event.get('learning_rate', 0):.2e}"
            bar.update(task, info=state["info"])
        elif event["event"] == "soft_labels":
            bar.update(task, description="soft labels", completed=event["done"], total=event["total"])
        elif event["event"] == "eval":
            m = event["metrics"]
            best = event["best"] or {}
            bar.console.print(
                f"epoch {event['epoch']:.0f}: dev acc {m['eval_accuracy']:.4f} m-F1 {m['eval_macro_f1']:.4f} "
                f"w-F1 {m['eval_weighted_f1']:.4f} (best: epoch {best.get('epoch', '-')}, acc "
                f"{best.get('eval_accuracy', 0):.4f})",
                highlight=False,
            )

    return bar, progress


def train_assistant(
    dataset: Annotated[str, typer.Argument(help="Dataset with teacher chains (D_t).")],
    model: Annotated[str, typer.Option(help="Base model: hub id (Qwen/Qwen2.5-VL-7B-Instruct) or folder.")],
    name: Annotated[str | None, typer.Option(help="Run name (folder runs/NAME); default: assistant-DATASET.")] = None,
    split: Annotated[str, typer.Option(help="Training split.")] = "train",
    dev_split: Annotated[str, typer.Option(help="Dev split for per-epoch evaluation.")] = "dev",
    no_dev: Annotated[bool, typer.Option("--no-dev", help="Skip dev evaluation (keeps the last epoch).")] = False,
    task_weights: Annotated[str, typer.Option(help="λ_cls,λ_rea: 0.2,0.8 (paper) or 0.5,0.5 (authors' code).")] = (
        "0.2,0.8"
    ),
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha.")] = 32,
    lora_dropout: Annotated[float, typer.Option(help="LoRA dropout.")] = 0.05,
    lora_targets: Annotated[
        str,
        typer.Option(
            help="language (LM projections), all (suffix match, vision MLPs too, as the authors' code) or module names."
        ),
    ] = "language",  # fmt: skip
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 3e-4,
    batch_size: Annotated[int, typer.Option(help="Samples per micro-batch (each gives 2 sequences).")] = 2,
    grad_accum: Annotated[int, typer.Option(help="Gradient accumulation steps.")] = 20,
    epochs: Annotated[float, typer.Option(help="Epochs at most.")] = 20,
    plateau_epochs: Annotated[int, typer.Option(help="Halve the lr after this many epochs without dev gain.")] = 2,
    min_lr: Annotated[float, typer.Option(help="Floor of the lr halving.")] = 1e-6,
    max_pixels: Annotated[int, typer.Option(help="Images are downsized to at most this many pixels.")] = 280 * 280,
    two_pass: Annotated[bool, typer.Option("--two-pass", help="One forward pass per task instead of one.")] = False,
    device: Annotated[str | None, typer.Option(help="cuda, cuda:1, mps or cpu (default: best available).")] = None,
    dtype: Annotated[str | None, typer.Option(help="bf16, fp16 or fp32 (default: bf16 on GPU, fp32 on CPU).")] = None,
    load_in_4bit: Annotated[bool, typer.Option(help="QLoRA through bitsandbytes.")] = False,
    gradient_checkpointing: Annotated[bool, typer.Option(help="Trade compute for memory.")] = False,
    save_steps: Annotated[int | None, typer.Option(help="Checkpoint every N optimizer steps (default: epoch).")] = (
        None
    ),
    max_train_items: Annotated[int | None, typer.Option(help="Use only the first N chains.")] = None,
    max_dev_samples: Annotated[int | None, typer.Option(help="Evaluate on the first N dev samples.")] = None,
    allow_text_only: Annotated[bool, typer.Option(help="Train on a dataset imported without images.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    runs_dir: Annotated[Path, typer.Option(help="Where run folders go.")] = Path("runs"),
    resume: Annotated[bool, typer.Option(help="Continue the run from its last checkpoint.")] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train the assistant: LoRA on L = λ_cls·CE_cls + λ_rea·CE_rea over teacher reasoning (D_t)."""
    from mulcot.training import TrainConfig
    from mulcot.training import train_assistant as run

    store = open_store(db)
    config = TrainConfig(
        dataset=dataset, model=model, name=name or f"assistant-{dataset}", split=split,
        dev_split=None if no_dev else dev_split, task_weights=parse_weights(task_weights), lora_r=lora_r,
        lora_alpha=lora_alpha, lora_dropout=lora_dropout, lora_targets=lora_targets, lr=lr, batch_size=batch_size,
        grad_accum=grad_accum, epochs=epochs, plateau_epochs=plateau_epochs, min_lr=min_lr, max_pixels=max_pixels,
        single_pass=not two_pass, device=device, dtype=dtype, load_in_4bit=load_in_4bit,
        gradient_checkpointing=gradient_checkpointing, save_steps=save_steps, max_train_items=max_train_items,
        max_dev_samples=max_dev_samples, allow_text_only=allow_text_only, seed=seed, runs_dir=str(runs_dir),
    )  # fmt: skip
    bar, progress = training_progress(as_json)
    with bar:
        result = run(store, config, resume=resume, progress=progress)
    summary = {"run": result.run, "folder": result.folder, "adapter": result.adapter, "best": result.best,
               "steps": result.steps, "train_loss": result.train_loss, "wall_s": round(result.wall_s, 1)}  # fmt: skip
    if as_json:
        print_json(summary)
        return
    print_result(summary)


def print_result(summary: dict[str, Any]) -> None:
    table = Table(title=f"run {escape(summary['run'])}", show_header=False)
    table.add_column("what")
    table.add_column("value")
    best = summary["best"] or {}
    rows = [
        ("adapter", summary["adapter"]),
        ("optimizer steps", summary["steps"]),
        ("mean training loss", f"{summary['train_loss']:.4f}" if summary["train_loss"] is not None else "-"),
        ("best epoch", best.get("epoch", "-")),
        ("dev accuracy", f"{best['eval_accuracy']:.4f}" if "eval_accuracy" in best else "-"),
        ("dev macro-F1 / weighted-F1", f"{best['eval_macro_f1']:.4f} / {best['eval_weighted_f1']:.4f}"
         if "eval_macro_f1" in best else "-"),
        ("wall time", f"{summary['wall_s']} s"),
    ]  # fmt: skip
    for k, v in rows:
        table.add_row(k, str(v))
    console.print(table)
