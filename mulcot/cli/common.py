"""Pieces every command shares: consoles, the --db and --json options, opening the store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, TaskID

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


def open_store(db: Path | None) -> Store:
    return Store.open(db or default_db_path())


def print_json(data: Any) -> None:
    """JSON to stdout, untouched by rich markup."""
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


# -- generation through an OpenAI-compatible server (expand, eval run, predict --dataset)
ServerOption = Annotated[
    str | None,
    typer.Option("--server", help="Generate through this OpenAI-compatible server (http://HOST:PORT/v1: vLLM, "
                 "llama.cpp) instead of in-process.", show_default=False),  # fmt: skip
]
ServedModelOption = Annotated[
    str | None,
    typer.Option("--served-model", help="The model's name on --server (as its /v1/models lists it).",
                 show_default=False),  # fmt: skip
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
                  text_only: bool = False) -> Any:  # fmt: skip
    """The :class:`mulcot.serving.ServerConfig` of the --server flags (None without --server)."""
    from mulcot.errors import MulcotError
    from mulcot.serving import ServerConfig

    if server is None:
        if served_model is not None:
            raise MulcotError("--served-model needs --server URL")
        return None
    if not served_model:
        raise MulcotError("--server needs --served-model NAME (the model's name in the server's /v1/models)")
    return ServerConfig(url=server, served_model=served_model, concurrency=concurrency, http_retries=retries,
                        max_requests=max_requests, time_budget_s=time_budget, text_only=text_only)  # fmt: skip


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
                          highlight=False)  # fmt: skip
    if served.get("stopped"):
        err_console.print(f"stopped at the {served['stopped']} budget: rerun the same command to go on",
                          highlight=False)  # fmt: skip
