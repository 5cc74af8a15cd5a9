"""Benchmark: does a SmolLM2 student trained with image captions use them? Modality probes (``mulcot eval --probe``)
on real weights (issue 30).

PROTOCOL (fixed before running):

- Data: the 1,037 Twitter-2015 test posts that carry the MulCoT-RD authors' teacher chains
  (``../shared/data/mulcot-rd/t15-test.json``, imported with their images). Whole tweets (posts sharing an image)
  are shuffled with seed 0; the first ``--report`` posts form the report split, the rest the training split.
- Captions: text-only SmolLM2 reads an image as its caption. Here a post's caption is the first sentence of the
  teacher chain's ``Image_analysis`` field (e.g. "The image is a meme featuring the character Ron Swanson from
  'Parks and Recreation.'"), stored with ``Store.set_caption``. Caveat: the teacher wrote it while analysing the
  post, and stage-2 chains were written knowing the gold label, so a caption may carry sentiment a neutral
  captioner would not (``annotate --captions`` asks a teacher for a caption of the image alone).
- Two datasets in one store, the same posts: ``t15cap`` (captioned) and ``t15`` (no captions).
- Models: SmolLM2-135M-Instruct trained label-only (the paper's "w/o CoT": λ_cls 1, λ_rea 0) on the training
  split's D_t, one epoch, lr 1e-3, batch 2 × 2, warm-up 10 — the learning benchmark's settings, chosen on its
  tuning set; nothing is chosen here. ``smol-cap`` on ``t15cap``, ``smol-nocap`` on ``t15``.
- Scoring: the label head by forced choice on the report posts, intact and under each probe (image-blank: no
  caption; image-swap: another tweet's caption, a fixed derangement; text-drop: the aspect and the caption only).
  Per probe: ΔAcc and Δm-F1 with paired bootstrap 95 % CIs resampling whole tweets, exact McNemar p, share of
  answers changed, mean total-variation shift of the probabilities. Also ``smol-cap`` vs ``smol-nocap`` on the
  same posts (paired by post key). Per-post rows go to ``bench/results/probes/``.

    PYTHONPATH=. HF_HUB_OFFLINE=1 .venv/bin/python bench/probes.py --work /tmp/probes-bench \\
        --json bench/results/probes.json
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
PROBE_NAMES = ("image-blank", "image-swap", "text-drop")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def progress(event: Any) -> None:
    data = event.data
    if event.stage == "train" and "loss" in data and (data.get("step", 0) % 20 == 0 or event.done == event.total):
        log(f"train step {data.get('step')}/{event.total}: loss {data['loss']:.4f}")


def first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s", text.strip())[0]


def prepare(store: Any, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Both datasets: the same train / report posts, with and without captions."""
    from mulcot.core.reasoning import parse_reasoning
    from mulcot.datasets.importer import import_dataset

    items = json.loads((args.data / "mulcot-rd" / "t15-test.json").read_text(encoding="utf-8"))
    tweets: dict[str, list[dict]] = {}
    for item in items:
        tweets.setdefault(str(item.get("image_id") or item["id"]), []).append(item)
    order = list(tweets)
    random.Random(args.seed).shuffle(order)
    report: list[dict] = []
    train: list[dict] = []
    for key in order:
        (report if len(report) < args.report else train).extend(tweets[key])
    folder = work / "data"
    folder.mkdir(parents=True, exist_ok=True)
    captions: dict[str, str] = {}
    for item in items:
        image = parse_reasoning(item["cot"]).fields.get("Image_analysis")
        if image:
            captions[str(item["id"])] = first_sentence(image)
    for split, part in (("train", train), ("report", report)):
        path = folder / f"{split}.json"
        path.write_text(json.dumps(part), encoding="utf-8")
        for name in ("t15cap", "t15"):
            if not store.samples(name, split):
                import_dataset(store, "mulcot-json", path, name=name, split=split,
                               images=args.data / "twitter2015" / "images")
    set_count = 0
    for sample in store.samples("t15cap"):
        caption = captions.get(sample["key"].split(":")[-1]) or captions.get(sample["key"])
        if caption and (sample.get("meta") or {}).get("caption") != caption:
            store.set_caption(sample["id"], caption, {"from": "teacher chain Image_analysis, first sentence"})
            set_count += 1
    captioned = sum(bool((s.get("meta") or {}).get("caption")) for s in store.samples("t15cap"))
    return {"train": len(store.samples("t15", "train")), "report": len(store.samples("t15", "report")),
            "train_dt": len(store.teacher_set("t15", "train")), "captioned": captioned, "captions_set_now": set_count}


def train(store: Any, smol: Path, dataset: str, name: str, args: argparse.Namespace) -> dict[str, Any]:
    from mulcot.train.assistant import train_assistant
    from mulcot.train.config import TrainConfig

    run = store.get_run(name)
    if run is not None and run["status"] == "done":
        return {"reused": True}
    log(f"training {name} on {dataset}")
    config = TrainConfig(dataset=dataset, model=str(smol), name=name, runs_dir=str(args.work / "runs"),
                         split="train", dev_split=None, task_weights=(1.0, 0.0), batch_size=2, grad_accum=2,
                         lr=1e-3, epochs=1, warmup_steps=10, seed=0)
    res = train_assistant(store, config, resume=run is not None, progress=progress)
    return {"train_s": round(res.wall_s, 1), "steps": res.steps, "train_loss": res.train_loss}


def evaluate_model(store: Any, dataset: str, name: str, probes: list[str], args: argparse.Namespace) -> Any:
    from mulcot.evaluate import EvalConfig, evaluate

    log(f"scoring {name} on {dataset}/report (probes: {', '.join(probes) or 'none'})")
    return evaluate(store, EvalConfig(dataset=dataset, split="report", model=str(args.work / "runs" / name),
                                      max_chains=0, probes=probes or None, runs_dir=str(args.work / "runs"),
                                      out=str(args.work / "eval" / f"{name}-{dataset}"), batch_size=8))


def save_posts(store: Any, result_id: int, path: Path) -> None:
    rows = store.eval_posts(result_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["key", "gold", "prediction", "p_positive", "p_neutral", "p_negative"])
        for r in rows:
            w.writerow([r["key"], r["gold"], r["prediction"], r["p_positive"], r["p_neutral"], r["p_negative"]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--report", type=int, default=300, help="report posts (whole tweets)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()

    import torch

    from mulcot.evaluate.posts import post_clusters
    from mulcot.metrics.paired import paired_comparison
    from mulcot.models.smollm2 import cached_dir
    from mulcot.store import Store

    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    store = Store.open(args.work / "mulcot.db")
    smol = cached_dir()
    out: dict[str, Any] = {"protocol": __doc__.split("PROTOCOL (fixed before running):")[1].split("\n\n    ")[0],
                           "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                                       "torch": torch.__version__}}
    out["data"] = prepare(store, args.work, args)
    log(f"data: {out['data']}")
    timings: dict[str, float] = {}
    out["training"] = {}
    for dataset, name in (("t15cap", "smol-cap"), ("t15", "smol-nocap")):
        t0 = time.perf_counter()
        out["training"][name] = train(store, smol, dataset, name, args)
        timings[f"train {name}"] = round(time.perf_counter() - t0, 1)
    results = {}
    for dataset, name, probes in (("t15cap", "smol-cap", list(PROBE_NAMES)), ("t15", "smol-nocap", ["text-drop"])):
        t0 = time.perf_counter()
        results[name] = evaluate_model(store, dataset, name, probes, args)
        timings[f"score {name}"] = round(time.perf_counter() - t0, 1)
    posts_dir = args.json.with_suffix("")
    out["results"] = {}
    for name, res in results.items():
        save_posts(store, res.id, posts_dir / f"{name}.csv")
        head = res.metrics["label"]
        row: dict[str, Any] = {"n": res.n, "accuracy": head["accuracy"], "macro_f1": head["macro_f1"],
                               "intervals": res.metrics["uncertainty"].get("intervals"),
                               "vs_majority": (res.metrics["uncertainty"].get("majority") or {}).get("vs_model"),
                               "probes": {}}
        for p in res.probes:
            save_posts(store, p["id"], posts_dir / f"{name}@{p['name']}.csv")
            row["probes"][p["name"]] = {k: p[k] for k in ("n", "accuracy", "macro_f1", "changed", "probability_shift",
                                                          "inputs_changed", "comparison")}
        out["results"][name] = row
    # the captioned student against the uncaptioned one, the same posts paired by key
    cap = {r["key"]: r for r in store.eval_posts(results["smol-cap"].id)}
    nocap = {r["key"]: r for r in store.eval_posts(results["smol-nocap"].id)}
    keys = sorted(set(cap) & set(nocap))
    samples = {s["key"]: s for s in store.samples("t15", "report")}
    clusters = post_clusters(store.samples("t15", "report"))
    out["cap_vs_nocap"] = paired_comparison([cap[k]["gold"] for k in keys], [nocap[k]["prediction"] for k in keys],
                                            [cap[k]["prediction"] for k in keys],
                                            clusters=[clusters[samples[k]["id"]] for k in keys])
    out["timings_s"] = timings
    out["wall_s"] = round(time.perf_counter() - began, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")
    print_table(out)


def print_table(out: dict[str, Any]) -> None:
    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    print("| model | inputs | n | Acc | m-F1 | ΔAcc vs intact [95% CI] | McNemar p | answers changed | p shift |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, row in out["results"].items():
        print(f"| {name} | intact | {row['n']} | {pct(row['accuracy'])} | {pct(row['macro_f1'])} | | | | |")
        for probe, p in row["probes"].items():
            acc = p["comparison"]["bootstrap"]["accuracy"]
            print(f"| {name} | {probe} | {p['n']} | {pct(p['accuracy'])} | {pct(p['macro_f1'])} | "
                  f"{100 * acc['diff']:+.1f} [{100 * acc['low']:+.1f}, {100 * acc['high']:+.1f}] | "
                  f"{p['comparison']['mcnemar']['p_value']:.2g} | {pct(p['changed'])} % | "
                  f"{p['probability_shift']:.3f} |")
    c = out["cap_vs_nocap"]
    acc = c["bootstrap"]["accuracy"]
    print(f"\nsmol-cap − smol-nocap: ΔAcc {100 * acc['diff']:+.1f} [{100 * acc['low']:+.1f}, {100 * acc['high']:+.1f}],"
          f" McNemar p {c['mcnemar']['p_value']:.2g}, n {c['n']}")
    print(f"timings (s): {out['timings_s']}; wall {out['wall_s']} s")


if __name__ == "__main__":
    main()
