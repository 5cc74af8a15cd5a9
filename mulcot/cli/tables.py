"""The paper-layout metrics table, shared by ``mulcot eval`` / ``eval compare`` and ``mulcot run`` / ``demo``: it fits
80 columns by folding long model names onto more lines and keeping short headers (explained in the caption), so no
name or header is ever cut to "…"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

#: Short headers of the paper's columns (the caption's legend explains each).
HEADERS = {"accuracy": "Acc", "sim": "Sim", "meteor": "METEOR", "bleu": "BLEU", "rouge_l": "ROUGE-L",
           "distinct_1": "Dist-1", "distinct_2": "Dist-2", "consistency": "Cons."}
KEYS = ("accuracy", "f1", "sim", "meteor", "bleu", "rouge_l", "distinct_1", "distinct_2", "consistency")


def metrics_table(names: Sequence[str], rows: Sequence[dict[str, Any]], title: str, *, f1_header: str = "F1",
                  caption: Sequence[str] = (), digits: int = 2) -> Table:
    """Rows = evaluations (``paper_row`` dicts: values in [0, 1] or None), columns as the paper's Tables 3-5 plus
    consistency, values × 100 with ``digits`` decimals; ``names`` are plain text (escaped here), ``caption`` lines
    go under the table."""
    table = Table(title=title, caption_justify="left", box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False,
                  collapse_padding=True)
    table.add_column("Model", overflow="fold", min_width=8)
    cells = [[_pct(row.get(k), digits) for k in KEYS] for row in rows]
    for i, key in enumerate(KEYS):
        header = f1_header if key == "f1" else HEADERS[key]
        widest = max([len(header), *(len(c[i]) for c in cells)])
        table.add_column(header, justify="right", no_wrap=True, min_width=widest)
    for name, row_cells in zip(names, cells, strict=True):
        table.add_row(escape(name), *row_cells)
    if caption:
        table.caption = "\n".join(escape(x) for x in caption)
    return table


def _pct(value: Any, digits: int) -> str:
    return f"{100 * value:.{digits}f}" if isinstance(value, float | int) else "-"
