"""Benchmark: does training through mulcot help? SmolLM2-135M-Instruct (real weights, text only) on Twitter-2015,
trained by mulcot on the MulCoT-RD authors' teacher chains, scored on dev posts by forced choice.

PROTOCOL (fixed before running; the README repeats it):

- Data. The authors' chains cover the 1,037 Twitter-2015 *test* posts: they are this benchmark's training data
  (split ``train``), less whole held-out tweets (split ``heldout``) whose chains are the references of the chain
  metrics. Every chain field is cut to its first sentence (training cost on 2 cores is dominated by chain length).
  ``--train N`` posts are used (the same N posts, in the same seeded order, for every arm).
- Tuning set: the 150 dev posts the earlier benchmark used (``dev.tsv`` rows shuffled with seed 0, the first 150).
  Every choice was and is made there: λ_cls 0.8 over the paper's 0.2 (the earlier benchmark, one seed each, on
  these posts), lr 1e-3, one epoch, k = 32 soft labels, λ 0.3, warm-up 10 steps, the best assistant for the students.
- Report set: the other 972 dev posts, scored once per final model. Nothing is chosen on it.
- Scoring: the label head by forced choice (``predict --label --label-scoring choice``: the three label answers'
  log-probabilities, normalised), one prediction and three probabilities per post, saved per post under
  ``bench/results/learning/`` (CSV) so every figure can be recomputed elsewhere.
- Arms: majority (the training split's most frequent label); zero-shot; label-only (the paper's "w/o CoT",
  λ_cls 1, λ_rea 0); multi-task (λ_cls 0.8, λ_rea 0.2); the student distilled with soft labels (λ 0.3, cached
  top-32) from the best multi-task assistant (by tuning-set accuracy) on D_t ∪ D_a; the same student with hard
  labels only (λ 0) on the same D_t ∪ D_a; "w/o Asst" is a student trained on D_t alone — with one model size here
  (assistant and student are both SmolLM2-135M) that is the multi-task arm itself, and the table says so. Seeds: at
  least 3 for label-only and multi-task (``label-only@0,label-only@1,…``).
- Statistics (``--report``): per arm and seed, accuracy, macro-F1, balanced accuracy, per-class recall, macro
  AUROC, ECE; exact McNemar against the majority on the report set; mean ± sd over seeds; paired, tweet-clustered
  bootstrap 95 % CIs of the accuracy and macro-F1 differences for each of the paper's claims (multi-task vs
  label-only, soft vs hard, with vs without D_a), seed by seed.
- Amendment, made after the first six arms (majority, zero-shot, label-only@0-2, multitask@0) were scored and
  before any other: a second decision rule beside the raw argmax. The raw cut-offs between labels move from seed to
  seed (label-only answered neutral for 65 %, 93 % and 100 % of the neutral posts with macro AUROC 79 every time;
  multitask@0 answered positive for most posts, tuning accuracy 37 %), so each model's probabilities are
  recalibrated on the 150 tuning posts by bias-corrected temperature scaling (``mulcot.metrics.calibration.
  fit_label_bias``: a temperature and two label offsets, minimum log loss) and applied unchanged to the report
  posts. Both rules are reported for every arm; the students' assistant is chosen by tuning accuracy under the
  recalibrated rule.

Everything goes through the library as a user would (import, train-assistant, expand, distill, predict with forced
choice); this file only orchestrates and tabulates. It takes hours on 2 cores: arms are added to one results file
(``--add``), which is committed after each arm.

    PYTHONPATH=. HF_HUB_OFFLINE=1 .venv/bin/python bench/learning.py --work /tmp/learning \\
        --arms majority,zero-shot,label-only@0,multitask@0 [--train 400] --json bench/results/learning.json
    ... --add --arms label-only@1,multitask@1        # later: more arms into the same store and results
    ... --report                                     # statistics and the table from what is there
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
DATASET = "t15"
LABELS = ("positive", "neutral", "negative")
TUNE, REPORT = "tune", "report"
WEIGHTS = {"label-only": (1.0, 0.0), "multitask": (0.8, 0.2)}
TITLES = {"majority": "majority", "zero-shot": "SmolLM2 zero-shot", "label-only": "label-only (w/o CoT)",
          "multitask": "multi-task λ_cls 0.8", "student-soft": "student, soft labels λ 0.3",
          "student-hard": "student, hard labels (λ 0)"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def progress(event: Any) -> None:
    data = event.data
    if event.stage == "train" and "loss" in data and (data.get("step", 0) % 10 == 0 or event.done == event.total):
        log(f"train step {data.get('step')}/{event.total}: loss {data['loss']:.4f} "
            f"lr {data.get('learning_rate', 0):.2e}")
    elif event.stage != "train" and event.done is not None and event.total and (
        event.done % 100 == 0 or event.done == event.total
    ):
        log(f"{event.stage} {event.message or ''} {event.done}/{event.total}")


# ------------------------------------------------------------------------------------------------------ data


def short_chain(cot: str) -> str:
    """A teacher chain in the canonical five-field form, each field cut to its first sentence."""
    from mulcot.core.reasoning import format_reasoning, parse_reasoning

    parsed = parse_reasoning(cot)
    fields = {k: re.split(r"(?<=[.!?])\s", v.strip())[0] for k, v in parsed.fields.items() if k != "Prediction"}
    return format_reasoning({**fields, "Prediction": parsed.prediction})


def prepare(store: Any, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Import the tuning and report posts (dev) and the training / held-out chains into dataset ``t15``."""
    from mulcot.datasets.importer import import_dataset

    folder = work / "data"
    folder.mkdir(parents=True, exist_ok=True)
    lines = (args.data / "twitter2015" / "dev.tsv").read_text(encoding="utf-8").splitlines()
    rows = lines[1:]
    random.Random(0).shuffle(rows)  # the earlier benchmark's order: its first 150 posts are the tuning set
    for split, part in ((TUNE, rows[:150]), (REPORT, rows[150:])):
        (folder / f"{split}.tsv").write_text("\n".join([lines[0], *part]) + "\n", encoding="utf-8")
        import_dataset(store, "twitter-tsv", folder / f"{split}.tsv", name=DATASET, split=split, no_images=True)
    items = json.loads((args.data / "mulcot-rd" / "t15-test.json").read_text(encoding="utf-8"))
    tweets: dict[str, list[dict]] = {}
    for item in items:
        tweets.setdefault(str(item.get("image_id") or item["id"]), []).append(item)
    order = list(tweets)
    random.Random(args.seed).shuffle(order)
    heldout: list[dict] = []
    train: list[dict] = []
    for key in order:
        (heldout if len(heldout) < args.heldout else train).extend(tweets[key])
    train = train[: args.train]
    for split, part in (("train", train), ("heldout", heldout)):
        path = folder / f"chains-{split}.json"
        path.write_text(json.dumps([{**it, "cot": short_chain(it["cot"])} for it in part]), encoding="utf-8")
        import_dataset(store, "mulcot-json", path, name=DATASET, split=split, no_images=True)
    return {split: len(store.samples(DATASET, split)) for split in (TUNE, REPORT, "train", "heldout")} | {
        "train_chains_dt": len(store.teacher_set(DATASET, "train"))}


# --------------------------------------------------------------------------------------------------- arms


def train_config(cls: type, smol: Path, name: str, weights: tuple[float, float], seed: int,
                 args: argparse.Namespace, **extra: Any) -> Any:
    return cls(dataset=DATASET, model=str(smol), name=name, runs_dir=str(args.work / "runs"), split="train",
               dev_split=None, task_weights=weights, batch_size=args.batch_size, grad_accum=args.grad_accum,
               lr=args.lr, epochs=args.epochs, warmup_steps=args.warmup, seed=seed, **extra)


def train_arm(store: Any, smol: Path, kind: str, seed: int, args: argparse.Namespace,
              result: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Train one arm; returns the run name and what the training did."""
    from mulcot.train.assistant import train_assistant
    from mulcot.train.config import DistillConfig, TrainConfig
    from mulcot.train.student import distill

    name = f"smol-{kind}-s{seed}"
    resume = store.get_run(name) is not None and store.get_run(name)["status"] != "done"
    if store.get_run(name) is not None and not resume:
        return name, {}
    if kind in WEIGHTS:
        log(f"training {name}")
        res = train_assistant(store, train_config(TrainConfig, smol, name, WEIGHTS[kind], seed, args), resume=resume,
                              progress=progress)
        return name, {"train_s": round(res.wall_s, 1), "steps": res.steps, "train_loss": res.train_loss}
    assistant = best_assistant(result, posts_dir(args.json))
    expanded = expand_with(store, assistant, args, result)
    lam = args.lam if kind == "student-soft" else 0.0
    log(f"distilling {name} from {assistant} (λ {lam})")
    config = train_config(DistillConfig, smol, name, WEIGHTS["multitask"], seed, args,
                          assistant=str(args.work / "runs" / assistant), lam=lam, top_k=args.top_k)
    res = distill(store, config, resume=resume, progress=progress)
    return name, {"train_s": round(res.wall_s, 1), "steps": res.steps, "train_loss": res.train_loss,
                  "assistant": assistant, "lam": lam, "expand": expanded}


def best_assistant(result: dict[str, Any], folder: Path) -> str:
    """The multi-task run with the best tuning-set accuracy under the recalibrated decision rule (ties:
    macro-F1, then the lower seed)."""
    runs = []
    for name, row in result["arms"].items():
        if row.get("kind") == "multitask":
            tune = metrics_of(recalibrate(load_posts(folder, name.replace("@", "-s")))[1][TUNE])
            runs.append((tune["accuracy"], tune["macro_f1"], -row["seed"], row["run"]))
    if not runs:
        raise SystemExit("the students need a multi-task arm first (e.g. --arms multitask@0)")
    return max(runs)[3]


def expand_with(store: Any, assistant: str, args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    """D_a: one sampled chain per training post from the assistant (once; both students share it)."""
    from mulcot.expand import ExpandConfig, expand

    done = result.setdefault("expand", {})
    if done.get("assistant") == assistant:
        return done
    log(f"expanding the training posts with {assistant}")
    summary = expand(store, ExpandConfig(dataset=DATASET, assistant=str(args.work / "runs" / assistant),
                                         max_new_tokens=args.chain_tokens, batch_size=8, seed=args.seed),
                     progress=progress)
    result["expand"] = {"assistant": assistant, "d_a": summary.assistant_set, "generated": summary.generated,
                        "assistant_train_accuracy": summary.accuracy, "unparsed": summary.unparsed,
                        "expand_s": round(summary.wall_s, 1)}
    return result["expand"]


def score(store: Any, model: str | Path, run_id: str, limit: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """The label head by forced choice on the tuning and report posts (``predict --dataset --label
    --label-scoring choice``); per split, one row per post: key, gold, prediction, the three probabilities."""
    from mulcot.generation import PredictConfig, open_backend
    from mulcot.predict import predict_dataset

    out = {}
    with open_backend("hf", model=str(model), config=PredictConfig(batch_size=16), store=store) as backend:
        for split in (TUNE, REPORT):
            began = time.perf_counter()
            predict_dataset(store, backend, DATASET, split, prompts=("label",), label_scoring="choice",
                            run_id=f"{run_id}-{split}", limit=limit, progress=progress)
            rows = [r for r in store.reasonings(dataset=DATASET, split=split, source=backend.source, stage="label",
                                                final_only=True) if r["model"] == backend.name]
            keys = {s["id"]: s["key"] for s in store.samples(DATASET, split)}
            out[split] = [{"key": keys[r["sample_id"]], "sample_id": r["sample_id"], "gold": r["gold"],
                           "prediction": r["prediction"],
                           **{f"p_{lab}": (r["fields"] or {}).get("probabilities", {}).get(lab) for lab in LABELS}}
                          for r in rows]
            log(f"{run_id} {split}: {len(rows)} posts scored in {time.perf_counter() - began:.0f} s")
    return out


def constant(store: Any, label: str, limit: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """A model that always answers ``label`` (probability 1)."""
    return {split: [{"key": s["key"], "sample_id": s["id"], "gold": s["label"], "prediction": label,
                     **{f"p_{lab}": float(lab == label) for lab in LABELS}}
                    for s in store.samples(DATASET, split)[:limit]]
            for split in (TUNE, REPORT)}


# ---------------------------------------------------------------------------------------------- statistics


def metrics_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy, F1s, balanced accuracy, per-class recall and, with probabilities, AUROC and ECE."""
    from mulcot.metrics import classification_metrics
    from mulcot.metrics.calibration import probability_metrics

    gold = [r["gold"] for r in rows]
    m = classification_metrics(gold, [r["prediction"] for r in rows])
    out = {"n": len(rows), "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "weighted_f1": m["weighted_f1"],
           "balanced_accuracy": m.get("balanced_accuracy"),
           "recall": {lab: m.get("per_label", {}).get(lab, {}).get("recall") for lab in LABELS},
           "answers": dict(Counter(r["prediction"] for r in rows))}
    probs = [{lab: r[f"p_{lab}"] for lab in LABELS} for r in rows]
    if all(all(isinstance(p[lab], float) for lab in LABELS) for p in probs):
        pm = probability_metrics(gold, probs)
        out.update(auroc=pm.get("auroc_macro_ovr"), ece=pm.get("ece"))
    return out


def posts_dir(results: Path) -> Path:
    """Where the per-post files of a results file go: a folder named after it (``learning.json`` → ``learning/``)."""
    return results.parent / results.stem


def save_posts(folder: Path, name: str, posts: dict[str, list[dict[str, Any]]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["split", "post_id", "gold", "prediction", *(f"p_{lab}" for lab in LABELS)])
        for split, rows in posts.items():
            for r in rows:
                w.writerow([split, r["key"], r["gold"], r["prediction"],
                            *("" if r[f"p_{lab}"] is None else f"{r[f'p_{lab}']:.6f}" for lab in LABELS)])
    return path


def load_posts(folder: Path, name: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    with (folder / f"{name}.csv").open(encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            out.setdefault(r["split"], []).append({"key": r["post_id"], "gold": r["gold"],
                                                   "prediction": r["prediction"] or None,
                                                   **{f"p_{lab}": float(r[f"p_{lab}"]) if r[f"p_{lab}"] else None
                                                      for lab in LABELS}})
    return out


def compare(folder: Path, a: str, b: str, store: Any, split: str = REPORT,
            rows: dict[str, dict[str, list[dict[str, Any]]]] | None = None) -> dict[str, Any]:
    """B against A on the same posts: exact McNemar, tweet-clustered paired bootstrap, agreement. ``rows`` gives
    an arm's posts in place of its file (the recalibrated decisions)."""
    from mulcot.metrics.paired import paired_comparison, post_clusters

    rows = rows or {}
    pa, pb = ({r["key"]: r for r in (rows.get(x) or load_posts(folder, x))[split]} for x in (a, b))
    keys = sorted(set(pa) & set(pb))
    samples = {s["key"]: s for s in store.samples(DATASET, split)}
    cluster = post_clusters(samples[k] for k in keys)
    return paired_comparison([pa[k]["gold"] for k in keys], [pa[k]["prediction"] for k in keys],
                             [pb[k]["prediction"] for k in keys], clusters=[cluster[samples[k]["id"]] for k in keys],
                             n_boot=2000, seed=0)


def recalibrate(posts: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """The second decision rule: bias-corrected temperature scaling fitted on the tuning posts' probabilities
    (``mulcot.metrics.calibration.fit_label_bias``), applied unchanged to every split; each post's prediction is
    the argmax of its recalibrated probabilities."""
    from mulcot.metrics.calibration import apply_label_bias, fit_label_bias

    def probs(rows: list[dict[str, Any]]) -> list[list[float]]:
        return [[r[f"p_{lab}"] for lab in LABELS] for r in rows]

    fit = fit_label_bias([r["gold"] for r in posts[TUNE]], probs(posts[TUNE]))
    out = {}
    for split, rows in posts.items():
        new = apply_label_bias(probs(rows), fit)
        out[split] = [{**r, "prediction": max(LABELS, key=q.__getitem__), **{f"p_{lab}": q[lab] for lab in LABELS}}
                      for r, q in zip(rows, new, strict=True)]
    return fit, out


def report(store: Any, result: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Per-seed McNemar against the majority, mean ± sd over seeds, and the paired comparisons of the paper's
    claims (seed by seed, on the report set) — under each decision rule: the raw argmax (``argmax``) and the
    tuning-set recalibration (``bcts``, see :func:`recalibrate`; a constant arm keeps its answers)."""
    arms = result["arms"]
    majority = next((n for n, r in arms.items() if r["kind"] == "majority"), None)
    decided: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {"argmax": {}, "bcts": {}}
    fits: dict[str, Any] = {}
    for name, row in arms.items():
        posts = load_posts(folder, name)
        decided["argmax"][name] = posts
        if row["kind"] == "majority":
            decided["bcts"][name] = posts
        else:
            fits[name], decided["bcts"][name] = recalibrate(posts)

    def seeds(kind: str) -> dict[int, str]:
        return {r["seed"]: n for n, r in arms.items() if r["kind"] == kind}

    claims = {"CoT multi-task vs label-only": ("label-only", "multitask"),
              "soft vs hard labels (students)": ("student-hard", "student-soft"),
              "with vs without D_a (student hard on D_t ∪ D_a vs multi-task on D_t)":
                  ("multitask", "student-hard")}
    stats: dict[str, Any] = {"bcts_fit": fits}
    for rule, rows in decided.items():
        part: dict[str, Any] = {"metrics": {}, "vs_majority": {}, "by_kind": {}, "claims": {}}
        for name in arms:
            part["metrics"][name] = {split: metrics_of(rows[name][split]) for split in (TUNE, REPORT)}
            if majority and name != majority:
                part["vs_majority"][name] = compare(folder, majority, name, store, rows=rows)
        kinds: dict[str, list[str]] = {}
        for name, row in arms.items():
            kinds.setdefault(row["kind"], []).append(name)
        for kind, names in kinds.items():
            acc = [part["metrics"][n][REPORT]["accuracy"] for n in names]
            f1 = [part["metrics"][n][REPORT]["macro_f1"] for n in names]
            part["by_kind"][kind] = {"seeds": len(names), "accuracy_mean": statistics.mean(acc),
                                     "accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else None,
                                     "macro_f1_mean": statistics.mean(f1),
                                     "macro_f1_sd": statistics.stdev(f1) if len(f1) > 1 else None}
        for claim, (ka, kb) in claims.items():
            a, b = seeds(ka), seeds(kb)
            pairs = [(a[s], b[s]) for s in sorted(set(a) & set(b))]
            if not pairs and a and b and kb.startswith("student"):
                pairs = [(a[min(a)], b[s]) for s in sorted(b)]
            part["claims"][claim] = [{"a": x, "b": y, **compare(folder, x, y, store, rows=rows)} for x, y in pairs]
        # not one of the paper's claims, but what a user asks first: does the student keep its assistant's level?
        pairs = [(row["assistant"].removeprefix("smol-"), name) for name, row in arms.items()
                 if row["kind"].startswith("student") and row.get("assistant", "").removeprefix("smol-") in arms]
        part["claims"]["student vs its assistant (same size here)"] = [
            {"a": x, "b": y, **compare(folder, x, y, store, rows=rows)} for x, y in pairs]
        stats[rule] = part
    return stats


# ------------------------------------------------------------------------------------------------------ table


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def sd(v: float | None) -> str:
    return "" if v is None else f" ± {100 * v:.1f}"


def ci(i: dict[str, float]) -> str:
    return f"{100 * i['diff']:+.1f} [{100 * i['low']:+.1f}, {100 * i['high']:+.1f}]"


RULES = {"argmax": "decision: the raw argmax of the three forced-choice probabilities",
         "bcts": "decision: recalibrated on the tuning posts (bias-corrected temperature scaling, fitted per "
                 "model on the 150 tuning posts, then applied unchanged to the report posts)"}


def table(result: dict[str, Any]) -> str:
    s, stats = result["sizes"], result.get("stats", {})
    out = [f"tuning posts {s[TUNE]}, report posts {s[REPORT]} (dev); training posts {s['train']} "
           f"(D_t chains {s['train_chains_dt']}); label head by forced choice; values × 100 on the report set"]
    for rule, title in RULES.items():
        part = stats.get(rule)
        if not part:
            continue
        extra = " T / b_neu / b_neg |" if rule == "bcts" else ""
        out += ["", f"**{title}**", "",
                "| arm | seed | acc | macro-F1 | bal. acc | recall pos/neu/neg | AUROC | ECE | McNemar p vs majority | "
                f"tune acc | train |{extra}",
                "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"
                + (" ---: |" if extra else "")]
        for name, row in result["arms"].items():
            m = part["metrics"][name]
            r = m[REPORT]
            rec = "/".join(pct(r["recall"].get(lab)) for lab in LABELS)
            p = (part["vs_majority"].get(name) or {}).get("mcnemar", {}).get("p_value")
            train = f"{row['train_s'] / 60:.0f} min" if row.get("train_s") else "—"
            seed = "—" if row.get("seed") is None else row["seed"]
            fit = stats.get("bcts_fit", {}).get(name)
            cells = ""
            if extra:
                cells = (f" {fit['temperature']:.2f} / {fit['bias']['neutral']:+.2f} / {fit['bias']['negative']:+.2f} |"
                         if fit else " — |")
            out.append(f"| {TITLES.get(row['kind'], row['kind'])} | {seed} | {pct(r['accuracy'])} | "
                       f"{pct(r['macro_f1'])} | {pct(r.get('balanced_accuracy'))} | {rec} | {pct(r.get('auroc'))} | "
                       f"{pct(r.get('ece'))} | {'—' if p is None else f'{p:.2g}'} | {pct(m[TUNE]['accuracy'])} | "
                       f"{train} |{cells}")
        out += ["", "| arm | seeds | acc mean ± sd | macro-F1 mean ± sd |", "| --- | ---: | --- | --- |"]
        for kind, k in part["by_kind"].items():
            out.append(f"| {TITLES.get(kind, kind)} | {k['seeds']} | {pct(k['accuracy_mean'])}{sd(k['accuracy_sd'])}"
                       f" | {pct(k['macro_f1_mean'])}{sd(k['macro_f1_sd'])} |")
        for claim, comps in part["claims"].items():
            if not comps:
                out += ["", f"{claim}: not measured yet"]
                continue
            out += ["", f"{claim} (B − A, report set, tweet-clustered 95 % CI):", "",
                    "| A | B | Δ acc [CI] | Δ macro-F1 [CI] | McNemar p | agreement |",
                    "| --- | --- | --- | --- | ---: | ---: |"]
            for c in comps:
                b = c["bootstrap"]
                out.append(f"| {c['a']} | {c['b']} | {ci(b['accuracy'])} | {ci(b['macro_f1'])} | "
                           f"{c['mcnemar']['p_value']:.2g} | {pct(c['agreement'])} |")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="folder for the store, runs and exports")
    ap.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    ap.add_argument("--arms", default="", help="comma-separated: majority, zero-shot, KIND@SEED (label-only, "
                    "multitask, student-soft, student-hard)")
    ap.add_argument("--add", action="store_true", help="add arms to an earlier run's --work store and --json file")
    ap.add_argument("--report", action="store_true", help="compute the statistics and the table, then stop")
    ap.add_argument("--train", type=int, default=400, help="training posts (with teacher chains)")
    ap.add_argument("--heldout", type=int, default=40, help="held-out posts with teacher chains")
    ap.add_argument("--chain-tokens", type=int, default=160, help="token limit of a sampled chain (expand)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=10, help="warm-up optimizer steps")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--lam", type=float, default=0.3, help="soft student: λ, the KL term's weight")
    ap.add_argument("--top-k", type=int, default=32, help="students: cached soft labels per target position")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--seed", type=int, default=0, help="data order and expansion seed")
    ap.add_argument("--json", type=Path, required=True, help="the results file")
    ap.add_argument("--score-limit", type=int, default=None, help="smoke tests only: score the first N posts")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from mulcot.models.smollm2 import cached_dir
    from mulcot.store import Store

    began = time.perf_counter()
    if args.add or args.report:
        if not (args.json.exists() and (args.work / "mulcot.db").exists()):
            ap.error("--add / --report need the --work folder and the --json file of an earlier run")
        result: dict[str, Any] = json.loads(args.json.read_text())
        store = Store.open(args.work / "mulcot.db")
    else:
        if args.work.exists() and any(args.work.iterdir()):
            ap.error(f"--work {args.work} is not empty: give a fresh folder, or --add")
        args.work.mkdir(parents=True, exist_ok=True)
        store = Store.open(args.work / "mulcot.db")
        result = {"protocol": __doc__.split("PROTOCOL")[1].split("Everything goes")[0].strip(),
                  "sizes": prepare(store, args.work, args), "arms": {},
                  "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                               if k not in ("arms", "add", "report", "json", "work", "data")},
                  "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    log(f"sizes: {result['sizes']}")

    def save() -> None:
        result["wall_s"] = round(result.get("wall_s", 0.0) + time.perf_counter() - save.last, 1)
        save.last = time.perf_counter()
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))

    save.last = began  # type: ignore[attr-defined]
    smol = cached_dir()
    for spec in [a.strip() for a in args.arms.split(",") if a.strip()]:
        kind, _, seed_text = spec.partition("@")
        seed = int(seed_text or 0)
        name = kind if kind in ("majority", "zero-shot") else f"{kind}@{seed}"
        if name in result["arms"]:
            log(f"{name}: already measured")
            continue
        row: dict[str, Any] = {"kind": kind, "seed": seed if "@" in spec else None}
        if kind == "majority":
            label = Counter(s["label"] for s in store.samples(DATASET, "train")).most_common(1)[0][0]
            posts, row["label"] = constant(store, label, args.score_limit), label
        elif kind == "zero-shot":
            posts = score(store, smol, "bench-zero-shot", args.score_limit)
        elif kind in WEIGHTS or kind in ("student-soft", "student-hard"):
            run, trained = train_arm(store, smol, kind, seed, args, result)
            row.update(run=run, **trained)
            posts = score(store, args.work / "runs" / run, f"bench-{run}", args.score_limit)
        else:
            ap.error(f"unknown arm '{kind}'")
        saved = save_posts(posts_dir(args.json), name.replace("@", "-s"), posts)
        row["posts_file"] = str(saved.relative_to(ROOT) if saved.is_relative_to(ROOT) else saved)
        row.update({split: metrics_of(posts[split]) for split in (TUNE, REPORT)})
        result["arms"][name] = row
        log(f"{name}: tune acc {pct(row[TUNE]['accuracy'])}, report acc {pct(row[REPORT]['accuracy'])} "
            f"m-F1 {pct(row[REPORT]['macro_f1'])}")
        save()
    by_file = {n.replace("@", "-s"): r for n, r in result["arms"].items()}
    result["stats"] = report(store, {**result, "arms": by_file}, posts_dir(args.json))
    result["table"] = table({**result, "arms": by_file})
    save()
    print(result["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
