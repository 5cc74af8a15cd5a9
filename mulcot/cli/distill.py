"""``mulcot expand`` and ``mulcot distill``: data expansion by the assistant and the student's joint learning."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from mulcot.cli.common import (
    DbOption,
    JsonOption,
    console,
    follow,
    open_store,
    print_json,
    print_served,
    progress_bar,
    server_options,
)
from mulcot.cli.config_options import config_options
from mulcot.cli.train import train
from mulcot.core.labels import LABELS
from mulcot.core.refs import check_name
from mulcot.errors import MulcotError
from mulcot.expand import ExpandConfig
from mulcot.train.config import ON_POLICY_REFUSAL, DistillConfig


@config_options(ExpandConfig)
@server_options
def expand(
    dataset: Annotated[str, typer.Argument(help="Dataset whose training split the assistant expands.")],
    assistant: Annotated[str, typer.Option(help="The trained assistant: runs/NAME, an adapter folder or a run name.")],
    server: Any = None,
    db: DbOption = None,
    as_json: JsonOption = False,
    options: dict[str, Any] | None = None,
) -> None:
    """Have the trained assistant write chains for the training split; the correct ones form D_a. With --server
    the chains come from a server serving the assistant (e.g. vLLM with its adapter by name), with --gguf from its
    GGUF export through llama.cpp; stored the same way."""
    from mulcot.expand import expand as run

    store = open_store(db)
    cfg = ExpandConfig(dataset=dataset, assistant=assistant, **(options or {}), server=server)
    with progress_bar(as_json) as bar:
        summary = run(store, cfg, progress=follow(bar, f"expanding {dataset}/train"))
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
    student: Annotated[str, typer.Option(help="Student base model: hub id (Qwen/Qwen2.5-VL-3B-Instruct) or folder.")],
    assistant: Annotated[str, typer.Option(help="The trained assistant: runs/NAME, an adapter folder or a run name "
                                           "(leave out only with --lam 0 --no-expanded: D_t, hard labels).")] = "",
    name: Annotated[str | None, typer.Option(help="Run name (default: student-DATASET).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run from its last checkpoint.")] = False,
    on_policy: Annotated[bool, typer.Option("--on-policy", help="Not available (it says why): the student's own "
                                            "samples scored by the assistant; use `mulcot grpo` after distilling.")
                         ] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
    options: dict[str, Any] | None = None,
) -> None:
    """Train the student on D_all = D_t ∪ D_a: L = (1−λ)·(hard CE) + λ·(KL to the assistant at target positions)."""
    if on_policy:
        raise MulcotError(ON_POLICY_REFUSAL)
    cfg = DistillConfig(dataset=dataset, model=student, name=check_name(name or f"student-{dataset}"),
                        assistant=assistant, **(options or {}))
    # (the settings are checked as the config is built: before the training stack is imported, which takes seconds)
    from mulcot.train.student import distill as run

    train(run, cfg, resume=resume, db=db, as_json=as_json)
