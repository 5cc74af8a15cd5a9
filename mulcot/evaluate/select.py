"""What is evaluated (the *subject*) and which stored chains stand for it, and for the references.

The subject is either

- a **model** (:func:`resolve_model`): a run (``runs/<name>`` or its name), a LoRA adapter folder, or a plain model
  folder / hub id; its chains and label answers are generated where missing (:mod:`mulcot.evaluate.generate`);
- a **source** of stored chains (:func:`resolve_chain_source`): ``teacher``, ``assistant``, ``student``,
  ``student-gguf`` (any source name) or a run id. One model's chains are evaluated, never a mix
  (:func:`choose_group`): among the (source, model, run) groups with final chains (label answers aside), the one
  covering the most samples of the split, ties to the newest; the others are listed in the result
  (``chains_from``; name a run id to pick another). Per sample one chain of that group is taken
  (:func:`select_chains`): the first stage in :data:`SUBJECT_STAGE_ORDER` (``eval``, then ``predict``,
  ``explain``, ``expand``, then any other), and within it the newest chain (highest id). A chain's label-head
  answer, when there is one, is the newest final ``label`` answer of the same sample, source, model and run.

A sample's reference (:func:`select_references`) is its ``refs`` source's final chain ranked by
:data:`REFERENCE_STAGE_ORDER`: a correct ``predict`` chain or an ``explain`` chain (the teacher set D_t), then a
wrong ``predict`` chain, then anything else; newest first.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from mulcot.errors import NotFoundError
from mulcot.refs import RunRef, adapter_digest, resolve
from mulcot.store import Store
from mulcot.store.chains import EVAL, LABEL, is_final

STAGE_EVAL, STAGE_LABEL = EVAL, LABEL  # a chain from P_cot; an answer to P_label
KNOWN_SOURCES = ("teacher", "assistant", "student", "student-gguf")
SUBJECT_STAGE_ORDER = ("eval", "predict", "explain", "expand")
REFERENCE_STAGE_ORDER = ("predict (correct) or explain", "predict (wrong)", "other stages")
RUN_KIND_SOURCE = {"train-assistant": "assistant", "distill": "student"}


@dataclass
class Subject:
    """What is evaluated: a model (generating) or a stored source."""

    kind: str  # "model" | "source"
    name: str  # for tables: run name, model, source or run id
    source: str | None = None  # reasonings.source of the chains (None: chains of a run, any source)
    run_id: str | None = None
    model: str | None = None  # reasonings.model written (model mode); base model of an adapter
    adapter: str | None = None
    folder: str | None = None  # the run's folder, when there is one
    run_kind: str | None = None
    adapter_sha256: str | None = None  # generated chains are reused only for the very same adapter weights

    def public(self) -> dict[str, Any]:
        return asdict(self)


def run_source(store: Store, run_id: str, kind: str | None) -> str:
    """The chain source of a run's generations: ``assistant`` or ``student`` by its kind; a DPO run takes the
    source of the run it started from (through any DPO runs in between)."""
    seen: set[str] = set()
    while kind == "dpo" and run_id not in seen:
        seen.add(run_id)
        start = ((store.get_run(run_id) or {}).get("config") or {}).get("start_run")
        started = store.get_run(start) if start else None
        if started is None:
            break
        run_id, kind = start, started["kind"]
    return RUN_KIND_SOURCE.get(kind or "", "model")


def _adapter_subject(store: Store, ref: RunRef) -> Subject:
    return Subject(
        kind="model", name=ref.run_id, source=run_source(store, ref.run_id, ref.kind), run_id=ref.run_id,
        model=ref.base_model, adapter=str(ref.adapter), folder=str(ref.folder) if ref.folder else None,
        run_kind=ref.kind, adapter_sha256=adapter_digest(ref.adapter),
    )  # fmt: skip


def resolve_model(store: Store, spec: str, runs_dir: str | os.PathLike[str] = "runs") -> Subject:
    """What ``--model SPEC`` names (:func:`mulcot.refs.resolve`): a run (its folder, its adapter folder or its name,
    in the store or under ``runs_dir``), a model folder (``config.json``) or else a hub id."""
    ref = resolve(store, spec, runs_dir, allow=("run", "adapter", "model", "hub"), what="model to evaluate")
    if ref.run is not None:
        return _adapter_subject(store, ref.run)
    from mulcot.models import model_family

    model_family(ref.model)  # refuses what is not a supported model (a hub id: fetched or found in the cache)
    if ref.kind == "model":
        assert ref.path is not None
        return Subject(kind="model", name=ref.path.name, source="model", model=str(ref.path.resolve()))
    return Subject(kind="model", name=spec, source="model", model=spec)


def _available_sources(store: Store, dataset: str, split: str) -> tuple[list[str], list[str]]:
    sources: set[str] = set()
    runs: set[str] = set()
    for r in store.reasonings(dataset=dataset, split=split):
        sources.add(r["source"])
        if r["run_id"]:
            runs.add(r["run_id"])
    return sorted(sources), sorted(runs)


def resolve_chain_source(store: Store, dataset: str, split: str, spec: str) -> Subject:
    """What ``--source SPEC`` names: a source with chains in this split (teacher, assistant, student, student-gguf,
    …) or a run id whose chains are stored."""
    sources, runs = _available_sources(store, dataset, split)
    if spec in sources:
        return Subject(kind="source", name=spec, source=spec)
    if spec in runs or store.get_run(spec) is not None:
        run = store.get_run(spec)
        return Subject(kind="source", name=spec, run_id=spec, run_kind=run["kind"] if run else None)
    have = ", ".join(sources) or "none"
    raise NotFoundError(
        f"no chains from '{spec}' in {dataset}/{split} (sources with chains there: {have}"
        + (f"; runs: {', '.join(runs)}" if runs else "")
        + ")"
    )


# ----------------------------------------------------------------------------------------------- chain choice


def _stage_rank(stage: str | None) -> int:
    return SUBJECT_STAGE_ORDER.index(stage) if stage in SUBJECT_STAGE_ORDER else len(SUBJECT_STAGE_ORDER)


def select_chains(rows: Iterable[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per sample id, the chain to evaluate among ``rows`` (final chains only, label answers excluded): the
    first stage of :data:`SUBJECT_STAGE_ORDER` present, then the newest (highest id)."""
    best: dict[int, dict[str, Any]] = {}
    for r in rows:
        if not is_final(r) or r["stage"] == STAGE_LABEL:
            continue
        cur = best.get(r["sample_id"])
        if cur is None or (_stage_rank(r["stage"]), -r["id"]) < (_stage_rank(cur["stage"]), -cur["id"]):
            best[r["sample_id"]] = r
    return best


def _group_key(row: dict[str, Any]) -> tuple[str, str | None, str | None]:
    return row["source"], row["model"], row["run_id"]


def choose_group(rows: Iterable[dict[str, Any]]) -> tuple[tuple[str, str | None, str | None] | None, list[dict]]:
    """The (source, model, run id) whose chains are evaluated — one model's chains, never a mix: the one with
    final chains (label answers aside) for the most samples, ties to the newest. Returns it and every candidate
    (source, model, run_id, samples, chosen)."""
    samples: dict[tuple[str, str | None, str | None], set[int]] = {}
    newest: dict[tuple[str, str | None, str | None], int] = {}
    for r in rows:
        if not is_final(r) or r["stage"] == STAGE_LABEL:
            continue
        key = _group_key(r)
        samples.setdefault(key, set()).add(r["sample_id"])
        newest[key] = max(newest.get(key, 0), r["id"])
    if not samples:
        return None, []
    best = max(samples, key=lambda k: (len(samples[k]), newest[k]))
    ordered = sorted(samples, key=lambda k: (-len(samples[k]), -newest[k]))
    return best, [{"source": k[0], "model": k[1], "run_id": k[2], "samples": len(samples[k]), "chosen": k == best}
                  for k in ordered]  # fmt: skip


def _ref_rank(row: dict[str, Any]) -> int:
    if (row["stage"] == "predict" and row["prediction"] is not None and row["prediction"] == row.get("gold")) or (
        row["stage"] == "explain"
    ):
        return 0
    if row["stage"] == "predict":
        return 1
    return 2


def select_references(rows: Iterable[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per sample id, the reference chain among ``rows``: final, not a label answer, ranked by
    :data:`REFERENCE_STAGE_ORDER`, newest first."""
    best: dict[int, dict[str, Any]] = {}
    for r in rows:
        if not is_final(r) or r["stage"] == STAGE_LABEL:
            continue
        cur = best.get(r["sample_id"])
        if cur is None or (_ref_rank(r), -r["id"]) < (_ref_rank(cur), -cur["id"]):
            best[r["sample_id"]] = r
    return best


def _label_answers(rows: Iterable[dict[str, Any]]) -> dict[tuple[int, str, str | None, str | None], dict[str, Any]]:
    """Newest final label answer per (sample, source, model, run)."""
    out: dict[tuple[int, str, str | None, str | None], dict[str, Any]] = {}
    for r in rows:
        if r["stage"] != STAGE_LABEL or not is_final(r):
            continue
        key = (r["sample_id"], r["source"], r["model"], r["run_id"])
        if key not in out or r["id"] > out[key]["id"]:
            out[key] = r
    return out
