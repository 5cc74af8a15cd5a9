"""A post's image in the terminal: real pixels through a terminal graphics protocol where the terminal has one
(``kitty``: the Terminal Graphics Protocol of kitty and others; ``sixel``: WezTerm, foot, iTerm2, xterm -ti vt340 …,
both drawn by textual-image), else a rich renderable from Pillow that fits the width it is given.

``auto`` asks the terminal (through textual-image, before Textual starts: it cannot ask afterwards) and picks
``sixel`` or ``kitty`` when it answers, ``blocks`` otherwise.
``blocks`` draws each cell as the upper-half block ``▀`` with the upper pixel as foreground and the lower one as
background colour (two square pixels per cell; rich lowers the colours to what the terminal has). ``ascii`` is the
fallback for terminals without colour: one character of a brightness ramp per cell. ``none`` draws nothing.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from rich.color import Color
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

IMAGE_MODES = ("auto", "kitty", "sixel", "blocks", "ascii", "none")
GRAPHICS_MODES = ("kitty", "sixel")
_RAMP = " .:-=+*#%@"


def detect_graphics() -> str | None:
    """The graphics protocol the terminal on stdout answers to (``sixel`` or ``kitty``), or None (not a terminal,
    no answer, or textual-image missing). Call it before Textual starts."""
    try:
        from textual_image import renderable
    except ImportError:
        return None
    if renderable.Image is renderable.SixelImage:
        return "sixel"
    if renderable.Image is renderable.TGPImage:
        return "kitty"
    return None


def resolve_mode(mode: str) -> str:
    """``auto`` -> the terminal's graphics protocol or ``blocks``; a graphics mode also measures the terminal's
    cell size now (textual-image needs it, and cannot ask once Textual runs). Other modes are returned as given."""
    if mode == "auto":
        mode = detect_graphics() or "blocks"
    if mode in GRAPHICS_MODES:
        import textual_image.widget  # noqa: F401  (measures the cell size on import)
    return mode


def graphics_widget(mode: str, **kwargs: Any) -> Any:
    """A textual-image widget drawing with ``mode``'s protocol (``kitty`` or ``sixel``)."""
    from textual_image.widget import SixelImage, TGPImage

    return (SixelImage if mode == "sixel" else TGPImage)(**kwargs)


@lru_cache(maxsize=64)
def _pixels(path: str, cols: int, max_rows: int) -> tuple[int, tuple[tuple[int, int, int], ...]]:
    """The image scaled to ``cols`` pixels wide (square pixels, at most 2*max_rows high): (height, RGB pixels)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        height = max(2, round(cols * h / w))
        if height > 2 * max_rows:
            cols = max(1, round(cols * 2 * max_rows / height))
            height = 2 * max_rows
        height += height % 2
        small = im.resize((cols, height), Image.Resampling.BILINEAR)
        pixels = getattr(small, "get_flattened_data", None) or small.getdata  # Pillow ≥ 12.1 renamed it
        return cols, tuple(pixels())


class TerminalImage:
    """Rich renderable for the image at ``path``, at most ``max_width`` cells wide and ``max_height`` lines high."""

    def __init__(self, path: str | Path, *, max_width: int = 48, max_height: int = 14, mode: str = "blocks"):
        self.path = str(path)
        self.max_width = max_width
        self.max_height = max_height
        self.mode = mode

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        width = min(self.max_width, options.max_width)
        return Measurement(1, width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if self.mode == "none":
            return
        cols = max(1, min(self.max_width, options.max_width))
        try:
            cols, data = _pixels(self.path, cols, self.max_height)
        except (OSError, ValueError) as exc:
            yield Text(f"(image unreadable: {Path(self.path).name}: {exc.__class__.__name__})", style="dim italic")
            return
        rows = len(data) // cols
        for y in range(0, rows, 2):
            top = data[y * cols : (y + 1) * cols]
            bottom = data[(y + 1) * cols : (y + 2) * cols]
            if self.mode == "ascii":
                chars = []
                for (r1, g1, b1), (r2, g2, b2) in zip(top, bottom, strict=True):
                    lum = (0.299 * (r1 + r2) + 0.587 * (g1 + g2) + 0.114 * (b1 + b2)) / 510
                    chars.append(_RAMP[min(len(_RAMP) - 1, int(lum * len(_RAMP)))])
                yield Segment("".join(chars))
            else:
                for (r1, g1, b1), (r2, g2, b2) in zip(top, bottom, strict=True):
                    yield Segment("▀", Style(color=Color.from_rgb(r1, g1, b1), bgcolor=Color.from_rgb(r2, g2, b2)))
            yield Segment.line()
