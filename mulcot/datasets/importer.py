"""Import a dataset into the store: read every file, check every row and image, then write in one transaction.

Bad rows are reported with file, line and problem. By default they are skipped and the rest is imported;
``strict`` aborts on the first batch of problems and leaves the store exactly as it was.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mulcot.core.chains import RELEASE_ORIGIN, chain_row
from mulcot.core.refs import check_name
from mulcot.datasets import jsonl, mvsa, release, tombert
from mulcot.datasets.common import (
    ImageChecker,
    SampleRow,
    name_without_split,
    normalize_split,
    split_from_name,
)
from mulcot.errors import DataError, MulcotError
from mulcot.events import Progress, emit
from mulcot.store import Store

FORMATS: dict[str, str] = {
    "twitter-tsv": "Twitter-2015/-2017 in the TomBERT TSV format (aspect-level)",
    "mvsa-raw": "MVSA-Single/-Multiple raw archive (data/<id>.txt|jpg + labelResultAll.txt)",
    "clmlf-json": "MVSA splits in CLMLF's JSON ({id, text, emotion_label})",
    "mulcot-json": "the MulCoT-RD authors' released JSON, teacher chains included",
    "jsonl": "plain JSONL: {text, image?, aspect?, label?, id?, split?, chains?} per line (mulcot's own export)",
}
_SUFFIX = {"twitter-tsv": ".tsv", "clmlf-json": ".json", "mulcot-json": ".json", "jsonl": ".jsonl"}



class ImportAborted(DataError):
    """``--strict`` import stopped on bad rows; nothing was written."""


@dataclass
class ImportReport:
    """What an import read, skipped and changed."""

    dataset: str
    format: str
    task: str
    files: list[str] = field(default_factory=list)
    images_root: str | None = None
    created: bool = False
    rows_read: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    chains_added: int = 0
    chains_existing: int = 0
    text_only: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    problems: list[DataError] = field(default_factory=list)
    dropped: list[mvsa.Dropped] = field(default_factory=list)

    @property
    def imported(self) -> int:
        return self.added + self.updated + self.unchanged

    def as_dict(self) -> dict:
        return {
            "dataset": self.dataset, "format": self.format, "task": self.task, "files": self.files,
            "images_root": self.images_root, "created": self.created, "rows_read": self.rows_read,
            "imported": self.imported, "added": self.added, "updated": self.updated, "unchanged": self.unchanged,
            "chains_added": self.chains_added, "chains_existing": self.chains_existing,
            "text_only": self.text_only, "splits": self.splits, "labels": self.labels,
            "problems": [str(p) for p in self.problems],
            "dropped": [f"{d.file}:{d.line}: {d.reason}" for d in self.dropped],
        }


def _split_files(fmt: str, path: Path, split: str | None) -> list[tuple[Path, str]]:
    suffix = _SUFFIX[fmt]
    if path.is_dir():
        found = []
        for candidate in sorted(path.iterdir()):
            name_split = split_from_name(candidate)
            if candidate.suffix.lower() == suffix and name_split and (split is None or name_split == split):
                found.append((candidate, name_split))
        if not found:
            which = f"a {split}{suffix}" if split else f"train/dev/test{suffix} files"
            raise DataError(f"no {which} found in this folder: pass a file, or a folder of split files", file=str(path))
        order = {"train": 0, "dev": 1, "test": 2}
        return sorted(found, key=lambda f: order.get(f[1], 3))
    if not path.exists():
        raise DataError("no such file or folder", file=str(path))
    chosen = split or split_from_name(path)
    if chosen is None:
        if fmt == "jsonl":
            chosen = "train"
        else:
            raise DataError(f"cannot tell the split from the file name '{path.name}': pass --split", file=str(path))
    return [(path, chosen)]


def _default_name(path: Path) -> str:
    if path.is_dir():
        return path.resolve().name
    if split_from_name(path) is None:
        return path.stem
    return name_without_split(path) or path.resolve().parent.name


def _default_images(fmt: str, path: Path) -> list[Path]:
    folder = path if path.is_dir() else path.parent
    if fmt == "mvsa-raw":
        return [folder / "data"]
    if fmt == "jsonl":
        return [folder]
    return [folder / "images", folder / "Images", folder / "data"]


def _read_all(fmt: str, path: Path, split: str | None, split_ratio: Sequence[float] | None,
              teacher: str) -> tuple[list[str], Iterable]:
    if fmt == "mvsa-raw":
        if not path.is_dir():
            raise DataError("mvsa-raw expects the unpacked archive folder", file=str(path))
        if not (path / mvsa.LABEL_FILE).is_file():
            raise DataError(f"no {mvsa.LABEL_FILE} here: point PATH at the unpacked MVSA folder", file=str(path))
        return [str(path / mvsa.LABEL_FILE)], mvsa.read_raw(path, split or "all", split_ratio)
    files = _split_files(fmt, path, split)

    def rows():
        for file, file_split in files:
            try:
                if fmt == "twitter-tsv":
                    yield from tombert.read(file, file_split)
                elif fmt == "clmlf-json":
                    yield from mvsa.read_clmlf(file, file_split)
                elif fmt == "mulcot-json":
                    yield from release.read(file, file_split, teacher)
                else:
                    yield from jsonl.read(file, file_split)
            except DataError as whole_file:
                yield whole_file

    return [str(f) for f, _ in files], rows()


def import_dataset(
    store: Store,
    fmt: str,
    path: str | Path,
    *,
    name: str | None = None,
    split: str | None = None,
    images: str | Path | None = None,
    no_images: bool = False,
    strict: bool = False,
    split_ratio: Sequence[float] | None = None,
    teacher: str = release.DEFAULT_TEACHER,
    progress: Progress | None = None,
) -> ImportReport:
    """Import ``path`` (a file or a folder of split files) in format ``fmt`` into dataset ``name``."""
    if fmt not in FORMATS:
        raise MulcotError(f"unknown format '{fmt}': use one of {', '.join(FORMATS)}")
    path = Path(path)
    if not path.exists():
        raise DataError("no such file or folder", file=str(path))
    name = name or _default_name(path)
    check_name(name, "dataset name")
    split = normalize_split(split) if split else None
    if split_ratio is not None and (len(split_ratio) != 3 or min(split_ratio) < 0 or sum(split_ratio) <= 0):
        raise MulcotError("--split-ratio takes three non-negative shares for train,dev,test, e.g. 8,1,1")

    files, rows = _read_all(fmt, path, split, split_ratio, teacher)
    checker = None if no_images else _image_checker(fmt, path, images)
    report = ImportReport(dataset=name, format=fmt, task="", files=files,
                          images_root=str(checker.root) if checker else None)
    good = _check_rows(rows, checker, report, progress)
    report.task = _settle_task(store, name, fmt, good, report)
    if strict and report.problems:
        first = report.problems[0]
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        raise ImportAborted(f"{first}{more}; --strict: nothing was imported")
    if not good:
        if report.problems:
            raise DataError(f"no valid rows to import; first problem: {report.problems[0]}", file=str(path))
        raise DataError("no rows to import", file=str(path))
    emit(progress, "import", message="writing", done=0, total=len(good))
    _write(store, name, fmt, path, good, report, has_images=checker is not None)
    report.splits = dict(Counter(r.split for r in good))
    report.labels = dict(Counter(r.label or "unlabelled" for r in good))
    report.text_only = sum(1 for r in good if not r.has_image)
    emit(progress, "import", message="writing", done=len(good), total=len(good))
    return report


def _image_checker(fmt: str, path: Path, images: str | Path | None) -> ImageChecker:
    """The image folder: ``--images`` or the format's usual place beside the data; refused in one line if none."""
    if images is not None:
        root = Path(images)
        if not root.is_dir():
            raise DataError("image folder not found: pass an existing --images DIR or --no-images", file=str(root))
        return ImageChecker(root)
    candidates = _default_images(fmt, path)
    found = next((c for c in candidates if c.is_dir()), None)
    if found is None:
        looked = ", ".join(str(c) for c in candidates)
        raise DataError(f"no image folder found (looked in {looked}): pass --images DIR, or --no-images to import "
                        "text only", file=str(path))
    return ImageChecker(found)


def _check_rows(rows: Iterable[Any], checker: ImageChecker | None, report: ImportReport,
                progress: Progress | None) -> list[SampleRow]:
    """The rows that import; the others go to the report (problems, or dropped by MVSA's cleaning)."""
    good: list[SampleRow] = []
    for n, item in enumerate(rows, start=1):
        if n % 200 == 0:
            emit(progress, "import", message="checking rows", done=n, total=None)
        if isinstance(item, DataError):
            report.problems.append(item)
            continue
        if isinstance(item, mvsa.Dropped):
            report.dropped.append(item)
            continue
        if checker is not None:
            if not item.image_name:
                report.problems.append(DataError("no image file named", file=item.file, row=item.line, field="image"))
                continue
            try:
                item.image_path, item.image_sha256 = checker.check(item.image_name)
            except ValueError as exc:
                report.problems.append(DataError(str(exc), file=item.file, row=item.line, field="image"))
                continue
        good.append(item)
    report.rows_read = len(good) + len(report.problems) + len(report.dropped)
    return good


def _settle_task(store: Store, name: str, fmt: str, good: list[SampleRow], report: ImportReport) -> str:
    """MASC or MSA (by format, else by aspects); refuses a dataset of the other task; in an aspect-level dataset a
    row without an aspect becomes a problem (removed from ``good``)."""
    fmt_task = {"twitter-tsv": "masc", "mvsa-raw": "msa", "clmlf-json": "msa"}.get(fmt)
    task = fmt_task or ("masc" if any(r.aspect for r in good) else "msa")
    existing = store.get_dataset(name)
    if existing is not None and existing["task"] != task:
        raise MulcotError(
            f"dataset '{name}' holds {existing['task']} samples; this {fmt} data is {task}: pass another --name"
        )
    if task == "masc":
        for row in [r for r in good if not r.aspect]:
            report.problems.append(DataError("no aspect in an aspect-level dataset", file=row.file, row=row.line,
                                             field="aspect"))
            good.remove(row)
    return task


def _write(store: Store, name: str, fmt: str, path: Path, good: list[SampleRow], report: ImportReport, *,
           has_images: bool) -> None:
    """The dataset, its samples and the chains they carry, in one transaction (chains already stored are kept)."""
    with store.transaction():
        report.created = store.upsert_dataset(
            name, task=report.task, format=fmt, source=str(path.resolve()), images_root=report.images_root,
            has_images=has_images,
        )
        counts = store.upsert_samples(name, (r.record() for r in good))
        report.added, report.updated, report.unchanged = counts.added, counts.updated, counts.unchanged
        for row in good:
            sample_id = counts.ids[(row.split, row.key)]
            for chain in row.chains:
                if store.reasoning_exists(sample_id, chain.source, chain.stage, chain.raw, chain.model):
                    report.chains_existing += 1
                    continue
                store.add_reasoning(**chain_row(sample_id=sample_id, source=chain.source, model=chain.model,
                                                stage=chain.stage, output=chain.raw,
                                                prompt_version=chain.prompt_version,
                                                origin=f"{RELEASE_ORIGIN}{row.file}"))
                report.chains_added += 1
