"""Multi-task training step: one batched forward pass over both tasks' sequences vs one pass per task.

Random-weight Qwen2.5-VL models on the real Qwen2 vocabulary (a tiny one and a ~100M-parameter one), LoRA on the
language model, AdamW, real posts and teacher chains from the embedded sample. Each (size, mode) runs in its own
subprocess so that its peak RSS is its own.

    python bench/train_step.py [--sizes tiny,medium] [--steps 4] [--batch 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _random_models import build  # noqa: E402


def worker(size: str, mode: str, steps: int, batch: int, processor_dir: str) -> dict:
    import tempfile

    import torch
    from peft import LoraConfig, get_peft_model

    from mulcot.core.inputs import teacher_items
    from mulcot.datasets import import_dataset
    from mulcot.models import load_processor
    from mulcot.sample import SAMPLE_DIR
    from mulcot.store import Store
    from mulcot.train.assistant import MultiTaskTrainer as trainer_cls
    from mulcot.train.collator import MultiTaskCollator
    from mulcot.train.config import LANGUAGE_ONLY

    torch.set_num_threads(2)
    store = Store.open(Path(tempfile.mkdtemp()) / "b.db")
    import_dataset(store, "twitter-tsv", SAMPLE_DIR, name="s")
    import_dataset(store, "mulcot-json", SAMPLE_DIR / "chains", name="s", images=SAMPLE_DIR / "images")
    items = teacher_items(store, "s", "train")
    processor = load_processor(processor_dir, "qwen2.5-vl")
    model = get_peft_model(build(size), LoraConfig(r=16, lora_alpha=32, target_modules=LANGUAGE_ONLY))
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    collator = MultiTaskCollator(processor, "masc", max_pixels=280 * 280)

    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True, label_names=[])
    trainer = trainer_cls(model=model, args=args, task_weights=(0.2, 0.8), single_pass=mode == "one-pass",
                          collator=collator)

    def step(chunk) -> float:
        loss = trainer.compute_loss(model, chunk)  # the product's own loss code
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.item()

    step(items[:batch])  # warm-up
    torch.manual_seed(0)
    losses = []
    start = time.perf_counter()
    for i in range(steps):
        chunk = items[(i * batch) % len(items) : (i * batch) % len(items) + batch]
        losses.append(step(chunk))
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"size": size, "mode": mode, "params_m": round(params / 1e6, 1), "steps": steps, "batch": batch,
            "samples_per_s": round(steps * batch / wall, 3), "peak_rss_mb": round(peak), "losses": losses}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="tiny,medium")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        size, mode, steps, processor_dir = args.worker
        print(json.dumps(worker(size, mode, int(steps), args.batch, processor_dir)))
        return
    import tempfile

    from mulcot.models import build_tiny

    processor_dir = str(build_tiny(Path(tempfile.mkdtemp()) / "tiny", "qwen2.5-vl"))
    rows = []
    for size in args.sizes.split(","):
        for mode in ("one-pass", "two-pass"):
            out = subprocess.run(
                [sys.executable, __file__, "--batch", str(args.batch), "--worker", size, mode, str(args.steps),
                 processor_dir],
                capture_output=True, text=True, check=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for r in rows:
        other = next(x for x in rows if x["size"] == r["size"] and x["mode"] == "one-pass")
        r["speedup_vs_one_pass"] = round(r["samples_per_s"] / other["samples_per_s"], 2)
        r["max_loss_diff_vs_one_pass"] = max(abs(a - b) for a, b in zip(r["losses"], other["losses"], strict=True))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"multi-task step, batch {args.batch} samples (= {2 * args.batch} sequences), CPU")
    for col in ("model", "params", "mode", "samples/s", "vs one-pass", "peak RSS", "max |Δloss|"):
        table.add_column(col, justify="left" if col in ("model", "mode") else "right")
    for r in rows:
        table.add_row(r["size"], f"{r['params_m']}M", r["mode"], f"{r['samples_per_s']:.3f}",
                      f"{r['speedup_vs_one_pass']:.2f}×", f"{r['peak_rss_mb']} MB",
                      f"{r['max_loss_diff_vs_one_pass']:.1e}")
    Console().print(table)


if __name__ == "__main__":
    main()
