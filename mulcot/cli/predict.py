"""``mulcot predict``: offline inference with the exported student (llama.cpp), or transformers for comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from mulcot.cli.common import (
    DbOption,
    JsonOption,
    console,
    err_console,
    follow,
    open_store,
    print_json,
    print_served,
    progress_bar,
    server_options,
)
from mulcot.cli.config_options import config_options
from mulcot.core.refs import check_name
from mulcot.errors import MulcotError
from mulcot.events import Event
from mulcot.generation.base import Post, PredictConfig

_LABEL_STYLE = {"positive": "bold green", "neutral": "bold yellow", "negative": "bold red"}


@config_options(PredictConfig)
@server_options
def predict(
    gguf: Annotated[
        Path | None, typer.Option(help="Export folder (its default GGUF) or a text GGUF file.", show_default=False)
    ] = None,
    image: Annotated[Path | None, typer.Option(help="Image of the post (single mode).", show_default=False)] = None,
    text: Annotated[str | None, typer.Option(help="Text of the post (single mode).", show_default=False)] = None,
    aspect: Annotated[
        str | None, typer.Option(help="Target aspect (aspect-level MASC); without it: whole post (MSA).")
    ] = None,
    caption: Annotated[
        str | None, typer.Option(help="The image in words, for a text-only model (single mode).", show_default=False)
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Predict a stored dataset split (batch mode).", show_default=False)
    ] = None,
    split: Annotated[str, typer.Option(help="Split for batch mode.")] = "test",
    limit: Annotated[int | None, typer.Option(help="Batch mode: only the first N samples.")] = None,
    backend: Annotated[str, typer.Option(help="gguf (llama.cpp) or hf (transformers, for comparison).")] = "gguf",
    model: Annotated[
        str | None, typer.Option(help="hf backend: merged folder (export's hf/), model folder or run.")
    ] = None,
    quant: Annotated[
        str | None, typer.Option(help="Pick the GGUF of this type in an export folder (q4_k_m, q8_0, f16).")
    ] = None,
    mmproj: Annotated[
        Path | None, typer.Option(help="Vision projector GGUF (default: the one beside the model).")
    ] = None,
    label: Annotated[bool, typer.Option("--label", help="Also ask the classification prompt (P_label).")] = False,
    label_scoring: Annotated[
        str, typer.Option(help="With --label: generate (the answer generated, parsed) or choice (forced choice: the "
                          "three answers' probabilities, the most probable taken).")
    ] = "generate",
    name: Annotated[str | None, typer.Option(help="Batch mode run id (default: predict-MODEL-DATASET-SPLIT).")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Batch mode: write the run even while another process writes it (the two "
                           "share the samples; none is asked twice).")
    ] = False,
    server: Any = None,
    db: DbOption = None,
    as_json: JsonOption = False,
    options: dict[str, Any] | None = None,
) -> None:
    """Ask the student about a post (--image/--text) or a whole split (--dataset): it writes the five-field
    reasoning (Text_analysis, Image_analysis, Conflict_resolution, Final_conclusion, Prediction) and the label.
    Batch mode stores every chain (source student-gguf, stage eval) for `mulcot eval`, and resumes. With --server
    --served-model the student answers from an OpenAI-compatible server (source student-server)."""
    from mulcot.generation import open_backend
    from mulcot.predict import predict_dataset, predict_post

    if (text is None) == (dataset is None):
        raise MulcotError("give either --text (with --image) for one post, or --dataset for a whole split")
    if (image is not None or caption is not None) and text is None:
        raise MulcotError("--image and --caption need --text (the post's text)")
    if name is not None:
        check_name(name, "run name", "--name")  # before any model is loaded
    served = server
    if served is not None:
        if gguf is not None or model is not None:
            raise MulcotError("--server asks the served model: leave out --gguf and --model")
        backend = "server"
    if backend not in ("gguf", "hf", "server"):
        raise MulcotError(f"unknown --backend '{backend}' (use gguf or hf)")
    if label_scoring not in ("choice", "generate"):
        raise MulcotError(f"--label-scoring is {label_scoring!r}; allowed: choice, generate")
    config = PredictConfig(**(options or {}))
    prompts = ("cot", "label") if label else ("cot",)
    run_name = backend == "hf" and model is not None and not Path(model).expanduser().exists()
    store = open_store(db, readonly=dataset is None) if dataset is not None or run_name else None
    try:
        with err_console.status("loading the model", spinner="dots") if not as_json else _Null():
            runner = open_backend(backend, gguf=gguf, model=model, quant=quant, mmproj=mmproj, config=config,
                                  store=store, server=served)
        try:
            if dataset is None:
                assert text is not None
                with err_console.status("thinking", spinner="dots") if not as_json else _Null():
                    post = Post(text=text, aspect=aspect, image=image, caption=caption)
                    results = predict_post(runner, post, prompts=prompts, label_scoring=label_scoring)
                out = {"backend": runner.kind, "model": runner.name, "predictions": [r.as_dict() for r in results],
                       "label": results[0].prediction}
                if runner.inputs != "all":
                    out["inputs"] = runner.inputs
                    hidden = _hidden(post, runner.inputs)
                    if hidden and not as_json:
                        err_console.print(f"[dim]{escape(runner.name)} was trained with --inputs {runner.inputs}: "
                                          f"the post's {hidden} is not shown to it[/]")
                if label:
                    out["label_prompt"] = results[1].prediction
                if as_json:
                    print_json(out)
                else:
                    print_single(out)
                return
            bar = progress_bar(as_json, info=True, remaining=True, transient=False)
            progress = follow(bar, f"predict {runner.name}", _last_prediction)
            with bar:
                summary = predict_dataset(store, runner, dataset, split, limit=limit, run_id=name, prompts=prompts,
                                          label_scoring=label_scoring, progress=progress, force=force)
        finally:
            runner.close()
    finally:
        if store is not None:
            store.close()
    print_served(summary.served)
    if as_json:
        print_json(summary.as_dict())
        return
    print_summary(summary.as_dict())


def _hidden(post: Post, inputs: str) -> str:
    """What of ``post`` a model trained with ``inputs`` is not shown ("" when nothing the user gave is hidden)."""
    if inputs == "no-image":
        return " and ".join(w for w, v in (("image", post.image), ("caption", post.caption)) if v)
    return "text" if inputs == "no-text" and post.text else ""


def _last_prediction(event: Event) -> str:
    pred = event.get("prediction")
    return f"last: {pred.prediction or 'invalid'} ({pred.latency_s:.1f} s)" if pred is not None else ""


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def print_single(out: dict[str, Any]) -> None:
    cot = out["predictions"][0]
    table = Table(show_header=False, box=None, padding=(0, 1))
    table.add_column("field", style="bold cyan", no_wrap=True)
    table.add_column("value")
    for key in ("Text_analysis", "Image_analysis", "Conflict_resolution", "Final_conclusion"):
        table.add_row(key, escape(cot["fields"].get(key, "") or "[missing]"))
    pred = cot["prediction"]
    table.add_row("Prediction", f"[{_LABEL_STYLE.get(pred or '', 'bold')}]{pred or 'none found'}[/]")
    subtitle = (f"{escape(out['model'])} ({out['backend']}) · {cot['tokens_out']} tokens in {cot['latency_s']:.1f} s"
                f" · parse {cot['parse_status']}")
    console.print(Panel(table, title=f"label: [{_LABEL_STYLE.get(pred or '', 'bold')}]{pred or '?'}[/]",
                        subtitle=subtitle))
    if cot["parse_status"] != "full":
        console.print("[dim]raw output:[/]")
        console.print(escape(cot["raw"]), highlight=False)
    if "label_prompt" in out:
        probs = (out["predictions"][1].get("fields") or {}).get("probabilities")
        shares = (" (forced choice: " + ", ".join(f"{lab} {100 * p:.1f}%" for lab, p in probs.items()) + ")"
                  if probs else "")
        console.print(f"label prompt (P_label): [{_LABEL_STYLE.get(out['label_prompt'] or '', 'bold')}]"
                      f"{out['label_prompt'] or 'none found'}[/]{shares}")


def print_summary(s: dict[str, Any]) -> None:
    table = Table(title=f"predict {escape(s['model'])} on {escape(s['dataset'])}/{escape(s['split'])}",
                  show_header=False)
    table.add_column("what")
    table.add_column("value")

    def fmt(v: Any, spec: str = ".4f") -> str:
        return "-" if v is None else format(v, spec)

    rows = [
        ("run", s["run_id"]),
        ("source / stage", f"{s['source']} / eval (prompt {s['prompt_version']})"),
        ("predicted now", str(s["predicted"])),
        ("already predicted (skipped)", str(s["skipped_done"])),
        *((("left to the other writer (--force)", str(s["skipped_other_writer"])),) if s.get("skipped_other_writer")
          else ()),
        ("chains stored for this model", str(s["chains"])),
        ("accuracy (reasoning Prediction)", fmt(s["accuracy"])),
        ("macro-F1 / weighted-F1", f"{fmt(s['macro_f1'])} / {fmt(s['weighted_f1'])}"),
        ("invalid chains", str(s["invalid"])),
        ("mean latency", f"{fmt(s['mean_latency_s'], '.2f')} s"),
        ("tokens/s", fmt(s["tokens_per_s"], ".1f")),
    ]
    for k, v in rows:
        table.add_row(k, escape(v))
    console.print(table)
    console.print(f"Score it: [bold]mulcot eval {escape(s['dataset'])} --split {escape(s['split'])} "
                  f"--source {escape(s['source'])}[/]")
