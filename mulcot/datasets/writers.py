"""Write a dataset out: plain JSONL (samples with their chains), ShareGPT (as LLaMA-Factory reads it) or a Hugging Face
datasets folder (``hf``, written by ``mulcot.datasets.hf``)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from mulcot.core.prompts import get_prompt
from mulcot.core.reasoning import format_prediction
from mulcot.errors import DataError, MulcotError
from mulcot.store import Store

EXPORT_FORMATS = ("jsonl", "sharegpt", "hf")


def _chains_by_sample(store: Store, dataset: str, split: str | None, source: str | None) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for chain in store.reasonings(dataset=dataset, split=split, source=source, final_only=True):
        out.setdefault(chain["sample_id"], []).append(chain)
    return out


def _jsonl_records(store: Store, dataset: str, split: str | None, source: str | None,
                   image_dir: Path | None = None) -> Iterator[dict[str, Any]]:
    """One record per sample, with its final chains: what ``mulcot data import jsonl`` reads back. Written to a file
    (``image_dir``: its folder), image paths are relative to it: images already under it are named as they are,
    the others are linked (or copied) into ``images/`` there, so the file and its folder import anywhere."""
    chains = _chains_by_sample(store, dataset, split, source)
    placed: dict[str, str] = {}  # image path -> its relative name in the export
    for s in store.samples(dataset, split):
        image = None
        if s["has_image"]:
            image = s["image_path"] if image_dir is None else _place_image(s, image_dir, placed)
        yield {
            "id": s["key"], "split": s["split"], "text": s["text"], "aspect": s["aspect"], "label": s["label"],
            "image": image,
            "chains": [
                {"source": c["source"], "model": c["model"], "stage": c["stage"], "prompt_version":
                 c["prompt_version"], "raw": c["raw"], "text": c["text"], "prediction": c["prediction"],
                 "parse_status": c["parse_status"]}
                for c in chains.get(s["id"], [])
            ],
        }


def _place_image(sample: dict[str, Any], out_dir: Path, placed: dict[str, str]) -> str:
    """``sample``'s image as a path relative to ``out_dir``: where it is, when that is under ``out_dir``, else a
    hard link (a copy across file systems) in ``out_dir/images/`` under its own name (its digest first, when another
    image took that name)."""
    import shutil

    path = Path(sample["image_path"])
    if str(path) in placed:
        return placed[str(path)]
    if not path.is_file():
        raise DataError(f"image of sample '{sample['key']}' is gone: restore it or re-import the dataset",
                        file=str(path))
    root = out_dir.resolve()
    resolved = path.resolve()
    if resolved.is_relative_to(root):
        placed[str(path)] = resolved.relative_to(root).as_posix()
        return placed[str(path)]
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if target.exists() and not target.samefile(resolved):
        target = folder / f"{(sample['image_sha256'] or '')[:16]}-{path.name}"
    if not target.exists():
        try:
            os.link(resolved, target)
        except OSError:  # another file system, or links not allowed: copy
            shutil.copy2(resolved, target)
    placed[str(path)] = target.relative_to(root).as_posix()
    return placed[str(path)]


def _sharegpt_records(store: Store, dataset: str, split: str | None, source: str | None, correct_only: bool,
                      image_dir: Path | None) -> Iterator[dict[str, Any]]:
    task = store.require_dataset(dataset)["task"]
    cot, label_prompt = get_prompt("cot", task), get_prompt("label", task)
    chains = _chains_by_sample(store, dataset, split, source or "teacher")
    for s in store.samples(dataset, split):
        path = s["image_path"]
        image = [os.path.relpath(path, image_dir) if image_dir is not None else path] if s["has_image"] else []
        tag = "<image>" * len(image)  # LLaMA-Factory wants exactly one placeholder per image
        for chain in chains.get(s["id"], []):
            if chain["parse_status"] != "full" or (correct_only and chain["prediction"] != s["label"]):
                continue
            yield {
                "conversations": [
                    {"from": "human", "value": tag + _no_placeholder(cot.render(s["text"], s["aspect"]))},
                    {"from": "gpt", "value": _no_placeholder(chain["text"])},
                ],
                "images": image,
            }
        if s["label"]:
            yield {
                "conversations": [
                    {"from": "human", "value": tag + _no_placeholder(label_prompt.render(s["text"], s["aspect"]))},
                    {"from": "gpt", "value": format_prediction(s["label"])},
                ],
                "images": image,
            }


def _no_placeholder(text: str) -> str:
    """A post or chain that itself contains ``<image>`` would count as a second image in LLaMA-Factory."""
    return text.replace("<image>", "<img>")


def write_dataset_info(data_file: Path) -> Path:
    """Add (or replace) ``data_file``'s entry in the ``dataset_info.json`` beside it, as LLaMA-Factory reads it:
    named after the file's stem, ``formatting: sharegpt``, columns ``messages``/``images``. Returns its path."""
    info_path = data_file.parent / "dataset_info.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e.msg}): fix or remove it", file=str(info_path), row=e.lineno) from e
    info[data_file.stem] = {
        "file_name": data_file.name,
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "images": "images"},
        "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"},
    }
    info_path.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return info_path


def export_dataset(store: Store, dataset: str, fmt: str, out: TextIO | Path, *, split: str | None = None,
                   source: str | None = None, correct_only: bool = True) -> int:
    """Write ``dataset`` in ``fmt`` to ``out`` (a path or an open text stream); returns the records written.

    JSONL: one sample per line with its final chains, read back by ``mulcot data import jsonl``; written to a file,
    image paths are relative to its folder (images elsewhere are linked or copied into ``images/`` there).
    ShareGPT: for each sample, one reasoning example per fully parsed chain (P_cot → chain; by default only chains
    whose Prediction equals the gold label, i.e. D_t) and one classification example (P_label → ``"Prediction"``),
    with one ``<image>`` placeholder per image — a LLaMA-Factory ``sharegpt`` dataset. Written to a file, the image
    paths are relative to its folder and ``dataset_info.json`` there gets its entry; to a stream, paths are absolute.
    hf: ``out`` is a new folder that ``datasets.load_dataset`` reads (see ``mulcot.datasets.hf.export_hf``).
    """
    store.require_dataset(dataset)
    if fmt not in EXPORT_FORMATS:
        raise MulcotError(f"unknown export format '{fmt}': use {', '.join(EXPORT_FORMATS)}")
    if fmt == "hf":
        if not isinstance(out, Path):
            raise MulcotError("the hf export writes a folder: give its path (mulcot data export NAME --format hf DIR)")
        from mulcot.datasets.hf import export_hf

        return export_hf(store, dataset, out, split=split, source=source)
    if fmt == "jsonl":
        records = _jsonl_records(store, dataset, split, source, out.resolve().parent if isinstance(out, Path) else None)
    else:
        image_dir = out.resolve().parent if isinstance(out, Path) else None
        records = _sharegpt_records(store, dataset, split, source, correct_only, image_dir)
    stream = out.open("w", encoding="utf-8") if isinstance(out, Path) else out
    n = 0
    try:
        if fmt == "jsonl":
            for rec in records:
                stream.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
        else:
            stream.write("[\n")
            for rec in records:
                stream.write((",\n" if n else "") + json.dumps(rec, ensure_ascii=False))
                n += 1
            stream.write("\n]\n")
    finally:
        if isinstance(out, Path):
            stream.close()
    if fmt == "sharegpt" and isinstance(out, Path):
        write_dataset_info(out)
    return n


RATING_FORMATS = ("jsonl", "csv")
RATING_FIELDS = (
    "id", "dataset", "split", "key", "gold", "reasoning_id", "source", "model", "stage", "prompt_version", "run_id",
    "prediction", "faithfulness", "usefulness", "comment", "rater", "created_at",
)


def export_ratings(store: Store, out: TextIO | Path, *, dataset: str | None = None, fmt: str = "jsonl") -> int:
    """Write the human ratings of chains (``mulcot tui``), each with its chain and sample, as JSONL or CSV to
    ``out`` (a path or an open text stream); ``dataset`` limits them to one dataset. Returns the rows written."""
    import csv

    if fmt not in RATING_FORMATS:
        raise MulcotError(f"unknown ratings format '{fmt}': use {' or '.join(RATING_FORMATS)}")
    if dataset is not None:
        store.require_dataset(dataset)
    rows = store.ratings(dataset=dataset)
    stream = out.open("w", encoding="utf-8", newline="") if isinstance(out, Path) else out
    try:
        if fmt == "csv":
            writer = csv.DictWriter(stream, fieldnames=RATING_FIELDS, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        else:
            for row in rows:
                stream.write(json.dumps({k: row[k] for k in RATING_FIELDS}, ensure_ascii=False) + "\n")
    finally:
        if isinstance(out, Path):
            stream.close()
    return len(rows)
