"""Distillation step: cached top-k soft labels vs a resident (online) assistant — peak RSS and samples/s.

A random-weight assistant/student pair of realistic relative size (``large`` ≈ 4× the parameters of ``medium``,
same Qwen2 vocabulary), LoRA on the student, real posts and teacher chains from the embedded sample. The cache is
built once in its own process (as ``mulcot distill`` does before training, after which the assistant leaves
memory); each mode's training steps then run in a fresh subprocess so that its peak RSS is its own.

    python bench/distill_memory.py [--steps 4] [--batch 2] [--top-k 32] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _random_models import save  # noqa: E402

STUDENT, ASSISTANT = "medium", "large"


def _setup(work: Path):
    from mulcot.core.inputs import teacher_items
    from mulcot.datasets import import_dataset
    from mulcot.sample import SAMPLE_DIR
    from mulcot.store import Store

    store = Store.open(work / "bench.db")
    if not store.get_dataset("s"):
        import_dataset(store, "twitter-tsv", SAMPLE_DIR, name="s")
        import_dataset(store, "mulcot-json", SAMPLE_DIR / "chains", name="s", images=SAMPLE_DIR / "images")
    return store, teacher_items(store, "s", "train")


def build_cache(work: Path, top_k: int, n_items: int) -> dict:
    import torch

    from mulcot.models import load_model
    from mulcot.train.collator import MultiTaskCollator
    from mulcot.train.soft_labels import build_soft_label_cache

    torch.set_num_threads(2)
    store, items = _setup(work)
    assistant, processor, _ = load_model(work / ASSISTANT)
    collator = MultiTaskCollator(processor, "masc")
    start = time.perf_counter()
    build_soft_label_cache(store, "bench", work / "soft_labels", assistant, collator, items[:n_items], top_k)
    size = sum(f.stat().st_size for f in (work / "soft_labels").glob("*.safetensors"))
    return {"cache_s": round(time.perf_counter() - start, 1), "cache_mb": round(size / 1e6, 1)}


def steps(work: Path, mode: str, n_steps: int, batch: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from mulcot.core.refs import RunRef
    from mulcot.models import load_model
    from mulcot.train.collator import MultiTaskCollator
    from mulcot.train.config import LANGUAGE_ONLY, DistillConfig
    from mulcot.train.soft_labels import SoftLabelCache, open_source
    from mulcot.train.student import DistillTrainer

    torch.set_num_threads(2)
    store, items = _setup(work)
    student, processor, _ = load_model(work / STUDENT)
    student = get_peft_model(student, LoraConfig(r=16, lora_alpha=32, target_modules=LANGUAGE_ONLY))
    cfg = DistillConfig(dataset="s", model=str(work / STUDENT), name="bench", assistant=str(work / ASSISTANT))
    ref = RunRef("bench-assistant", None, work, work, str(work / ASSISTANT))
    cfg.soft_labels = mode
    hook = open_source(store, cfg, ref, items, None)
    if mode == "online":
        hook.assistant, _, _ = load_model(work / ASSISTANT)
        hook.assistant.eval()
    else:
        hook.cache = SoftLabelCache(work / "soft_labels", store.soft_label_index("bench"))
    collator = MultiTaskCollator(processor, "masc")
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-4)
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True, label_names=[])
    trainer = DistillTrainer(model=student, args=args, task_weights=(0.2, 0.8), single_pass=True, collator=collator,
                             soft_labels=hook)

    def step(chunk) -> float:
        loss = trainer.compute_loss(student, chunk)  # the product's own distillation loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.item()

    step(items[:batch])
    start = time.perf_counter()
    for i in range(n_steps):
        step(items[(i + 1) * batch : (i + 2) * batch])
    wall = time.perf_counter() - start
    params = {"student_m": round(sum(p.numel() for p in student.parameters()) / 1e6, 1)}
    if hook.assistant is not None:
        params["assistant_m"] = round(sum(p.numel() for p in hook.assistant.parameters()) / 1e6, 1)
    return {"mode": mode, "samples_per_s": round(n_steps * batch / wall, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), **params}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--top-k", type=int, default=32)
    ap.add_argument("--work", type=Path, default=None, help="reuse a folder of built models and cache")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        what, work = args.worker
        n_items = (args.steps + 1) * args.batch
        out = (
            build_cache(Path(work), args.top_k, n_items)
            if what == "cache"
            else steps(Path(work), what, args.steps, args.batch)
        )
        print(json.dumps(out))
        return
    from mulcot.models import build_tiny

    work = args.work or Path(tempfile.mkdtemp(prefix="distill-bench-"))
    tiny = build_tiny(work / "tiny", "qwen2.5-vl", overwrite=True) if not (work / "tiny").exists() else work / "tiny"
    save(STUDENT, work / STUDENT, tiny)
    save(ASSISTANT, work / ASSISTANT, tiny)

    def run(what: str) -> dict:
        cmd = [sys.executable, __file__, "--steps", str(args.steps), "--batch", str(args.batch), "--top-k",
               str(args.top_k), "--worker", what, str(work)]
        return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])

    cache = run("cache") if not (work / "soft_labels").exists() else {"cache_s": None, "cache_mb": None}
    rows = [run("cached"), run("online")]
    rows[0]["mode"] = "cached top-k"
    ratio = rows[0]["peak_rss_mb"] / rows[1]["peak_rss_mb"]
    result = {"rows": rows, "cache": cache, "cached_over_online_peak": round(ratio, 3), "top_k": args.top_k,
              "batch": args.batch, "steps": args.steps}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"distill step, batch {args.batch} chains, top-k {args.top_k}, CPU (2 threads)")
    for col in ("soft labels", "student", "assistant in memory", "samples/s", "peak RSS"):
        table.add_column(col, justify="left" if col == "soft labels" else "right")
    for r in rows:
        table.add_row(r["mode"], f"{r['student_m']}M", f"{r.get('assistant_m', '-')}M" if "assistant_m" in r else "-",
                      f"{r['samples_per_s']:.3f}", f"{r['peak_rss_mb']} MB")
    console = Console()
    console.print(table)
    console.print(f"cached / online peak RSS = {ratio:.2f} (goal ≤ 0.6); cache build {cache['cache_s']} s, "
                  f"{cache['cache_mb']} MB on disk")


if __name__ == "__main__":
    main()
