"""One evaluation (:func:`evaluate`): its settings, generation of what is missing, the scores, the stored result.

Scores:

- classification against the gold labels, separately from the label head (when there is one) and from the chain's
  own ``Prediction`` (:func:`mulcot.evaluate.metrics.classification_metrics`: accuracy, weighted-F1 — reported for
  MSA — and macro-F1 — reported for MASC —, both always in the JSON), and their consistency (share of samples where
  both agree, :func:`mulcot.evaluate.metrics.consistency`);
- reasoning metrics (:func:`mulcot.evaluate.metrics.reasoning_metrics`: Sim, METEOR, BLEU, ROUGE-L, Distinct-1/2)
  of the chains against reference chains from ``refs`` (default ``teacher``; none when the teacher itself is
  evaluated, then only Distinct-n; see :func:`mulcot.evaluate.select.select_references`). The subject's side is
  the chain's raw output (what the model said); the reference's side is its canonical text (what the student is
  trained to reproduce). Pairs without a reference are counted (``missing_refs``) and left out of the reference
  metrics; Distinct-n covers all chains.

Each result is stored (:meth:`Store.add_eval_result`) and written to a folder as ``result.json``,
``per_sample.jsonl`` and ``confusion.png`` (:func:`~mulcot.evaluate.report.write_outputs`).
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mulcot.chains import release_chain
from mulcot.errors import MulcotError, NotFoundError
from mulcot.evaluate.generate import _generate_missing, _stored_outputs
from mulcot.evaluate.metrics import (
    REASONING_METRICS,
    ReasoningScores,
    classification_metrics,
    consistency,
    normalize_metric_names,
    reasoning_metrics,
)
from mulcot.evaluate.report import METRIC_DEFINITIONS, paper_row, write_outputs
from mulcot.evaluate.select import (
    STAGE_EVAL,
    STAGE_LABEL,
    Subject,
    _group_key,
    _label_answers,
    choose_group,
    resolve_chain_source,
    resolve_model,
    select_chains,
    select_references,
)
from mulcot.events import Progress
from mulcot.prompts import get_prompt
from mulcot.serving import ServerConfig
from mulcot.store import Store


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
    server: ServerConfig | None = None  # model mode: generate through an OpenAI-compatible server

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        out["server"] = self.server.public() if self.server is not None else None
        return out


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


def human_ratings(store: Store, dataset: str, split: str, source: str | None) -> list[dict[str, Any]] | None:
    """Mean human ratings (faithfulness, usefulness) of the evaluated source's chains in this split, per model
    (the hook onto :meth:`Store.rating_summary`); None when the store has no ratings support, [] when nothing is
    rated."""
    summary = getattr(store, "rating_summary", None)
    if summary is None:
        return None
    rows = summary(dataset=dataset, split=split)
    return [dict(r) for r in rows if source is None or r.get("source") == source]


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
    write its files; the evaluation is recorded as a run (kind ``eval``). Raises :class:`MulcotError` on bad
    settings or when there is nothing to evaluate."""
    if (config.model is None) == (config.source is None):
        raise MulcotError("name what to evaluate: --model RUN_OR_FOLDER or --source teacher|assistant|student|RUN")
    if config.limit is not None and config.limit < 1:
        raise MulcotError("--limit must be at least 1")
    if config.batch_size < 1:
        raise MulcotError("--batch-size must be at least 1")
    store.require_dataset(config.dataset)
    splits = store.splits(config.dataset)
    if config.split not in splits:
        raise NotFoundError(f"dataset '{config.dataset}' has no split '{config.split}' (splits: {', '.join(splits)})")
    if config.server is not None:
        from mulcot.serving import check_server

        if config.model is None:
            raise MulcotError("--server generates with a model: give --model RUN (stored chains need no server)")
        check_server(config.server)
    record = config.public()
    if config.server is not None:
        from mulcot.events import emit
        from mulcot.serving import served_identity

        assert config.model is not None
        served, warnings = served_identity(config.server, resolve_model(store, config.model, config.runs_dir).adapter)
        record.update(served)
        for warning in warnings:
            emit(progress, "eval", "info", message=warning, warning=True)
    what = re.sub(r"[^A-Za-z0-9._-]+", "-", str(config.model or config.source)).strip("-")
    with store.run(f"eval-{what}-{config.dataset}-{config.split}", kind="eval", dataset=config.dataset,
                   config=record) as run:  # fmt: skip
        result = _evaluate(store, config, progress)
        run.metrics = {"eval_result": result.id, "n": result.n, **paper_row(result.to_dict())}
    return result


def _evaluate(store: Store, config: EvalConfig, progress: Progress | None) -> EvalResult:
    from mulcot.train.items import sample_items

    began = time.perf_counter()
    task = store.require_dataset(config.dataset)["task"]
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
        subject = resolve_chain_source(store, config.dataset, config.split, config.source)
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
    # chains kept by a release (imported or replayed): their Predictions were correct zero-shot or written given
    # the gold label, so their accuracy measures no model; the row says so wherever it is shown
    metrics["gold_conditioned"] = head == "chain" and all(release_chain(chains[i]) for i in ids)
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

    ref_metrics = [m for m in chosen if not m.startswith("distinct")]
    distinct_metrics = [m for m in chosen if m.startswith("distinct")]
    scores: ReasoningScores | None = None
    if paired and ref_metrics:
        scores = reasoning_metrics([subject_texts[i] for i in paired],
                                   [_text(ref_rows[i], canonical=True) for i in paired],
                                   metrics=chosen if len(paired) == len(ids) else ref_metrics,
                                   progress=progress, **common)  # type: ignore[arg-type]  # fmt: skip
        for m, values in scores.per_pair.items():
            per_pair[m] = dict(zip(paired, values, strict=True))
    if distinct_metrics and (scores is None or len(paired) != len(ids)):
        texts = [subject_texts[i] for i in ids]
        distinct = reasoning_metrics(texts, texts, metrics=distinct_metrics, progress=progress,
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
    # which posts were scored: results on other posts do not compare (mulcot eval compare refuses them)
    public["samples_sha256"] = hashlib.sha256(",".join(map(str, sorted(ids))).encode()).hexdigest()[:16]
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
