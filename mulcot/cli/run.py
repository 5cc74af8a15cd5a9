"""``mulcot run`` (a recipe's whole pipeline), ``mulcot demo`` (the embedded default) and ``mulcot doctor``."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mulcot.cli.common import DbOption, JsonOption, console, err_console, open_store, print_json
from mulcot.events import DONE, INFO, PROGRESS, SKIPPED, START, Event


class _View:
    """One line per stage, a transient bar for the stage's own progress, dim lines for notes."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar = Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=err_console, transient=True, disable=quiet)
        self.task: Any = None
        self.stage = ""

    def __call__(self, event: Event) -> None:
        if self.quiet:
            return
        if event.stage == "run" and event.kind in (START, DONE, SKIPPED):
            if self.task is not None:
                self.bar.remove_task(self.task)
                self.task = None
            stage = event.message
            if event.kind == START:
                self.stage = stage
                self.bar.console.print(f"[bold]▶ {stage}[/]")
                self.task = self.bar.add_task(stage, total=None)
            elif event.kind == DONE:
                self.bar.console.print(f"[green]✓ {stage}[/] ({event.seconds:.1f} s) {_short(event.summary)}",
                                       highlight=False)
            else:
                self.bar.console.print(f"[dim]· {stage}: already done for this recipe, skipped[/]")
        elif event.kind == "eval":  # a training run's dev evaluation
            line = f"epoch {event.epoch:.0f}: dev accuracy {event.metrics['eval_accuracy']:.4f}"
            self.bar.console.print(f"  [dim]{line}[/]", highlight=False)
        elif event.stage == "export" and event.kind != PROGRESS:
            line = f"export {event.get('step', '')}: {event.kind} {event.message}".rstrip()
            self.bar.console.print(f"  [dim]{escape(line)}[/]", highlight=False)
        elif event.kind == INFO:
            self.bar.console.print(f"  [dim]{escape(event.message)}[/]", highlight=False)
        elif event.done is not None and self.task is not None:
            self.bar.update(self.task, completed=event.done, total=event.total)


def _short(summary: dict[str, Any]) -> str:
    text = json.dumps(summary, default=str)
    return escape(text if len(text) < 200 else text[:197] + "…")


def _interval_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Under the table: each model's 95 % accuracy interval and how it stands against the majority row."""
    lines = []
    for row in rows:
        if row.get("baseline"):
            lines.append(escape(f"{row['subject']}: {row['note']}"))
            continue
        if row.get("probe"):
            pr, acc = row["probe"], row["probe"]["accuracy"]
            lines.append(escape(f"{row['subject']}: − {pr['of']} {100 * acc['diff']:+.1f} [{100 * acc['low']:+.1f}, "
                                f"{100 * acc['high']:+.1f}], answers changed on {100 * pr['changed']:.1f}% "
                                f"(n = {pr['n']}, McNemar p = {pr['mcnemar_p']:.2g})"))
            continue
        ci, vs = row.get("accuracy_ci"), row.get("vs_majority")
        if not ci:
            continue
        line = f"{row['subject']}: Acc {100 * row['accuracy']:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
        if vs:
            acc = vs["accuracy"]
            line += (f"; − majority {100 * acc['diff']:+.1f} [{100 * acc['low']:+.1f}, {100 * acc['high']:+.1f}], "
                     f"m-F1 {100 * vs['macro_f1']['diff']:+.1f}, exact McNemar p = {vs['mcnemar_p']:.2g} "
                     f"(n = {vs['n']})")
        lines.append(escape(line))
    if lines:
        lines.append("95% intervals: bootstrap resampling whole tweets (mulcot eval shows them for any result).")
    return lines


def _print_result(result: Any) -> None:
    table = Table(title=f"recipe {escape(result.recipe)}: stages")
    for col in ("stage", "status", "seconds"):
        table.add_column(col, justify="right" if col == "seconds" else "left")
    for s in result.stages:
        table.add_row(s.stage, s.status, f"{s.seconds:.1f}" if s.status == "done" else "-")
    console.print(table)
    if result.metrics:
        from mulcot.cli.tables import metrics_table
        from mulcot.evaluate import METRIC_DEFINITIONS

        names = [row["subject"] + ("*" if row.get("gold_conditioned") else "") for row in result.metrics]
        legend = ["All values × 100; '-' = not computed. F1: macro for aspect-level data, weighted otherwise; Cons.: "
                  "chain Prediction = label head; Dist-1/2: distinct n-grams (mulcot eval shows every definition)."]
        if any(row.get("gold_conditioned") for row in result.metrics):
            legend.append(f"*: gold-conditioned, {METRIC_DEFINITIONS['gold-conditioned']}.")
        console.print(metrics_table(names, result.metrics, "evaluation", caption=legend, digits=1))
        for line in _interval_lines(result.metrics):
            console.print(line, highlight=False)
    if result.files:
        f = Table(title="files produced", show_header=False)
        f.add_column("what", no_wrap=True)
        f.add_column("path", overflow="fold")
        for k, v in result.files.items():
            f.add_row(k, v)
        console.print(f)
    console.print(f"teacher cost ${result.cost_usd:.4f}; wall time {result.wall_s:.1f} s", highlight=False)


def run(
    recipe: Annotated[str, typer.Argument(help="Recipe TOML file (see recipes/), or @tiny-cpu for the bundled one.")],
    start: Annotated[str | None, typer.Option("--from", help="First stage to run.")] = None,
    stop: Annotated[str | None, typer.Option("--to", help="Last stage to run.")] = None,
    ablation: Annotated[str | None, typer.Option(
        help="One row of the paper's Table 6: no-image, no-text, no-cot or no-assistant (runs named "
        "RECIPE-ABLATION).", show_default=False)] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run a recipe: import → annotate → train-assistant → expand → distill → eval → export (resumable)."""
    from mulcot.pipeline import run_recipe
    from mulcot.pipeline.recipes import ablate, load_recipe

    r = load_recipe(recipe)
    if ablation is not None:
        r = ablate(r, ablation)
    store = open_store(db)
    view = _View(as_json)
    with view.bar:
        result = run_recipe(store, r, start=start, stop=stop, report=view)
    if as_json:
        print_json(asdict(result))
        return
    _print_result(result)


def demo(
    db: Annotated[Path, typer.Option("--db", help="Database to write the demo into.")] = Path("mulcot-demo.db"),
    runs_dir: Annotated[Path, typer.Option(help="Where the demo's runs go.")] = Path("mulcot-demo-runs"),
    real_teacher: Annotated[
        bool, typer.Option("--real-teacher", help="Call gpt-4o-mini (needs OPENAI_API_KEY) instead of replaying stored "
                           "chains.")
    ] = False,
    real_weights: Annotated[
        bool, typer.Option("--real-weights", help="SmolLM2-135M-Instruct, real weights, on 460 embedded text posts: "
                           "about 30 min on 2 cores (recipes/smollm2-cpu.toml).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """The whole pipeline on the embedded sample (60 real Twitter-2015 posts) with tiny models, on the CPU; with
    --real-weights, SmolLM2-135M on 460 text posts."""
    from mulcot.pipeline import run_recipe
    from mulcot.pipeline.recipes import load_recipe

    recipe = load_recipe("@smollm2-cpu" if real_weights else "@tiny-cpu")
    recipe.runs_dir = str(runs_dir.resolve())  # --runs-dir as typed: from the working directory
    if real_teacher:
        if not os.environ.get("OPENAI_API_KEY"):
            from mulcot.errors import MulcotError

            raise MulcotError("--real-teacher needs OPENAI_API_KEY in the environment")
        recipe.teacher.replay = None
        recipe.teacher.model = "gpt-4o-mini"
        recipe.teacher.budget_usd = 1.0
    say = console.print if not as_json else (lambda *a, **k: None)
    say("[bold]mulcot demo --real-weights[/]: the MulCoT-RD pipeline on 460 real Twitter-2015 posts (embedded, text "
        "only: 128 train, 32 dev, 300 test)" if real_weights else
        "[bold]mulcot demo[/]: the MulCoT-RD pipeline on 60 real Twitter-2015 posts (embedded, with images)")
    if recipe.teacher.replay:
        say("[yellow]Teacher: REPLAYED[/] — the MulCoT-RD authors' Qwen2.5-VL-72B chains for these posts are served by "
            "a local OpenAI-compatible server on 127.0.0.1; no model is called (pass --real-teacher with "
            "OPENAI_API_KEY to use gpt-4o-mini).")
    if real_weights:
        say("[yellow]Models: SmolLM2-135M-Instruct[/] (real weights, text only) as assistant and student, trained on "
            "128 posts: too few to beat always answering the majority label with confidence, which the table tests "
            "(95% intervals, McNemar). Not the paper's 3B vision-language student; the README's decisive benchmark "
            "is where mulcot shows learning.\n")
    else:
        say("[yellow]Models: tiny random-weight Qwen2.5-VL[/] (~10M parameters) so that every stage runs on a laptop "
            "CPU in minutes. They write meaningless text: the metrics below show the pipeline works, not that it "
            "learns. Real weights on a laptop: [bold]mulcot demo --real-weights[/]; real models: [bold]mulcot run "
            "recipes/twitter2015-gpt4omini-qwen2.5vl.toml[/]\n")
    store = open_store(db)
    view = _View(as_json)
    start = time.perf_counter()
    with view.bar:
        result = run_recipe(store, recipe, report=view)
    if as_json:
        print_json(asdict(result))
        return
    _print_result(result)
    export = next((s for s in result.stages if s.stage == "export"), None)
    prediction = (export.summary or {}).get("prediction") if export else None
    if prediction:
        console.print(
            f"\nOffline prediction with the exported GGUF (llama.cpp) for “{escape(prediction['post'])}” "
            f"(aspect {escape(str(prediction['aspect']))}, gold {prediction['gold']}): predicted "
            f"{prediction['prediction'] or 'no label'} in {prediction['latency_s']:.2f} s; "
            "raw output begins: "
            f"{escape(prediction['raw'][:120])!r}",
            highlight=False,
        )
    console.print(
        f"\nDemo finished in {time.perf_counter() - start:.0f} s. Browse every chain, attempt and score:\n"
        f"  [bold]mulcot tui --db {db}[/]\n"
        f"  mulcot data stats {recipe.dataset.name} --db {db}\n"
        f"Run it for real: edit a recipe in recipes/ (e.g. twitter2015-gpt4omini-qwen2.5vl.toml) and "
        f"[bold]mulcot run RECIPE[/]."
    )


def doctor(as_json: JsonOption = False) -> None:
    """Check the environment (torch, GPU, llama.cpp, WordNet, sentence model, disk) and say what to fix."""
    from mulcot.pipeline.doctor import run_checks

    checks = run_checks()
    if as_json:
        print_json([c.__dict__ for c in checks])
    else:
        table = Table(title="mulcot doctor")
        for col in ("check", "status", "detail", "fix"):
            table.add_column(col)
        colour = {"ok": "green", "warn": "yellow", "fail": "red"}
        for c in checks:
            table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", escape(c.detail), escape(c.fix or ""))
        console.print(table)
    if any(c.status == "fail" for c in checks):
        raise typer.Exit(1)
