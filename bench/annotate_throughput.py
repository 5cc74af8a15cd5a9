"""Annotation throughput against a local OpenAI-compatible server with a fixed latency per request.

N real Twitter-2015 training posts (with their images, base64-encoded per request as in a real run) are annotated
at several concurrency levels; the server (in its own process, as a remote teacher would be) answers every request
with a valid chain after a fixed delay, so the numbers measure mulcot's own overhead and its use of concurrency.
Concurrency 1 is what the authors' loop does.

    python bench/annotate_throughput.py [--n 500] [--latency 0.2] [--levels 1,4,16,64] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mulcot.annotate import AnnotateConfig, annotate
from mulcot.annotate.chat_server import ChatServer, Reply, post_of
from mulcot.core.client import TeacherConfig
from mulcot.core.reasoning import Reasoning
from mulcot.datasets import import_dataset
from mulcot.sample import SAMPLE_DIR
from mulcot.store import Store

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "twitter2015"


def _serve(gold: dict, latency: float, queue) -> None:
    """The teacher: a local OpenAI-compatible server answering every prompt with a valid chain after ``latency``."""

    def responder(body: dict) -> Reply:
        label = gold[post_of(body)]
        text = Reasoning("Text.", "Image.", "No conflict.", f"Overall {label}.", label).to_text()
        return Reply(text=text, delay_s=latency)

    server = ChatServer(responder).start()
    queue.put(server.base_url)
    threading.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--levels", default="1,4,16,64")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "bench.db")
        source = SHARED if SHARED.is_dir() else SAMPLE_DIR
        import_dataset(store, "twitter-tsv", source, name="bench", split="train")
        n = min(args.n, len(store.samples("bench", "train")))
        gold = {(s["text"], s["aspect"]): s["label"] for s in store.samples("bench", "train")}

        queue: mp.Queue = mp.Queue()
        server = mp.Process(target=_serve, args=(gold, args.latency, queue), daemon=True)
        server.start()
        base_url = queue.get(timeout=60)
        rows = []
        try:
            for level in levels:
                cfg = AnnotateConfig(
                    dataset="bench",
                    split="train",
                    limit=n,
                    concurrency=level,
                    teacher=TeacherConfig(model=f"bench-c{level}", base_url=base_url, api_key="x"),
                )
                start = time.perf_counter()
                summary = annotate(store, cfg)
                wall = time.perf_counter() - start
                assert summary.predicted == n, summary
                rows.append({"concurrency": level, "samples": n, "wall_s": round(wall, 2),
                             "samples_per_s": round(n / wall, 2)})
        finally:
            server.terminate()
        base = rows[0]["samples_per_s"]
        for r in rows:
            r["speedup"] = round(r["samples_per_s"] / base, 2)
            r["ideal"] = round(min(r["concurrency"], n) / rows[0]["concurrency"], 2)
    result = {"n": n, "latency_s": args.latency, "data": str(source), "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"annotate throughput: {n} posts, {args.latency * 1000:.0f} ms per request")
    for col in ("in flight", "wall s", "samples/s", "speed-up", "ideal"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["concurrency"]), f"{r['wall_s']:.1f}", f"{r['samples_per_s']:.2f}",
                      f"{r['speedup']:.2f}×", f"{r['ideal']:.0f}×")
    Console().print(table)


if __name__ == "__main__":
    main()
