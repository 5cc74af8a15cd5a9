"""Chain browser (``mulcot tui``) latency on a large generated store.

A store with N samples (default 100,000) and three final chains each — teacher, assistant, student: 300,000 — is
generated once (one transaction, ``executemany``; cached under --cache) and then driven headlessly with Textual's
Pilot at 160×48. Each latency runs from the action to the first frame Textual composes after it (what a terminal
would show next): app start to the first page, applying a filter (gold label, outcome, source + predicted label),
running a search (a common word, a rare word, a phrase, FTS5 metacharacters), moving the cursor. Medians of --runs
runs. Beside each: the page query alone and the exact count, which the app runs in the background (its own
connection) for large stores, after the first page is painted.

    python bench/tui_latency.py [--samples 100000] [--runs 5] [--cache /tmp/mulcot-bench] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mulcot.core.labels import LABELS
from mulcot.core.reasoning import Reasoning
from mulcot.store import Store

WORDS = (
    "game team win season coach fans stadium night city show music album tour concert movie film star actor "
    "president election vote policy news report police fire storm weather school students campus book author "
    "phone apple android update launch price market stock company deal brand store shop food coffee pizza "
    "happy great love best amazing terrible awful sad angry worst good bad okay fine new old big small first "
    "last today tomorrow week weekend morning live video photo picture selfie friends family party birthday"
).split()
ASPECTS = ("Obama", "Apple", "Real Madrid", "Taylor Swift", "NASA", "Starbucks", "Lakers", "Google", "Paris", "BBC")
SOURCES = ("teacher", "assistant", "student")
RARE = "zygomorphic"  # appears in exactly 25 samples' chains


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def generate(path: Path, n_samples: int, seed: int = 0) -> dict[str, Any]:
    """Build the benchmark store at ``path``: ``n_samples`` samples (80/10/10 train/dev/test) and one final chain
    per source per sample (about 80% correct, 3% failed; a few teacher chains after a failed retry)."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    store = Store.open(path)
    splits = ["train"] * 8 + ["dev", "test"]
    with store.transaction():
        store.upsert_dataset("bench", task="masc", format="jsonl", source="generated", images_root=None,
                             has_images=False)
        rows = []
        for i in range(n_samples):
            aspect = rng.choice(ASPECTS)
            words = [rng.choice(WORDS) for _ in range(rng.randint(10, 24))]
            words.insert(rng.randrange(len(words)), aspect)
            rows.append({
                "split": splits[i % 10], "key": str(i), "text": " ".join(words), "aspect": aspect,
                "label": rng.choice(LABELS), "image_name": None, "image_path": None, "image_sha256": None,
                "has_image": False,
            })
        ids = store.upsert_samples("bench", rows).ids
    gold = {ids[(r["split"], r["key"])]: r["label"] for r in rows}
    rare = set(rng.sample(sorted(gold), 25))
    pool = [[_sentence(rng, n) for _ in range(4000)] for n in (9, 9, 7, 8)]  # drawn from: fast to generate

    def chains():
        for sid, label in gold.items():
            for source in SOURCES:
                failed = rng.random() < 0.03
                pred = label if rng.random() < 0.8 else rng.choice(LABELS)
                extra = f" {RARE}" if sid in rare and source == "student" else ""
                a, b, c, d = (rng.choice(p) for p in pool)
                reasoning = Reasoning(a + extra, b, c, d, pred)
                text = reasoning.to_text()
                row = {
                    "sample_id": sid, "source": source, "model": f"{source}-model", "stage": "predict",
                    "prompt_version": "v1", "raw": text, "text": text, "fields": reasoning.as_dict(),
                    "prediction": None if failed else pred, "parse_status": "none" if failed else "full",
                    "valid": not failed, "attempt": 1, "final": True, "origin": "bench",
                    "error": "output missing Prediction" if failed else None,
                }
                if source == "teacher":
                    row.update(tokens_in=812, tokens_out=240, cost_usd=0.0011, latency_s=2.4)
                yield row

    n_chains = store.add_reasonings(chains())
    store.db.execute("ANALYZE")
    store.close()
    return {"samples": len(gold), "chains": n_chains, "seconds": round(time.perf_counter() - t0, 1)}


def _median_ms(times: list[float]) -> float:
    return round(1000 * statistics.median(times), 1)


def _track_paints(app: Any) -> list[float]:
    """Timestamps of the frames the app composes (headless: rendered, not written)."""
    stamps: list[float] = []
    display = app._display

    def timed(screen: Any, renderable: Any) -> None:
        display(screen, renderable)
        if renderable is not None:
            stamps.append(time.perf_counter())

    app._display = timed
    return stamps


async def _drive(db: Path, runs: int) -> dict[str, Any]:
    """Latency = from the action to the first frame composed after it (what a terminal would show next)."""
    from mulcot.tui import ChainBrowser, SampleTable

    results: dict[str, Any] = {}

    async def painted(pilot: Any, stamps: list[float], t0: float) -> float:
        await pilot.pause()
        after = [t for t in stamps if t > t0]
        while not after:
            await pilot.pause(0.01)
            after = [t for t in stamps if t > t0]
        return after[0] - t0

    # Time to first paint: from creating the app to the first frame that shows the first page.
    first = []
    for _ in range(runs):
        t0 = time.perf_counter()
        app = ChainBrowser(db)
        stamps = _track_paints(app)
        async with app.run_test(size=(160, 48)) as pilot:
            table = app.query_one(SampleTable)
            while not table.loaded:
                await asyncio.sleep(0.001)
            loaded = time.perf_counter()
            first.append(await painted(pilot, stamps, loaded) + loaded - t0)
    results["first page"] = _median_ms(first)

    app = ChainBrowser(db)
    stamps = _track_paints(app)
    async with app.run_test(size=(160, 48)) as pilot:
        table = app.query_one(SampleTable)
        await pilot.pause()
        cases: list[tuple[str, dict[str, Any]]] = [
            ("filter gold=negative", {"gold": "negative"}),
            ("filter outcome=wrong", {"outcome": "wrong"}),
            ("filter student predicted neutral", {"source": "student", "predicted": "neutral"}),
            ("filter split=test, teacher failed", {"split": "test", "source": "teacher", "outcome": "failed"}),
            ("search common word", {"search": "coffee"}),
            ("search rare word", {"search": RARE}),
            ("search phrase", {"search": "Real Madrid"}),
            ("search metacharacters", {"search": 'NEAR( "x" ;-- %'}),
            ("search + filter", {"search": "love", "source": "student", "outcome": "wrong"}),
        ]
        for name, change in cases:
            times, query_times, count_times, count = [], [], [], 0
            for _ in range(runs):
                app.apply_filters(reset=True, split=None)
                await pilot.pause()
                t0 = time.perf_counter()
                app.apply_filters(**change)
                times.append(await painted(pilot, stamps, t0))
                await app.workers.wait_for_complete()
                await pilot.pause()
                count = table.row_count
                filters = app.filters.store_filters()
                q0 = time.perf_counter()
                app.store.browse_page(limit=100, **filters)
                q1 = time.perf_counter()
                app.store.browse_count(**filters)
                query_times.append(q1 - q0)
                count_times.append(time.perf_counter() - q1)
            results[name] = {"ms": _median_ms(times), "page_query_ms": _median_ms(query_times),
                             "count_ms": _median_ms(count_times), "matches": count}
        # Moving: one row down; then a jump to the end (a page fetched from the end) and a page up (keyset).
        for name, keys in (
            ("next row (j)", ("j",)),
            ("jump to end (G)", ("G",)),
            ("page up from the end", ("pageup",)),
        ):
            times = []
            for _ in range(runs):
                if name != "page up from the end":
                    app.apply_filters(reset=True, split=None)
                    await pilot.pause()
                    table.focus()
                    await pilot.pause()
                else:
                    await pilot.press("G")
                    await pilot.pause()
                t0 = time.perf_counter()
                await pilot.press(*keys)
                times.append(await painted(pilot, stamps, t0))
            results[name] = {"ms": _median_ms(times), "page_query_ms": None, "count_ms": None,
                             "matches": table.row_count}
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/mulcot-bench"), help="Folder for the generated store.")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    args.cache.mkdir(parents=True, exist_ok=True)
    db = args.cache / f"tui-{args.samples}.db"
    gen: dict[str, Any] = {"cached": db.exists()}
    if not db.exists():
        tmp = db.with_suffix(".part")
        for p in tmp.parent.glob(tmp.name + "*"):
            p.unlink()
        gen.update(generate(tmp, args.samples))
        tmp.rename(db)
        for suffix in ("-wal", "-shm"):
            Path(str(tmp) + suffix).unlink(missing_ok=True)
    with Store.open(db) as store:
        gen["samples"] = store.db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        gen["chains"] = store.db.execute("SELECT COUNT(*) FROM reasonings").fetchone()[0]
    gen["db_mb"] = round(db.stat().st_size / 2**20)
    results = asyncio.run(_drive(db, args.runs))
    report = {"store": gen, "runs": args.runs, "terminal": "160x48", "results": results}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    console = Console()
    table = Table(
        title=f"mulcot tui latency: {gen['samples']:,} samples, {gen['chains']:,} chains "
        f"(median of {args.runs}; goals: first page < 500 ms, filter/search < 100 ms)"
    )
    for col in ("action", "to paint ms", "page query ms", "count ms", "matches"):
        table.add_column(col, justify="left" if col == "action" else "right")
    table.add_row("first page (app start → first page painted)", f"{results['first page']:.1f}", "", "", "")
    for name, r in results.items():
        if name == "first page":
            continue
        q = "" if r["page_query_ms"] is None else f"{r['page_query_ms']:.1f}"
        c = "" if r["count_ms"] is None else f"{r['count_ms']:.1f}"
        table.add_row(name, f"{r['ms']:.1f}", q, c, f"{r['matches']:,}")
    console.print(table)
    if "seconds" in gen:
        console.print(f"generated the store in {gen['seconds']} s ({gen['db_mb']} MiB)", highlight=False)


if __name__ == "__main__":
    main()
