"""The filter panel: one line per filter, each cycling through its values ("any" first).

One light widget instead of a drop-down per filter (five ``Select`` widgets cost a third of a second of start-up):
↑/↓ pick a filter, ←/→ (or Enter, or a click) change its value, Backspace sets it back to any.
"""

from __future__ import annotations

from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

ANY = "any"


class FilterPanel(Widget, can_focus=True):
    """Filters as rows of ``label  ◂ value ▸``; posts :class:`FilterPanel.Changed`."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor(-1)", "filter", show=False),
        Binding("down", "cursor(1)", "filter", show=False),
        Binding("right,enter,space", "cycle(1)", "change", key_display="←/→"),
        Binding("left", "cycle(-1)", "change", show=False),
        Binding("backspace,delete", "reset", "any"),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = {"filter-panel--label", "filter-panel--set", "filter-panel--cursor"}

    cursor: reactive[int] = reactive(0)

    class Changed(Message):
        """A filter's value changed (None: any)."""

        def __init__(self, panel: FilterPanel, name: str, value: str | None) -> None:
            super().__init__()
            self.panel = panel
            self.name = name
            self.value = value

    def __init__(self, filters: list[tuple[str, str]], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.names = [name for name, _ in filters]
        self.labels = dict(filters)
        self.options: dict[str, list[tuple[str, str | None]]] = {name: [(ANY, None)] for name in self.names}
        self.values: dict[str, str | None] = {name: None for name in self.names}

    def add_filter(self, name: str, label: str) -> None:
        """One more filter row, last (a filter only some stores can use, e.g. the judge's score)."""
        if name not in self.labels:
            self.names.append(name)
            self.labels[name] = label
            self.options[name] = [(ANY, None)]
            self.values[name] = None
            self.refresh(layout=True)

    def set_options(self, name: str, options: list[tuple[str, str]]) -> None:
        """The values of one filter as (shown, value) pairs; a current value no longer offered becomes any."""
        self.options[name] = [(ANY, None), *options]
        if self.values[name] not in {v for _, v in options}:
            self.values[name] = None
        self.refresh()

    def set_value(self, name: str, value: str | None, *, notify: bool = False) -> None:
        if value is not None and value not in {v for _, v in self.options[name]}:
            self.options[name].append((value, value))
        if self.values[name] != value:
            self.values[name] = value
            self.refresh()
            if notify:
                self.post_message(self.Changed(self, name, value))

    def get_content_height(self, container, viewport, width: int) -> int:  # type: ignore[override]
        return len(self.names)

    def render(self) -> Text:
        label_style = self.get_component_rich_style("filter-panel--label", partial=True)
        set_style = self.get_component_rich_style("filter-panel--set", partial=True)
        cursor_style = self.get_component_rich_style("filter-panel--cursor", partial=True)
        width = max(1, self.size.width)
        out = Text(no_wrap=True, overflow="ellipsis")
        for i, name in enumerate(self.names):
            value = self.values[name]
            shown = next((label for label, v in self.options[name] if v == value), ANY)
            line = Text.assemble(
                (f"{self.labels[name]:<7}", label_style), "◂ ", (shown, set_style if value else ""), " ▸"
            )
            line.truncate(width, pad=True)
            if self.has_focus and i == self.cursor:
                line.stylize(cursor_style)
            line.stylize(Style(meta={"row": i}))
            out.append_text(line)
            if i < len(self.names) - 1:
                out.append("\n")
        return out

    def watch_cursor(self) -> None:
        self.refresh()

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    def validate_cursor(self, value: int) -> int:
        return max(0, min(value, len(self.names) - 1))

    def action_cursor(self, delta: int) -> None:
        self.cursor += delta

    def action_cycle(self, step: int) -> None:
        name = self.names[self.cursor]
        values = [v for _, v in self.options[name]]
        current = values.index(self.values[name]) if self.values[name] in values else 0
        self.set_value(name, values[(current + step) % len(values)], notify=True)

    def action_reset(self) -> None:
        self.set_value(self.names[self.cursor], None, notify=True)

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or not 0 <= offset.y < len(self.names):
            return
        self.cursor = offset.y
        self.action_cycle(-1 if 7 <= offset.x <= 8 else 1)  # a click on ◂ steps back, anywhere else on
