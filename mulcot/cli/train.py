"""``mulcot train-assistant``: multi-task LoRA training of a Qwen-VL assistant on teacher reasoning."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from mulcot.cli.common import DbOption, JsonOption, console, open_store, print_json, progress_bar
from mulcot.cli.config_options import config_options
from mulcot.core.refs import check_name
from mulcot.events import Event
from mulcot.train.config import PreferenceConfig, RLConfig, TrainConfig


def training_progress(as_json: bool) -> tuple[Progress, Any]:
    """A rich progress bar (loss, lr, it/s, ETA) and the library callback that feeds it."""
    bar = progress_bar(as_json, info=True, remaining=True, transient=False)
    task = bar.add_task("training", total=None, info="")
    state: dict[str, Any] = {"info": ""}

    def progress(event: Event) -> None:
        if event.kind in ("begin", "step"):
            bar.update(task, description="training", completed=event.done, total=event.total)
        elif event.kind == "log" and "loss" in event:
            state["info"] = f"loss {event['loss']:.4f} lr {event.get('learning_rate', 0):.2e}"
            bar.update(task, info=state["info"])
        elif event.stage == "soft_labels":
            bar.update(task, description="soft labels", completed=event.done, total=event.total)
        elif event.kind == "eval":
            m = event.metrics
            best = event.best or {}
            bar.console.print(
                f"epoch {event.epoch:.0f}: dev acc {m['eval_accuracy']:.4f} m-F1 {m['eval_macro_f1']:.4f} "
                f"w-F1 {m['eval_weighted_f1']:.4f} (best: epoch {best.get('epoch', '-')}, acc "
                f"{best.get('eval_accuracy', 0):.4f})",
                highlight=False,
            )

    return bar, progress


@config_options(TrainConfig)
def train_assistant(
    dataset: Annotated[str, typer.Argument(help="Dataset with teacher chains (D_t).")],
    model: Annotated[str, typer.Option(help="Base model: hub id (Qwen/Qwen2.5-VL-7B-Instruct) or folder.")],
    name: Annotated[str | None, typer.Option(help="Run name (folder runs/NAME); default: assistant-DATASET.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run from its last checkpoint.")] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
    options: dict[str, Any] | None = None,
) -> None:
    """Train the assistant: LoRA on L = λ_cls·CE_cls + λ_rea·CE_rea over teacher reasoning (D_t)."""
    config = TrainConfig(dataset=dataset, model=model, name=check_name(name or f"assistant-{dataset}"),
                         **(options or {}))
    from mulcot.train.assistant import train_assistant as run  # torch loads only for a name that can run

    train(run, config, resume=resume, db=db, as_json=as_json)


def train(run: Any, config: Any, *, resume: bool, db: Any, as_json: bool) -> None:
    """Run a training stage with a progress bar and report its result: a table, or JSON with --json."""
    from mulcot.train import distributed as dist

    store = open_store(db)
    # under torchrun / accelerate launch the main process alone shows progress and the result
    bar, progress = training_progress(as_json or not dist.is_main())
    with bar:
        result = run(store, config, resume=resume, progress=progress)
    if not dist.is_main():
        return
    summary = {"run": result.run, "folder": result.folder, "adapter": result.adapter, "best": result.best,
               "steps": result.steps, "train_loss": result.train_loss, "wall_s": round(result.wall_s, 1),
               "launch": result.launch}
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
    ]
    if "rewards/margins" in best:  # a DPO run: its last step's implicit rewards instead of dev figures
        rows[3:6] = [("last step", best.get("step", "-")),
                     ("reward margin (chosen − rejected)", f"{best['rewards/margins']:.4f}"),
                     ("pairs ranked right (reward accuracy)", f"{best.get('rewards/accuracies', 0):.4f}")]
    if "reward" in best:  # a GRPO run: its last step's rewards instead of dev figures
        parts = [f"{k.split('/')[1]} {v:.3f}" for k, v in best.items() if k.startswith("rewards/")]
        rows[3:6] = [("last step", best.get("step", "-")),
                     ("reward (weighted sum)", f"{best['reward']:.4f}"),
                     ("components", ", ".join(parts) or "-"),
                     ("KL to the start", f"{best['kl']:.4f}" if best.get("kl") is not None else "-")]
    launch = summary.get("launch") or {}
    if launch.get("world_size", 1) > 1:
        how = "FSDP" if launch.get("fsdp") else "DeepSpeed" if launch.get("deepspeed") else "DDP"
        rows.append(("processes", f"{launch['world_size']} ({how}, {launch.get('backend')})"))
    for k, v in rows:
        table.add_row(k, str(v))
    console.print(table)


@config_options(PreferenceConfig)
def dpo(
    dataset: Annotated[str, typer.Argument(help="Dataset whose preference pairs train the run (mulcot data pairs).")],
    model: Annotated[str, typer.Option(help="The trained assistant or student to start from: run name, runs/NAME "
                                       "or an adapter folder.")],
    name: Annotated[str | None, typer.Option(help="Run name (folder runs/NAME); default: dpo-DATASET.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run from its last checkpoint.")] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
    options: dict[str, Any] | None = None,
) -> None:
    """DPO of a trained run's LoRA adapter on pairs of chains (correct vs wrong, failed or lower-rated), through
    TRL; the reference policy is the starting adapter."""
    config = PreferenceConfig(dataset=dataset, model=model, name=check_name(name or f"dpo-{dataset}"),
                              **(options or {}))
    from mulcot.train.dpo import dpo as run

    train(run, config, resume=resume, db=db, as_json=as_json)


@config_options(RLConfig)
def grpo(
    dataset: Annotated[str, typer.Argument(help="Dataset whose labelled training posts are the prompts.")],
    model: Annotated[str, typer.Option(help="The trained assistant or student to start from: run name, runs/NAME "
                                       "or an adapter folder.")],
    name: Annotated[str | None, typer.Option(help="Run name (folder runs/NAME); default: grpo-DATASET.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run from its last checkpoint.")] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
    options: dict[str, Any] | None = None,
) -> None:
    """GRPO of a trained run's LoRA adapter on its own sampled chains (P_cot on training posts), through TRL;
    rewards: label correct, five fields parse, Prediction agrees with the label head; KL to the starting adapter."""
    config = RLConfig(dataset=dataset, model=model, name=check_name(name or f"grpo-{dataset}"), **(options or {}))
    from mulcot.train.grpo import grpo as run

    train(run, config, resume=resume, db=db, as_json=as_json)
