"""``mulcot judge``: an LLM judge scores chains on a versioned rubric (or, with --leakage, guesses their label from
the chain alone); --report summarises the verdicts and their agreement with people's ratings."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from mulcot.cli.common import (
    DbOption,
    JsonOption,
    console,
    err_console,
    follow,
    open_store,
    parse_price,
    print_json,
    progress_bar,
    usage_text,
)
from mulcot.cli.eval_report import print_judge
from mulcot.core.client import DEFAULT_KEY_ENV, TeacherConfig, TeacherUnreachable
from mulcot.errors import MulcotError
from mulcot.judge import JudgeConfig, JudgeSummary, judge_report, run_judge
from mulcot.judge.run import SOURCES


def judge(
    dataset: Annotated[str, typer.Argument(help="Dataset name in the store.", show_default=False)],
    judge_model: Annotated[
        str | None, typer.Option("--judge", help="Judge model name at the endpoint, e.g. gpt-4o.", show_default=False)
    ] = None,
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp, …); default: OpenAI.")
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(help=f"Environment variable holding the API key (default: {DEFAULT_KEY_ENV} for the OpenAI "
                     "API, none for other servers).", show_default=False),
    ] = None,
    source: Annotated[str, typer.Option(help=f"Whose chains: {', '.join(SOURCES)}.")] = "any",
    split: Annotated[str | None, typer.Option(help="Only this split (default: every split).")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N chains.")] = None,
    leakage: Annotated[
        bool, typer.Option("--leakage", help="Ask for the label from the chain alone (no post, no Prediction).")
    ] = False,
    no_image: Annotated[bool, typer.Option("--no-image", help="A text-only judge: send no image.")] = False,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at most.")] = 8,
    max_retries: Annotated[int, typer.Option(help="Regenerations of an unusable answer.")] = 2,
    budget_usd: Annotated[float | None, typer.Option(help="Stop before the cost would exceed this.")] = None,
    price: Annotated[str | None, typer.Option(help="USD per 1M tokens 'IN,OUT' (overrides the price table).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per request before it is retried.")] = 120.0,
    http_retries: Annotated[int, typer.Option(help="Retries of a request on 429/5xx/timeouts.")] = 5,
    max_tokens: Annotated[int, typer.Option(help="Completion token limit per request.")] = 600,
    temperature: Annotated[
        float | None, typer.Option(help="Sampling temperature (0: the judge's most likely answer).")
    ] = 0.0,
    run: Annotated[str | None, typer.Option(help="Run id (default: judge-DATASET-KIND-MODEL).")] = None,
    report: Annotated[
        bool, typer.Option("--report", help="Summarise the stored verdicts (rubric, leakage, agreement with "
                           "ratings) instead of judging; reads only.")
    ] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Have an LLM judge score the chains of a dataset on the rubric (1-5 per criterion, with a reason).

    With --leakage, it names each chain's label from the chain alone instead.
    Verdicts are stored per chain; a rerun judges what failed and skips what is judged.
    --report summarises them, with the judge's agreement with TUI ratings."""
    if report:
        _report(open_store(db, readonly=True), dataset, split, judge_model, as_json)
        return
    if not judge_model:
        raise MulcotError("--judge MODEL is required (the model name at the endpoint, e.g. gpt-4o)")
    endpoint = TeacherConfig(model=judge_model, base_url=base_url, key_env=api_key_env, timeout_s=timeout,
                             http_retries=http_retries, temperature=temperature, max_tokens=max_tokens,
                             price=parse_price(price))
    cfg = JudgeConfig(dataset=dataset, judge=endpoint, kind="leakage" if leakage else "rubric", source=source,
                      split=split, concurrency=concurrency, max_retries=max_retries, budget_usd=budget_usd,
                      limit=limit, image=not no_image, run_id=run)
    store = open_store(db)
    with progress_bar(as_json, info=True) as bar:
        progress = follow(bar, f"judging {dataset} ({cfg.kind})", lambda e: usage_text(e.summary))
        summary = run_judge(store, cfg, progress=progress)
    if summary.requests and not summary.answered:
        raise TeacherUnreachable(f"no request got an answer from the judge ({summary.requests} tried; last: "
                                 f"{summary.last_error or 'no answer'}); run the same command again when it answers")
    result = judge_report(store, dataset, split=split, judge_model=judge_model)
    if as_json:
        print_json({"summary": summary.as_dict(), "report": result})
        return
    _print_summary(summary, dataset)
    print_judge(result)


def _print_summary(s: JudgeSummary, dataset: str) -> None:
    table = Table(title=f"judge {escape(dataset)} ({escape(s.run_id)})", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for name, value in [
        ("chains selected", s.chains), ("judged now", s.judged), ("judged before", s.skipped_done),
        ("failed", s.failed), ("left unjudged", s.pending), ("requests / HTTP retries", f"{s.requests} / "
                                                                                       f"{s.http_retries}"),
        ("tokens in / out", f"{s.tokens_in} / {s.tokens_out}"),
        ("cost", f"${s.cost_usd:.4f}" if s.cost_known else "unknown (model not in the price table: --price)"),
        ("wall time", f"{s.wall_s:.1f} s"), ("rubric version", s.rubric_version),
    ]:
        table.add_row(name, str(value))
    console.print(table)
    for failure in s.failures[:10]:
        err_console.print(f"[yellow]failed[/] {escape(failure)}", soft_wrap=True)
    if s.stopped == "budget":
        console.print("[yellow]stopped: the next request could exceed --budget-usd; raise it and run again[/]")
    if s.stopped == "unreachable":
        err_console.print("[yellow]stopped: the judge stopped answering; the rest is marked failed and is judged "
                          "again when you run the same command[/]")


def _report(store: Any, dataset: str, split: str | None, judge_model: str | None, as_json: bool) -> None:
    result = judge_report(store, dataset, split=split, judge_model=judge_model)
    if as_json:
        print_json(result)
        return
    print_judge(result)
