"""Stage 5: evaluation of a model, or of stored chains, on a split (DESIGN.md §1 Stage 5).

What is evaluated — the *subject* — is either

- a **model** (:func:`resolve_model`): a run (``runs/<name>`` or its name), a LoRA adapter folder, or a plain model
  folder / hub id. For each labelled sample of the split it generates with Hugging Face (:mod:`mulcot.generation`,
  greedy) the reasoning chain (prompt P_cot, stored with stage ``"eval"``) and the label-head answer (prompt
  P_label, stored with stage ``"label"``: ``raw`` = the answer, ``prediction`` = its label, ``fields`` =
  ``{"Prediction": label}``, ``parse_status`` ``full`` when a label was found, else ``none``). Both are stored as
  final reasonings with source ``assistant`` (train-assistant runs), ``student`` (distill runs) or ``model``
  (anything else), ``model`` = the base model, ``run_id`` = the run, and the prompt's version. Generation is
  resumable: samples that already have a final chain (or answer) for the same source, model, run, adapter weights
  (their sha256, in ``origin``) and prompt version are not generated again, and the model is not even loaded when
  nothing is missing.
- a **source** of stored chains (:func:`resolve_source`): ``teacher``, ``assistant``, ``student``,
  ``student-gguf`` (any source name) or a run id. One model's chains are evaluated, never a mix
  (:func:`choose_group`): among the (source, model, run) groups with final chains (label answers aside), the one
  covering the most samples of the split, ties to the newest; the others are listed in the result
  (``chains_from``; name a run id to pick another). Per sample one chain of that group is taken
  (:func:`select_chains`): the first stage in :data:`SUBJECT_STAGE_ORDER` (``eval``, then ``predict``,
  ``explain``, ``expand``, then any other), and within it the newest chain (highest id). A chain's label-head
  answer, when there is one, is the newest final ``label`` answer of the same sample, source, model and run.

Scores (:func:`evaluate`):

- classification against the gold labels, separately from the label head (when there is one) and from the chain's
  own ``Prediction`` (:func:`mulcot.evaluate.metrics.classification_metrics`: accuracy, weighted-F1 — reported for MSA —
  and macro-F1 — reported for MASC —, both always in the JSON), and their consistency (share of samples where
  both agree, :func:`mulcot.evaluate.metrics.consistency`);
- reasoning metrics (:func:`mulcot.evaluate.metrics.reasoning_metrics`: Sim, METEOR, BLEU, ROUGE-L, Distinct-1/2) of the
  chains against reference chains from ``refs`` (default ``teacher``; none when the teacher itself is evaluated,
  then only Distinct-n). A sample's reference is its ``refs`` source's final chain ranked by
  :data:`REFERENCE_STAGE_ORDER`: a correct ``predict`` chain or an ``explain`` chain (the teacher set D_t), then a
  wrong ``predict`` chain, then anything else; newest first. The subject's side is the chain's raw output (what
  the model said); the reference's side is its canonical text (what the student is trained to reproduce). Pairs
  without a reference are counted (``missing_refs``) and left out of the reference metrics; Distinct-n covers all
  chains.

Each result is stored (:meth:`Store.add_eval_result`) and written to a folder as ``result.json``,
``per_sample.jsonl`` and ``confusion.png``. :func:`compare_results` puts stored results side by side;
:func:`score_files` scores two files of chains. No printing here: progress goes through callbacks.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mulcot.errors import DataError, MulcotError, NotFoundError
from mulcot.evaluate.metrics import (
    REASONING_METRICS,
    ReasoningScores,
    classification_metrics,
    consistency,
    normalize_metric_names,
    reasoning_metrics,
)
from mulcot.prompts import get_prompt
from mulcot.runs import RunRef, adapter_digest, find_adapter, resolve_run
from mulcot.store import Store

#: progress(stage, done, total): "loading model", "chains", "labels", then the metric names while scoring.
Progress = Callable[[str, int, int | None], None]

STAGE_EVAL = "eval"
STAGE_LABEL = "label"
KNOWN_SOURCES = ("teacher", "assistant", "student", "student-gguf")
SUBJECT_STAGE_ORDER = ("eval", "predict", "explain", "expand")
REFERENCE_STAGE_ORDER = ("predict (correct) or explain", "predict (wrong)", "other stages")
RUN_KIND_SOURCE = {"train-assistant": "assistant", "distill": "student"}
PAPER_COLUMNS = ("accuracy", "f1", "sim", "meteor", "bleu", "rouge_l", "distinct_1", "distinct_2")

#: One line per metric: its exact definition (the footer of the eval table).
METRIC_DEFINITIONS: dict[str, str] = {
    "Acc": "share of samples whose predicted label equals the gold label; from the label prompt (P_label) when the "
    "model has a label head, else from the chain's own Prediction; an unparseable answer counts as wrong",
    "w-F1": "F1 per label (2PR/(P+R)) averaged with weights = gold support (scikit-learn 'weighted'); reported for MSA",
    "m-F1": "unweighted mean of the three labels' F1 (scikit-learn 'macro'); reported for MASC",
    "Cons.": "share of samples where the chain's own Prediction equals the label head's prediction (both valid)",
    "Sim": "cosine similarity of all-MiniLM-L6-v2 sentence embeddings of chain and reference (256 word pieces), "
    "mean over pairs",
    "METEOR": "nltk meteor_score (alpha 0.9, beta 3, gamma 0.5, WordNet synonyms, Porter stems) on lowercased "
    "Treebank tokens, mean over pairs",
    "BLEU": "sacrebleu sentence BLEU, 13a tokens, 4-gram, no smoothing, mean over pairs (corpus BLEU with --corpus)",
    "ROUGE-L": "F of the summary-level union LCS (rouge 1.0.1: sentences split at '.', whitespace words), mean over "
    "pairs",
    "Dist-1/2": "distinct n-grams / all n-grams of a chain's lowercased Treebank tokens, mean over chains (pooled "
    "over all chains with --corpus)",
}


# ------------------------------------------------------------------------------------------------- the subject


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


def _adapter_subject(ref: RunRef) -> Subject:
    return Subject(
        kind="model", name=ref.run_id, source=RUN_KIND_SOURCE.get(ref.kind or "", "model"), run_id=ref.run_id,
        model=ref.base_model, adapter=str(ref.adapter), folder=str(ref.folder) if ref.folder else None,
        run_kind=ref.kind, adapter_sha256=adapter_digest(ref.adapter),
    )  # fmt: skip


def _looks_like_path(spec: str) -> bool:
    """A folder as a user writes it (``./x``, ``/x``, ``~/x``, ``a/b/c``), not a hub id (``org/name``)."""
    if spec.startswith((".", "/", "~", os.sep)) or spec.count("/") > 1:
        return True
    return os.sep != "/" and os.sep in spec


def resolve_model(store: Store, spec: str, runs_dir: str | os.PathLike[str] = "runs") -> Subject:
    """What ``--model SPEC`` names: a run (its folder, its adapter folder or its name, in the store or under
    ``runs_dir``: see :func:`mulcot.runs.resolve_run`), a model folder (``config.json``) or else a hub id."""
    path = Path(spec).expanduser()
    if path.is_dir() and find_adapter(path) is None:
        if (path / "config.json").is_file():
            from mulcot.models import model_family

            model_family(path)  # refuses what is not a Qwen-VL model before anything else happens
            return Subject(kind="model", name=path.name, source="model", model=str(path.resolve()))
        if not (path / "best" / "adapter_config.json").is_file():
            raise MulcotError(
                f"{spec} is neither a run folder (with adapter/), an adapter folder (adapter_config.json) nor a "
                "model folder (config.json)"
            )
    if path.is_dir() or store.get_run(spec) is not None or (Path(runs_dir) / spec).is_dir():
        return _adapter_subject(resolve_run(store, spec, runs_dir))
    if _looks_like_path(spec):
        raise NotFoundError(f"model folder not found: {spec}")
    from mulcot.models import model_family

    model_family(spec)  # a hub id: fetched (or found in the cache) and checked now
    return Subject(kind="model", name=spec, source="model", model=spec)


def _available_sources(store: Store, dataset: str, split: str) -> tuple[list[str], list[str]]:
    sources: set[str] = set()
    runs: set[str] = set()
    for r in store.reasonings(dataset=dataset, split=split):
        sources.add(r["source"])
        if r["run_id"]:
            runs.add(r["run_id"])
    return sorted(sources), sorted(runs)


def resolve_source(store: Store, dataset: str, split: str, spec: str) -> Subject:
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


def _is_final(row: dict[str, Any]) -> bool:
    return row.get("final") is None or row["final"] == 1


def _stage_rank(stage: str | None) -> int:
    return SUBJECT_STAGE_ORDER.index(stage) if stage in SUBJECT_STAGE_ORDER else len(SUBJECT_STAGE_ORDER)


def select_chains(rows: Iterable[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per sample id, the chain to evaluate among ``rows`` (final chains only, label answers excluded): the
    first stage of :data:`SUBJECT_STAGE_ORDER` present, then the newest (highest id)."""
    best: dict[int, dict[str, Any]] = {}
    for r in rows:
        if not _is_final(r) or r["stage"] == STAGE_LABEL:
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
        if not _is_final(r) or r["stage"] == STAGE_LABEL:
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
        if not _is_final(r) or r["stage"] == STAGE_LABEL:
            continue
        cur = best.get(r["sample_id"])
        if cur is None or (_ref_rank(r), -r["id"]) < (_ref_rank(cur), -cur["id"]):
            best[r["sample_id"]] = r
    return best


def _label_answers(rows: Iterable[dict[str, Any]]) -> dict[tuple[int, str, str | None, str | None], dict[str, Any]]:
    """Newest final label answer per (sample, source, model, run)."""
    out: dict[tuple[int, str, str | None, str | None], dict[str, Any]] = {}
    for r in rows:
        if r["stage"] != STAGE_LABEL or not _is_final(r):
            continue
        key = (r["sample_id"], r["source"], r["model"], r["run_id"])
        if key not in out or r["id"] > out[key]["id"]:
            out[key] = r
    return out


# ------------------------------------------------------------------------------------------------- config


@dataclass
class EvalConfig:
    """One evaluation's settings (the CLI's flags). Exactly one of ``model`` and ``source``."""

    dataset: str
    split: str = "test"
    model: str | None = None
    source: str | None = None
    refs: str | None = None  # None: teacher (none when the teacher itself is evaluated); "none": no references
    sim_model: str | None = None
    corpus: bool = False
    metrics: list[str] | None = None  # reasoning metrics (default all)
    limit: int | None = None
    max_new_tokens: int = 512
    label_max_new_tokens: int = 16
    batch_size: int = 8
    max_pixels: int | None = None  # default: the training default (280*280)
    device: str | None = None
    dtype: str | None = None
    load_in_4bit: bool = False
    nltk_data_dir: str | None = None
    embedding_cache: bool = True
    out: str | None = None
    runs_dir: str = "runs"
    write_files: bool = True

    def public(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvalResult:
    """A finished evaluation: what ``--json`` prints and ``result.json`` holds."""

    id: int | None
    dataset: str
    split: str
    task: str
    subject: Subject
    n: int
    metrics: dict[str, Any]
    config: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)
    per_sample: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0

    def to_dict(self, *, per_sample: bool = False) -> dict[str, Any]:
        out = {
            "id": self.id, "dataset": self.dataset, "split": self.split, "task": self.task,
            "subject": self.subject.public(), "source": self.subject.source, "model": self.subject.model,
            "run_id": self.subject.run_id, "n": self.n, "metrics": self.metrics, "config": self.config,
            "files": self.files, "wall_s": round(self.wall_s, 3), "definitions": METRIC_DEFINITIONS,
        }  # fmt: skip
        if per_sample:
            out["per_sample"] = self.per_sample
        return out


# --------------------------------------------------------------------------------------------- generation


def _stored_outputs(store: Store, dataset: str, split: str, subject: Subject, stage: str,
                    version: str) -> dict[int, dict[str, Any]]:  # fmt: skip
    """Newest final output per sample of the subject for one stage and prompt version."""
    out: dict[int, dict[str, Any]] = {}
    for r in store.reasonings(dataset=dataset, split=split, source=subject.source, stage=stage, run_id=subject.run_id):
        if r["run_id"] != subject.run_id or r["model"] != subject.model or r["prompt_version"] != version:
            continue
        if subject.adapter_sha256 and not (r["origin"] or "").endswith("@" + subject.adapter_sha256[:12]):
            continue  # generated by other weights under the same run name (retrained, or an older mulcot)
        if _is_final(r) and (r["sample_id"] not in out or r["id"] > out[r["sample_id"]]["id"]):
            out[r["sample_id"]] = r
    return out


def _generate_missing(store: Store, subject: Subject, config: EvalConfig, task: str, items: list[Any],
                      progress: Progress | None) -> dict[str, int]:  # fmt: skip
    """Generate chains and label answers for the items without them; returns counts."""
    from mulcot.generation import GenerationConfig, generate
    from mulcot.reasoning import format_prediction, parse_reasoning
    from mulcot.sft_data import DEFAULT_MAX_PIXELS

    plan = []
    for prompt, stage, max_new in (("cot", STAGE_EVAL, config.max_new_tokens),
                                   ("label", STAGE_LABEL, config.label_max_new_tokens)):  # fmt: skip
        version = get_prompt(prompt, task).version
        have = _stored_outputs(store, config.dataset, config.split, subject, stage, version)
        todo = [it for it in items if it.sample_id not in have]
        plan.append((prompt, stage, max_new, version, todo, len(items) - len(todo)))
    counts = {"chains_generated": len(plan[0][4]), "chains_reused": plan[0][5],
              "labels_generated": len(plan[1][4]), "labels_reused": plan[1][5]}  # fmt: skip
    if not plan[0][4] and not plan[1][4]:
        return counts

    from mulcot.models import load_model, load_with_adapter

    assert subject.model is not None
    if progress:
        progress("loading model", 0, None)
    model, processor, _ = load_model(subject.model, device=config.device, dtype=config.dtype,
                                     load_in_4bit=config.load_in_4bit)  # fmt: skip
    if subject.adapter:
        model = load_with_adapter(model, subject.adapter)
    tok = processor.tokenizer
    origin = f"eval:{subject.adapter or subject.model}"
    if subject.adapter_sha256:
        origin += "@" + subject.adapter_sha256[:12]
    for prompt, stage, max_new, version, todo, _ in plan:
        stage_name = "chains" if stage == STAGE_EVAL else "labels"
        gcfg = GenerationConfig(max_new_tokens=max_new, batch_size=config.batch_size,
                                max_pixels=config.max_pixels or DEFAULT_MAX_PIXELS)  # fmt: skip
        if progress:
            progress(stage_name, 0, len(todo))
        for start in range(0, len(todo), config.batch_size):
            chunk = todo[start : start + config.batch_size]
            began = time.perf_counter()
            answers = generate(model, processor, chunk, prompt, task, gcfg)
            per_item = (time.perf_counter() - began) / len(chunk)
            rows = []
            for item, outs in zip(chunk, answers, strict=True):
                raw = outs[0] if outs else ""
                parsed = parse_reasoning(raw)
                row: dict[str, Any] = {
                    "sample_id": item.sample_id, "source": subject.source, "model": subject.model, "stage": stage,
                    "prompt_version": version, "raw": raw, "prediction": parsed.prediction, "attempt": 1,
                    "final": True, "tokens_out": len(tok(raw, add_special_tokens=False)["input_ids"]),
                    "latency_s": per_item, "run_id": subject.run_id, "origin": origin,
                }  # fmt: skip
                if stage == STAGE_EVAL:
                    row.update(text=parsed.to_text(), fields=parsed.fields, parse_status=parsed.status,
                               valid=parsed.valid)  # fmt: skip
                else:
                    label = parsed.prediction
                    row.update(text=format_prediction(label) if label else raw,
                               fields={"Prediction": label} if label else {},
                               parse_status="full" if label else "none", valid=label is not None)  # fmt: skip
                rows.append(row)
            with store.transaction():
                for row in rows:
                    store.add_reasoning(**row)
            if progress:
                progress(stage_name, min(start + len(chunk), len(todo)), len(todo))
    return counts


# --------------------------------------------------------------------------------------------------- ratings


def human_ratings(store: Store, dataset: str, split: str, source: str | None) -> list[dict[str, Any]] | None:
    """Mean human ratings (faithfulness, usefulness) of the evaluated source's chains in this split, per model
    (the hook onto :meth:`Store.rating_summary`); None when the store has no ratings support, [] when nothing is
    rated."""
    summary = getattr(store, "rating_summary", None)
    if summary is None:
        return None
    rows = summary(dataset=dataset, split=split)
    return [dict(r) for r in rows if source is None or r.get("source") == source]


# ------------------------------------------------------------------------------------------------ evaluation


def _f1_name(task: str) -> str:
    return "macro_f1" if task == "masc" else "weighted_f1"


def _text(row: dict[str, Any] | None, *, canonical: bool) -> str:
    if row is None:
        return ""
    first, second = ("text", "raw") if canonical else ("raw", "text")
    return row.get(first) or row.get(second) or ""


def default_out_dir(config: EvalConfig, subject: Subject) -> Path:
    """``<run folder>/eval/<dataset>-<split>`` for a run, else ``<runs_dir>/eval/<dataset>-<split>-<subject>``."""
    slug = f"{config.dataset}-{config.split}"
    if subject.kind == "model" and subject.folder:
        return Path(subject.folder) / "eval" / slug
    name = subject.name if subject.kind == "source" else Path(subject.name).name or subject.name
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{slug}-{name}").strip("-")
    return Path(config.runs_dir) / "eval" / safe


def evaluate(store: Store, config: EvalConfig, *, progress: Progress | None = None) -> EvalResult:
    """Run one evaluation (see the module doc): generate what is missing (model mode), score, store the result and
    write its files. Raises :class:`MulcotError` on bad settings or when there is nothing to evaluate."""
    from mulcot.sft_data import sample_items

    began = time.perf_counter()
    if (config.model is None) == (config.source is None):
        raise MulcotError("name what to evaluate: --model RUN_OR_FOLDER or --source teacher|assistant|student|RUN")
    if config.limit is not None and config.limit < 1:
        raise MulcotError("--limit must be at least 1")
    if config.batch_size < 1:
        raise MulcotError("--batch-size must be at least 1")
    ds = store.require_dataset(config.dataset)
    task = ds["task"]
    splits = store.splits(config.dataset)
    if config.split not in splits:
        raise NotFoundError(f"dataset '{config.dataset}' has no split '{config.split}' (splits: {', '.join(splits)})")
    samples = store.samples(config.dataset, config.split)
    labelled = [s for s in samples if s["label"]]
    if not labelled:
        raise MulcotError(f"no labelled samples in {config.dataset}/{config.split}: nothing to score against")
    if config.limit:
        labelled = labelled[: config.limit]
    gold_by_id = {s["id"]: s["label"] for s in labelled}
    key_by_id = {s["id"]: s["key"] for s in labelled}

    generated: dict[str, int] | None = None
    if config.model is not None:
        subject = resolve_model(store, config.model, config.runs_dir)
        wanted = set(gold_by_id)
        items = [it for it in sample_items(store, config.dataset, config.split) if it.sample_id in wanted]
        generated = _generate_missing(store, subject, config, task, items, progress)
        cot_version = get_prompt("cot", task).version
        label_version = get_prompt("label", task).version
        chains = _stored_outputs(store, config.dataset, config.split, subject, STAGE_EVAL, cot_version)
        labels = _stored_outputs(store, config.dataset, config.split, subject, STAGE_LABEL, label_version)
        chains = {sid: r for sid, r in chains.items() if sid in wanted}
        label_rows = {sid: r for sid, r in labels.items() if sid in wanted}
    else:
        assert config.source is not None
        subject = resolve_source(store, config.dataset, config.split, config.source)
        rows = store.reasonings(dataset=config.dataset, split=config.split, source=subject.source,
                                run_id=subject.run_id)  # fmt: skip
        rows = [r for r in rows if r["sample_id"] in gold_by_id]
        group, groups = choose_group(rows)
        chains = select_chains(r for r in rows if _group_key(r) == group)
        answers = _label_answers(rows)
        label_rows = {}
        for sid, c in chains.items():
            answer = answers.get((sid, c["source"], c["model"], c["run_id"]))
            if answer is not None:
                label_rows[sid] = answer
        if group is not None:
            subject.source, subject.model, subject.run_id = group
        chosen_from = {"groups": groups}
    if not chains:
        raise MulcotError(f"no chains to evaluate for {subject.name} in {config.dataset}/{config.split}")

    ids = [s["id"] for s in labelled if s["id"] in chains]
    gold = [gold_by_id[i] for i in ids]
    chain_preds = [chains[i]["prediction"] for i in ids]
    metrics: dict[str, Any] = {"task": task, "f1_reported": _f1_name(task)}
    metrics["chain"] = classification_metrics(gold, chain_preds)
    label_ids = [i for i in ids if i in label_rows]
    if label_ids:
        metrics["label"] = classification_metrics([gold_by_id[i] for i in label_ids],
                                                  [label_rows[i]["prediction"] for i in label_ids])  # fmt: skip
        metrics["consistency"] = consistency([chains[i]["prediction"] for i in label_ids],
                                             [label_rows[i]["prediction"] for i in label_ids])  # fmt: skip
        metrics["consistency_n"] = len(label_ids)
    else:
        metrics["label"] = None
        metrics["consistency"] = None
        metrics["consistency_n"] = 0
    head = "label" if label_ids and len(label_ids) == len(ids) else "chain"
    metrics["headline"] = {
        "from": head,
        "accuracy": metrics[head]["accuracy"],
        "f1": metrics[head][_f1_name(task)],
        "weighted_f1": metrics[head]["weighted_f1"],
        "macro_f1": metrics[head]["macro_f1"],
    }
    n_labelled = sum(1 for s in samples if s["label"])
    metrics["coverage"] = {
        "samples": len(samples), "unlabelled_skipped": len(samples) - n_labelled, "limit": config.limit,
        "considered": len(gold_by_id), "evaluated": len(ids), "without_chain": len(gold_by_id) - len(ids),
        "without_label_answer": len(ids) - len(label_ids),
    }  # fmt: skip
    if generated is not None:
        metrics["generated"] = generated
    else:
        metrics["chains_from"] = chosen_from

    # -- reasoning metrics
    refs_name = config.refs
    if refs_name is None:
        refs_name = None if subject.kind == "source" and subject.source == "teacher" else "teacher"
    elif refs_name.lower() == "none":
        refs_name = None
    chosen = list(normalize_metric_names(config.metrics))
    ref_rows: dict[int, dict[str, Any]] = {}
    if refs_name is not None:
        rows = store.reasonings(dataset=config.dataset, split=config.split, source=refs_name)
        if not rows and store.get_run(refs_name) is not None:
            rows = store.reasonings(dataset=config.dataset, split=config.split, run_id=refs_name)
        ref_rows = select_references(r for r in rows if r["sample_id"] in gold_by_id)
    paired = [i for i in ids if i in ref_rows]
    subject_texts = {i: _text(chains[i], canonical=False) for i in ids}
    reasoning: dict[str, Any] = {"refs": refs_name, "pairs": len(paired), "missing_refs": len(ids) - len(paired),
                                 "subject_text": "raw output", "reference_text": "canonical text"}  # fmt: skip
    per_pair: dict[str, dict[int, float]] = {}
    common = dict(sim_model=config.sim_model, corpus=config.corpus, nltk_data_dir=config.nltk_data_dir,
                  embedding_cache=True if config.embedding_cache else None)  # fmt: skip

    def metric_progress(metric: str, done: int, total: int) -> None:
        if progress:
            progress(metric, done, total)

    ref_metrics = [m for m in chosen if not m.startswith("distinct")]
    distinct_metrics = [m for m in chosen if m.startswith("distinct")]
    scores: ReasoningScores | None = None
    if paired and ref_metrics:
        scores = reasoning_metrics([subject_texts[i] for i in paired],
                                   [_text(ref_rows[i], canonical=True) for i in paired],
                                   metrics=chosen if len(paired) == len(ids) else ref_metrics,
                                   progress=metric_progress, **common)  # type: ignore[arg-type]  # fmt: skip
        for m, values in scores.per_pair.items():
            per_pair[m] = dict(zip(paired, values, strict=True))
    if distinct_metrics and (scores is None or len(paired) != len(ids)):
        texts = [subject_texts[i] for i in ids]
        distinct = reasoning_metrics(texts, texts, metrics=distinct_metrics, progress=metric_progress,
                                     **{**common, "sim_model": None})  # type: ignore[arg-type]  # fmt: skip
        for m, values in distinct.per_pair.items():
            per_pair[m] = dict(zip(ids, values, strict=True))
        if scores is None:
            scores = distinct
        else:
            scores.means.update(distinct.means)
            scores.corpus.update(distinct.corpus)
            scores.score_seconds.update(
                {k: v for k, v in distinct.score_seconds.items() if k not in scores.score_seconds}
            )
            scores.metrics = tuple(m for m in REASONING_METRICS if m in scores.means or m in scores.unavailable)
    if scores is not None:
        reasoning.update(scores.to_dict())
        reasoning["metrics"] = list(scores.metrics)
        reasoning["headline"] = {m: scores.corpus.get(m, scores.means.get(m)) for m in scores.metrics}
    else:
        reasoning.update(metrics=[], means={}, corpus={}, unavailable={}, headline={})
    if refs_name is not None and not paired and ref_metrics:
        reasoning["unavailable"] = {
            **reasoning.get("unavailable", {}),
            **{m: f"no reference chains from '{refs_name}' in {config.dataset}/{config.split}" for m in ref_metrics},
        }
    metrics["reasoning"] = reasoning
    metrics["ratings"] = human_ratings(store, config.dataset, config.split, subject.source)

    per_sample = []
    for i in ids:
        row = {"sample_id": i, "key": key_by_id[i], "gold": gold_by_id[i], "chain_id": chains[i]["id"],
               "chain_stage": chains[i]["stage"], "chain_prediction": chains[i]["prediction"],
               "label_id": label_rows[i]["id"] if i in label_rows else None,
               "label_prediction": label_rows[i]["prediction"] if i in label_rows else None,
               "ref_id": ref_rows[i]["id"] if i in ref_rows else None}  # fmt: skip
        for m, values in per_pair.items():
            row[m] = values.get(i)
        per_sample.append(row)

    public = config.public()
    public["prompt_versions"] = {"cot": get_prompt("cot", task).version, "label": get_prompt("label", task).version}
    public["subject"] = subject.public()
    result = EvalResult(id=None, dataset=config.dataset, split=config.split, task=task, subject=subject, n=len(ids),
                        metrics=metrics, config=public, per_sample=per_sample)  # fmt: skip
    result.id = store.add_eval_result(dataset=config.dataset, split=config.split, metrics=metrics, n=len(ids),
                                      source=subject.source, model=subject.model, run_id=subject.run_id,
                                      config=public)  # fmt: skip
    result.wall_s = time.perf_counter() - began
    if config.write_files:
        out = Path(config.out) if config.out else default_out_dir(config, subject)
        result.files = write_outputs(result, out)
    return result


# -------------------------------------------------------------------------------------------------- outputs


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_outputs(result: EvalResult, folder: str | os.PathLike[str]) -> dict[str, str]:
    """Write ``result.json``, ``per_sample.jsonl`` and ``confusion.png`` into ``folder``; returns their paths."""
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MulcotError(f"cannot create the output folder {out}: {err.strerror or err}") from None
    files = {"json": str(out / "result.json"), "per_sample": str(out / "per_sample.jsonl"),
             "confusion": str(out / "confusion.png")}  # fmt: skip
    result.files = files
    (out / "result.json").write_text(json.dumps(_json_safe(result.to_dict()), indent=2, ensure_ascii=False,
                                                default=str), encoding="utf-8")  # fmt: skip
    with (out / "per_sample.jsonl").open("w", encoding="utf-8") as fh:
        for row in result.per_sample:
            fh.write(json.dumps(_json_safe(row), ensure_ascii=False) + "\n")
    heads = (
        [(f"label prompt (n={result.metrics['label']['n']})", result.metrics["label"])]
        if result.metrics.get("label")
        else []
    )
    heads.append((f"chain Prediction (n={result.metrics['chain']['n']})", result.metrics["chain"]))
    plot_confusion(heads, out / "confusion.png", title=f"{result.subject.name} on {result.dataset}/{result.split}")
    return files


def plot_confusion(heads: Sequence[tuple[str, dict[str, Any]]], path: str | os.PathLike[str], *,
                   title: str = "") -> Path:  # fmt: skip
    """One confusion-matrix panel per (title, classification_metrics dict): gold rows × predicted columns, with an
    ``invalid`` column for unparseable predictions; counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(heads), figsize=(4.6 * len(heads), 4.0), squeeze=False)
    for ax, (name, m) in zip(axes[0], heads, strict=True):
        labels = m["labels"]
        matrix = [row + [m["per_label"][lab]["invalid"]] for row, lab in zip(m["confusion_matrix"], labels,
                                                                            strict=True)]  # fmt: skip
        cols = [*labels, "invalid"]
        peak = max(1, max(max(r) for r in matrix))
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=peak)
        ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        ax.set_title(f"{name}\nacc {m['accuracy']:.3f}", fontsize=10)
        for r, row in enumerate(matrix):
            for c, v in enumerate(row):
                ax.text(c, r, str(v), ha="center", va="center", color="white" if v > peak / 2 else "black")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def paper_row(result: dict[str, Any]) -> dict[str, Any]:
    """The Table 3/4/5 numbers of a stored or fresh result (``EvalResult.to_dict()`` or a store row): accuracy,
    the task's F1 (``f1_name``), Sim, METEOR, BLEU, ROUGE-L, Distinct-1/2 (corpus-level when computed) and
    consistency; None where not computed."""
    m = result["metrics"]
    head = m.get("headline") or {}
    reasoning = m.get("reasoning") or {}
    values = reasoning.get("headline") or {}
    row: dict[str, Any] = {
        "accuracy": head.get("accuracy"), "f1": head.get("f1"), "f1_name": m.get("f1_reported"),
        "from": head.get("from"), "consistency": m.get("consistency"),
    }  # fmt: skip
    for k in REASONING_METRICS:
        row[k] = values.get(k)
    return row


# -------------------------------------------------------------------------------------------------- compare


def _row_dict(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("id", "dataset", "split", "source", "model", "run_id", "n", "metrics", "config",
                                "created_at") if k in row}  # fmt: skip


def compare_results(store: Store, specs: Sequence[str], *, dataset: str | None = None,
                    split: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Stored evaluation results for each spec, in order: an eval result id (``12`` or ``#12``), else the latest
    result of a run id, else of a source name, else of a model (optionally within one dataset / split)."""
    if not specs:
        raise MulcotError("name at least one evaluation result, run or source to compare")
    rows = store.eval_results(dataset)
    by_id = {r["id"]: r for r in rows} if dataset is None else {r["id"]: r for r in store.eval_results()}
    scoped = [r for r in rows if split is None or r["split"] == split]
    out = []
    for spec in specs:
        text = spec.strip()
        if re.fullmatch(r"#?\d+", text):
            rid = int(text.lstrip("#"))
            if rid not in by_id:
                raise NotFoundError(f"no evaluation result #{rid} in {store.path}")
            out.append(_row_dict(by_id[rid]))
            continue
        found = None
        for col in ("run_id", "source", "model"):
            matches = [r for r in scoped if r.get(col) == text]
            if matches:
                found = max(matches, key=lambda r: r["id"])
                break
        if found is None:
            known = sorted({str(r.get(c)) for r in scoped for c in ("run_id", "source") if r.get(c)})
            where = f" for {dataset or 'any dataset'}" + (f"/{split}" if split else "")
            raise NotFoundError(
                f"no evaluation result for '{text}'{where} (results exist for: {', '.join(known) or 'nothing yet'}; "
                "run `mulcot eval DATASET ...` first)"
            )
        out.append(_row_dict(found))
    return out


# ---------------------------------------------------------------------------------------------------- score


def read_chain_file(path: str | os.PathLike[str], *, field_name: str = "text") -> list[str]:
    """Chains from a file: a JSON array (of strings, or of objects with a ``field_name`` string) or JSONL (one
    object with a ``field_name`` string, or one JSON string, per non-blank line). Raises :class:`DataError`
    naming the file and line on any problem."""
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise DataError("file not found", file=name)
    if p.is_dir():
        raise DataError("is a folder, not a file of chains", file=name)
    try:
        content = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text ({err.reason} at byte {err.start})", file=name) from None
    except OSError as err:
        raise DataError(f"cannot read: {err.strerror or err}", file=name) from None
    stripped = content.lstrip()
    if not stripped:
        raise DataError("empty file: expected a JSON array of chains or JSONL with a "
                        f"'{field_name}' field per line", file=name)  # fmt: skip

    def take(value: Any, line: int) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, dict):
            if field_name not in value:
                raise DataError(f"no '{field_name}' field (keys: {', '.join(map(str, value)) or 'none'})", file=name,
                                row=line)  # fmt: skip
            text = value[field_name]
            if text is None:
                return ""
            if not isinstance(text, str):
                raise DataError(f"'{field_name}' is {type(text).__name__}, not text", file=name, row=line)
            return text
        raise DataError(f"expected an object with a '{field_name}' field or a string, got "
                        f"{type(value).__name__}", file=name, row=line)  # fmt: skip

    if stripped.startswith("["):
        try:
            return [take(value, line) for value, line in _json_array_items(content)]
        except json.JSONDecodeError as err:
            raise DataError(f"not valid JSON ({err.msg}, column {err.colno})", file=name, row=err.lineno) from None
    out = []
    for lineno, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"not valid JSON ({err.msg}, column {err.colno})", file=name, row=lineno) from None
        out.append(take(value, lineno))
    return out


def _json_array_items(content: str) -> Iterator[tuple[Any, int]]:
    """The elements of a JSON array, each with the line it starts on; raises JSONDecodeError (with the line)."""
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    pos = ws.match(content, 0).end() + 1  # type: ignore[union-attr]  # past "["
    pos = ws.match(content, pos).end()  # type: ignore[union-attr]
    if content.startswith("]", pos):
        end = ws.match(content, pos + 1).end()  # type: ignore[union-attr]
        if end != len(content):
            raise json.JSONDecodeError("Extra data", content, end)
        return
    while True:
        value, end = decoder.raw_decode(content, pos)
        yield value, content.count("\n", 0, pos) + 1
        pos = ws.match(content, end).end()  # type: ignore[union-attr]
        if content.startswith(",", pos):
            pos = ws.match(content, pos + 1).end()  # type: ignore[union-attr]
            continue
        if content.startswith("]", pos):
            end = ws.match(content, pos + 1).end()  # type: ignore[union-attr]
            if end != len(content):
                raise json.JSONDecodeError("Extra data", content, end)
            return
        raise json.JSONDecodeError("Expecting ',' delimiter", content, pos)


@dataclass
class FileScores:
    """What :func:`score_files` returns."""

    preds: str
    refs: str
    scores: ReasoningScores

    def to_dict(self, *, per_pair: bool = True) -> dict[str, Any]:
        return {"preds": self.preds, "refs": self.refs, "n": self.scores.n, **self.scores.to_dict(per_pair=per_pair),
                "definitions": METRIC_DEFINITIONS}  # fmt: skip


def score_files(preds: str | os.PathLike[str], refs: str | os.PathLike[str], *, field_name: str = "text",
                progress: Progress | None = None, **options: Any) -> FileScores:  # fmt: skip
    """Score the chains of ``preds`` against those of ``refs`` (paired by order) with the reasoning metrics;
    ``options`` go to :func:`mulcot.evaluate.metrics.reasoning_metrics` (sim_model, corpus, metrics, nltk_data_dir,
    embedding_cache, …)."""
    p = read_chain_file(preds, field_name=field_name)
    r = read_chain_file(refs, field_name=field_name)
    if not p:
        raise DataError("no chains in the file", file=str(preds))
    if not r:
        raise DataError("no chains in the file", file=str(refs))
    if len(p) != len(r):
        raise MulcotError(f"{preds} has {len(p)} chains but {refs} has {len(r)}: they are paired by order")

    def cb(metric: str, done: int, total: int) -> None:
        if progress:
            progress(metric, done, total)

    scores = reasoning_metrics(p, r, progress=cb, **options)
    return FileScores(preds=str(preds), refs=str(refs), scores=scores)
