"""``mulcot tui``: browse the store's reasoning chains in the terminal, and rate them."""

from __future__ import annotations

import getpass
import os
from typing import Annotated

import typer

from mulcot.cli.common import DbOption
from mulcot.errors import MulcotError
from mulcot.store import default_db_path


def _default_rater() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def tui(
    db: DbOption = None,
    image: Annotated[
        str,
        typer.Option(help="How to draw images: auto (real pixels where the terminal speaks kitty's graphics "
                     "protocol or sixel, else blocks), kitty, sixel, blocks (half-block colour cells), ascii (no "
                     "colour), none."),
    ] = "auto",
    rater: Annotated[str | None, typer.Option(help="Name stored with your ratings (default: your user name).")] = None,
) -> None:
    """Browse samples and their reasoning chains (filters, search, images, retries and costs); rate chains.

    Opens read-only, except for the ratings you add. A missing database is reported on screen, not created.
    """
    from mulcot.tui.image import IMAGE_MODES, resolve_mode  # Textual loads only for this command

    if image not in IMAGE_MODES:
        raise MulcotError(f"--image must be one of {', '.join(IMAGE_MODES)}, not '{image}'")
    if image in ("auto", "blocks") and os.environ.get("NO_COLOR"):
        image = "ascii"
    from mulcot.tui import ChainBrowser

    image = resolve_mode(image)  # asks the terminal now: it cannot once Textual runs

    ChainBrowser(db or default_db_path(), rater=rater or _default_rater(), image_mode=image).run()

