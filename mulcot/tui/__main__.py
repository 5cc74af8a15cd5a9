"""``python -m mulcot.tui [--db PATH]``: the same as ``mulcot tui``."""

import sys

import typer

from mulcot.cli.tui import tui
from mulcot.errors import MulcotError

try:
    typer.run(tui)
except MulcotError as exc:  # raised before the app starts (an unreadable database, a bad option)
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)
