"""Pieces every command shares: consoles, the --db and --json options, opening the store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from mulcot.store import Store, default_db_path

console = Console()
err_console = Console(stderr=True)

DbOption = Annotated[
    Path | None,
    typer.Option("--db", envvar="MULCOT_DB", help="Project database (default ./mulcot.db).", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON to stdout, nothing else.")]


def open_store(db: Path | None) -> Store:
    return Store.open(db or default_db_path())


def print_json(data: Any) -> None:
    """JSON to stdout, untouched by rich markup."""
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))
