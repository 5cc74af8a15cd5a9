"""``mulcot data``: import, list, inspect and export datasets."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

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
    output_file,
    print_json,
    progress_bar,
)
from mulcot.datasets import EXPORT_FORMATS, FORMATS, export_dataset, import_dataset
from mulcot.errors import MulcotError

app = typer.Typer(help="Import, list, inspect and export datasets.", no_args_is_help=True)

MAX_PROBLEMS_SHOWN = 20


def _parse_ratio(value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(x) for x in value.split(",")]
    except ValueError:
        raise MulcotError(f"--split-ratio '{value}' is not three numbers like 8,1,1") from None


@app.command("import")
def import_(
    fmt: Annotated[str, typer.Argument(metavar="FORMAT", help=f"One of: {', '.join(FORMATS)}.")],
    path: Annotated[Path, typer.Argument(help="A split file, or a folder of split files (train/dev/test).")],
    name: Annotated[str | None, typer.Option(help="Dataset name (default: from the folder name).")] = None,
    split: Annotated[str | None, typer.Option(help="Split of a single file, or the one split to take.")] = None,
    images: Annotated[
        Path | None,
        typer.Option(help="Image folder that image names are relative to (default: jsonl: the data file's folder; "
                     "mvsa-raw: its data/; others: the first of images/, Images/, data/ beside the data).",
                     show_default=False),
    ] = None,
    no_images: Annotated[bool, typer.Option("--no-images", help="Import text only (samples flagged).")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Abort on any bad row; the store stays as it was.")] = False,
    split_ratio: Annotated[
        str | None, typer.Option(help="mvsa-raw: deterministic train,dev,test shares, e.g. 8,1,1.")
    ] = None,
    teacher: Annotated[str, typer.Option(help="mulcot-json: the model name to record for its chains.")] = (
        "mulcot-rd-release"
    ),
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Import a dataset into the store (idempotent: re-importing updates, never duplicates).

    jsonl: one JSON object per line, with text (required; $T$ stands for aspect)
    and, when known: image (a path relative to the image folder), aspect,
    label (positive, neutral or negative), id (default: the line number),
    split (default: the file's), chains (a list of {source, stage, raw or text,
    model, prompt_version}). `mulcot data export NAME FILE.jsonl` writes this,
    with images relative to the file's folder: it imports back as it was."""
    store = open_store(db)
    with progress_bar(as_json, spinner=True) as bar:
        progress = follow(bar, f"importing {path}", describe=True)
        report = import_dataset(
            store, fmt, path, name=name, split=split, images=images, no_images=no_images, strict=strict,
            split_ratio=_parse_ratio(split_ratio), teacher=teacher, progress=progress,
        )
    if as_json:
        print_json(report.as_dict())
        return
    for problem in report.problems[:MAX_PROBLEMS_SHOWN]:
        err_console.print(f"[yellow]skipped[/] {escape(str(problem))}", highlight=False, soft_wrap=True)
    if len(report.problems) > MAX_PROBLEMS_SHOWN:
        err_console.print(f"… and {len(report.problems) - MAX_PROBLEMS_SHOWN} more bad rows (see --json)")
    verb = "created" if report.created else "updated"
    table = Table(title=f"dataset [bold]{escape(report.dataset)}[/] {verb} ({report.task}, {report.format})")
    for col in ("split", "samples"):
        table.add_column(col, justify="right" if col == "samples" else "left")
    for s, n in sorted(report.splits.items()):
        table.add_row(s, str(n))
    console.print(table)
    console.print(
        f"rows read {report.rows_read}: added {report.added}, updated {report.updated}, unchanged "
        f"{report.unchanged}, skipped {len(report.problems)}"
        + (f", dropped by label cleaning {len(report.dropped)}" if report.dropped else "")
        + (f"; chains added {report.chains_added}, already stored {report.chains_existing}"
           if report.chains_added or report.chains_existing else "")
        + (f"; text-only samples {report.text_only}" if report.text_only else ""),
        highlight=False,
    )


@app.command("list")
def list_(db: DbOption = None, as_json: JsonOption = False) -> None:
    """List the datasets in the store."""
    store = open_store(db, readonly=True)
    rows = store.list_datasets()
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print(f"no datasets in {store.path} yet: add one with [bold]mulcot data import[/]")
        return
    table = Table(title=str(store.path))
    for col in ("name", "task", "format", "samples", "chains", "images"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["task"], r["format"], str(r["samples"]), str(r["chains"]),
                      "yes" if r["has_images"] else "text only")
    console.print(table)


@app.command()
def stats(name: Annotated[str, typer.Argument(help="Dataset name.")], db: DbOption = None,
          as_json: JsonOption = False) -> None:
    """Counts per split and label, images found, and the quality of each source's reasoning chains."""
    store = open_store(db, readonly=True)
    st = store.dataset_stats(name)
    if as_json:
        print_json(st)
        return
    labels = ("positive", "neutral", "negative", "unlabelled")
    shown = [lab for lab in labels if any(lab in s["labels"] for s in st["splits"].values())]
    table = Table(title=f"{escape(name)} ({st['task']}, {st['format']}): {st['samples']} samples")
    table.add_column("split")
    table.add_column("samples", justify="right")
    for lab in shown:
        table.add_column(lab, justify="right")
    table.add_column("images", justify="right")
    for split, s in st["splits"].items():
        table.add_row(split, str(s["samples"]), *(str(s["labels"].get(lab, 0)) for lab in shown), str(s["images"]))
    console.print(table)
    if st["chains"]:
        chains = Table(title="reasoning chains (final attempts; parsed fully, partially, not at all)")
        for col in ("source", "stage", "split", "chains", "full", "partial", "none", "= gold"):
            chains.add_column(col, justify="left" if col in ("source", "stage", "split") else "right")
        for c in st["chains"]:
            pct = f"{100 * c['correct'] / c['chains']:.1f}%" if c["chains"] else "-"
            chains.add_row(
                c["source"], c["stage"], c["split"], str(c["chains"]), str(c["full"]), str(c["partial"]),
                str(c["unparsed"]), pct,
            )
        console.print(chains)
        if st["teacher_set"]:
            dt = ", ".join(f"{split} {n}" for split, n in sorted(st["teacher_set"].items()))
            console.print(
                f"teacher set D_t (samples with a correct, fully parsed teacher chain): {dt}", highlight=False
            )
    else:
        console.print("no reasoning chains yet: [bold]mulcot annotate[/] makes them", highlight=False)


@app.command()
def export(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    dest: Annotated[
        Path | None, typer.Argument(help="Output file, or the new folder for --format hf (same as --out).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help=f"One of: {', '.join(EXPORT_FORMATS)}.")] = "jsonl",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output file (default: stdout).")] = None,
    split: Annotated[str | None, typer.Option(help="Only this split.")] = None,
    source: Annotated[str | None, typer.Option(help="Only chains from this source (teacher, assistant, …).")] = None,
    all_chains: Annotated[
        bool,
        typer.Option("--all-chains", help="sharegpt: keep chains whose Prediction is not the gold label."),
    ] = False,
    ratings: Annotated[
        bool,
        typer.Option("--ratings", help="Write the human ratings of this dataset's chains (from mulcot tui) "
                     "instead: JSONL, or CSV with --format csv."),
    ] = False,
    db: DbOption = None,
) -> None:
    """Export a dataset as JSONL (samples + chains), ShareGPT (LLaMA-Factory, with dataset_info.json) or a Hugging
    Face datasets folder (hf: parquet with images, splits and a dataset card)."""
    if dest is not None and out is not None and dest != out:
        raise MulcotError(f"two outputs given ({dest} and --out {out}): give one")
    out = out if out is not None else dest
    if fmt == "hf" and out is None:
        raise MulcotError("--format hf writes a folder: give it, e.g. mulcot data export NAME --format hf DIR")
    store = open_store(db, readonly=True)
    store.require_dataset(name)
    if out is not None and fmt != "hf":
        out = output_file(out)
    target = out if out is not None else sys.stdout
    if ratings:
        from mulcot.datasets.writers import export_ratings

        n = export_ratings(store, target, dataset=name, fmt=fmt)
        if out is not None:
            console.print(f"wrote {n} ratings to {out}", highlight=False)
        return
    n = export_dataset(store, name, fmt, target, split=split, source=source, correct_only=not all_chains)
    if out is not None:
        console.print(f"wrote {n} records to {out}", highlight=False)


@app.command()
def pairs(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    split: Annotated[str, typer.Option(help="Training split (dev/test chains never become pairs).")] = "train",
    sources: Annotated[str, typer.Option("--from", help="Where rejected chains come from: teacher, assistant, "
                                         "student, ratings, judge (comma-separated; judge: chains an LLM judge "
                                         "scored lower, see mulcot judge).")] = "teacher,assistant,student,ratings",
    fmt: Annotated[str | None, typer.Option("--format", help="Write the pairs: trl (JSONL) or llamafactory "
                                            "(ranking ShareGPT JSON).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output file for --format (default: stdout).")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Preference pairs for DPO: a correct chain (D_t or D_a) against a wrong, failed or lower-rated chain of the same
    sample. Shows counts per source and gold label; --format exports them for TRL or LLaMA-Factory."""
    from mulcot.core.labels import LABELS
    from mulcot.train.pairs import build_pairs, export_pairs

    store = open_store(db, readonly=True)
    built = build_pairs(store, name, split, sources)
    if fmt is not None:
        if out is None:
            export_pairs(built, fmt, sys.stdout)
            return
        n = export_pairs(built, fmt, output_file(out))
        err_console.print(f"wrote {n} pairs to {out}", highlight=False)
    summary = built.summary()
    if as_json:
        print_json(summary)
        return
    table = Table(title=f"preference pairs of {escape(name)}/{escape(split)}: {summary['pairs']} pairs over "
                  f"{summary['samples']} samples")
    table.add_column("rejected from")
    for label in LABELS:
        table.add_column(label, justify="right")
    table.add_column("total", justify="right")
    for source, per in summary["counts"].items():
        table.add_row(source, *(str(per.get(lab, 0)) for lab in LABELS), str(sum(per.values())))
    console.print(table)
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary["reasons"].items())) or "none"
    console.print(f"rejected chains: {reasons}", highlight=False)
    if not summary["pairs"]:
        console.print("no pairs: they need correct chains (D_t or D_a) and wrong, failed or rated ones of the same "
                      "sample ([bold]mulcot annotate[/], [bold]mulcot expand[/], [bold]mulcot tui[/] ratings)")
