"""``mulcot tui``: a browser for the reasoning chains in a store.

Left: datasets and splits, the filters and the search. Centre: the samples (a virtual table, paged from the
store). Right (below, on narrow terminals): the selected sample — its text with the aspect highlighted, its image,
and its chains as five labelled sections, one tab per chain. The app only reads the store, except for ratings.

Long because: one ``App`` with its bindings, reactive state and the ``@work`` loaders that keep the
screen current, as Textual's own examples keep them; the widgets, filters, detail rendering and queries live in
their own modules (table, filters, detail, screens, and the store's browse module).
"""

from __future__ import annotations

import sqlite3
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container, Horizontal, Vertical, VerticalScroll
from textual.reactive import var
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Footer, Header, Input, Static, Tree

from mulcot.core.labels import LABELS
from mulcot.errors import MulcotError
from mulcot.store import Store, default_db_path
from mulcot.store.browse import SearchSyntaxError
from mulcot.tui.detail import render_chain, render_chain_bar, render_head
from mulcot.tui.filters import FilterPanel
from mulcot.tui.image import GRAPHICS_MODES, TerminalImage, graphics_widget
from mulcot.tui.screens import HelpScreen, RatingScreen
from mulcot.tui.state import RUN_PREFIX, Filters
from mulcot.tui.table import SampleTable

JUDGE_SHOWN = {"high": "high ≥3.5", "mid": "mid", "low": "low <2.5", "failed": "failed"}  # judge score bands
FILTERS = (("gold", "gold"), ("predicted", "pred"), ("source", "source"), ("stage", "stage"), ("outcome", "result"))
SMALL_STORE = 20_000  # up to this many samples, counts are made at once instead of in the background
SEARCH_DELAY_S = 0.3


class StatusLine(Widget):
    """One line of text that never changes size: updating it repaints it without a new layout."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._text = Text()

    def set(self, text: Text) -> None:
        self._text = text
        self.refresh()

    def render(self) -> Text:
        return self._text


class Sidebar(VerticalScroll, can_focus=False):
    """Datasets, filters and search; scrolls on short terminals without taking a turn in the focus chain."""


class ChainBrowser(App[None]):
    """Browse samples and their reasoning chains; rate chains."""

    CSS_PATH = "browser.tcss"
    TITLE = "mulcot"
    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-narrow"), (120, "-wide")]
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "move(1)", "move", key_display="j/k"),
        Binding("k", "move(-1)", "up", show=False),
        Binding("l,right", "chain(1)", "chain", key_display="h/l"),
        Binding("h,left", "chain(-1)", "previous chain", show=False),
        # a priority binding acts as the key arrives, so "/word" typed fast (or pasted) lands in the search box
        Binding("slash", "search", "search", key_display="/", priority=True),
        Binding("f", "toggle_filters", "filter"),
        Binding("tab", "focus_next", "pane", priority=True),
        Binding("r", "rate", "rate"),
        Binding("question_mark", "help", "help", key_display="?"),
        Binding("q", "quit", "quit"),
        Binding("c", "clear_filters", "clear", show=False),
        Binding("i", "toggle_image", "image", show=False),
        Binding("ctrl+r", "reload", "reload", show=False),
        Binding("escape", "focus_table", "list", show=False),
    ]

    show_filters = var(True)
    show_image = var(True)
    filters: var[Filters] = var(Filters(), init=False)
    chain_index = var(0, init=False)

    def __init__(
        self,
        db: str | Path | Store | None = None,
        *,
        rater: str | None = None,
        image_mode: str = "blocks",
        page_size: int = 100,
    ) -> None:
        super().__init__()
        self._owns_store = not isinstance(db, Store)
        if isinstance(db, Store):
            self.store: Store | None = db
            self.db_path = db.path
        else:
            self.db_path = Path(db) if db is not None else default_db_path()
            # A missing database is reported on screen, not created: the browser reads through a read-only
            # connection (a read-only file or filesystem is fine); a rating opens one to write (_writer).
            self.store = Store.open(self.db_path, readonly=True) if self.db_path.exists() else None
        self._writable: Store | None = None
        self.rater = rater
        self.image_mode = image_mode
        self.page_size = page_size
        self.detail: dict[str, Any] | None = None
        self.tree_data: list[dict[str, Any]] = []
        self.small = True
        self._generation = 0
        self._counting: dict[int, Store] = {}
        self._search_timer: Timer | None = None
        self._wanted: int | None = None  # the sample the cursor is on
        self._stale = True  # the sample shown must be read again (after a reload)
        self._search_problem: str | None = None  # why the search as typed cannot run (shown in the status line)

    # -- layout ------------------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            with Sidebar(id="sidebar"):
                yield Static("datasets", classes="section")
                tree: Tree[tuple[str | None, str | None]] = Tree("all", id="datasets")
                tree.show_root = False
                yield tree
                yield Static("filters", classes="section")
                yield FilterPanel(list(FILTERS), id="filters")
                yield Input(placeholder="search…", id="search", compact=True)
            with Container(id="content"):
                with Vertical(id="centre"):
                    yield SampleTable(id="samples", page_size=self.page_size)
                    yield StatusLine(id="status")
                with VerticalScroll(id="detail"):
                    yield Static(id="head")
                    yield Static(id="image")
                    if self.image_mode in GRAPHICS_MODES:
                        yield graphics_widget(self.image_mode, id="image-gfx")
                    yield Static(id="chain-bar")
                    yield Static(id="chain")
        yield Static(id="empty")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.db_path.name
        if self.store is None:
            self._show_empty(
                f"No database at {self.db_path}.\n\nCreate one, for example:\n"
                f"  mulcot demo --db {self.db_path}\n"
                f"  mulcot data import twitter-tsv DATA_DIR --db {self.db_path}\n\nPress q to quit."
            )
            return
        self.reload()
        self.query_one(SampleTable).focus()

    def _show_empty(self, message: str) -> None:
        self.add_class("-empty")
        self.query_one("#empty", Static).update(Text(message))
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """With nothing to browse, only help, reload and quit remain; "/" is text in an input or a dialog."""
        if self.has_class("-empty") and action not in ("quit", "help", "reload"):
            return False
        if action == "search" and (isinstance(self.focused, Input) or len(self.screen_stack) > 1):
            return False
        return True

    # -- loading -----------------------------------------------------------------------------------------------

    def reload(self) -> None:
        """Read the datasets and filter choices, then the samples (again)."""
        assert self.store is not None
        self._stale = True
        self.tree_data = self.store.browse_tree(chains=False)
        if not self.tree_data:
            self._show_empty(
                f"No datasets in {self.db_path} yet.\n\nAdd one, for example:\n"
                f"  mulcot demo --db {self.db_path}\n"
                f"  mulcot data import twitter-tsv DATA_DIR --db {self.db_path}\n\nPress q to quit."
            )
            return
        self.remove_class("-empty")
        self.refresh_bindings()
        self.small = sum(d["samples"] for d in self.tree_data) <= SMALL_STORE
        if self.small:
            self.tree_data = self.store.browse_tree()
        else:
            self.call_after_refresh(self._count_chains)
        self._fill_tree()
        self._fill_choices()
        names = [d["name"] for d in self.tree_data]
        dataset = self.filters.dataset if self.filters.dataset in names else (names[0] if len(names) == 1 else None)
        wanted = self.filters.with_(dataset=dataset, split=self.filters.split if dataset else None)
        if wanted != self.filters:
            self.filters = wanted
        else:
            self._load_samples()

    def _fill_tree(self) -> None:
        tree: Tree[tuple[str | None, str | None]] = self.query_one("#datasets", Tree)
        tree.clear()
        if len(self.tree_data) > 1:
            total = sum(d["samples"] for d in self.tree_data)
            tree.root.add_leaf(f"all datasets {total:,}", data=(None, None))
        for ds in self.tree_data:
            node = tree.root.add(f"{ds['name']} {ds['samples']:,}", data=(ds["name"], None), expand=True)
            for sp in ds["splits"]:
                chains = "" if sp["chains"] is None else f" · {sp['chains']:,} ch"
                node.add_leaf(f"{sp['split']} {sp['samples']:,}{chains}", data=(ds["name"], sp["split"]))

    def _fill_choices(self) -> None:
        assert self.store is not None
        choices = self.store.browse_choices()
        options = {
            "gold": [(label, label) for label in LABELS],
            "predicted": [(label, label) for label in LABELS],
            "source": [(s, s) for s in choices["sources"]] + [(f"run {r}", RUN_PREFIX + r) for r in choices["runs"]],
            "stage": [(s, s) for s in choices["stages"]],
            "outcome": [(o, o) for o in Store.BROWSE_OUTCOMES],
            "judge": [(JUDGE_SHOWN.get(band, band), band) for band in choices["judge"]],
        }
        panel = self.query_one(FilterPanel)
        if choices["judge"]:  # a judge has scored chains here: filter by its score band
            panel.add_filter("judge", "judge")
        for name in panel.names:
            panel.set_options(name, options[name])
            panel.set_value(name, getattr(self.filters, name))

    def watch_filters(self, old: Filters, new: Filters) -> None:
        self._load_samples()

    def _load_samples(self) -> None:
        """First page now; the total now when cheap, else counted in the background."""
        if self.store is None or not self.tree_data:
            return
        self._generation += 1
        self._stop_counting()
        filters = self.filters.store_filters()
        fetch = partial(self.store.browse_page, **filters)
        self._search_problem = None
        try:
            first = fetch(limit=self.page_size)
        except SearchSyntaxError as err:  # e.g. "cat OR": say how to write it, show nothing
            self._search_problem = str(err)
            fetch, first = (lambda **_: []), []
        count: int | None = None
        if len(first) < self.page_size:
            count = len(first)
        elif self.small:
            count = self.store.browse_count(**filters)
        table = self.query_one(SampleTable)
        # rows from several datasets share ids: then each row names its dataset
        widest = max(len("dataset"), *(len(d["name"]) for d in self.tree_data))
        several = self.filters.dataset is None and len(self.tree_data) > 1
        table.dataset_width = min(21, widest + 1) if several else 0
        table.load(fetch, first, count)
        if count is None:  # after this frame is painted, so the count does not compete with it
            self.call_after_refresh(self._count, self._generation, filters)
        self._update_status()

    @work(thread=True, group="count", exit_on_error=False)
    def _count(self, generation: int, filters: dict[str, Any]) -> None:
        if generation != self._generation:  # the filters changed before it started
            return
        store = Store(self.db_path, readonly=True)  # its own connection: counts run beside the UI's queries
        self._counting[generation] = store
        try:
            n = store.browse_count(**filters)
        except sqlite3.OperationalError:  # interrupted: the filters changed
            return
        finally:
            self._counting.pop(generation, None)
            store.close()
        self._from_thread(self._counted, generation, n)

    @work(thread=True, group="tree", exit_on_error=False)
    def _count_chains(self) -> None:
        store = Store(self.db_path, readonly=True)
        try:
            tree = store.browse_tree()
        finally:
            store.close()
        self._from_thread(self._chains_counted, tree)

    def _from_thread(self, callback: Any, *args: Any) -> None:
        try:
            self.call_from_thread(callback, *args)
        except RuntimeError:  # the app has exited
            pass

    def _counted(self, generation: int, n: int) -> None:
        if generation == self._generation:
            self.query_one(SampleTable).set_count(n)
            self._update_status()

    def _chains_counted(self, tree: list[dict[str, Any]]) -> None:
        self.tree_data = tree
        self._fill_tree()

    def _stop_counting(self) -> None:
        for store in list(self._counting.values()):
            try:
                store.db.conn.interrupt()
            except sqlite3.ProgrammingError:  # it finished (and closed) meanwhile
                pass

    def on_unmount(self) -> None:
        self._stop_counting()
        if self.store is not None and self._owns_store:
            self.store.close()
        if self._writable is not None and self._writable is not self.store:
            self._writable.close()

    def _update_status(self) -> None:
        table = self.query_one(SampleTable)
        n = table.row_count
        where = self.filters.describe()
        if self._search_problem is not None:
            text = Text(f"search: {self._search_problem}", style="bold")
        elif n == 0:
            text = Text("no sample matches", style="bold")
            if self.filters.active:
                text.append(f": {where} (c clears the filters)")
        else:
            total = f"{n:,}" if table.count_exact else f"{n:,}+ (counting…)"
            text = Text(f"{table.cursor_row + 1:,} of {total} samples")
            if where:
                text.append(f" · {where}", style="bold")
        self.query_one(StatusLine).set(text)

    # -- the selected sample -----------------------------------------------------------------------------------

    def on_sample_table_highlighted(self, event: SampleTable.Highlighted) -> None:
        """The list repaints first; the sample follows in the next frame (only the newest, when keys repeat)."""
        self._update_status()
        self._wanted = event.row["id"] if event.row else None
        self.call_after_refresh(self._show_wanted)

    def _show_wanted(self) -> None:
        shown = self.detail["sample"]["id"] if self.detail else None
        if self._wanted != shown or self._stale:
            self._stale = False
            self._show_sample(self._wanted)

    def on_sample_table_selected(self, event: SampleTable.Selected) -> None:
        self.query_one("#detail").focus()

    def _show_sample(self, sample_id: int | None, keep_chain: bool = True) -> None:
        previous = self.current_chain
        self.detail = self.store.browse_sample(sample_id) if sample_id is not None and self.store else None
        index = 0
        if self.detail and previous and keep_chain:
            for i, c in enumerate(self.detail["chains"]):
                if (c["source"], c["stage"]) == (previous["source"], previous["stage"]):
                    index = i
                    break
        self.chain_index = index
        self._render_detail()

    @property
    def current_chain(self) -> dict[str, Any] | None:
        if not self.detail or not self.detail["chains"]:
            return None
        return self.detail["chains"][min(self.chain_index, len(self.detail["chains"]) - 1)]

    def _render_detail(self) -> None:
        head, image = self.query_one("#head", Static), self.query_one("#image", Static)
        bar, chain = self.query_one("#chain-bar", Static), self.query_one("#chain", Static)
        if self.detail is None:
            head.update(Text("no sample selected", style="dim italic"))
            for w in (image, bar, chain):
                w.update("")
            return
        sample = self.detail["sample"]
        head.update(render_head(self.detail))
        path = sample.get("image_path")
        shown = None
        if not self.show_image or self.image_mode == "none":
            image.update("")
        elif not sample.get("has_image") or not path:
            image.update(Text("(text only: no image)", style="dim"))
        elif not Path(path).is_file():
            image.update(Text(f"(image not found: {path})", style="dim"))
        elif self.image_mode in GRAPHICS_MODES:
            image.update("")
            shown = path
        else:
            narrow = self.screen.has_class("-narrow")
            image.update(TerminalImage(path, max_width=40, max_height=6 if narrow else 14, mode=self.image_mode))
        if self.image_mode in GRAPHICS_MODES:
            gfx = self.query_one("#image-gfx")
            image.display = shown is None
            gfx.display = shown is not None
            if gfx.image != shown:
                gfx.image = shown
        self._render_chain()

    def _render_chain(self) -> None:
        bar, view = self.query_one("#chain-bar", Static), self.query_one("#chain", Static)
        chain = self.current_chain
        if self.detail is None or chain is None:
            bar.update("")
            view.update("")
            return
        gold = self.detail["sample"]["label"]
        bar.update(render_chain_bar(self.detail["chains"], self.chain_index, gold))
        view.update(render_chain(chain, gold, self.detail["chains"]))

    def watch_chain_index(self) -> None:
        self._render_chain()

    # -- filters and search ------------------------------------------------------------------------------------

    def apply_filters(self, *, reset: bool = False, **changes: Any) -> None:
        """Set filters (``reset``: all but the dataset and split first) and show them in the widgets."""
        base = Filters(dataset=self.filters.dataset, split=self.filters.split) if reset else self.filters
        new = base.with_(**changes)
        panel = self.query_one(FilterPanel)
        for name in panel.names:
            panel.set_value(name, getattr(new, name))
        search = self.query_one("#search", Input)
        if search.value != new.search:
            with search.prevent(Input.Changed):
                search.value = new.search
        self.filters = new

    def on_filter_panel_changed(self, event: FilterPanel.Changed) -> None:
        if getattr(self.filters, event.name) != event.value:
            self.filters = self.filters.with_(**{event.name: event.value})

    def on_tree_node_selected(self, event: Tree.NodeSelected) -> None:
        if event.node.data is not None:
            dataset, split = event.node.data
            self.filters = self.filters.with_(dataset=dataset, split=split)

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id != "search":
            return
        if self._search_timer is not None:
            self._search_timer.stop()
        self._search_timer = self.set_timer(SEARCH_DELAY_S, partial(self._search, event.value))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "search":
            if self._search_timer is not None:
                self._search_timer.stop()
            self._search(event.value)
            self.query_one(SampleTable).focus()

    def _search(self, value: str) -> None:
        if value != self.filters.search:
            self.filters = self.filters.with_(search=value)

    # -- actions -----------------------------------------------------------------------------------------------

    def action_move(self, delta: int) -> None:
        self.query_one(SampleTable).action_move(delta)

    def action_chain(self, delta: int) -> None:
        if self.detail and self.detail["chains"]:
            self.chain_index = (self.chain_index + delta) % len(self.detail["chains"])

    def action_show_chain(self, index: int) -> None:
        if self.detail and 0 <= index < len(self.detail["chains"]):
            self.chain_index = index

    def action_search(self) -> None:
        self.show_filters = True
        self.screen.set_focus(self.query_one("#search", Input))  # now, before the keys that follow

    def action_focus_table(self) -> None:
        self.query_one(SampleTable).focus()

    def action_toggle_filters(self) -> None:
        self.show_filters = not self.show_filters

    def watch_show_filters(self, show: bool) -> None:
        self.query_one("#sidebar").display = show  # at once (a CSS class would apply on the next refresh)
        if not show and self.focused is not None and self.query_one("#sidebar") in self.focused.ancestors_with_self:
            self.query_one(SampleTable).focus()

    def action_toggle_image(self) -> None:
        self.show_image = not self.show_image

    def watch_show_image(self) -> None:
        if self.is_mounted and self.store is not None and self.tree_data:
            self._render_detail()

    def action_clear_filters(self) -> None:
        self.apply_filters(reset=True)

    def action_reload(self) -> None:
        if self.store is None and self.db_path.exists():
            self.store = Store.open(self.db_path, readonly=True)
            self._owns_store = True
        if self.store is not None:
            self.reload()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def _writer(self) -> Store:
        """The store to write ratings to: the one given, else a connection for writing opened on first use."""
        if self.store is not None and not self.store.readonly:
            return self.store
        if self._writable is None:
            self._writable = Store.open(self.db_path)
        return self._writable

    def action_rate(self) -> None:
        chain = self.current_chain
        if chain is None or self.detail is None:
            self.notify("no chain to rate here", severity="warning")
            return
        self.push_screen(RatingScreen(chain, self.detail["sample"]), partial(self._rated, chain["id"]))

    def _rated(self, reasoning_id: int, result: dict[str, Any] | None) -> None:
        if result is None or self.store is None or self.detail is None:
            return
        try:
            self._writer().add_rating(reasoning_id, rater=self.rater, **result)
        except MulcotError as err:  # a read-only or locked store: the browser goes on
            self.notify(f"rating not saved: {err}", severity="error", timeout=10)
            return
        index = self.chain_index
        self.detail = self.store.browse_sample(self.detail["sample"]["id"])
        self.chain_index = index
        self._render_detail()
        self.notify(f"rated chain #{reasoning_id}: faithfulness {result['faithfulness']}, "
                    f"usefulness {result['usefulness']}")
