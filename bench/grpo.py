"""Benchmark: does ``mulcot grpo`` move a real model the way its rewards say? SmolLM2-135M-Instruct (real weights,
text only), starting from the learning benchmark's soft-label student (``smol-student-soft-s0``, Twitter-2015).

PROTOCOL (fixed before running; the README repeats it):

- Start: the learning benchmark's store and run, copied into ``--work`` (``/tmp/learning`` is only read).
- GRPO: ``--steps`` optimizer steps on the student's own training posts (split ``train``, the first ``--prompts``),
  one prompt per step, ``--group`` chains per prompt at temperature 1, at most ``--max-new-tokens`` tokens each, β
  0.04, lr ``--lr``, the default reward weights (label correct 1, five fields parse 0.5, agrees with the label head
  0.5). Everything goes through ``mulcot.train.grpo.grpo`` as ``mulcot grpo`` runs it.
- Measured before and after, on the tuning posts only (split ``tune``: 150 dev posts; the report posts are not
  touched): the label head by forced choice on all 150 (accuracy; paired exact McNemar and tweet-clustered paired
  bootstrap 95 % CI of the difference — ``mulcot.metrics.paired.paired_comparison``, what ``mulcot eval compare``
  shows); and on the first ``--reward-posts`` of them one greedy chain each (P_cot, ``--max-new-tokens`` tokens),
  scored with the training rewards against the same model's label head (mean reward and each component; paired
  bootstrap 95 % CI of the mean difference over posts).
- Per-post rows under ``bench/results/grpo/`` (CSV), the summary in ``bench/results/grpo.json``.

    PYTHONPATH=. HF_HUB_OFFLINE=1 .venv/bin/python bench/grpo.py --work /tmp/grpo-bench --json bench/results/grpo.json

SECOND ARM (fixed before running it, after the first came out negative with 97 % of its samples clipped at 96
tokens and one post per step): the same protocol, with the two causes the first run's log points to removed —
temperature 0.7 (the student's greedy chains end within 96 tokens 78 % of the time; at temperature 1 its samples
ramble), 160 new tokens, and 2 posts per step (``--batch 2``: 8 chains per step, groups still of 4). 24 steps, lr
1e-4, β 0.04 as before. Hypothesis: fewer clipped samples, a label reward that varies within groups, and the greedy
chains' mean reward rising without the label head falling. Results in ``bench/results/grpo-t07.json`` and
``bench/results/grpo-t07/``; the first arm's files stay as they were.

    PYTHONPATH=. HF_HUB_OFFLINE=1 .venv/bin/python bench/grpo.py --work /tmp/grpo-bench-t07 --temperature 0.7 \
        --max-new-tokens 160 --batch 2 --results bench/results/grpo-t07 --json bench/results/grpo-t07.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

DATASET, TUNE, START = "t15", "tune", "smol-student-soft-s0"
LABELS = ("positive", "neutral", "negative")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def setup(source: Path, work: Path) -> Path:
    """The learning benchmark's store (a consistent copy, through SQLite's backup) and the starting run's folder
    under ``work``; returns the copied run folder."""
    work.mkdir(parents=True, exist_ok=True)
    db = work / "mulcot.db"
    if not db.exists():
        with sqlite3.connect(source / "mulcot.db") as src, sqlite3.connect(db) as dst:
            src.backup(dst)
    start = work / "start" / START
    if not start.exists():
        shutil.copytree(source / "runs" / START / "adapter", start / "adapter")
    return start


def measure(store: Any, run: Path, items: list[Any], reward_posts: int, max_new_tokens: int) -> list[dict[str, Any]]:
    """Per tuning post: gold, the label head's forced choice and probabilities; for the first ``reward_posts`` also
    the greedy chain, its prediction and its rewards against that label head."""
    from mulcot.core.refs import resolve_run
    from mulcot.generation.choice import score_labels
    from mulcot.generation.hf import GenerationConfig, generate
    from mulcot.models import load_model
    from mulcot.models.loading import load_with_adapter
    from mulcot.train import rewards

    ref = resolve_run(store, run)
    base, processor, _ = load_model(ref.base_model, device="cpu")
    model = load_with_adapter(base, ref.adapter)
    task = store.require_dataset(DATASET)["task"]
    began = time.perf_counter()
    heads = score_labels(model, processor, items, task, batch_size=16)
    log(f"{run.name}: {len(items)} label heads in {time.perf_counter() - began:.0f} s")
    began = time.perf_counter()
    chains = generate(model, processor, items[:reward_posts], "cot", task,
                      GenerationConfig(max_new_tokens=max_new_tokens, batch_size=16))
    log(f"{run.name}: {reward_posts} chains in {time.perf_counter() - began:.0f} s")
    rows = []
    for i, (item, head) in enumerate(zip(items, heads, strict=True)):
        row = {"sample_id": item.sample_id, "gold": item.label, "label_head": head.prediction,
               **{f"p_{lab}": round(head.probabilities[lab], 6) for lab in LABELS}}
        if i < reward_posts:
            text = chains[i][0]
            row.update(chain_prediction=rewards.chain_prediction(text),
                       label_correct=rewards.label_correct_score(text, item.label),
                       fields_parse=rewards.fields_parse_score(text),
                       agrees_with_label_head=rewards.agreement_score(text, head.prediction),
                       reward=rewards.total(text, item.label, head.prediction), chain=text)
        rows.append(row)
    return rows


def mean_ci(diffs: list[float], n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean of paired differences and its percentile bootstrap 95 % interval (posts resampled)."""
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(diffs) for _ in diffs) / len(diffs) for _ in range(n_boot))
    return {"mean": sum(diffs) / len(diffs), "low": means[int(0.025 * n_boot)], "high": means[int(0.975 * n_boot) - 1]}


def compare(store: Any, before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, Any]:
    from mulcot.metrics.paired import paired_comparison, post_clusters

    samples = {s["id"]: s for s in store.samples(DATASET, TUNE)}
    cluster = post_clusters(samples[r["sample_id"]] for r in before)
    label = paired_comparison([r["gold"] for r in before], [r["label_head"] for r in before],
                              [r["label_head"] for r in after], clusters=[cluster[r["sample_id"]] for r in before],
                              n_boot=2000, seed=0)
    scored = [(a, b) for a, b in zip(before, after, strict=True) if "reward" in a]
    out = {"label_head": label, "n_label": len(before), "n_reward": len(scored),
           "accuracy_before": sum(r["gold"] == r["label_head"] for r in before) / len(before),
           "accuracy_after": sum(r["gold"] == r["label_head"] for r in after) / len(after)}
    for key in ("reward", "label_correct", "fields_parse", "agrees_with_label_head"):
        out[key] = {"before": sum(a[key] for a, _ in scored) / len(scored),
                    "after": sum(b[key] for _, b in scored) / len(scored),
                    "difference": mean_ci([b[key] - a[key] for a, b in scored])}
    return out


def clipped_share(log: Path) -> dict[str, float]:
    """From the run's log: the share of sampled chains cut at the token limit (mean over steps), and of steps where
    every chain was cut."""
    steps = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    clipped = [s["completions/clipped_ratio"] for s in steps if "completions/clipped_ratio" in s]
    if not clipped:
        return {}
    return {"mean": round(sum(clipped) / len(clipped), 3),
            "steps_all_clipped": round(sum(c == 1.0 for c in clipped) / len(clipped), 3)}


def save(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, default=Path("/tmp/learning"), help="The learning benchmark's work folder.")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature of GRPO's chains.")
    p.add_argument("--batch", type=int, default=1, help="Training posts per GRPO step.")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--reward-posts", type=int, default=50)
    p.add_argument("--results", type=Path, default=Path("bench/results/grpo"))
    p.add_argument("--json", type=Path, default=Path("bench/results/grpo.json"))
    args = p.parse_args(argv)

    from mulcot.core.inputs import sample_item
    from mulcot.store import Store
    from mulcot.train.config import RLConfig
    from mulcot.train.grpo import grpo

    began = time.perf_counter()
    start = setup(args.source, args.work)
    store = Store.open(args.work / "mulcot.db")
    items = [sample_item(s) for s in store.samples(DATASET, TUNE) if s["label"]]
    timings: dict[str, float] = {}
    t = time.perf_counter()
    before = measure(store, start, items, args.reward_posts, args.max_new_tokens)
    timings["measure_before_s"] = time.perf_counter() - t
    save(before, args.results / "before.csv")
    cfg = RLConfig(dataset=DATASET, model=str(start), name="grpo-smol", runs_dir=str(args.work / "runs"),
                   steps=args.steps, group_size=args.group, max_new_tokens=args.max_new_tokens,
                   max_prompts=args.prompts, lr=args.lr, temperature=args.temperature, batch_size=args.batch,
                   device="cpu")
    t = time.perf_counter()
    resume = store.get_run(cfg.name) is not None
    result = grpo(store, cfg, resume=resume)
    timings["grpo_s"] = time.perf_counter() - t
    log(f"GRPO: {result.steps} steps in {timings['grpo_s']:.0f} s; last {result.best}")
    t = time.perf_counter()
    after = measure(store, Path(result.folder), items, args.reward_posts, args.max_new_tokens)
    timings["measure_after_s"] = time.perf_counter() - t
    save(after, args.results / "after.csv")
    shutil.copy(Path(result.folder) / "log.jsonl", args.results / "log.jsonl")
    summary = {"config": {k: v for k, v in vars(args).items() if k not in ("source", "work", "results", "json")},
               "start": START, "comparison": compare(store, before, after), "last_step": result.best,
               "clipped_share": clipped_share(args.results / "log.jsonl"),
               "timings_s": {k: round(v, 1) for k, v in timings.items()},
               "wall_s": round(time.perf_counter() - began, 1),
               "machine": {"cpus": os.cpu_count(), "load_average_1_5_15_at_end": list(os.getloadavg())}}
    args.json.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    c = summary["comparison"]
    print(f"label head accuracy on {c['n_label']} tuning posts: {c['accuracy_before']:.3f} -> "
          f"{c['accuracy_after']:.3f}; mean reward on {c['n_reward']}: {c['reward']['before']:.3f} -> "
          f"{c['reward']['after']:.3f}; {summary['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
