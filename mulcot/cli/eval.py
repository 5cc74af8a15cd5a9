"""``mulcot eval``: evaluate a model or stored chains (``mulcot eval DATASET …``), put results side by side
(``mulcot eval compare``) and score two files of chains (``mulcot eval score``).

``mulcot eval DATASET`` is short for ``mulcot eval run DATASET``: the group routes any first argument that is not
one of its commands to ``run`` (a dataset literally named ``compare``, ``list`` or ``score`` needs the explicit
``run``). ``mulcot eval list`` shows the stored results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table
from typer.core import TyperGroup

from mulcot.cli.common import (
    DbOption,
    JsonOption,
    console,
    err_console,
    open_store,
    print_json,
    print_served,
    progress_bar,
    server_options,
)
from mulcot.cli.eval_report import paper_table, print_paired, print_probes, show_detail
from mulcot.cli.tables import HEADERS
from mulcot.errors import MulcotError
from mulcot.events import Event


class DefaultCommandGroup(TyperGroup):
    """A group whose first argument, when it names none of its commands, is handed to the default command."""

    default_command = "run"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=DefaultCommandGroup,
    help="Evaluate a model or stored chains: [bold]mulcot eval DATASET --source teacher[/] or "
    "[bold]--model runs/NAME[/] (short for [bold]mulcot eval run …[/]); [bold]list[/] and [bold]compare[/] "
    "stored results; [bold]score[/] two files of chains.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)



def _progress_bar(as_json: bool) -> tuple[Progress, Any]:
    bar = progress_bar(as_json, spinner=True)
    tasks: dict[str, Any] = {}
    names = {"chains": "generating chains (P_cot)", "labels": "generating label answers (P_label)",
             "label choices": "scoring label answers by forced choice (P_label)", "loading model": "loading the model",
             "served": "generating chains and label answers through the server"}

    def progress(event: Event) -> None:
        if event.get("warning"):
            err_console.print(f"[yellow]warning:[/] {escape(event.message)}", highlight=False, soft_wrap=True)
            return
        stage, total = event.message, event.total
        if stage not in tasks:
            tasks[stage] = bar.add_task(names.get(stage, f"scoring {stage}"), total=total)
        bar.update(tasks[stage], completed=event.done, total=total)

    return bar, progress


def _metric_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [x.strip() for x in value.split(",") if x.strip()]
    if not names:
        raise MulcotError("--metrics is empty: give names like sim,bleu,rouge_l")
    return names


@app.command("run")
@server_options
def run(
    dataset: Annotated[str, typer.Argument(help="Dataset in the store.")],
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    model: Annotated[
        str | None,
        typer.Option(help="Generate with a model: runs/NAME, a run name, an adapter folder, a model folder or hub id."),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(help="Score stored chains instead: teacher, assistant, student, student-gguf or a run id."),
    ] = None,
    refs: Annotated[
        str | None,
        typer.Option(help="Reference chains' source (default teacher; none when evaluating the teacher; 'none')."),
    ] = None,
    sim_model: Annotated[
        str | None, typer.Option(help="Sim model folder or id (default: offline all-MiniLM-L6-v2).")
    ] = (None),
    corpus: Annotated[bool, typer.Option("--corpus", help="Also corpus-level BLEU and Distinct-n.")] = False,
    metrics: Annotated[str | None, typer.Option(help="Only these reasoning metrics, e.g. bleu,rouge_l.")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N labelled samples of the split.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Token limit of a generated chain.")] = 512,
    max_chains: Annotated[int | None, typer.Option(help="Generate chains for the first N posts only (0: none); "
                                                   "the label head answers every post.")] = None,
    label_max_new_tokens: Annotated[int, typer.Option(help="Token limit of a label answer.")] = 16,
    batch_size: Annotated[int, typer.Option(help="Samples per generation batch.")] = 8,
    max_pixels: Annotated[int | None, typer.Option(help="Images are downsized to at most this many pixels.")] = None,
    device: Annotated[str | None, typer.Option(help="cuda, cuda:1, mps or cpu (default: best available).")] = None,
    dtype: Annotated[str | None, typer.Option(help="bf16, fp16 or fp32 (default: bf16 on GPU, fp32 on CPU).")] = None,
    load_in_4bit: Annotated[
        bool, typer.Option("--load-in-4bit", help="Load the base model in 4-bit (bitsandbytes).")
    ] = False,
    nltk_data: Annotated[Path | None, typer.Option(help="nltk data folder holding WordNet (for METEOR).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not keep Sim embeddings on disk.")] = False,
    out: Annotated[
        Path | None, typer.Option(help="Folder for result.json, per_sample.jsonl, confusion.png.", show_default=False)
    ] = None,
    runs_dir: Annotated[
        Path | None,
        typer.Option(help="Where run folders are (default: runs/ beside the database).", show_default=False),
    ] = None,
    per_post: Annotated[
        Path | None,
        typer.Option("--per-post", help="Also write each post's gold, prediction and label probabilities to this "
                     ".csv or .jsonl file.", show_default=False),
    ] = None,
    label_scoring: Annotated[str, typer.Option(help="The label head: choice (forced choice: the three answers' "
                                               "probabilities) or generate (generated, parsed).")] = "choice",
    majority_from: Annotated[str, typer.Option(help="Split whose most frequent label is the majority baseline the "
                                               "result is compared with (none: no baseline).")] = "train",
    probe: Annotated[str | None, typer.Option(
        "--probe", help="Modality probes, comma-separated: image-blank, image-swap, text-drop (or all): the label "
        "head asked again with one input changed, compared post by post.", show_default=False)] = None,
    calibrate_on: Annotated[str | None, typer.Option(
        "--calibrate-on", help="A tuning split: fit the label head's bias and temperature on its posts (forced "
        "choice) and report the recalibrated head beside the raw one.", show_default=False)] = None,
    server: Any = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Evaluate a model (generating chains; label answers by forced choice or generated) or stored chains on a
    split; store the result. With --server the model's missing chains come from a server serving it, stored as
    in-process ones."""
    from mulcot.evaluate import EvalConfig, evaluate

    store = open_store(db)
    config = EvalConfig(
        dataset=dataset, split=split, model=model, source=source, refs=refs, sim_model=sim_model, corpus=corpus,
        metrics=_metric_list(metrics), limit=limit, max_new_tokens=max_new_tokens, max_chains=max_chains,
        label_max_new_tokens=label_max_new_tokens, batch_size=batch_size, max_pixels=max_pixels, device=device,
        dtype=dtype, load_in_4bit=load_in_4bit, nltk_data_dir=str(nltk_data) if nltk_data else None,
        embedding_cache=not no_cache, out=str(out) if out else None, runs_dir=str(runs_dir) if runs_dir else None,
        server=server,
        per_post=str(per_post) if per_post else None, label_scoring=label_scoring, majority_from=majority_from,
        probes=probe.split(",") if probe is not None else None, calibrate_on=calibrate_on,
    )
    bar, progress = _progress_bar(as_json)
    with bar:
        result = evaluate(store, config, progress=progress)
    data = result.to_dict()
    print_served((data["metrics"].get("generated") or {}).get("served"))
    if as_json:
        print_json(data)
        return
    title = f"{escape(result.subject.name)} on {escape(dataset)}/{escape(split)} (n={result.n})"
    console.print(paper_table([data], title))
    show_detail(data)
    if result.probes:
        print_probes(result.subject.name, result.id, result.probes)
    for kind, path in result.files.items():
        console.print(f"{kind}: {escape(path)}", highlight=False)
    console.print(f"stored as evaluation result #{result.id} (compare with: mulcot eval compare {result.id} …)",
                  highlight=False)


@app.command("compare")
def compare(
    results: Annotated[
        list[str] | None,
        typer.Argument(help="Eval result ids (12 or #12), run ids or source names (mulcot eval list shows them).",
                       show_default=False),
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Only results on this dataset.")] = None,
    split: Annotated[str | None, typer.Option(help="Only results on this split.")] = None,
    paired: Annotated[
        bool, typer.Option("--paired/--no-paired", help="Compare each result with the first post by post.")
    ] = True,
    n_boot: Annotated[int, typer.Option(help="Bootstrap draws for the paired intervals.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap draws.")] = 0,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Put stored evaluation results side by side and compare each with the first over the posts both scored:
    exact McNemar p, paired bootstrap 95% intervals of the accuracy and macro-F1 differences (whole tweets
    resampled), agreement. A run or source name means its latest result on the same posts (it says which it
    took)."""
    from mulcot.evaluate import compare_results, describe_result, paper_row
    from mulcot.evaluate.posts import paired_results

    if n_boot < 1:
        raise MulcotError("--n-boot must be at least 1")
    store = open_store(db, readonly=True)
    rows = compare_results(store, results or [], dataset=dataset, split=split)
    pairs = paired_results(store, rows, n_boot=n_boot, seed=seed) if paired else [None] * len(rows)
    if as_json:
        print_json([{**r, "row": paper_row(r), "paired": p} for r, p in zip(rows, pairs, strict=True)])
        return
    for r in rows:
        if "picked" in r:
            p = r["picked"]
            err_console.print(f"'{escape(p['spec'])}' is result #{r['id']} ({p['how']} of its {p['results']})",
                              highlight=False, soft_wrap=True)
    console.print(paper_table(rows, "evaluation results", with_ids=True))
    # the names whole, one line each (soft-wrapped by the terminal, so they paste back as they are)
    for r in rows:
        console.print(escape(describe_result(r)), highlight=False, soft_wrap=True)
    if any(pairs):
        print_paired(rows, pairs)


@app.command("list")
def list_(
    dataset: Annotated[str | None, typer.Option(help="Only results on this dataset.")] = None,
    split: Annotated[str | None, typer.Option(help="Only results on this split.")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """The stored evaluation results: id, dataset/split, n (how many posts), when, and what was evaluated."""
    from mulcot.evaluate import describe_result, list_results, paper_row

    store = open_store(db)
    rows = list_results(store, dataset=dataset, split=split)
    if as_json:
        print_json([{**r, "row": paper_row(r)} for r in rows])
        return
    if not rows:
        console.print("no evaluation results stored yet: run `mulcot eval DATASET --source teacher` (or --model "
                      "runs/NAME) first", highlight=False)
        return
    for r in rows:
        row = paper_row(r)
        acc = "-" if row["accuracy"] is None else f"acc {100 * row['accuracy']:.2f}"
        when = str(r.get("created_at") or "")[:16].replace("T", " ")
        console.print(f"{escape(describe_result(r))} · {acc} · {when}", highlight=False, soft_wrap=True)
    console.print(f"compare some with: mulcot eval compare {' '.join(str(r['id']) for r in rows[-2:])}",
                  highlight=False)


@app.command("score")
def score(
    preds: Annotated[Path, typer.Argument(help="Generated chains: JSONL with a text field per line, or a JSON array.")],
    refs: Annotated[Path, typer.Argument(help="Reference chains, same format, paired by order.")],
    field_name: Annotated[str, typer.Option("--field", help="The field holding a chain in JSON objects.")] = "text",
    sim_model: Annotated[
        str | None, typer.Option(help="Sim model folder or id (default: offline all-MiniLM-L6-v2).")
    ] = (None),
    corpus: Annotated[bool, typer.Option("--corpus", help="Also corpus-level BLEU and Distinct-n.")] = False,
    metrics: Annotated[str | None, typer.Option(help="Only these reasoning metrics, e.g. bleu,rouge_l.")] = None,
    nltk_data: Annotated[Path | None, typer.Option(help="nltk data folder holding WordNet (for METEOR).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not keep Sim embeddings on disk.")] = False,
    per_pair: Annotated[bool, typer.Option("--per-pair", help="Also print every pair's scores.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Score two files of chains with Sim, METEOR, BLEU, ROUGE-L and Distinct-1/2, per pair and averaged."""
    from mulcot.evaluate import METRIC_DEFINITIONS, score_files

    bar, progress = _progress_bar(as_json)
    with bar:
        result = score_files(
            preds, refs, field_name=field_name, progress=progress, sim_model=sim_model, corpus=corpus,
            metrics=_metric_list(metrics), nltk_data_dir=nltk_data, embedding_cache=None if no_cache else True,
        )
    if as_json:
        print_json(result.to_dict(per_pair=True))
        return
    s = result.scores
    table = Table(title=f"{escape(str(preds))} vs {escape(str(refs))}: {s.n} pairs")
    table.add_column("metric")
    table.add_column("mean", justify="right")
    if s.corpus:
        table.add_column("corpus", justify="right")
    defs = {"sim": "Sim", "meteor": "METEOR", "bleu": "BLEU", "rouge_l": "ROUGE-L", "distinct_1": "Dist-1/2",
            "distinct_2": "Dist-1/2"}
    for m in s.metrics:
        mean = f"{s.means[m]:.4f}" if m in s.means else "[yellow]unavailable[/]"
        cells = [HEADERS[m], mean]
        if s.corpus:
            cells.append(f"{s.corpus[m]:.4f}" if m in s.corpus else "")
        table.add_row(*cells)
    table.caption = "\n".join(escape(f"{defs[m]}: {METRIC_DEFINITIONS[defs[m]]}.") for m in dict.fromkeys(
        m for m in s.metrics if m != "distinct_2") if m in defs)
    table.caption_justify = "left"
    console.print(table)
    if per_pair:
        pt = Table(title="per pair")
        pt.add_column("#", justify="right")
        cols = [m for m in s.metrics if m in s.per_pair]
        for m in cols:
            pt.add_column(HEADERS[m], justify="right")
        for i in range(s.n):
            pt.add_row(str(i + 1), *(f"{s.per_pair[m][i]:.4f}" for m in cols))
        console.print(pt)
    for m, why in s.unavailable.items():
        err_console.print(f"[yellow]{escape(m)} unavailable:[/] {escape(why)}", highlight=False, soft_wrap=True)
