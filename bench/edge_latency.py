"""The edge claim: the exported student on llama.cpp (GGUF f16 / Q8_0 / Q4_K_M) vs transformers (fp32 / bf16), on
this CPU, for one 280x280 image and a fixed-length generation (end-of-turn ignored).

Real-size random-weight students are built from the published hyper-parameters (no hub): Qwen3-VL-2B (``2b``) and
Qwen2.5-VL-3B (``3b``), on the real Qwen2 vocabulary; ``tiny`` is a smoke test. Speed and memory do not depend on
weight values. Each is exported with ``mulcot.export`` (llama.cpp's converter and quantizer) and every
configuration is measured in its own subprocess, so its peak RSS (``os.wait4``) is its own. Reported per
configuration: load time, time to the first token (image encoding + prompt), request latency (first token + the
rest, load excluded), decode tokens/s, peak RSS, and speed / memory relative to transformers fp32.

    python bench/edge_latency.py [--sizes 2b,3b] [--tokens 256] [--quants f16,q8_0,q4_k_m] [--hf fp32,bf16]
                                 [--threads 2] [--mmap on|off|both] [--text-layers N] [--work DIR] [--json]

A configuration whose estimated memory exceeds what the machine has free is skipped and says so; ``--text-layers``
measures the real widths with fewer language-model layers (stated in the results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
SIDE = 280
GOAL_SPEED, GOAL_MEMORY = 5.0, 0.25

# Published hyper-parameters (config.json of the Instruct checkpoints).
SIZES: dict[str, dict[str, Any]] = {
    "2b": {
        "family": "qwen3-vl",
        "label": "Qwen3-VL-2B",
        "text": {"hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28, "num_attention_heads": 16,
                 "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 262144,
                 "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                                     "mrope_interleaved": True}},
        "vision": {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16,
                   "out_hidden_size": 2048, "num_position_embeddings": 2304, "deepstack_visual_indexes": [5, 11, 17],
                   "patch_size": 16, "hidden_act": "gelu_pytorch_tanh"},
    },
    "3b": {
        "family": "qwen2.5-vl",
        "label": "Qwen2.5-VL-3B",
        "text": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
                 "num_key_value_heads": 2, "max_position_embeddings": 128000,
                 "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}},
        "vision": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                   "out_hidden_size": 2048, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
                   "patch_size": 14, "hidden_act": "silu", "tokens_per_second": 2},
    },
    "tiny": {"family": "qwen2.5-vl", "label": "tiny Qwen2.5-VL (smoke test)", "text": {}, "vision": {}},
}
COPY_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "processor_config.json",
              "preprocessor_config.json", "generation_config.json")


# ------------------------------------------------------------------------------------------------ children


def _config(size: str, text_layers: int | None) -> Any:
    from mulcot.models.tiny import tiny_config

    spec = SIZES[size]
    cfg = tiny_config(spec["family"])
    for key, value in spec["text"].items():
        setattr(cfg.text_config, key, value)
    for key, value in spec["vision"].items():
        setattr(cfg.vision_config, key, value)
    if spec["text"]:
        cfg.text_config.initializer_range = 0.02
        cfg.vision_config.initializer_range = 0.02
    if text_layers:
        cfg.text_config.num_hidden_layers = text_layers
    n = cfg.text_config.num_hidden_layers
    if getattr(cfg.text_config, "layer_types", None) is not None:  # derived from the tiny config's layer count
        cfg.text_config.layer_types = ["full_attention"] * n
    if getattr(cfg.text_config, "max_window_layers", None) is not None:
        cfg.text_config.max_window_layers = n
    return cfg


def child_build(size: str, out: str, text_layers: int | None) -> dict[str, Any]:
    """Random bf16 weights of ``size`` plus the real tokenizer, processor and chat template."""
    import torch

    from mulcot.models import build_tiny, model_class
    from mulcot.models.loading import quiet_progress_bars

    dest = Path(out)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    family = SIZES[size]["family"]
    tiny = build_tiny(tmp / "tiny", family, seed=0)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    model = model_class(family)(_config(size, text_layers))
    torch.set_default_dtype(torch.float32)
    params = sum(p.numel() for p in model.parameters())
    with quiet_progress_bars():
        model.save_pretrained(tmp / "model", max_shard_size="2GB")
    del model
    for name in COPY_FILES:
        shutil.copy(tiny / name, tmp / "model" / name)
    (tmp / "model" / "bench.json").write_text(json.dumps({"size": size, "params": params,
                                                          "text_layers": text_layers}))
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp / "model", dest)
    shutil.rmtree(tmp, ignore_errors=True)
    return {"params": params}


def _prompt() -> tuple[str, str]:
    """A real post of the embedded sample (MASC) and its image resized to SIDE x SIDE."""
    from PIL import Image

    from mulcot.core.prompts import get_prompt
    from mulcot.sample import SAMPLE_DIR

    line = (SAMPLE_DIR / "test.tsv").read_text(encoding="utf-8").splitlines()[1].split("\t")
    _, _, image_name, text, aspect = line[:5]
    image = Path(os.environ.get("BENCH_WORK", "/tmp")) / f"post-{SIDE}.png"
    if not image.exists():
        with Image.open(SAMPLE_DIR / "images" / image_name) as im:
            im.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BICUBIC).save(image)
    return get_prompt("cot", "masc").render(text.replace("$T$", aspect), aspect), str(image)


def child_llama(gguf: str, mmproj: str, tokens: int, threads: int, ctx: int, mmap: bool) -> dict[str, Any]:
    from mulcot.core.images import load_image
    from mulcot.generation import GGUFBackend, PredictConfig

    prompt, image_path = _prompt()
    image = load_image(image_path, max_pixels=SIDE * SIDE)
    t0 = time.perf_counter()
    backend = GGUFBackend(gguf, mmproj, PredictConfig(max_tokens=tokens, n_threads=threads, ctx=ctx, mmap=mmap,
                                                      ignore_eos=True))
    load = time.perf_counter() - t0
    inner, marks = backend.llm.generate, []

    def timed(tokens: Any, **kwargs: Any) -> Any:  # CPU time at the first generated token
        for i, token in enumerate(inner(tokens, **kwargs)):
            if i == 0:
                marks.append(time.process_time())
            yield token

    backend.llm.generate = timed
    cpu0 = time.process_time()
    gen = backend.generate_one(prompt, image)
    cpu = time.process_time() - cpu0
    backend.close()
    return {"load_s": load, "first_token_s": gen.first_token_s, "latency_s": gen.latency_s, "tokens": gen.tokens_out,
            "cpu_s": cpu, "first_token_cpu_s": marks[0] - cpu0 if marks else None}


def child_hf(model_dir: str, dtype: str, tokens: int, threads: int) -> dict[str, Any]:
    import torch
    from transformers.generation.streamers import BaseStreamer

    from mulcot.core.images import load_image
    from mulcot.core.inputs import user_message
    from mulcot.models import load_model

    torch.set_num_threads(threads)
    prompt, image_path = _prompt()
    image = load_image(image_path, max_pixels=SIDE * SIDE)
    t0 = time.perf_counter()
    model, processor, _ = load_model(model_dir, device="cpu", dtype=dtype)
    load = time.perf_counter() - t0
    text = processor.apply_chat_template([user_message(prompt, True)], add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[image], return_tensors="pt")

    class Clock(BaseStreamer):
        def __init__(self) -> None:
            self.calls: list[float] = []
            self.cpu: list[float] = []

        def put(self, value: Any) -> None:
            self.calls.append(time.perf_counter())
            self.cpu.append(time.process_time())

        def end(self) -> None:
            pass

    clock = Clock()
    cpu0 = time.process_time()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                             temperature=None, top_p=None, top_k=None, streamer=clock)
    latency = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    n = out.shape[1] - inputs["input_ids"].shape[1]
    first = clock.calls[1] - start if len(clock.calls) > 1 else None  # calls[0] is the prompt
    first_cpu = clock.cpu[1] - cpu0 if len(clock.cpu) > 1 else None
    return {"load_s": load, "first_token_s": first, "latency_s": latency, "tokens": int(n), "cpu_s": cpu,
            "first_token_cpu_s": first_cpu}


# -------------------------------------------------------------------------------------------------- parent


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _spawn(args: list[str], timeout: float) -> tuple[dict[str, Any] | None, float, str]:
    """Run this script as a child; returns its JSON result, its peak RSS (bytes) and its stderr tail."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(HERE), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)
    deadline = time.time() + timeout
    import threading

    out: dict[str, bytes] = {}

    def read(name: str, stream: Any) -> None:
        out[name] = stream.read()

    threads = [threading.Thread(target=read, args=(n, s)) for n, s in (("out", proc.stdout), ("err", proc.stderr))]
    for t in threads:
        t.start()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.time() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    for t in threads:
        t.join()
    rss = usage.ru_maxrss * 1024  # KiB on Linux
    stderr = out.get("err", b"").decode("utf-8", "replace")
    result = None
    for line in reversed(out.get("out", b"").decode("utf-8", "replace").splitlines()):
        if line.startswith("{"):
            result = json.loads(line)
            break
    if proc.returncode != 0:
        result = None
        tail = [x for x in stderr.splitlines() if x.strip()][-3:]
        stderr = f"exit {proc.returncode}" + (" (killed: out of memory or timeout?)" if proc.returncode < 0 else "")
        stderr += ": " + " | ".join(tail)
    return result, rss, stderr


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def prepare(size: str, work: Path, quants: list[str], text_layers: int | None, quiet: bool) -> dict[str, Any]:
    """Build (once) the random model and export it (resumes); returns paths and the parameter count."""
    from mulcot.export import ExportConfig, export

    tag = size + (f"-L{text_layers}" if text_layers else "")
    model_dir = work / tag / "hf"
    if not (model_dir / "bench.json").is_file():
        _say(f"[{tag}] building random {SIZES[size]['label']} weights (bf16)", quiet)
        t0 = time.time()
        res, rss, err = _spawn(["_build", size, str(model_dir), str(text_layers or 0)], timeout=7200)
        if res is None:
            raise RuntimeError(f"building {tag} failed: {err[-500:]}")
        _say(f"[{tag}] built {res['params'] / 1e9:.2f} B parameters in {time.time() - t0:.0f} s", quiet)
    meta = json.loads((model_dir / "bench.json").read_text())
    q = [x for x in quants if x != "f16"]
    _say(f"[{tag}] exporting to GGUF (f16 + mmproj{', ' + ', '.join(q) if q else ''}; resumes)", quiet)
    t0 = time.time()
    result = export(ExportConfig(source=str(model_dir), out=str(work / tag / "gguf"), quants=tuple(q), name=tag),
                    progress=lambda e: _say(f"[{tag}]   {e.get('step')}: {e.kind} {e.message}", quiet)
                    if e.status in ("done", "skipped") else None)
    _say(f"[{tag}] export ready in {time.time() - t0:.0f} s", quiet)
    files = {"f16": result.text_gguf, **result.quantized}
    return {"tag": tag, "model_dir": str(model_dir), "params": meta["params"], "mmproj": result.mmproj_gguf,
            "gguf": {k: v for k, v in files.items() if k in quants}, "export_steps": [s.__dict__ for s in result.steps],
            "sizes": {k: Path(v).stat().st_size for k, v in files.items()}}


def measure(size: str, prep: dict[str, Any], quants: list[str], hf: list[str], tokens: int, threads: int,
            ctx: int, mmap: str, quiet: bool) -> list[dict[str, Any]]:
    """Each configuration in its own process. ``mmap``: on (every GGUF mapped, llama.cpp's default), off (read into
    memory, ``mulcot predict``'s default), or both (every GGUF mapped, and Q4_K_M once more read)."""
    rows: list[dict[str, Any]] = []
    params = prep["params"]
    llama = [(q, mmap != "off") for q in quants]
    if mmap == "both" and "q4_k_m" in quants:
        llama.append(("q4_k_m", False))
    plan = [("llama.cpp", q, mapped,
             ["_llama", prep["gguf"][q], prep["mmproj"], str(tokens), str(threads), str(ctx), "1" if mapped else "0"],
             prep["sizes"][q] + Path(prep["mmproj"]).stat().st_size) for q, mapped in llama]
    plan += [("transformers", d, None, ["_hf", prep["model_dir"], d, str(tokens), str(threads)],
              params * (4 if d == "fp32" else 2)) for d in hf]
    for runtime, kind, mapped, args, weight_bytes in plan:
        name = f"{runtime} {kind}" + {True: " (mapped)", False: " (read)", None: ""}[mapped]
        need = weight_bytes * 1.1 + 1.5e9
        free = _mem_available()
        row: dict[str, Any] = {"size": prep["tag"], "runtime": runtime, "type": kind, "mmap": mapped,
                               "weights_gb": weight_bytes / 1e9}
        if need > free:
            row["skipped"] = f"needs ~{need / 1e9:.1f} GB, {free / 1e9:.1f} GB available"
            _say(f"[{prep['tag']}] {name}: skipped ({row['skipped']})", quiet)
            rows.append(row)
            continue
        _say(f"[{prep['tag']}] {name}: generating {tokens} tokens ...", quiet)
        row["load_avg_before"] = round(os.getloadavg()[0], 2)  # other processes on the machine skew the timings
        result, rss, err = _spawn(args, timeout=4 * 3600)
        row["load_avg_after"] = round(os.getloadavg()[0], 2)
        if result is None:
            row["skipped"] = f"failed: {err[-300:]}"
            _say(f"[{prep['tag']}] {name}: {row['skipped']}", quiet)
            rows.append(row)
            continue
        row.update(result)
        row["peak_rss_gb"] = rss / 1e9
        decode = result["latency_s"] - (result["first_token_s"] or 0)
        row["decode_tok_s"] = (result["tokens"] - 1) / decode if decode > 0 and result["tokens"] > 1 else None
        row["e2e_tok_s"] = result["tokens"] / result["latency_s"]
        decode_cpu = result["cpu_s"] - (result["first_token_cpu_s"] or 0)
        ok = decode_cpu > 0 and result["tokens"] > 1
        row["decode_tok_cpu_s"] = (result["tokens"] - 1) / decode_cpu if ok else None
        _say(f"[{prep['tag']}] {name}: {result['latency_s']:.1f} s, {row['e2e_tok_s']:.2f} tok/s, "
             f"peak RSS {row['peak_rss_gb']:.2f} GB", quiet)
        rows.append(row)
    base = next((r for r in rows if r["runtime"] == "transformers" and r["type"] == "fp32" and "latency_s" in r), None)
    for r in rows:
        if base is not None and "latency_s" in r:
            r["speedup_vs_fp32"] = base["latency_s"] / r["latency_s"]
            r["cpu_speedup_vs_fp32"] = base["cpu_s"] / r["cpu_s"]
            r["memory_vs_fp32"] = r["peak_rss_gb"] / base["peak_rss_gb"]
    return rows


def goal(rows: list[dict[str, Any]], threads: int) -> dict[str, Any] | None:
    """The issue's goal on the Q4_K_M row as ``mulcot predict`` runs it (read into memory) when measured, else
    the mapped one."""
    q4 = [r for r in rows if r["type"] == "q4_k_m" and "speedup_vs_fp32" in r]
    row = next((r for r in q4 if r.get("mmap") is False), q4[0] if q4 else None)
    if row is None:
        return None
    # with one thread, CPU time is the contention-free latency; with more, spin-waits inflate it: use wall
    basis = "CPU time" if threads == 1 else "wall clock"
    speed = row["cpu_speedup_vs_fp32"] if threads == 1 else row["speedup_vs_fp32"]
    met = speed >= GOAL_SPEED and row["memory_vs_fp32"] <= GOAL_MEMORY
    return {"speedup": speed, "basis": basis, "memory": row["memory_vs_fp32"], "mmap": row.get("mmap"), "met": met}


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    simd = [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx_vnni", "amx_bf16") if f in flags]
    versions = {}
    from importlib import metadata

    for dist in ("llama-cpp-python", "torch", "transformers"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    load = os.getloadavg()
    return {"cpu": cpu, "cores": os.cpu_count(), "simd": simd, "mem_total_gb": _mem_total() / 1e9,
            "load_avg_at_end": [round(x, 2) for x in load], "versions": versions}


def _mem_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def render(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(150, Console().width))
    m = report["machine"]
    for info in report["sizes"].values():
        spec = SIZES[info["size"]]
        layers = f", {info['text_layers']} LM layers" if info.get("text_layers") else ""
        table = Table(title=f"{spec['label']}{layers} — random weights, {info['params'] / 1e9:.2f} B params; one "
                            f"{SIDE}x{SIDE} image, {report['tokens']} tokens (EOS ignored), {report['threads']} "
                            f"threads, ctx {report.get('ctx')}, {m['cpu']}")
        for col in ("runtime", "type", "GGUF", "load s", "1st token s", "latency s", "CPU s", "decode tok/s",
                    "decode tok/CPU-s", "peak RSS GB", "speed vs fp32", "speed vs fp32 (CPU)", "memory vs fp32",
                    "load avg"):
            table.add_column(col, justify="left" if col in ("runtime", "type") else "right")
        for r in info["results"]:
            if "skipped" in r:
                table.add_row(r["runtime"], r["type"], "", "[dim]" + r["skipped"][:60] + "[/]", *[""] * 10)
                continue

            def f(v: Any, spec: str) -> str:
                return "-" if v is None else format(v, spec)

            table.add_row(r["runtime"], r["type"], {True: "mapped", False: "read"}.get(r.get("mmap"), ""),
                          f(r["load_s"], ".1f"), f(r["first_token_s"], ".1f"),
                          f(r["latency_s"], ".1f"), f(r.get("cpu_s"), ".1f"), f(r["decode_tok_s"], ".2f"),
                          f(r.get("decode_tok_cpu_s"), ".2f"), f(r["peak_rss_gb"], ".2f"),
                          f(r.get("speedup_vs_fp32"), ".2f") + ("x" if "speedup_vs_fp32" in r else ""),
                          f(r.get("cpu_speedup_vs_fp32"), ".2f") + ("x" if "cpu_speedup_vs_fp32" in r else ""),
                          f(r.get("memory_vs_fp32"), ".2f"),
                          f"{r.get('load_avg_before', '-')}→{r.get('load_avg_after', '-')}")
        console.print(table)
        g = info.get("goal")
        if g:
            verdict = "[green]met[/]" if g["met"] else "[red]not met[/]"
            how = {True: ", GGUF mapped", False: ", GGUF read"}.get(g.get("mmap"), "")
            console.print(f"Goal (Q4_K_M ≥ {GOAL_SPEED:.0f}x faster and ≤ {GOAL_MEMORY:.2f} of the memory of "
                          f"transformers fp32): {verdict} — {g['speedup']:.2f}x ({g['basis']}{how}), "
                          f"{g['memory']:.2f} of the memory")
    for size, err in report.get("errors", {}).items():
        console.print(f"[red]{size}: not measured: {err}[/]")
    console.print("Wall-clock figures count time lost to other processes on the machine (load avg column); CPU "
                  "time does not, and with --threads 1 it equals the wall time on an idle core.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2b,3b", help="2b (Qwen3-VL-2B), 3b (Qwen2.5-VL-3B), tiny")
    parser.add_argument("--tokens", type=int, default=256, help="tokens generated per request (EOS ignored)")
    parser.add_argument("--quants", default="f16,q8_0,q4_k_m", help="GGUF types to measure")
    parser.add_argument("--hf", default="fp32,bf16", help="transformers dtypes to measure (fp32 is the baseline)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ctx", type=int, default=2048, help="llama.cpp context (the request needs ~700 tokens)")
    parser.add_argument("--mmap", choices=("on", "off", "both"), default="both",
                        help="llama.cpp maps every GGUF (on), reads it (off: mulcot predict's default), or both: "
                             "every GGUF mapped and Q4_K_M read as well")
    parser.add_argument("--text-layers", type=int, default=None, help="fewer language-model layers, real widths")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "mulcot-edge-bench")
    parser.add_argument("--clean", action="store_true", help="delete the built models and GGUFs afterwards")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (progress still on stderr)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args()
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    quants = [q.strip().lower() for q in args.quants.split(",") if q.strip()]
    hf = [d.strip().lower() for d in args.hf.split(",") if d.strip()]
    for s in sizes:
        if s not in SIZES:
            parser.error(f"unknown size {s} (known: {', '.join(SIZES)})")
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ["BENCH_WORK"] = str(args.work)
    report: dict[str, Any] = {"tokens": args.tokens, "threads": args.threads, "ctx": args.ctx, "mmap": args.mmap,
                              "image": f"{SIDE}x{SIDE}", "sizes": {}, "errors": {}}
    partial = args.work / f"report-{time.strftime('%Y%m%d-%H%M%S')}.json"
    for size in sizes:
        try:
            prep = prepare(size, args.work, quants, args.text_layers, args.quiet)
        except Exception as err:  # a size that cannot be built or exported is reported, not fatal
            report["errors"][size] = str(err)
            _say(f"[{size}] {err}", args.quiet)
            continue
        rows = measure(size, prep, quants, hf, args.tokens, args.threads, args.ctx, args.mmap, args.quiet)
        info = {"size": size, "params": prep["params"], "text_layers": args.text_layers, "gguf_bytes": prep["sizes"],
                "results": rows}
        info["goal"] = goal(rows, args.threads)
        report["sizes"][prep["tag"]] = info
        partial.write_text(json.dumps(report, indent=2))  # what is measured so far survives an interruption
        if args.clean:
            shutil.rmtree(args.work / prep["tag"], ignore_errors=True)
    report["machine"] = machine()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        render(report)


def _child(argv: list[str]) -> None:
    kind = argv[0]
    if kind == "_build":
        result = child_build(argv[1], argv[2], int(argv[3]) or None)
    elif kind == "_llama":
        result = child_llama(argv[1], argv[2], int(argv[3]), int(argv[4]), int(argv[5]), argv[6] == "1")
    else:
        result = child_hf(argv[1], argv[2], int(argv[3]), int(argv[4]))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        _child(sys.argv[1:])
    else:
        main()
