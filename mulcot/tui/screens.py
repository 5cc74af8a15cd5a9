"""Modal screens: the key help, and rating a chain."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, RadioButton, RadioSet, Static

KEYS = (
    ("j / k, ↓ / ↑", "next / previous sample (PgDn / PgUp, g / G: page, first, last)"),
    ("h / l, ← / →", "previous / next chain of the sample (or click its tab)"),
    ("/", "search text, aspect and chains (Enter applies, Esc returns to the list):"),
    ("", 'words all required, "a phrase", cat OR dog, -word excludes; an id finds its sample'),
    ("f", "show / hide the datasets and filters"),
    ("in the filters", "↑ / ↓ pick a filter, ← / → or Enter or a click change it, Backspace: any"),
    ("c", "clear the filters and the search"),
    ("tab / shift+tab", "move between panes"),
    ("r", "rate the chain shown: faithfulness and usefulness 1–5, a comment"),
    ("i", "show / hide the image"),
    ("ctrl+r", "reload from the database (another process may be writing)"),
    ("?", "this help"),
    ("q", "quit"),
)
LEGEND = (
    ("T A S", "teacher, assistant, student: each source's final chains"),
    ("+ 0 -", "it predicted positive, neutral, negative"),
    ("green / red", "the prediction equals / differs from the gold label"),
    ("!", "no valid chain (parse failure, invalid label, request error)"),
    ("·", "no chain from that source"),
    ("⚠", "the sources disagree with each other"),
)


class HelpScreen(ModalScreen[None]):
    """Keys and the meaning of the marks."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "dismiss", "close", key_display="esc"),
    ]

    def compose(self) -> ComposeResult:
        keys = Table.grid(padding=(0, 2))
        keys.add_column(style="bold cyan", no_wrap=True)
        keys.add_column()
        for key, what in KEYS:
            keys.add_row(key, what)
        legend = Table.grid(padding=(0, 2))
        legend.add_column(style="bold", no_wrap=True)
        legend.add_column()
        for mark, what in LEGEND:
            legend.add_row(mark, what)
        with VerticalScroll(id="help-dialog"):
            yield Static(Text("mulcot tui — browse reasoning chains", style="bold"), classes="dialog-title")
            yield Static(keys)
            yield Static(Text("\nMarks in the sample list", style="bold"))
            yield Static(legend)
            yield Static(Text("\nThe mouse works too: click rows, chain tabs and filters; scroll.", style="dim"))

    def action_dismiss(self, result: Any = None) -> None:
        self.dismiss(None)


RATING_KEYS = ("1–5 score the scale in focus · ←/→, Enter pick · Tab next field\n"
               "Enter in the comment or ctrl+s saves · Esc cancels")


class RatingScreen(ModalScreen[dict[str, Any] | None]):
    """Rate one chain; dismisses with {faithfulness, usefulness, comment} or None."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "cancel"),
        Binding("ctrl+s", "save", "save"),
        *(Binding(str(n), f"score({n})", show=False) for n in range(1, 6)),
    ]

    def __init__(self, chain: dict[str, Any], sample: dict[str, Any]) -> None:
        super().__init__()
        self.chain = chain
        self.sample = sample

    def compose(self) -> ComposeResult:
        c = self.chain
        with Vertical(id="rating-dialog"):
            yield Static(
                Text.assemble(
                    ("Rate chain ", "bold"), (f"#{c['id']}", "bold"), f"  {c['source']} · {c['stage']} · ",
                    (c["model"] or "", "dim"), f"\nsample {self.sample['dataset']} · {self.sample['key']}",
                ),
                classes="dialog-title",
            )
            yield Static(Text(RATING_KEYS, style="dim"), id="rating-keys")
            yield Label("Faithfulness: does it follow from the post and the image? (1–5)")
            yield RadioSet(*(RadioButton(str(n), id=f"faith-{n}") for n in range(1, 6)), id="faithfulness")
            yield Label("Usefulness: does it explain the label well? (1–5)")
            yield RadioSet(*(RadioButton(str(n), id=f"use-{n}") for n in range(1, 6)), id="usefulness")
            yield Input(placeholder="comment (optional); Enter saves", id="comment")
            yield Static("", id="rating-error")
            with Horizontal(id="rating-buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#faithfulness", RadioSet).focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Digits score a scale only while one has the focus: typed in the comment (or on a button) they are text."""
        if action == "score":
            return isinstance(self.focused, RadioSet)
        return True

    def _score(self, name: str) -> int | None:
        pressed = self.query_one(f"#{name}", RadioSet).pressed_button
        return int(str(pressed.label)) if pressed is not None else None

    def action_score(self, n: int) -> None:
        """A digit sets the focused scale; the focus moves on (see :meth:`on_radio_set_changed`)."""
        target = self.focused
        if not isinstance(target, RadioSet):
            return
        prefix = "faith" if target.id == "faithfulness" else "use"
        target.query_one(f"#{prefix}-{n}", RadioButton).value = True

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        """A scale was set (a digit, Enter or a click): on to the next unset scale, else to the comment, so that
        what is typed next lands in the comment and never rescores a scale."""
        unset = next((r for r in self.query(RadioSet) if r.pressed_button is None), None)
        (unset or self.query_one("#comment", Input)).focus()

    def action_save(self) -> None:
        faith, use = self._score("faithfulness"), self._score("usefulness")
        if faith is None or use is None:
            self.query_one("#rating-error", Static).update(
                Text("Choose 1–5 for both faithfulness and usefulness.", style="bold red")
            )
            return
        comment = self.query_one("#comment", Input).value.strip() or None
        self.dismiss({"faithfulness": faith, "usefulness": use, "comment": comment})

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_save()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "save":
            self.action_save()
        else:
            self.action_cancel()
