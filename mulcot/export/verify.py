"""Export step ``verify`` (``mulcot export --verify N``): does each exported GGUF answer as the merged model does?

The first ``N`` labelled posts of a dataset split (``--verify-dataset``, ``--verify-split``) are scored by forced
choice (:meth:`mulcot.generation.Backend.score_labels`: the three label answers' log-probabilities) by the merged
Hugging Face model (transformers, the reference) and by every exported GGUF — the converted one (``f16`` …) and
each quantization — through llama.cpp, with the vision projector and the same image pixels where the posts have
images (text-only backbones read captions). Per GGUF:

- ``agreement``: the share of posts where its label equals the merged model's;
- ``accuracy`` and ``accuracy_diff`` (GGUF − merged) with its paired bootstrap 95 % interval (whole tweets
  resampled) and the exact McNemar p (:func:`mulcot.metrics.paired.paired_comparison`);
- ``max_abs_prob_diff`` / ``mean_abs_prob_diff``: the largest and the mean absolute difference of a label's
  probability.

The result goes into ``manifest.json`` under ``verify`` (with each file's sha256, so a later export that leaves
the files as they are keeps it) and is shown by the CLI.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mulcot.core.labels import LABELS
from mulcot.errors import MulcotError
from mulcot.events import Progress, emit
from mulcot.generation import PredictConfig, open_backend
from mulcot.generation.base import Post
from mulcot.metrics.paired import paired_comparison, post_clusters


class VerifyError(MulcotError):
    """``--verify`` cannot run: no GGUF exported, no dataset named, or nothing to score."""


def verify_posts(store: Any, dataset: str | None, split: str, n: int) -> tuple[list[dict[str, Any]], str]:
    """The first ``n`` labelled samples of ``dataset``/``split`` and the dataset's task; refuses in one line what
    cannot be verified on (checked before the export starts)."""
    if store is None or dataset is None:
        raise VerifyError("--verify N scores posts of a dataset in the store: pass --verify-dataset NAME (and --db)")
    ds = store.require_dataset(dataset)
    if split not in store.splits(dataset):
        raise VerifyError(f"dataset '{dataset}' has no split '{split}' (splits: {', '.join(store.splits(dataset))})")
    samples = [s for s in store.samples(dataset, split) if s["label"]][:n]
    if not samples:
        raise VerifyError(f"no labelled samples in {dataset}/{split} to verify the export on")
    return samples, ds["task"]


def _posts(samples: list[dict[str, Any]], text_only: bool) -> list[Post]:
    out = []
    for s in samples:
        meta = s.get("meta") or {}
        image = s["image_path"] if s["has_image"] and not text_only else None
        if image is not None and not Path(image).is_file():
            raise VerifyError(f"image of sample {s['key']} not found: {image}")
        out.append(Post(text=s["text"], aspect=s["aspect"], image=image,
                        caption=meta.get("caption") if isinstance(meta, dict) else None))
    return out


def verify_export(result: Any, samples: list[dict[str, Any]], task: str, *, dataset: str, split: str,
                  config: PredictConfig | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Score ``samples`` with the merged model of ``result`` (an :class:`~mulcot.export.config.ExportResult`) and
    each of its GGUFs; returns the manifest's ``verify`` section (see the module doc; the manifest adds each
    file's sha256)."""
    config = config or PredictConfig()
    gold = [s["label"] for s in samples]
    clusters = post_clusters(samples)
    files = {_outtype(result): result.text_gguf, **result.quantized}
    started = time.perf_counter()
    emit(progress, "export", "start", step="verify", status="start",
         message=f"scoring {len(samples)} posts with the merged model")
    with open_backend("hf", model=result.hf_dir, config=config) as hf:
        reference = hf.score_labels(_posts(samples, hf.text_only), task)
    ref_pred = [c.prediction for c in reference]
    out: dict[str, Any] = {"dataset": dataset, "split": split, "n": len(samples), "method": "forced choice",
                           "hf": {"accuracy": sum(g == p for g, p in zip(gold, ref_pred, strict=True)) / len(gold)},
                           "gguf": {}}
    for quant, path in files.items():
        emit(progress, "export", "start", step="verify", status="start", message=f"scoring with {Path(path).name}")
        with open_backend("gguf", gguf=path, mmproj=result.mmproj_gguf, config=config) as gg:
            got = gg.score_labels(_posts(samples, gg.text_only), task)
        pred = [c.prediction for c in got]
        paired = paired_comparison(gold, ref_pred, pred, clusters=[clusters[s["id"]] for s in samples])
        diffs = [abs(a.probabilities[lab] - b.probabilities[lab]) for a, b in zip(reference, got, strict=True)
                 for lab in LABELS]
        boot = paired["bootstrap"]
        out["gguf"][quant] = {
            "file": Path(path).name,
            "agreement": paired["agreement"], "accuracy": boot["accuracy_b"], "accuracy_diff": boot["accuracy"],
            "mcnemar_p": paired["mcnemar"]["p_value"],
            "max_abs_prob_diff": max(diffs), "mean_abs_prob_diff": sum(diffs) / len(diffs),
        }
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def _outtype(result: Any) -> str:
    """The converted GGUF's type, from its name (``…-F16.gguf`` → ``f16``)."""
    stem = Path(result.text_gguf).stem
    return stem.rsplit("-", 1)[-1].lower() if "-" in stem else "text"


def still_valid(verify: dict[str, Any] | None, files: list[dict[str, Any]]) -> bool:
    """Whether a manifest's earlier ``verify`` section still describes the files (same names and sha256)."""
    if not verify or not verify.get("gguf"):
        return False
    digests = {f["path"]: f.get("sha256") for f in files}
    return all(v.get("sha256") and digests.get(v.get("file")) == v["sha256"] for v in verify["gguf"].values())
