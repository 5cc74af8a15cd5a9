"""Write a dataset as a Hugging Face ``datasets`` folder: one parquet file per split under ``data/`` (images embedded
through an ``Image`` feature, one row per chain with its sample's fields) and a dataset card ``README.md`` whose YAML
header names the splits, so that ``datasets.load_dataset(DIR)`` loads it and ``push_to_hub`` can publish it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mulcot.core.reasoning import ANALYSIS_FIELDS
from mulcot.datasets.card import dataset_card
from mulcot.errors import DataError, MulcotError
from mulcot.store import Store

SAMPLE_COLUMNS = ("id", "split", "text", "aspect", "label", "image")
CHAIN_COLUMNS = ("chain_id", "source", "model", "stage", "prompt_version", "reasoning", *ANALYSIS_FIELDS, "prediction",
                 "parse_status", "correct")


def features() -> Any:
    """The ``datasets.Features`` of an exported row (sample fields, the image, then one chain)."""
    from datasets import Features, Image, Value

    cols: dict[str, Any] = {c: Value("string") for c in SAMPLE_COLUMNS}
    cols["image"] = Image()
    cols.update({c: Value("string") for c in CHAIN_COLUMNS})
    cols["chain_id"] = Value("int64")
    cols["correct"] = Value("bool")
    return Features(cols)


def _image(sample: dict[str, Any]) -> dict[str, Any] | None:
    if not sample["has_image"]:
        return None
    path = Path(sample["image_path"])
    try:
        return {"bytes": path.read_bytes(), "path": path.name}
    except OSError as e:
        raise DataError(f"image of sample '{sample['key']}' cannot be read ({e.strerror}): restore it or re-import",
                        file=str(path)) from e


def rows(store: Store, dataset: str, split: str | None, source: str | None) -> dict[str, list[dict[str, Any]]]:
    """The rows of each split: one per final chain (by ``source`` if given), with the sample's fields; a sample
    without any chain gives one row whose chain columns are empty, so no sample is dropped."""
    chains: dict[int, list[dict]] = {}
    for c in store.reasonings(dataset=dataset, split=split, source=source, final_only=True):
        chains.setdefault(c["sample_id"], []).append(c)
    out: dict[str, list[dict[str, Any]]] = {}
    for s in store.samples(dataset, split):
        base = {"id": s["key"], "split": s["split"], "text": s["text"], "aspect": s["aspect"], "label": s["label"],
                "image": _image(s)}
        empty = dict.fromkeys(CHAIN_COLUMNS)
        for c in chains.get(s["id"]) or [None]:
            row = dict(base, **empty)
            if c is not None:
                row.update({
                    "chain_id": c["id"], "source": c["source"], "model": c["model"], "stage": c["stage"],
                    "prompt_version": c["prompt_version"], "reasoning": c["text"] or c["raw"],
                    "prediction": c["prediction"], "parse_status": c["parse_status"],
                    "correct": None if not s["label"] or not c["prediction"] else c["prediction"] == s["label"],
                    **{f: c["fields"].get(f) for f in ANALYSIS_FIELDS},
                })
            out.setdefault(s["split"], []).append(row)
    return out


def export_hf(store: Store, dataset: str, out: Path, *, split: str | None = None, source: str | None = None) -> int:
    """Write ``dataset`` as a Hugging Face datasets folder at ``out`` (which must not exist or be empty); returns
    the rows written. The folder is built beside ``out`` and moved in place at the end: nothing half-written."""
    from datasets import Dataset

    ds = store.require_dataset(dataset)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MulcotError(f"{out} exists and is not an empty folder: give a new folder for the hf export")
    by_split = rows(store, dataset, split, source)
    if not by_split:
        raise MulcotError(f"dataset '{dataset}' has no samples{f' in split {split!r}' if split else ''} to export")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    try:
        feats = features()
        for name, split_rows in by_split.items():
            path = tmp / "data" / f"{name}-00000-of-00001.parquet"
            Dataset.from_list(split_rows, features=feats).to_parquet(str(path))
        counts = {name: len(r) for name, r in by_split.items()}
        (tmp / "README.md").write_text(dataset_card(store, ds, by_split, counts), encoding="utf-8")
        if out.exists():
            out.rmdir()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sum(counts.values())
