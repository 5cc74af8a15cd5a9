"""``mulcot export``: merged Hugging Face folder, GGUF + mmproj, quantized GGUFs, manifest and Ollama Modelfile."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from mulcot.cli.common import DbOption, JsonOption, console, err_console, print_json
from mulcot.errors import MulcotError
from mulcot.events import Event


def _store_for(source: str, db: Path | None, needed: bool = False) -> Any:
    """The store, when one is named or exists (a run name or --verify needs it); exporting a folder creates none."""
    from mulcot.store import Store, default_db_path

    if db is not None:
        return Store.open(db)
    if Path(source).expanduser().exists() and not needed:
        return None
    path = default_db_path()
    return Store.open(path) if path.is_file() else None


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def export(
    source: Annotated[
        str, typer.Argument(help="The student: runs/NAME, an adapter folder, a run name, or a full model folder.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Export folder (created; reruns resume in it).")],
    quant: Annotated[
        str, typer.Option(help="Quantization types, comma-separated (q8_0, q4_k_m, q4_k_s, q5_k_m, q6_k, q4_0); none.")
    ] = "q4_k_m",
    no_gguf: Annotated[bool, typer.Option("--no-gguf", help="Stop after the merged Hugging Face folder.")] = False,
    llama_cpp: Annotated[
        Path | None,
        typer.Option("--llama-cpp", help="llama.cpp checkout or llama-cpp-python sdist with the converter "
                     "(default: the installed llama-cpp-python's own).", show_default=False),
    ] = None,
    outtype: Annotated[str, typer.Option(help="Text GGUF precision: f16, f32 or bf16 (the mmproj is f16/f32).")] = (
        "f16"
    ),
    name: Annotated[str | None, typer.Option(help="File name stem of the GGUFs (default: the run name).")] = None,
    base: Annotated[
        str | None, typer.Option("--base", help="Base model, if not the one recorded in the adapter.")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="Save the merged weights as bf16, fp16 or fp32 (default: the base's dtype).")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="Quantizer threads (default: all cores).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Redo every step instead of resuming.")] = False,
    verify: Annotated[
        int | None,
        typer.Option(help="Score N posts by forced choice with every exported GGUF and the merged model: agreement, "
                     "accuracy difference (paired 95% interval), written into the manifest.", show_default=False),
    ] = None,
    verify_dataset: Annotated[
        str | None, typer.Option(help="Dataset in the store whose posts --verify scores.", show_default=False)
    ] = None,
    verify_split: Annotated[str, typer.Option(help="Split whose first N labelled posts --verify scores.")] = "test",
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Export a trained student for offline use: merge the LoRA adapter (complete Hugging Face folder), convert it
    with llama.cpp's own converter to a text GGUF and a vision projector (mmproj) GGUF, quantize with llama.cpp's
    quantizer, and write manifest.json and an Ollama Modelfile. A rerun skips the steps already done."""
    from mulcot.core.gguf import parse_quants
    from mulcot.export import ExportConfig
    from mulcot.export import export as run_export

    quants = parse_quants(quant)
    if outtype not in ("f16", "f32", "bf16"):
        raise MulcotError(f"unknown --outtype '{outtype}' (use f16, f32 or bf16)")
    store = _store_for(source, db, needed=verify is not None)
    config = ExportConfig(source=source, out=str(out), quants=quants, gguf=not no_gguf, outtype=outtype,
                          llama_cpp_dir=str(llama_cpp) if llama_cpp else None, name=name, base_model=base,
                          dtype=dtype, threads=threads, force=force, verify=verify, verify_dataset=verify_dataset,
                          verify_split=verify_split)
    status = None if as_json else err_console.status("exporting", spinner="dots")

    def progress(event: Event) -> None:
        if as_json or status is None:
            return
        where = f"[{event.done}/{event.total}] {event.get('step')}" if event.done else str(event.get("step", ""))
        if event.kind in ("start", "info"):
            status.update(f"{where}: {escape(event.message)}")
        elif event.kind == "done":
            err_console.print(f"[green]✓[/] {where}", highlight=False)
        elif event.kind == "skipped":
            err_console.print(f"[dim]↷ {where}: {escape(event.message)}[/]", highlight=False)

    try:
        if status is not None:
            with status:
                result = run_export(config, store=store, progress=progress)
        else:
            result = run_export(config, store=store, progress=progress)
    finally:
        if store is not None:
            store.close()
    if as_json:
        print_json(result.as_dict())
        return
    print_export(result.as_dict())


def print_export(result: dict[str, Any]) -> None:
    import json

    manifest = json.loads(Path(result["manifest"]).read_text(encoding="utf-8")) if result.get("manifest") else {}
    table = Table(title=f"export {escape(result['name'])} ({result['family']})")
    table.add_column("file")
    table.add_column("role")
    table.add_column("size", justify="right")
    table.add_column("sha256")
    hf_bytes = 0
    for f in manifest.get("files", []):
        if f["role"] == "hf":
            hf_bytes += f["bytes"]
            continue
        table.add_row(escape(f["path"]), f"{f['role']} {f['type'] or ''}".strip(), _size(f["bytes"]), f["sha256"][:12])
    if hf_bytes:
        table.add_row(escape(manifest.get("hf_dir", "hf") + "/"), "merged HF folder", _size(hf_bytes), "")
    console.print(table)
    done = [s["step"] for s in result["steps"] if s["status"] == "done"]
    skipped = [s["step"] for s in result["steps"] if s["status"] == "skipped"]
    console.print(f"Done: {', '.join(done) or 'nothing'}; already there: {', '.join(skipped) or 'nothing'} "
                  f"({result['wall_s']:.1f} s). Folder: [cyan]{escape(result['out'])}[/]")
    if result.get("verify"):
        print_verify(result["verify"])
    if result.get("default_gguf"):
        console.print(f"Run it: [bold]mulcot predict --gguf {escape(result['out'])} --image IMG --text TEXT[/]")


def print_verify(v: dict[str, Any]) -> None:
    """``--verify``: each GGUF against the merged model on the same posts (forced choice)."""
    table = Table(title=f"verify: {v['n']} posts of {escape(v['dataset'])}/{escape(v['split'])}, forced choice, "
                        f"against the merged model (accuracy {100 * v['hf']['accuracy']:.1f}%)")
    for col in ("GGUF", "agreement", "accuracy", "Δ accuracy [95% CI]", "McNemar p", "max |Δp|"):
        table.add_column(col, justify="left" if col == "GGUF" else "right")
    for quant, g in v["gguf"].items():
        d = g["accuracy_diff"]
        table.add_row(f"{quant} ({escape(g['file'])})", f"{100 * g['agreement']:.1f}%", f"{100 * g['accuracy']:.1f}%",
                      f"{100 * d['diff']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]",
                      f"{g['mcnemar_p']:.3g}", f"{g['max_abs_prob_diff']:.4f}")
    console.print(table)
