"""``mulcot annotate``: two-stage teacher CoT enhancement with ARC retries, live or through batches."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from mulcot.annotate import AnnotateConfig, AnnotateSummary
from mulcot.annotate import annotate as run_annotate
from mulcot.annotate.batch import MAX_REQUESTS, BatchConfig, annotate_batch, batch_status
from mulcot.annotate.captions import CaptionConfig, caption_images
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
from mulcot.core.client import DEFAULT_KEY_ENV, TeacherConfig, TeacherUnreachable
from mulcot.errors import MulcotError

CAPTION_MAX_TOKENS = 100  # one sentence


def annotate(
    dataset: Annotated[str | None, typer.Argument(help="Dataset name in the store.", show_default=False)] = None,
    teacher: Annotated[
        str | None, typer.Option("--teacher", help="Teacher model name at the endpoint, e.g. gpt-4o-mini.")
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Split to annotate (default: train; with --captions: every split).")
    ] = None,
    captions: Annotated[
        bool, typer.Option("--captions", help="Caption every image (one sentence each) instead of writing chains.")
    ] = False,
    base_url: Annotated[
        str | None,
        typer.Option(help="OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp, …); default: OpenAI."),
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(help=f"Environment variable holding the API key (default: {DEFAULT_KEY_ENV} for the OpenAI "
                     "API, none for other servers; another server only gets one named *_KEY or MULCOT_*: see the "
                     "README).",
                     show_default=False),
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at most.")] = 8,
    max_retries: Annotated[int, typer.Option(help="ARC: regenerations of an invalid output.")] = 3,
    budget_usd: Annotated[
        float | None, typer.Option(help="Stop before the cost would exceed this (with --batch: at batch prices).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N samples of the split.")] = None,
    stage: Annotated[str, typer.Option(help="predict (P_pre), explain (P_exp) or both.")] = "both",
    price: Annotated[str | None, typer.Option(help="USD per 1M tokens 'IN,OUT' (overrides the price table).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per request before it is retried.")] = 120.0,
    http_retries: Annotated[int, typer.Option(help="Retries of a request on 429/5xx/timeouts.")] = 5,
    image_max_side: Annotated[int, typer.Option(help="Images are downsized to this longer side (px).")] = 280,
    max_tokens: Annotated[
        int | None, typer.Option(help="Completion token limit per request (default 1024; captions 100).")
    ] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (endpoint default if unset).")] = None,
    json_mode: Annotated[
        bool, typer.Option("--json-mode", help="Ask for a JSON object (response_format), where supported.")
    ] = False,
    run: Annotated[str | None, typer.Option(help="Run id (default: annotate-DATASET-SPLIT-MODEL).")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Write the run even while another process writes it: the two share the "
                           "samples (no request is sent twice).")
    ] = False,
    batch: Annotated[
        bool, typer.Option("--batch", help="Use the OpenAI Batch API (half price; stage 2 and retries follow up).")
    ] = False,
    batch_file: Annotated[
        Path | None,
        typer.Option(help="Write the due requests as Batch JSONL for an offline run (vllm run-batch); no upload."),
    ] = None,
    ingest: Annotated[
        Path | None,
        typer.Option(help="Take in a vllm run-batch / Batch API results file, then write the next round's file."),
    ] = None,
    batch_status_: Annotated[
        bool, typer.Option("--batch-status", help="List batches and batch files with their counts and cost.")
    ] = False,
    batch_price: Annotated[
        str | None, typer.Option(help="Batch USD per 1M tokens 'IN,OUT' (default: half the live price).")
    ] = None,
    poll_s: Annotated[float, typer.Option(help="Seconds between polls of submitted batches.")] = 30.0,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="--batch: submit what is due and return; run again to poll and follow up.")
    ] = False,
    batch_max_requests: Annotated[int, typer.Option(help="Requests per batch file at most.")] = MAX_REQUESTS,
    batch_max_mb: Annotated[float, typer.Option(help="Size of a batch file at most (MB).")] = 200.0,
    runs_dir: Annotated[
        Path | None,
        typer.Option(help="Where run folders are (batch files are kept there; default: runs/ beside the database).",
                     show_default=False),
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Have the teacher write five-field reasoning for a split: pass 1 predicts, pass 2 explains the misses.

    Live by default; --batch goes through the OpenAI Batch API.
    --batch-file / --ingest work with files for an offline run (vllm run-batch).
    With --captions, have it caption every image instead (what text-only backbones read).
    Every way resumes when run again."""
    store = open_store(db)
    if batch_status_:
        _print_batches(batch_status(store, dataset), as_json)
        return
    if not dataset:
        raise MulcotError("give the DATASET to annotate (or --batch-status to list batches)")
    if not teacher:
        raise MulcotError("--teacher MODEL is required (the model name at the endpoint, e.g. gpt-4o-mini)")
    if batch and (batch_file or ingest):
        raise MulcotError("--batch uploads to the Batch API; --batch-file / --ingest work with files: choose one")
    if captions and (batch or batch_file or ingest):
        raise MulcotError("--captions runs live: drop --batch / --batch-file / --ingest")
    teacher_cfg = TeacherConfig(model=teacher, base_url=base_url, key_env=api_key_env, timeout_s=timeout,
                                http_retries=http_retries, temperature=temperature,
                                max_tokens=max_tokens or (CAPTION_MAX_TOKENS if captions else 1024),
                                json_mode=json_mode, image_max_side=image_max_side, price=parse_price(price))
    if captions:
        _captions(store, dataset, teacher_cfg, split, concurrency, budget_usd, limit, run, as_json)
        return
    cfg = AnnotateConfig(
        dataset=dataset, split=split or "train", stage=stage, concurrency=concurrency, max_retries=max_retries,
        budget_usd=budget_usd, limit=limit, run_id=run, teacher=teacher_cfg, force=force,
    )
    with progress_bar(as_json, info=True) as bar:
        progress = follow(bar, f"annotating {dataset}/{split}",
                          lambda e: (f"{e.message} · " if e.message else "") + usage_text(e.summary))
        if batch or batch_file or ingest:
            bcfg = BatchConfig(price=parse_price(batch_price, "--batch-price"), max_requests=batch_max_requests,
                               max_bytes=int(batch_max_mb * 1e6), poll_s=poll_s, wait=not no_wait,
                               runs_dir=str(runs_dir) if runs_dir else None)
            summary = annotate_batch(store, cfg, bcfg, batch_file=batch_file, ingest=ingest, progress=progress)
        else:
            summary = run_annotate(store, cfg, progress=progress)
            if summary.requests and not summary.answered:  # nothing reached the teacher: one line, not a table
                raise TeacherUnreachable(f"no request got an answer from the teacher ({summary.requests} tried; "
                                         f"last: {summary.last_error or 'no answer'}); "
                                         "run the same command again when it answers")
    if as_json:
        print_json(summary.as_dict())
        return
    _print_summary(summary, dataset, cfg.split)


def _captions(store: Any, dataset: str, teacher: TeacherConfig, split: str | None, concurrency: int,
              budget_usd: float | None, limit: int | None, run: str | None, as_json: bool) -> None:
    """``annotate --captions``: the teacher captions every image of the dataset (or of ``split``)."""
    cfg = CaptionConfig(dataset=dataset, teacher=teacher, splits=(split,) if split else None,
                        concurrency=concurrency, budget_usd=budget_usd, limit=limit, run_id=run)
    with progress_bar(as_json, info=True) as bar:
        progress = follow(bar, f"captioning {dataset}", lambda e: usage_text(e.summary))
        summary = caption_images(store, cfg, progress=progress)
    if as_json:
        print_json(summary.as_dict())
        return
    s = summary
    table = Table(title=f"captions {escape(dataset)} ({escape(s.run_id)})", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for name, value in [
        ("images in the splits", s.images),
        ("captioned now", s.captioned),
        ("already captioned before", s.skipped_done),
        ("samples given a sibling's caption", s.reused),
        ("failed", s.failed),
        ("requests / HTTP retries", f"{s.requests} / {s.http_retries}"),
        ("tokens in / out", f"{s.tokens_in} / {s.tokens_out}"),
        ("cost", f"${s.cost_usd:.4f}" if s.cost_known else "unknown (model not in the price table: --price)"),
        ("wall time", f"{s.wall_s:.1f} s"),
        ("samples with a caption now", f"{s.samples_captioned} of {s.samples_with_image}"),
    ]:
        table.add_row(name, str(value))
    console.print(table)
    for failure in s.failures[:10]:
        err_console.print(f"[yellow]failed[/] {escape(failure)}", soft_wrap=True)
    if s.stopped == "budget":
        console.print("[yellow]stopped: the next request could exceed --budget-usd; raise it and run again to "
                      "continue[/]")


def _print_summary(s: AnnotateSummary, dataset: str, split: str) -> None:
    table = Table(title=f"annotate {escape(dataset)}/{escape(split)} ({escape(s.run_id)})", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [
        ("samples annotated now", s.samples),
        ("already done before", s.skipped_done),
        *((("left to the other writer (--force)", s.skipped_other_writer),) if s.skipped_other_writer else ()),
        ("stage 1 predictions", s.predicted),
        ("stage 1 correct (D_t1)", s.predicted_correct),
        ("stage 2 explained (D_t2)", s.explained),
        ("failed after all retries", s.failed),
        ("retries (ARC)", ", ".join(f"{k}×:{v}" for k, v in sorted(s.retries.items())) or "-"),
        ("HTTP retries", s.http_retries),
        ("requests", s.requests),
        ("tokens in / out", f"{s.tokens_in} / {s.tokens_out}"),
        ("cost", f"${s.cost_usd:.4f}" if s.cost_known else "unknown (model not in the price table: --price)"),
        ("wall time", f"{s.wall_s:.1f} s"),
        (f"D_t for {split} now", s.teacher_set),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)
    if s.batches_submitted or s.batches_ingested or s.batch_files or s.batches_pending:
        console.print(f"batches: {s.batches_submitted} submitted, {s.batches_ingested} taken in, "
                      f"{s.batches_pending} pending; {s.malformed_lines} unreadable and {s.stale_results} stale "
                      "result lines skipped")
    for path in s.batch_files:
        console.print(f"requests written to {escape(path)}: run it offline (vllm run-batch -i FILE -o RESULTS "
                      "--model MODEL), then take it in with --ingest RESULTS")
    for failure in s.failures[:10]:
        err_console.print(f"[yellow]failed[/] {escape(failure)}", soft_wrap=True)
    if s.stopped == "pending" and s.batches_pending:
        console.print("[yellow]batches still running: run the same command again to poll and take them in[/]")
    if s.stopped == "budget":
        console.print("[yellow]stopped: the next request could exceed --budget-usd; raise it and run again to "
                      "continue[/]")
    if s.stopped == "unreachable":
        err_console.print("[yellow]stopped: the teacher stopped answering (requests in a row got no answer); run "
                          "the same command again when it is back[/]")


def _print_batches(rows: list[dict], as_json: bool) -> None:
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print("no batches")
        return
    table = Table(title="annotation batches", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("batch", overflow="fold")
    for col in ("dataset", "stage", "status"):
        table.add_column(col, no_wrap=True)
    for col in ("req", "ok/err", "cost", "stored"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        cost = f"${r['cost_usd']:.4f}" if r["cost_usd"] is not None else "-"
        name = r["remote_id"] or r["id"] if r["kind"] == "api" else f"file {Path(r['input_path'] or '').name}"
        table.add_row(escape(name), escape(r["dataset"]), r["stage"], r["status"], str(r["requests"]),
                      f"{r['completed'] or 0}/{r['failed'] or 0}", cost, "yes" if r["ingested"] else "no")
    console.print(table)
