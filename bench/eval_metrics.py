"""Benchmark: wall time of all reasoning metrics on the MulCoT-RD authors' 1,037 Twitter-2015 test chains,
scored against a shuffled copy of themselves (every prediction gets another sample's reasoning as reference).

Model loading (Sim model, WordNet's first load) is timed apart from scoring. Goal: scoring < 30 s on 2 cores.
With ``--cache``, Sim embeddings go through the on-disk embedding cache (mulcot.metrics.EmbeddingCache) in a
fresh folder (or ``--cache-dir``) and the scoring runs twice: cold (everything embedded and written to the cache),
then warm (everything read back) — what a repeated evaluation against the same teacher references costs.

    .venv/bin/python bench/eval_metrics.py [--threads 2] [--cache [--cache-dir DIR]] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mulcot-rd" / "t15-test.json"
GOAL_S = 30.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="JSON array with a 'cot' field per item"
    )
    ap.add_argument("--threads", type=int, default=2, help="torch threads for Sim (default 2)")
    ap.add_argument("--seed", type=int, default=0, help="shuffle seed")
    ap.add_argument("--limit", type=int, default=None, help="only the first N chains")
    ap.add_argument("--corpus", action="store_true", help="also corpus-level BLEU / Distinct")
    ap.add_argument("--nltk-data", type=Path, default=None, help="nltk data dir holding WordNet")
    ap.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--cache", action="store_true", help="score cold then warm through the embedding cache")
    ap.add_argument("--cache-dir", type=Path, default=None, help="embedding cache folder (default: a fresh temp one)")
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not args.data.is_file():
        console.print(f"[red]data not found: {args.data}[/red]")
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    t0 = time.perf_counter()
    import torch

    from mulcot import metrics as M
    from mulcot.metrics import wordnet as wn

    torch.set_num_threads(args.threads)
    import_s = time.perf_counter() - t0

    chains = [item["cot"] for item in json.loads(args.data.read_text(encoding="utf-8"))]
    if args.limit:
        chains = chains[: args.limit]
    shuffled = chains[:]
    random.Random(args.seed).shuffle(shuffled)
    same = sum(a == b for a, b in zip(chains, shuffled, strict=True))
    distinct_texts = len(set(chains) | set(shuffled))

    # Loading, apart from scoring (reasoning_metrics would do it lazily; done here to time it cleanly).
    load: dict[str, float] = {}
    t = time.perf_counter()
    M.load_sim_model()
    load["sim_model"] = time.perf_counter() - t
    t = time.perf_counter()
    try:
        wn.ensure_wordnet(args.nltk_data)
    except Exception as err:  # noqa: BLE001 - shown in the table; METEOR is then reported unavailable
        console.print(f"[yellow]{err}[/yellow]")
    load["wordnet"] = time.perf_counter() - t
    t = time.perf_counter()
    M.reasoning_metrics(["warm up the tokenizers ."], ["warm up ."], metrics=["bleu", "distinct_1"])
    load["warm_up"] = time.perf_counter() - t

    cache_runs: list[dict] = []
    if args.cache:
        import tempfile

        cache_dir = args.cache_dir or Path(tempfile.mkdtemp(prefix="mulcot-emb-"))
        for label in ("cold", "warm"):
            t = time.perf_counter()
            scores = M.reasoning_metrics(
                chains, shuffled, corpus=args.corpus, nltk_data_dir=args.nltk_data, embedding_cache=cache_dir
            )
            cache_runs.append({"run": label, "scoring_wall_s": time.perf_counter() - t,
                               "sim_s": scores.score_seconds.get("sim"), **(scores.sim_cache or {})})
        wall = cache_runs[-1]["scoring_wall_s"]
    else:
        t = time.perf_counter()
        scores = M.reasoning_metrics(chains, shuffled, corpus=args.corpus, nltk_data_dir=args.nltk_data)
        wall = time.perf_counter() - t

    warm = " (warm embedding cache)" if cache_runs else ""
    table = Table(
        title=f"reasoning metrics: {len(chains)} chains vs a shuffled copy ({args.threads} threads){warm}"
    )
    table.add_column("metric")
    table.add_column("mean", justify="right")
    table.add_column("corpus", justify="right")
    table.add_column("seconds", justify="right")
    for m in scores.metrics:
        mean = scores.means.get(m)
        table.add_row(
            m,
            f"{mean:.4f}" if mean is not None else "[yellow]unavailable[/yellow]",
            f"{scores.corpus[m]:.4f}" if m in scores.corpus else "",
            f"{scores.score_seconds.get(m, 0.0):.2f}",
        )
    table.add_row("tokenize", "", "", f"{scores.score_seconds.get('tokenize', 0.0):.2f}")
    ok = wall < GOAL_S
    colour = "green" if ok else "red"
    table.add_row(
        f"[bold]scoring wall[/bold] (goal < {GOAL_S:.0f} s)", "", "", f"[bold {colour}]{wall:.2f}[/]"
    )
    table.add_section()
    for name, secs in load.items():
        table.add_row(f"load: {name}", "", "", f"{secs:.2f}")
    table.add_row("load: imports (torch, mulcot)", "", "", f"{import_s:.2f}")
    console.print(table)
    console.print(
        f"Sim embedded {distinct_texts} distinct texts (preds and refs share them here; with distinct "
        f"references it would embed twice as many). Load average now: {os.getloadavg()[0]:.2f}"
    )
    for m, why in scores.unavailable.items():
        console.print(f"[yellow]{m}: {why}[/yellow]")
    if cache_runs:
        cache_table = Table(title=f"embedding cache {cache_runs[0].get('dir')}")
        for col in ("run", "scoring wall s", "sim s", "texts cached", "texts embedded"):
            cache_table.add_column(col, justify="left" if col == "run" else "right")
        for r in cache_runs:
            cache_table.add_row(r["run"], f"{r['scoring_wall_s']:.2f}", f"{r['sim_s']:.2f}", str(r.get("cached")),
                                str(r.get("embedded")))
        console.print(cache_table)

    if args.json:
        result = {
            "benchmark": "eval_metrics",
            "data": str(args.data),
            "n": len(chains),
            "identical_pairs_after_shuffle": same,
            "distinct_texts_embedded": distinct_texts,
            "load_average_1m": os.getloadavg()[0],
            "threads": args.threads,
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "torch": torch.__version__,
            "scoring_wall_s": wall,
            "goal_s": GOAL_S,
            "goal_met": ok,
            "load_s": {**load, "imports": import_s},
            "embedding_cache_runs": cache_runs,
            "scores": scores.to_dict(),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
