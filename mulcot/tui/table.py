"""The sample list: a virtual table (Textual's line API) that fetches pages of rows as they come into view.

Only the rows on screen are rendered and only their pages are held (an LRU of pages). A page is fetched by keyset
from a cached neighbour (the usual case when the cursor moves), else from whichever end of the list is nearer, so
no query skips more than half the matches. The total can arrive later (counted in the background): until then the
table grows a page at a time as the cursor reaches its end.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, ClassVar

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from mulcot.tui.state import LABEL_MARK, LABEL_SHORT, MARK_SOURCES, OUTCOME_MARK

Fetch = Callable[..., list[dict[str, Any]]]
MAX_PAGES = 64


def _fit(text: str, width: int) -> str:
    text = " ".join(text.split())
    if len(text) > width:
        return text[: max(0, width - 1)] + "…"
    return text.ljust(width)


def _fit_middle(text: str, width: int) -> str:
    """``text`` in ``width`` cells, cut in the middle when too long (names that share a prefix stay apart)."""
    if len(text) <= width:
        return text.ljust(width)
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head) :]


class SampleTable(ScrollView, can_focus=True):
    """Samples with their gold label and one mark per source (the source's prediction, coloured by outcome)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "move(-1)", "up", show=False),
        Binding("down", "move(1)", "down", show=False),
        Binding("pageup", "page(-1)", "page up", show=False),
        Binding("pagedown", "page(1)", "page down", show=False),
        Binding("home,g", "first", "first", show=False),
        Binding("end,G", "last", "last", show=False),
        Binding("enter", "select", "open", show=False),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "sample-table--header",
        "sample-table--cursor",
        "sample-table--correct",
        "sample-table--wrong",
        "sample-table--failed",
        "sample-table--dim",
    }

    cursor_row: reactive[int] = reactive(0, always_update=True, init=False)

    class Highlighted(Message):
        """The cursor moved to ``row`` (None when the table is empty)."""

        def __init__(self, table: SampleTable, index: int, row: dict[str, Any] | None) -> None:
            super().__init__()
            self.table = table
            self.index = index
            self.row = row

    class Selected(Highlighted):
        """Enter (or a second click) on a row."""

    def __init__(self, *, page_size: int = 100, name: str | None = None, id: str | None = None) -> None:
        super().__init__(name=name, id=id)
        self.page_size = page_size
        self._fetch: Fetch | None = None
        self._pages: OrderedDict[int, list[dict[str, Any]]] = OrderedDict()
        self.row_count = 0
        self.count_exact = True
        self.loaded = False
        self.fetches = 0  # page queries made (for tests and the benchmark)
        self.dataset_width = 0  # a dataset column this wide (when rows of several datasets are listed), or none
        self._styles: dict[str, Style] = {}
        self._base = Style()

    # -- data --------------------------------------------------------------------------------------------------

    def load(self, fetch: Fetch, first_page: list[dict[str, Any]], count: int | None) -> None:
        """Show a new result: ``fetch(limit=, offset=, after_id=, before_id=, from_end=)`` returns pages, the
        first of which is given; ``count`` is the total, or None when it is still being counted."""
        self._fetch = fetch
        self._pages = OrderedDict({0: first_page})
        if count is None and len(first_page) < self.page_size:
            count = len(first_page)
        self.count_exact = count is not None
        self.row_count = count if count is not None else len(first_page)
        self.loaded = True
        self._resize()
        self.scroll_to(y=0, animate=False, immediate=True)
        self.cursor_row = 0

    def set_count(self, count: int) -> None:
        """The exact total has been counted."""
        self.count_exact = True
        self.row_count = count
        self._resize()
        if self.cursor_row >= count:
            self.cursor_row = max(0, count - 1)
        self.refresh()

    def clear(self) -> None:
        self._fetch = None
        self._pages.clear()
        self.row_count = 0
        self.count_exact = True
        self.loaded = False
        self._resize()
        self.refresh()

    def _resize(self) -> None:
        self.virtual_size = Size(self.size.width, self.row_count + 1)

    def _page(self, number: int) -> list[dict[str, Any]]:
        page = self._pages.get(number)
        if page is not None:
            self._pages.move_to_end(number)
            return page
        if self._fetch is None:
            return []
        size = self.page_size
        before, after = self._pages.get(number - 1), self._pages.get(number + 1)
        if before and len(before) == size:
            page = self._fetch(limit=size, after_id=before[-1]["id"])
        elif after:
            page = self._fetch(limit=size, before_id=after[0]["id"])
        elif self.count_exact and number * size > self.row_count / 2:
            end = min((number + 1) * size, self.row_count)
            page = self._fetch(limit=end - number * size, offset=self.row_count - end, from_end=True)
        else:
            page = self._fetch(limit=size, offset=number * size)
        self.fetches += 1
        self._pages[number] = page
        while len(self._pages) > MAX_PAGES:
            self._pages.popitem(last=False)
        return page

    def row(self, index: int) -> dict[str, Any] | None:
        """The row at ``index`` (fetching its page when needed), None past the end."""
        if index < 0 or index >= self.row_count:
            return None
        page = self._page(index // self.page_size)
        offset = index % self.page_size
        return page[offset] if offset < len(page) else None

    def _grow(self) -> None:
        """While the total is unknown: load the next page when the cursor reaches the last loaded row."""
        if self.count_exact or self._fetch is None:
            return
        last = self._page((self.row_count - 1) // self.page_size) if self.row_count else []
        if len(last) < self.page_size:
            return
        page = self._fetch(limit=self.page_size, after_id=last[-1]["id"])
        self.fetches += 1
        if page:
            self._pages[self.row_count // self.page_size] = page
            self.row_count += len(page)
            self._resize()
            self.refresh()

    @property
    def current(self) -> dict[str, Any] | None:
        return self.row(self.cursor_row)

    # -- cursor ------------------------------------------------------------------------------------------------

    def validate_cursor_row(self, value: int) -> int:
        return max(0, min(value, self.row_count - 1)) if self.row_count else 0

    def watch_cursor_row(self, old: int, new: int) -> None:
        if new >= self.row_count - 1:
            self._grow()
        visible = max(1, self.size.height - 1)
        top = int(self.scroll_y)
        if new < top:
            self.scroll_to(y=new, animate=False, immediate=True)
        elif new >= top + visible:
            self.scroll_to(y=new - visible + 1, animate=False, immediate=True)
        self.refresh()
        self.post_message(self.Highlighted(self, new, self.row(new)))

    def action_move(self, delta: int) -> None:
        self.cursor_row += delta

    def action_page(self, direction: int) -> None:
        self.cursor_row += direction * max(1, self.size.height - 2)

    def action_first(self) -> None:
        self.cursor_row = 0

    def action_last(self) -> None:
        self.cursor_row = self.row_count - 1

    def action_select(self) -> None:
        self.post_message(self.Selected(self, self.cursor_row, self.current))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or offset.y == 0:
            return
        index = int(self.scroll_y) + offset.y - 1
        if index < self.row_count:
            if index == self.cursor_row and event.chain > 1:
                self.action_select()
            self.cursor_row = index

    def on_resize(self, event: events.Resize) -> None:
        self._resize()

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    # -- rendering ---------------------------------------------------------------------------------------------

    def _columns(self, width: int) -> list[tuple[str, int]]:
        """(column, width) pairs that fit ``width``; the text takes what is left."""
        cols = [("key", 9), ("gold", 5), ("marks", 6)]
        if width >= 100:
            cols.insert(1, ("split", 6))
        if self.dataset_width:
            cols.insert(0, ("dataset", self.dataset_width))
        cols.append(("aspect", 16 if width >= 100 else 12))
        used = sum(w for _, w in cols)
        cols.append(("text", max(0, width - used)))
        return cols

    def render_lines(self, crop: Region) -> list[Strip]:
        # the component styles once per frame, not once per cell
        names = ("header", "cursor", "correct", "wrong", "failed", "dim")
        self._styles = {n: self.get_component_rich_style(f"sample-table--{n}", partial=n != "cursor") for n in names}
        self._base = self.rich_style
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        base = self._base
        if y == 0:
            return self._header(width, base)
        index = int(self.scroll_y) + y - 1
        row = self.row(index)
        if row is None:
            return Strip.blank(width, base)
        style = base
        if index == self.cursor_row:
            style = base + self._styles["cursor"]
        segments: list[Segment] = []
        for col, w in self._columns(width):
            if w <= 0:
                continue
            if col == "marks":
                segments.extend(self._marks(row, style))
                segments.append(Segment(" " * (w - 2 * len(MARK_SOURCES) + 1), style))
            elif col == "key":
                segments.append(Segment(_fit(str(row["key"]), w - 1) + " ", style))
            elif col == "split":
                segments.append(Segment(_fit(row["split"], w - 1) + " ", style))
            elif col == "dataset":
                segments.append(Segment(_fit_middle(row["dataset"], w - 1) + " ", style))
            elif col == "gold":
                segments.append(Segment(_fit(LABEL_SHORT.get(row["label"], "—"), w - 1) + " ", style))
            elif col == "aspect":
                segments.append(Segment(_fit(row["aspect"] or "", w - 1) + " ", style + self._styles["dim"]))
            else:
                segments.append(Segment(_fit(row["text"] or "", w), style))
        return Strip(segments).adjust_cell_length(width, base)

    def _marks(self, row: dict[str, Any], style: Style) -> list[Segment]:
        out = []
        for source in MARK_SOURCES:
            mark = row["marks"].get(source)
            if mark is None:
                out.append(Segment("· ", style + self._styles["dim"]))
                continue
            outcome = mark["outcome"]
            char = OUTCOME_MARK["failed"] if outcome == "failed" else LABEL_MARK.get(mark["prediction"], "?")
            comp = {"correct": "correct", "wrong": "wrong", "failed": "failed"}.get(outcome, "dim")
            out.append(Segment(char, style + self._styles[comp]))
            out.append(Segment(" ", style))
        return out

    def _header(self, width: int, base: Style) -> Strip:
        style = base + self._styles["header"]
        names = {"dataset": "dataset", "key": "id", "split": "split", "gold": "gold",
                 "marks": " ".join(s[0].upper() for s in MARK_SOURCES), "aspect": "aspect", "text": "text"}
        segments = [Segment(_fit(names[col], w - 1) + " " if col != "text" else _fit(names[col], w), style)
                    for col, w in self._columns(width) if w > 0]
        return Strip(segments).adjust_cell_length(width, style)
