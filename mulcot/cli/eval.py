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
from mulcot.cli.tables import HEADERS, metrics_table
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


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _f1_header(rows: list[dict[str, Any]]) -> str:
    names = {r["f1_name"] for r in rows}
    if names == {"macro_f1"}:
        return "m-F1"
    if names == {"weighted_f1"}:
        return "w-F1"
    return "F1*"


def paper_table(results: list[dict[str, Any]], title: str, *, with_ids: bool = False) -> Table:
    """Rows = evaluations; columns as the paper's Tables 3-5, plus consistency; values × 100."""
    from mulcot.evaluate import METRIC_DEFINITIONS, paper_row

    rows = [paper_row(r) for r in results]
    f1 = _f1_header(rows)
    names = [_display_name(result, with_ids) + ("*" if row["gold_conditioned"] else "")
             for result, row in zip(results, rows, strict=True)]
    shown = ["Acc", "w-F1" if f1 == "w-F1" else "m-F1" if f1 == "m-F1" else None]
    lines = ["All values × 100; '-' = not computed."]
    if f1 == "F1*":
        lines.append("F1*: w-F1 for MSA datasets, m-F1 for MASC datasets.")
        shown = ["Acc", "w-F1", "m-F1"]
    for key in [*(s for s in shown if s), "Cons.", "Sim", "METEOR", "BLEU", "ROUGE-L", "Dist-1/2"]:
        lines.append(f"{key}: {METRIC_DEFINITIONS[key]}.")
    if any(r["gold_conditioned"] for r in rows):
        lines.append(f"*: gold-conditioned, {METRIC_DEFINITIONS['gold-conditioned']}.")
    return metrics_table(names, rows, title, f1_header=f1, caption=lines)


def _ci(interval: dict[str, float]) -> str:
    return f"[{100 * interval['low']:+.2f}, {100 * interval['high']:+.2f}]"


def print_paired(rows: list[dict[str, Any]], pairs: list[dict[str, Any] | None]) -> None:
    """Each result against the first, over the posts both scored: accuracy and macro-F1 of both, their difference
    (this − first, × 100) with its paired bootstrap interval, exact McNemar p and the agreement rate."""
    base = rows[0]
    boot = None
    for row, pair in zip(rows, pairs, strict=True):
        if pair is None:
            continue
        boot, mc = pair["bootstrap"], pair["mcnemar"]
        table = Table(title=f"#{row['id']} {escape(_display_name(row, False))} against #{base['id']} "
                      f"{escape(_display_name(base, False))}: {pair['n']} posts ({pair['clusters']} tweets)",
                      title_justify="left")
        for col in ("", f"#{base['id']}", f"#{row['id']}", "Δ", "95% CI"):
            table.add_column(col, justify="left" if not col else "right")
        for name, key in (("Acc", "accuracy"), ("m-F1", "macro_f1")):
            table.add_row(name, _pct(boot[f"{key}_a"]), _pct(boot[f"{key}_b"]), f"{100 * boot[key]['diff']:+.2f}",
                          _ci(boot[key]))
        console.print(table)
        console.print(f"exact McNemar p = {mc['p_value']:.4g} ({mc['a_only']} posts only #{base['id']} gets right, "
                      f"{mc['b_only']} only #{row['id']}); same label on {_pct(pair['agreement'])}% of the posts",
                      highlight=False)
    if boot is not None:
        console.print(
            "Over the posts both results scored; Δ = the second − the first, × 100. McNemar: exact two-sided binomial "
            f"test on the posts only one of the two gets right. CI: percentile interval of {boot['n_boot']} paired "
            f"bootstrap draws (seed {boot['seed']}) resampling whole tweets (posts sharing an image or a text).",
            highlight=False,
        )


def _display_name(result: dict[str, Any], with_ids: bool) -> str:
    subject = (result.get("config") or {}).get("subject") or result.get("subject") or {}
    name = subject.get("name") or result.get("run_id") or result.get("source") or result.get("model") or "?"
    source = result.get("source")
    label = name if not source or source == name else f"{name} ({source})"
    if not with_ids:
        return label
    # the row's id only: the names, whole and pasteable, follow the table (describe_result), one line each, instead
    # of folding mid-word in a narrow column
    return f"#{result.get('id')}"


def _detail(result: dict[str, Any]) -> None:
    m = result["metrics"]
    table = Table(title="classification (gold labels)", title_justify="left")
    for col in ("head", "n", "Acc", "w-F1", "m-F1", "bal.Acc", "invalid"):
        table.add_column(col, justify="left" if col == "head" else "right")
    recalls = []
    for head, name in (("label", "label prompt (P_label)"), ("chain", "chain's own Prediction")):
        c = m.get(head)
        if c:
            table.add_row(name, str(c["n"]), _pct(c["accuracy"]), _pct(c["weighted_f1"]), _pct(c["macro_f1"]),
                          _pct(c.get("balanced_accuracy")), str(c["invalid_predictions"]))
            recalls.append(f"{head} " + " / ".join(_pct(c["per_label"][lab]["recall"]) for lab in c["labels"]))
        else:
            table.add_row(name, "-", "-", "-", "-", "-", "no label head")
    table.caption = "bal.Acc: mean recall over the labels present in the gold labels"
    table.caption_justify = "left"
    console.print(table)
    if recalls:
        console.print(f"recall (positive / neutral / negative): {'; '.join(recalls)}", highlight=False)
    probs = m.get("probabilities")
    if probs:
        auroc = probs["auroc_macro_ovr"]
        console.print(
            f"label probabilities (n={probs['n']}): AUROC (macro one-vs-rest) "
            f"{'-' if auroc is None else f'{auroc:.3f}'}, ECE {probs['ece']:.3f} ({probs['ece_bins']} equal-width "
            f"bins of the top probability), log loss {probs['nll']:.3f}, Brier {probs['brier']:.3f}",
            highlight=False,
        )
    notes = []
    if m.get("consistency") is not None:
        notes.append(f"consistency (chain Prediction = label prediction): {100 * m['consistency']:.2f}% of "
                     f"{m['consistency_n']}")
    cov = m.get("coverage") or {}
    if cov.get("without_chain"):
        notes.append(f"{cov['without_chain']} of {cov['considered']} samples have no chain from this source "
                     "(left out)")
    if cov.get("unlabelled_skipped"):
        notes.append(f"{cov['unlabelled_skipped']} unlabelled samples skipped")
    gen = m.get("generated")
    if gen:
        how = "generated" if (result.get("config") or {}).get("label_scoring") == "generate" else "forced choice"
        notes.append(f"generated {gen['chains_generated']} chains and {gen['labels_generated']} label answers ({how}; "
                     f"reused {gen['chains_reused']} and {gen['labels_reused']} stored ones)")
    reasoning = m.get("reasoning") or {}
    if reasoning.get("refs"):
        line = f"reasoning metrics against '{reasoning['refs']}' chains: {reasoning['pairs']} pairs"
        if reasoning.get("missing_refs"):
            line += f", {reasoning['missing_refs']} chains without a reference (left out; Distinct covers all)"
        notes.append(line)
    else:
        notes.append("no reference chains (the teacher itself, or --refs none): only Distinct-n is computed")
    cache = reasoning.get("sim_cache")
    if cache:
        notes.append(f"Sim embeddings: {cache.get('cached', 0)} from the cache, {cache.get('embedded', 0)} computed")
    for line in notes:
        console.print(escape(line), highlight=False)
    for metric, why in (reasoning.get("unavailable") or {}).items():
        err_console.print(f"[yellow]{escape(metric)} unavailable:[/] {escape(why)}", highlight=False, soft_wrap=True)
    ratings = m.get("ratings")
    if ratings is None:
        console.print("human ratings: not supported by this store", highlight=False)
    elif ratings:
        rt = Table(title="human ratings (1-5)", title_justify="left")
        for col in ("source", "model", "ratings", "chains", "faithfulness", "usefulness"):
            rt.add_column(col, justify="left" if col in ("source", "model") else "right")
        for r in ratings:
            rt.add_row(escape(str(r.get("source"))), escape(str(r.get("model") or "-")), str(r.get("ratings")),
                       str(r.get("chains")), f"{r.get('faithfulness') or 0:.2f}",
                       f"{r.get('usefulness') or 0:.2f}")
        console.print(rt)


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
        metrics=_metric_list(metrics), limit=limit, max_new_tokens=max_new_tokens,
        label_max_new_tokens=label_max_new_tokens, batch_size=batch_size, max_pixels=max_pixels, device=device,
        dtype=dtype, load_in_4bit=load_in_4bit, nltk_data_dir=str(nltk_data) if nltk_data else None,
        embedding_cache=not no_cache, out=str(out) if out else None, runs_dir=str(runs_dir) if runs_dir else None,
        server=server,
        per_post=str(per_post) if per_post else None, label_scoring=label_scoring,
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
    _detail(data)
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
