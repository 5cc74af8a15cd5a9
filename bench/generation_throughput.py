"""Generation throughput: in-process transformers ``generate`` (batch 1 and 8) vs a llama.cpp server (1 and 4
parallel slots), on the same random-weight Qwen2.5-VL, the same posts (text + image) and the same token budget,
through ``mulcot predict --dataset`` (its hf backend, and its ``--server`` path). samples/s side by side, one run.

The servers: llama-cpp-python's, which answers one request at a time whatever the client sends (its "4" row is 4
requests in flight to one slot), and, when it is on PATH, llama.cpp's own ``llama-server`` (``--parallel N`` slots,
continuous batching) with 1 and 4 slots.

    python bench/generation_throughput.py [--size medium] [--n 64] [--tokens 128] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _random_models import SIZES, save  # noqa: E402
from _servers import ServerProcess  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "twitter2015"


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def prepare(size: str, work: Path, quiet: bool) -> dict[str, Any]:
    """The random model (HF folder) and its f16 GGUF + mmproj, built once under ``work``."""
    from mulcot.export import ExportConfig, export
    from mulcot.models import build_tiny

    tiny = work / "tiny"
    if not (tiny / "config.json").is_file():
        build_tiny(tiny, "qwen2.5-vl", seed=0)  # its tokenizer and processor (the real Qwen2 vocabulary)
    t0 = time.time()
    model_dir = save(size, work / size / "hf", tiny)
    _say(f"[{size}] random weights ready ({time.time() - t0:.0f} s); exporting to GGUF (resumes)", quiet)
    result = export(ExportConfig(source=str(model_dir), out=str(work / size / "gguf"), quants=(), name=size))
    from safetensors import safe_open

    params = 0
    for f in model_dir.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as fh:
            params += sum(_numel(fh.get_slice(k).get_shape()) for k in fh.keys())  # noqa: SIM118
    return {"model_dir": str(model_dir), "gguf": result.text_gguf, "mmproj": result.mmproj_gguf, "params": params}


def _numel(shape: list[int]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def posts_store(path: Path, n: int) -> tuple[Any, str]:
    """A store holding ``n`` posts with images: Twitter-2015 test when it is beside the project, else the embedded
    sample's (repeated when shorter)."""
    from mulcot.datasets import import_dataset
    from mulcot.sample import SAMPLE_DIR
    from mulcot.store import Store

    store = Store.open(path)
    src = SHARED if (SHARED / "test.tsv").is_file() else SAMPLE_DIR
    import_dataset(store, "twitter-tsv", src, name="bench")
    have = len(store.samples("bench", "test"))
    return store, ("test" if have >= n else "train")


class Server(ServerProcess):
    """llama.cpp's ``llama-server`` (``--parallel slots``, continuous batching) or llama-cpp-python's server (one
    slot: ``slots`` is then requests in flight)."""

    def __init__(self, gguf: str, mmproj: str, slots: int, threads: int, ctx: int, native: bool):
        binary = shutil.which("llama-server")
        if native and binary:
            self.kind = f"llama-server, {slots} slot" + ("s" if slots > 1 else "")
            args = [binary, "-m", gguf, "--mmproj", mmproj, "--alias", "bench", "--parallel", str(slots),
                    "-c", str(ctx * slots), "-t", str(threads)]
        else:
            self.kind = "llama-cpp-python server, 1 slot" + (f", {slots} in flight" if slots > 1 else "")
            args = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--clip_model_path", mmproj,
                    "--chat_format", "mtmd", "--model_alias", "bench", "--n_ctx", str(ctx), "--n_threads",
                    str(threads), "--n_threads_batch", str(threads)]
        super().__init__(args)


def measure(prep: dict[str, Any], work: Path, n: int, tokens: int, threads: int, quiet: bool) -> list[dict[str, Any]]:
    """Each configuration predicts the same ``n`` posts into a fresh store, after one untimed post; samples/s =
    n / wall."""
    from mulcot.generation import HFBackend, Post, PredictConfig, ServerBackend
    from mulcot.generation.server import ServerConfig
    from mulcot.predict import predict_dataset, predict_post

    rows = []
    config = dict(max_tokens=tokens, n_threads=threads, max_pixels=224 * 224)
    plan = [("in-process transformers", "batch 1", 1), ("in-process transformers", "batch 8", 8),
            ("llama-cpp-python server", "1 slot", 1), ("llama-cpp-python server", "4 in flight", 4)]
    if shutil.which("llama-server"):
        plan += [("llama-server", "1 slot", 1), ("llama-server", "4 slots", 4)]
    for i, (path, mode, width) in enumerate(plan):
        store, split = posts_store(work / f"bench-{i}.db", n)
        server = None
        try:
            if path.startswith("in-process"):
                import torch

                torch.set_num_threads(threads)
                backend: Any = HFBackend(prep["model_dir"], PredictConfig(batch_size=width, **config))
            else:
                server = Server(prep["gguf"], prep["mmproj"], width, threads, ctx=4096, native=path == "llama-server")
                mode = server.kind
                backend = ServerBackend(ServerConfig(url=server.url, served_model="bench", concurrency=width),
                                        PredictConfig(**config))
            _say(f"{path}, {mode}: {n} posts x {tokens} tokens", quiet)
            first = store.samples("bench", split)[0]  # warm up (first image encode, lazy init) outside the timing
            predict_post(backend, Post(text=first["text"], aspect=first["aspect"], image=first["image_path"]))
            t0 = time.perf_counter()
            summary = predict_dataset(store, backend, "bench", split, limit=n)
            wall = time.perf_counter() - t0
            rows_ = store.reasonings(dataset="bench", split=split)
            generated = sum(r["tokens_out"] or 0 for r in rows_)
            rows.append({"path": path, "mode": mode, "width": width, "posts": summary.predicted, "wall_s": wall,
                         "samples_per_s": summary.predicted / wall, "tokens_out": generated,
                         "tokens_per_s": generated / wall})
            backend.close()
        finally:
            if server is not None:
                server.stop()
            store.close()
    base = rows[0]["samples_per_s"]
    for r in rows:
        r["speedup"] = r["samples_per_s"] / base
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="medium", choices=sorted(SIZES), help="medium: ~108M parameters")
    ap.add_argument("--n", type=int, default=64, help="posts")
    ap.add_argument("--tokens", type=int, default=128, help="most tokens generated per post")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--work", type=Path, default=None, help="keep the model and GGUF here (default: a temp folder)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="mulcot-genbench-"))
    work.mkdir(parents=True, exist_ok=True)
    for f in work.glob("bench-*.db*"):
        f.unlink()
    prep = prepare(args.size, work, args.json)
    rows = measure(prep, work, args.n, args.tokens, args.threads, args.json)
    report = {"size": args.size, "params": prep["params"], "n": args.n, "tokens": args.tokens,
              "threads": args.threads, "rows": rows,
              "goal_server_vs_batch1": max(r["speedup"] for r in rows if r["path"].startswith("llama"))}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    table = Table(title=f"{args.size} Qwen2.5-VL ({prep['params'] / 1e6:.1f}M), {args.n} posts, <= {args.tokens} "
                  f"tokens, {args.threads} threads")
    for col in ("path", "mode", "wall", "samples/s", "tokens/s", "vs batch 1"):
        table.add_column(col, justify="left" if col in ("path", "mode") else "right")
    for r in rows:
        table.add_row(r["path"], r["mode"], f"{r['wall_s']:.1f} s", f"{r['samples_per_s']:.3f}",
                      f"{r['tokens_per_s']:.1f}", f"{r['speedup']:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
