"""``mulcot predict``: offline inference with the exported student (llama.cpp), or transformers for comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from mulcot.cli.common import (
    ConcurrencyOption,
    DbOption,
    JsonOption,
    LazyProgress,
    MaxRequestsOption,
    ServedModelOption,
    ServerOption,
    ServerRetriesOption,
    ServerTextOnlyOption,
    TimeBudgetOption,
    console,
    err_console,
    open_store,
    print_json,
    print_served,
    server_config,
)
from mulcot.errors import MulcotError
from mulcot.events import Event

_LABEL_STYLE = {"positive": "bold green", "neutral": "bold yellow", "negative": "bold red"}


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
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 512,
    label_max_tokens: Annotated[int, typer.Option(help="Most tokens for the label prompt's answer.")] = 32,
    temperature: Annotated[float, typer.Option(help="0 is greedy decoding.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling (temperature > 0).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    n_threads: Annotated[
        int | None, typer.Option(help="llama.cpp threads (default: half the logical cores, as llama-cpp-python).")
    ] = None,
    ctx: Annotated[int, typer.Option(help="llama.cpp context length (tokens).")] = 4096,
    mmap: Annotated[
        bool,
        typer.Option("--mmap/--no-mmap",
                     help="Map the GGUF instead of reading it (quantized GGUFs then use more RAM)."),  # fmt: skip
    ] = False,
    max_pixels: Annotated[int, typer.Option(help="Downsize images to at most this many pixels.")] = 280 * 280,
    image_max_side: Annotated[int | None, typer.Option(help="... and to at most this long a side.")] = None,
    batch_size: Annotated[int, typer.Option(help="hf backend batch size.")] = 4,
    device: Annotated[str | None, typer.Option(help="hf backend device (default: best available).")] = None,
    dtype: Annotated[str | None, typer.Option(help="hf backend dtype (bf16, fp16, fp32).")] = None,
    name: Annotated[str | None, typer.Option(help="Batch mode run id (default: predict-MODEL-DATASET-SPLIT).")] = None,
    server: ServerOption = None,
    served_model: ServedModelOption = None,
    concurrency: ConcurrencyOption = 4,
    retries: ServerRetriesOption = 3,
    max_requests: MaxRequestsOption = None,
    time_budget: TimeBudgetOption = None,
    server_text_only: ServerTextOnlyOption = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Ask the student about a post (--image/--text) or a whole split (--dataset): it writes the five-field
    reasoning (Text_analysis, Image_analysis, Conflict_resolution, Final_conclusion, Prediction) and the label.
    Batch mode stores every chain (source student-gguf, stage eval) for `mulcot eval`, and resumes. With --server
    --served-model the student answers from an OpenAI-compatible server (source student-server)."""
    from mulcot.predict import Post, PredictConfig, open_backend, predict_dataset, predict_post

    if (text is None) == (dataset is None):
        raise MulcotError("give either --text (with --image) for one post, or --dataset for a whole split")
    if (image is not None or caption is not None) and text is None:
        raise MulcotError("--image and --caption need --text (the post's text)")
    served = server_config(server, served_model, concurrency=concurrency, retries=retries, max_requests=max_requests,
                           time_budget=time_budget, text_only=server_text_only)  # fmt: skip
    if served is not None:
        if gguf is not None or model is not None:
            raise MulcotError("--server asks the served model: leave out --gguf and --model")
        backend = "server"
    if backend not in ("gguf", "hf", "server"):
        raise MulcotError(f"unknown --backend '{backend}' (use gguf or hf)")
    config = PredictConfig(max_tokens=max_tokens, label_max_tokens=label_max_tokens, temperature=temperature,
                           top_p=top_p, seed=seed, n_threads=n_threads, ctx=ctx, mmap=mmap, max_pixels=max_pixels,
                           image_max_side=image_max_side, batch_size=batch_size, device=device,
                           dtype=dtype)  # fmt: skip
    prompts = ("cot", "label") if label else ("cot",)
    run_name = backend == "hf" and model is not None and not Path(model).expanduser().exists()
    store = open_store(db) if dataset is not None or run_name else None
    try:
        with err_console.status("loading the model", spinner="dots") if not as_json else _Null():
            runner = open_backend(backend, gguf=gguf, model=model, quant=quant, mmproj=mmproj, config=config,
                                  store=store, server=served)  # fmt: skip
        try:
            if dataset is None:
                assert text is not None
                with err_console.status("thinking", spinner="dots") if not as_json else _Null():
                    post = Post(text=text, aspect=aspect, image=image, caption=caption)
                    results = predict_post(runner, post, prompts=prompts)
                out = {"backend": runner.kind, "model": runner.name, "predictions": [r.as_dict() for r in results],
                       "label": results[0].prediction}  # fmt: skip
                if label:
                    out["label_prompt"] = results[1].prediction
                if as_json:
                    print_json(out)
                else:
                    print_single(out)
                return
            bar = LazyProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                           console=err_console, disable=as_json)  # fmt: skip
            task_id = bar.add_task(f"predict {runner.name}", total=None, info="")

            def progress(event: Event) -> None:
                pred = event.get("prediction")
                info = f"last: {pred.prediction or 'invalid'} ({pred.latency_s:.1f} s)" if pred is not None else ""
                bar.update(task_id, completed=event.done, total=event.total, info=info)

            with bar:
                summary = predict_dataset(store, runner, dataset, split, limit=limit, run_id=name, prompts=prompts,
                                          progress=progress)  # fmt: skip
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
                f" · parse {cot['parse_status']}")  # fmt: skip
    console.print(Panel(table, title=f"label: [{_LABEL_STYLE.get(pred or '', 'bold')}]{pred or '?'}[/]",
                        subtitle=subtitle))  # fmt: skip
    if cot["parse_status"] != "full":
        console.print("[dim]raw output:[/]")
        console.print(escape(cot["raw"]), highlight=False)
    if "label_prompt" in out:
        console.print(f"label prompt (P_label): [{_LABEL_STYLE.get(out['label_prompt'] or '', 'bold')}]"
                      f"{out['label_prompt'] or 'none found'}[/]")  # fmt: skip


def print_summary(s: dict[str, Any]) -> None:
    table = Table(title=f"predict {escape(s['model'])} on {escape(s['dataset'])}/{escape(s['split'])}",
                  show_header=False)  # fmt: skip
    table.add_column("what")
    table.add_column("value")

    def fmt(v: Any, spec: str = ".4f") -> str:
        return "-" if v is None else format(v, spec)

    rows = [
        ("run", s["run_id"]),
        ("source / stage", f"{s['source']} / eval (prompt {s['prompt_version']})"),
        ("predicted now", str(s["predicted"])),
        ("already predicted (skipped)", str(s["skipped_done"])),
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
                  f"--source {escape(s['source'])}[/]")  # fmt: skip
