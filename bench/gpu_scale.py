"""LoRA training step time and peak GPU memory per rank at 1 vs N GPUs (DeepSpeed ZeRO-2 by default).

A random-weight Qwen2.5-VL-7B (the real shapes, bf16; speed and memory do not depend on weight values) is trained
by mulcot's own command, ``torchrun --nproc_per_node N -m mulcot train-assistant … --deepspeed CONFIG``, on the
embedded sample's posts and teacher chains. Step time comes from the run's log (``elapsed_s`` between the second
and the last optimizer step, so start-up and the first step are left out); peak memory from the run record.

    bash bench/gpu_scale.sh [--gpus 1,8] [--size 7b] [--steps 12] [--batch 1] [--deepspeed CONFIG] [--json]

Needs CUDA GPUs and DeepSpeed (gpu_scale.sh installs it when missing). ``--size medium --no-deepspeed`` runs the
same code path with DDP on CPUs (gloo), to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _random_models import save  # noqa: E402

ROOT = Path(__file__).parents[1]


def prepare(work: Path, size: str, on_gpu: bool) -> tuple[Path, Path]:
    """The model folder (built once) and a store with the embedded sample and its teacher chains."""
    import torch

    from mulcot.datasets import import_dataset
    from mulcot.models import build_tiny
    from mulcot.sample import SAMPLE_DIR
    from mulcot.store import Store

    tiny = build_tiny(work / "tiny", "qwen2.5-vl")
    model = save(size, work / f"qwen2.5-vl-{size}", tiny, torch.bfloat16 if on_gpu else torch.float32)
    db = work / "bench.db"
    if not db.exists():
        with Store.open(db) as store:
            import_dataset(store, "twitter-tsv", SAMPLE_DIR, name="s")
            import_dataset(store, "mulcot-json", SAMPLE_DIR / "chains", name="s", images=SAMPLE_DIR / "images")
    return model, db


def one(n: int, model: Path, db: Path, work: Path, args: argparse.Namespace) -> dict:
    """Train ``args.steps`` optimizer steps on ``n`` processes; step time and peak memory per rank."""
    name = f"scale-{n}-{int(time.time())}"
    items = args.steps * args.batch * n
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "-m", "mulcot",
           "train-assistant", "s", "--model", str(model), "--db", str(db), "--runs-dir", str(work / "runs"),
           "--name", name, "--epochs", "1", "--max-train-items", str(items), "--no-dev", "--batch-size",
           str(args.batch), "--grad-accum", "1", "--save-steps", str(10**6), "--json"]
    if args.deepspeed:
        cmd += ["--deepspeed", args.deepspeed]
    if args.gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    if not args.on_gpu:
        cmd += ["--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{n} process(es) failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout)
    log = [json.loads(x) for x in (work / "runs" / name / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    step_s = (steps[-1]["elapsed_s"] - steps[0]["elapsed_s"]) / max(1, len(steps) - 1)
    peaks = (result.get("launch") or {}).get("peak_gpu_mib")
    return {"gpus": n, "steps": len(steps), "batch_per_gpu": args.batch, "step_s": round(step_s, 3),
            "samples_per_s": round(args.batch * n / step_s, 3),
            "peak_gpu_gib_per_rank": [round(p / 1024, 2) for p in peaks] if peaks else None,
            "sharding": "ZeRO-2" if args.deepspeed else "DDP"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", default=None, help="Process counts to compare (default: 1 and every GPU).")
    ap.add_argument("--size", default="7b", help="Random-weight model size (bench/_random_models.py).")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=1, help="Chains per GPU per step.")
    ap.add_argument("--deepspeed", default=str(ROOT / "examples" / "deepspeed" / "ds_z2_config.json"))
    ap.add_argument("--no-deepspeed", dest="deepspeed", action="store_const", const=None)
    ap.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    ap.add_argument("--work", default=None, help="Folder for the model and runs (default: a temporary one).")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import torch

    args.on_gpu = torch.cuda.is_available()
    counts = [int(x) for x in args.gpus.split(",")] if args.gpus else sorted({1, torch.cuda.device_count() or 2})
    work = Path(args.work or tempfile.mkdtemp(prefix="mulcot-gpu-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    model, db = prepare(work, args.size, args.on_gpu)
    rows = [one(n, model, db, work, args) for n in counts]
    for r in rows:
        r["speedup_vs_1"] = round(r["samples_per_s"] / rows[0]["samples_per_s"], 2)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    device = torch.cuda.get_device_name(0) if args.on_gpu else "CPU (gloo)"
    table = Table(title=f"LoRA step, random-weight Qwen2.5-VL {args.size}, {device}, {rows[0]['sharding']}")
    for col in ("GPUs", "step s", "samples/s", "speed-up", "peak GiB per rank"):
        table.add_column(col, justify="right")
    for r in rows:
        peaks = r["peak_gpu_gib_per_rank"]
        table.add_row(str(r["gpus"]), f"{r['step_s']:.2f}", f"{r['samples_per_s']:.2f}", f"{r['speedup_vs_1']:.2f}×",
                      ", ".join(f"{p:.1f}" for p in peaks) if peaks else "-")
    Console().print(table)


if __name__ == "__main__":
    main()
