"""Pieces every command shares: consoles, the --db and --json options, opening the store, the progress bar."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mulcot.events import Event
from mulcot.store import Store, default_db_path

console = Console()
err_console = Console(stderr=True)


class LazyProgress(Progress):
    """A rich progress bar drawn from its first update on, not when the ``with`` block opens: a command refused by
    its checks (a bad setting, a model that cannot be loaded) shows one line of error and no empty bar."""

    def __enter__(self) -> LazyProgress:
        return self

    def stop(self) -> None:
        if self.live.is_started:  # (rich prints a blank line on stop off a terminal, started or not)
            super().stop()

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        if not self.live.is_started and not self.disable:
            self.start()
        super().update(task_id, **kwargs)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        if not self.live.is_started and not self.disable:
            self.start()
        super().advance(task_id, advance)

DbOption = Annotated[
    Path | None,
    typer.Option("--db", envvar="MULCOT_DB", help="Project database (default ./mulcot.db).", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON to stdout, nothing else.")]


def open_store(db: Path | None, *, readonly: bool = False) -> Store:
    """The store of ``--db`` (default ``$MULCOT_DB`` or ./mulcot.db): for writing (created and migrated as needed),
    or ``readonly`` for a command that only reads (never created or written; works on a read-only file)."""
    return Store.open(db or default_db_path(), readonly=readonly)


def output_file(path: Path) -> Path:
    """``path`` for a file a command writes, its folder created first (``--out lf/train.json`` without ``lf/``)."""
    from mulcot.errors import MulcotError

    folder = path.expanduser().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MulcotError(f"cannot create the folder {folder} for {path}: {err.strerror or err}") from None
    if path.is_dir():
        raise MulcotError(f"{path} is a folder: give a file name for --out")
    return path


def progress_bar(as_json: bool, *, info: bool = False, spinner: bool = False, remaining: bool = False,
                 transient: bool = True) -> Progress:
    """The progress bar of every long command, on stderr (silent with --json): description, bar, done/total, and
    optionally a spinner, an ``info`` text field, the time remaining. Drawn from its first update on
    (:class:`LazyProgress`): a command refused by its checks shows its one line of error and no empty bar."""
    columns: list[Any] = [SpinnerColumn()] if spinner else []
    columns += [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if info:
        columns.append(TextColumn("{task.fields[info]}"))
    columns.append(TimeElapsedColumn())
    if remaining:
        columns.append(TimeRemainingColumn())
    return LazyProgress(*columns, console=err_console, disable=as_json, transient=transient)


def follow(bar: Progress, description: str, info: Callable[[Event], str] | None = None, *,
           describe: bool = False) -> Callable[[Event], None]:
    """A task on ``bar`` and the library callback that moves it (``event.done`` of ``event.total``); ``info(event)``
    fills the info field, ``describe`` shows each event's message as the description."""
    task = bar.add_task(description, total=None, info="")

    def progress(event: Event) -> None:
        fields: dict[str, Any] = {"completed": event.done, "total": event.total}
        if info is not None:
            fields["info"] = info(event)
        if describe and event.message:
            fields["description"] = event.message
        bar.update(task, **fields)

    return progress


def usage_text(summary: Any) -> str:
    """Requests, tokens and cost of a teacher job so far (annotate, captions)."""
    cost = f"${summary.cost_usd:.4f}" if summary.cost_known else "cost n/a"
    return f"{summary.requests} req · {summary.tokens_in + summary.tokens_out} tok · {cost}"


def parse_price(value: str | None, flag: str = "--price") -> tuple[float, float] | None:
    """A ``--price`` value: 'INPUT,OUTPUT' USD per 1M tokens (annotate, judge); None stays None."""
    from mulcot.errors import MulcotError

    if value is None:
        return None
    try:
        a, b = (float(x) for x in value.split(","))
        return a, b
    except ValueError:
        raise MulcotError(f"{flag} '{value}' is not 'INPUT,OUTPUT' USD per 1M tokens, e.g. 0.15,0.60") from None


def print_json(data: Any) -> None:
    """JSON to stdout, untouched by rich markup."""
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


# -- generation through an OpenAI-compatible server (expand, eval run, predict --dataset)
ServerOption = Annotated[
    str | None,
    typer.Option("--server", help="Generate through this OpenAI-compatible server (http://HOST:PORT/v1: vLLM, "
                 "llama.cpp) instead of in-process.", show_default=False),
]
ServedModelOption = Annotated[
    str | None,
    typer.Option("--served-model", help="The model's name on --server (as its /v1/models lists it).",
                 show_default=False),
]
ConcurrencyOption = Annotated[int, typer.Option(help="--server: requests in flight.")]
ServerRetriesOption = Annotated[int, typer.Option(help="--server: HTTP retries per request (429/5xx/drops).")]
MaxRequestsOption = Annotated[
    int | None, typer.Option(help="--server: stop after this many requests (rerun to go on).", show_default=False)
]
TimeBudgetOption = Annotated[
    float | None, typer.Option(help="--server: stop starting requests after this many seconds.", show_default=False)
]
ServerTextOnlyOption = Annotated[
    bool, typer.Option("--server-text-only", help="--server: the served model reads no images (captions instead).")
]


def server_config(server: str | None, served_model: str | None, *, concurrency: int = 4, retries: int = 3,
                  max_requests: int | None = None, time_budget: float | None = None,
                  text_only: bool = False) -> Any:
    """The :class:`mulcot.generation.server.ServerConfig` of the --server flags (None without --server)."""
    from mulcot.errors import MulcotError
    from mulcot.generation.server import ServerConfig

    if server is None:
        if served_model is not None:
            raise MulcotError("--served-model needs --server URL")
        return None
    if not served_model:
        raise MulcotError("--server needs --served-model NAME (the model's name in the server's /v1/models)")
    return ServerConfig(url=server, served_model=served_model, concurrency=concurrency, http_retries=retries,
                        max_requests=max_requests, time_budget_s=time_budget, text_only=text_only)


_SERVER_FLAGS: dict[str, tuple[Any, Any]] = {  # parameter -> (annotation, default)
    "server": (ServerOption, None),
    "served_model": (ServedModelOption, None),
    "concurrency": (ConcurrencyOption, 4),
    "retries": (ServerRetriesOption, 3),
    "max_requests": (MaxRequestsOption, None),
    "time_budget": (TimeBudgetOption, None),
    "server_text_only": (ServerTextOnlyOption, False),
}


def server_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the --server flags (--server, --served-model, --concurrency, --retries, --max-requests,
    --time-budget, --server-text-only); it receives them as one ``server`` keyword: a
    :class:`mulcot.generation.server.ServerConfig`, or None without --server."""
    import functools
    import inspect

    sig = inspect.signature(fn, eval_str=True)
    own = [p for p in sig.parameters.values() if p.name != "server"]
    flags = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
             for name, (annotation, default) in _SERVER_FLAGS.items()]
    tail = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p.name in ("db", "as_json", "options")]
    head = [p for p in own if p.name not in ("db", "as_json", "options")]
    head = [p if p.default is inspect.Parameter.empty else p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in head]

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name in _SERVER_FLAGS}
        served = server_config(values["server"], values["served_model"], concurrency=values["concurrency"],
                               retries=values["retries"], max_requests=values["max_requests"],
                               time_budget=values["time_budget"], text_only=values["server_text_only"])
        return fn(*args, server=served, **kwargs)

    command.__signature__ = sig.replace(parameters=[*head, *flags, *tail])  # type: ignore[attr-defined]
    return command


def print_served(served: dict[str, Any] | None, warnings: list[str] | None = None) -> None:
    """What a served generation left to say: warnings, failed requests (with reasons), a budget stop."""
    for line in warnings or ():
        err_console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
    if not served:
        return
    for line in served.get("failures") or ():
        err_console.print(f"[red]failed:[/] {escape(line)}", highlight=False, soft_wrap=True)
    if served.get("failed"):
        err_console.print(f"{served['failed']} requests failed (nothing stored for them): rerun to ask again",
                          highlight=False)
    if served.get("stopped"):
        err_console.print(f"stopped at the {served['stopped']} budget: rerun the same command to go on",
                          highlight=False)
