"""``mulcot demo``: the main job on the embedded real sample."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mulcot.cli.common import console, open_store
from mulcot.cli.data import stats
from mulcot.demo import run_demo


def demo(
    db: Annotated[Path, typer.Option("--db", help="Database to write the demo into.")] = Path("mulcot-demo.db"),
) -> None:
    """Run the pipeline's available stages on the embedded sample of 60 real Twitter-2015 posts."""
    store = open_store(db)
    console.print(f"[bold]mulcot demo[/] → {db}: 60 real Twitter-2015 posts with images and the MulCoT-RD "
                  "authors' teacher chains (Qwen2.5-VL-72B), bundled in the package")  # fmt: skip
    result = run_demo(store)
    for rep in result.imports:
        console.print(
            f"imported {rep.format}: {rep.imported} samples (added {rep.added}, unchanged {rep.unchanged}), "
            f"teacher chains added {rep.chains_added}, already stored {rep.chains_existing}",
            highlight=False,
        )
    stats(result.dataset, db=db, as_json=False)
    console.print(
        "\nThe demo covers import and dataset statistics so far; annotate, train-assistant, expand, distill, "
        "eval and export join it as they land.\n"
        f"Look around: [bold]mulcot data stats {result.dataset} --db {db}[/], "
        f"[bold]mulcot data export {result.dataset} --format sharegpt --db {db}[/], "
        f"or [bold]datasette {db}[/]."
    )
