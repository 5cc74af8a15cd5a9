"""``mulcot expand`` and ``mulcot distill``: data expansion by the assistant and the student's joint learning."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from mulcot.cli.common import (
    ConcurrencyOption,
    DbOption,
    JsonOption,
    LazyProgress,
    MaxRequestsOption,
    ServedModelOption,
    ServerOption,
    ServerRetriesOption,
    ServerTextOnlyOption,
    TimeBudgetOption,
    console,
    err_console,
    open_store,
    print_json,
    print_served,
    server_config,
)
from mulcot.cli.config_options import config_options
from mulcot.cli.train import train
from mulcot.labels import LABELS
from mulcot.train.config import DistillConfig


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
    server: ServerOption = None,
    served_model: ServedModelOption = None,
    concurrency: ConcurrencyOption = 4,
    retries: ServerRetriesOption = 3,
    max_requests: MaxRequestsOption = None,
    time_budget: TimeBudgetOption = None,
    server_text_only: ServerTextOnlyOption = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Have the trained assistant write chains for the training split; the correct ones form D_a. With --server
    the chains come from a server serving the assistant (e.g. vLLM with its adapter by name), stored the same way."""
    from mulcot.expand import ExpandConfig
    from mulcot.expand import expand as run

    store = open_store(db)
    cfg = ExpandConfig(dataset=dataset, assistant=assistant, split=split, n=n, temperature=temperature, top_p=top_p,
                       max_new_tokens=max_new_tokens, batch_size=batch_size, max_pixels=max_pixels, limit=limit,
                       seed=seed, device=device, dtype=dtype,
                       server=server_config(server, served_model, concurrency=concurrency, retries=retries,
                                            max_requests=max_requests, time_budget=time_budget,
                                            text_only=server_text_only))  # fmt: skip
    with LazyProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, disable=as_json, transient=True) as bar:  # fmt: skip
        task = bar.add_task(f"expanding {dataset}/train", total=None)
        summary = run(store, cfg, progress=lambda e: bar.update(task, completed=e.done, total=e.total))
    print_served(summary.served, summary.warnings)
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


@config_options(DistillConfig)
def distill(
    dataset: Annotated[str, typer.Argument(help="Dataset with teacher chains (and the assistant's expansion).")],
    assistant: Annotated[str, typer.Option(help="The trained assistant: runs/NAME, an adapter folder or a run name.")],
    student: Annotated[str, typer.Option(help="Student base model: hub id (Qwen/Qwen2.5-VL-3B-Instruct) or folder.")],
    name: Annotated[str | None, typer.Option(help="Run name (default: student-DATASET).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run from its last checkpoint.")] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
    options: dict[str, Any] | None = None,
) -> None:
    """Train the student on D_all = D_t ∪ D_a: L = (1−λ)·(hard CE) + λ·(KL to the assistant at target positions)."""
    cfg = DistillConfig(dataset=dataset, model=student, name=name or f"student-{dataset}", assistant=assistant,
                        **(options or {}))  # fmt: skip
    cfg.check()  # before the training stack is imported (seconds)

    from mulcot.train.student import distill as run

    train(run, cfg, resume=resume, db=db, as_json=as_json)
