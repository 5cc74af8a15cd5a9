"""One evaluation (:func:`evaluate`): its settings, generation of what is missing, the scores, the stored result.

Scores:

- classification against the gold labels, separately from the label head (when there is one) and from the chain's
  own ``Prediction`` (:func:`mulcot.metrics.classification_metrics`: accuracy, weighted-F1 — reported for
  MSA — and macro-F1 — reported for MASC —, both always in the JSON), and their consistency (share of samples where
  both agree, :func:`mulcot.metrics.consistency`);
- reasoning metrics (:func:`mulcot.metrics.reasoning_metrics`: Sim, METEOR, BLEU, ROUGE-L, Distinct-1/2)
  of the chains against reference chains from ``refs`` (default ``teacher``; none when the teacher itself is
  evaluated, then only Distinct-n; see :func:`mulcot.evaluate.select.select_references`). The subject's side is
  the chain's raw output (what the model said); the reference's side is its canonical text (what the student is
  trained to reproduce). Pairs without a reference are counted (``missing_refs``) and left out of the reference
  metrics; Distinct-n covers all chains.

When every label answer carries label probabilities (forced-choice scoring: ``fields["probabilities"]`` of the
``label`` rows), ``metrics["probabilities"]`` holds AUROC, ECE with its reliability bins, log loss and Brier
(:func:`mulcot.metrics.calibration.probability_metrics`); else it is None.

Every result also carries ``metrics["uncertainty"]`` (:mod:`mulcot.evaluate.baseline`): its accuracy and macro-F1
with tweet-clustered bootstrap intervals, and the majority baseline (the training split's most frequent label) on
the same posts compared post by post.

Where an LLM judge (``mulcot judge``) has given verdicts on the evaluated chains, ``metrics["judge"]`` summarises
them (:func:`mulcot.metrics.judge.judge_summary`: rubric means, leakage rate, agreement with people's ratings);
else it is None.

Each result is stored (:meth:`Store.add_eval_result`) with its per-post predictions (``eval_posts``: gold, the
headline's prediction, the chain's and the label head's, the probabilities) and written to a folder as
``result.json``, ``per_sample.jsonl``, ``confusion.png`` and, with probabilities, ``reliability.png``
(:func:`~mulcot.evaluate.report.write_outputs`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mulcot.core.chains import release_chain
from mulcot.core.labels import LABELS
from mulcot.core.prompts import get_prompt
from mulcot.errors import MulcotError, NotFoundError
from mulcot.evaluate.baseline import uncertainty
from mulcot.evaluate.config import EvalConfig, EvalResult
from mulcot.evaluate.generate import generate_missing, stored_outputs, tokenizer_of
from mulcot.evaluate.posts import check_per_post_path, per_post_rows, write_per_post
from mulcot.evaluate.report import paper_row, samples_digest, write_outputs
from mulcot.evaluate.select import (
    STAGE_EVAL,
    STAGE_LABEL,
    Subject,
    choose_group,
    group_key,
    label_answers,
    resolve_chain_source,
    resolve_model,
    select_chains,
    select_references,
)
from mulcot.events import Progress
from mulcot.metrics import (
    REASONING_METRICS,
    ReasoningScores,
    classification_metrics,
    consistency,
    normalize_metric_names,
    reasoning_metrics,
)
from mulcot.metrics.calibration import probability_metrics
from mulcot.metrics.judge import judge_summary
from mulcot.store import Store


def human_ratings(store: Store, dataset: str, split: str, source: str | None) -> list[dict[str, Any]] | None:
    """Mean human ratings (faithfulness, usefulness) of the evaluated source's chains in this split, per model
    (the hook onto :meth:`Store.rating_summary`); None when the store has no ratings support, [] when nothing is
    rated."""
    summary = getattr(store, "rating_summary", None)
    if summary is None:
        return None
    rows = summary(dataset=dataset, split=split)
    return [dict(r) for r in rows if source is None or r.get("source") == source]


def judge_verdicts(store: Store, chain_ids: list[int]) -> dict[str, Any] | None:
    """What an LLM judge (``mulcot judge``) said of the evaluated chains — rubric means, leakage rate, agreement with
    people's ratings (:func:`mulcot.metrics.judge.judge_summary`) — or None when it judged none of them."""
    rows = store.judgements(reasoning_ids=chain_ids)
    if not rows:
        return None
    return judge_summary(rows, store.rated_judgements(reasoning_ids=chain_ids))


def label_probabilities(rows: list[dict[str, Any]]) -> dict[int, dict[str, float]] | None:
    """Per sample id, the label probabilities a label answer carries (``fields["probabilities"]``, label →
    probability, written by forced-choice scoring) when every one of ``rows`` has all three; else None."""
    out: dict[int, dict[str, float]] = {}
    for row in rows:
        probs = (row.get("fields") or {}).get("probabilities")
        if not isinstance(probs, dict) or not all(isinstance(probs.get(lab), int | float) for lab in LABELS):
            return None
        out[row["sample_id"]] = {lab: float(probs[lab]) for lab in LABELS}
    return out


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
    return Path(config.runs_dir or "runs") / "eval" / safe


def evaluate(store: Store, config: EvalConfig, *, progress: Progress | None = None) -> EvalResult:
    """Run one evaluation (see the module doc): generate what is missing (model mode), score, store the result and
    write its files; the evaluation is recorded as a run (kind ``eval``). Raises :class:`MulcotError` on bad
    settings or when there is nothing to evaluate."""
    if config.per_post is not None:
        check_per_post_path(config.per_post)
    if not config.runs_dir:
        config = replace(config, runs_dir=str(store.runs_dir))
    store.require_dataset(config.dataset)
    splits = store.splits(config.dataset)
    if config.split not in splits:
        raise NotFoundError(f"dataset '{config.dataset}' has no split '{config.split}' (splits: {', '.join(splits)})")
    if config.calibrate_on is not None:  # refused before the run is recorded: the store stays as it was
        from mulcot.evaluate.recalibrate import check_calibration_split

        check_calibration_split(store, config)
    record = config.public()
    if config.server is not None:
        from mulcot.events import emit
        from mulcot.generation.base import LabelScoringError
        from mulcot.generation.server import check_server, served_identity
        from mulcot.generation.server_choice import dialect_problem

        owner = check_server(config.server).get(config.server.served_model, "")
        assert config.model is not None
        served_subject = resolve_model(store, config.model, config.runs_dir, served=True)
        problem = dialect_problem(owner, tokenizer_of(served_subject)) if config.label_scoring == "choice" else None
        if problem:  # refused before the run is recorded: the store stays as it was
            raise LabelScoringError(problem)
        served, warnings = served_identity(config.server, served_subject.adapter)
        record.update(served)
        for warning in warnings:
            emit(progress, "eval", "info", message=warning, warning=True)
    what = re.sub(r"[^A-Za-z0-9._-]+", "-", str(config.model or config.source)).strip("-")
    with store.run(f"eval-{what}-{config.dataset}-{config.split}", kind="eval", dataset=config.dataset,
                   config=record) as run:
        result = _evaluate(store, config, progress)
        run.metrics = {"eval_result": result.id, "n": result.n, **paper_row(result.to_dict())}
    return result


@dataclass
class Gathered:
    """What one evaluation scores: the subject, its chain and label answer per sample, and where they came from."""

    subject: Subject
    chains: dict[int, dict[str, Any]]
    label_rows: dict[int, dict[str, Any]]
    provenance: dict[str, Any] = field(default_factory=dict)  # "generated" (model mode) or "chains_from" (source)
    probs: dict[int, dict[str, float]] | None = None  # label probabilities per sample (forced-choice scoring)


def gather(store: Store, config: EvalConfig, task: str, gold_by_id: dict[int, str],
           progress: Progress | None) -> Gathered:
    """Model mode: the model's chains and label answers, generated where missing; source mode: one stored model's
    chains (:func:`choose_group`) and their label answers."""
    from mulcot.core.inputs import mask_items, sample_items

    if config.model is not None:
        subject = resolve_model(store, config.model, config.runs_dir, served=config.server is not None)
        items = [it for it in mask_items(sample_items(store, config.dataset, config.split), subject.inputs)
                 if it.sample_id in gold_by_id]
        generated = generate_missing(store, subject, config, task, items, progress)
        outputs = {stage: stored_outputs(store, config.dataset, config.split, subject, stage,
                                         get_prompt(prompt, task).version, config.label_scoring)
                   for prompt, stage in (("cot", STAGE_EVAL), ("label", STAGE_LABEL))}
        # the posts generate_missing asks for chains (the same first N items), so the two never disagree
        chain_ids = {it.sample_id for it in items[: config.max_chains]} if config.max_chains is not None \
            else gold_by_id
        chains = {sid: r for sid, r in outputs[STAGE_EVAL].items() if sid in chain_ids}
        label_rows = {sid: r for sid, r in outputs[STAGE_LABEL].items() if sid in gold_by_id}
        return Gathered(subject, chains, label_rows, {"generated": generated})
    assert config.source is not None
    subject = resolve_chain_source(store, config.dataset, config.split, config.source)
    rows = store.reasonings(dataset=config.dataset, split=config.split, source=subject.source, run_id=subject.run_id)
    rows = [r for r in rows if r["sample_id"] in gold_by_id]
    group, groups = choose_group(rows)
    chains = select_chains(r for r in rows if group_key(r) == group)
    answers = label_answers(rows)
    label_rows = {}
    for sid, c in chains.items():
        answer = answers.get((sid, c["source"], c["model"], c["run_id"]))
        if answer is not None:
            label_rows[sid] = answer
    if group is not None:
        subject.source, subject.model, subject.run_id = group
    return Gathered(subject, chains, label_rows, {"chains_from": {"groups": groups}})


def classify(task: str, ids: list[int], gold_by_id: dict[int, str], got: Gathered) -> dict[str, Any]:
    """Classification metrics of the chains' own Prediction and of the label head, their consistency (on the posts
    with both), and the headline (the label head when every sample has an answer, else the chain; ``ids`` are then
    the posts with a chain)."""
    chains, label_rows = got.chains, got.label_rows
    metrics: dict[str, Any] = {"task": task, "f1_reported": _f1_name(task)}
    chain_ids = [i for i in ids if i in chains]
    metrics["chain"] = classification_metrics([gold_by_id[i] for i in chain_ids],
                                              [chains[i]["prediction"] for i in chain_ids]) if chain_ids else None
    label_ids = [i for i in ids if i in label_rows]
    metrics["label"] = classification_metrics([gold_by_id[i] for i in label_ids],
                                              [label_rows[i]["prediction"] for i in label_ids]) if label_ids else None
    both = [i for i in label_ids if i in chains]
    metrics["consistency"] = consistency([chains[i]["prediction"] for i in both],
                                         [label_rows[i]["prediction"] for i in both]) if both else None
    metrics["consistency_n"] = len(both)
    head = "label" if label_ids and len(label_ids) == len(ids) else "chain"
    # label probabilities (forced-choice scoring) when every label answer carries them
    got.probs = probs = label_probabilities([label_rows[i] for i in label_ids]) if label_ids else None
    metrics["probabilities"] = (
        probability_metrics([gold_by_id[i] for i in label_ids], [probs[i] for i in label_ids]) if probs else None
    )
    # chains kept by a release (imported or replayed): their Predictions were correct zero-shot or written given
    # the gold label, so their accuracy measures no model; the row says so wherever it is shown
    metrics["gold_conditioned"] = head == "chain" and all(release_chain(chains[i]) for i in chain_ids)
    metrics["headline"] = {
        "from": head,
        "accuracy": metrics[head]["accuracy"],
        "f1": metrics[head][_f1_name(task)],
        "weighted_f1": metrics[head]["weighted_f1"],
        "macro_f1": metrics[head]["macro_f1"],
    }
    return metrics


def reference_rows(store: Store, config: EvalConfig, subject: Subject,
                   gold_by_id: dict[int, str]) -> tuple[str | None, dict[int, dict[str, Any]]]:
    """The references' source (default the teacher; none when the teacher itself is evaluated) and its chosen
    chain per sample (:func:`select_references`)."""
    refs_name = config.refs
    if refs_name is None:
        refs_name = None if subject.kind == "source" and subject.source == "teacher" else "teacher"
    elif refs_name.lower() == "none":
        refs_name = None
    if refs_name is None:
        return None, {}
    rows = store.reasonings(dataset=config.dataset, split=config.split, source=refs_name)
    if not rows and store.get_run(refs_name) is not None:
        rows = store.reasonings(dataset=config.dataset, split=config.split, run_id=refs_name)
    return refs_name, select_references(r for r in rows if r["sample_id"] in gold_by_id)


def score_reasoning(config: EvalConfig, ids: list[int], chains: dict[int, dict[str, Any]], refs_name: str | None,
                    ref_rows: dict[int, dict[str, Any]],
                    progress: Progress | None) -> tuple[dict[str, Any], dict[str, dict[int, float]]]:
    """Reasoning metrics of the chains against their references (Distinct-n over every chain); returns the
    result's ``reasoning`` section and the per-pair values per metric."""
    paired = [i for i in ids if i in ref_rows]
    texts = {i: _text(chains[i], canonical=False) for i in ids}
    reasoning: dict[str, Any] = {"refs": refs_name, "pairs": len(paired), "missing_refs": len(ids) - len(paired),
                                 "subject_text": "raw output", "reference_text": "canonical text"}
    if not ids:  # --max-chains 0: the label head only
        reasoning.update(metrics=[], means={}, corpus={}, unavailable={}, headline={}, note="no chains generated")
        return reasoning, {}
    per_pair: dict[str, dict[int, float]] = {}
    common = dict(sim_model=config.sim_model, corpus=config.corpus, nltk_data_dir=config.nltk_data_dir,
                  embedding_cache=True if config.embedding_cache else None)
    chosen = list(normalize_metric_names(config.metrics))
    ref_metrics = [m for m in chosen if not m.startswith("distinct")]
    distinct_metrics = [m for m in chosen if m.startswith("distinct")]
    scores: ReasoningScores | None = None
    if paired and ref_metrics:
        scores = reasoning_metrics([texts[i] for i in paired], [_text(ref_rows[i], canonical=True) for i in paired],
                                   metrics=chosen if len(paired) == len(ids) else ref_metrics,
                                   progress=progress, **common)  # type: ignore[arg-type]
        for m, values in scores.per_pair.items():
            per_pair[m] = dict(zip(paired, values, strict=True))
    if distinct_metrics and (scores is None or len(paired) != len(ids)):
        every = [texts[i] for i in ids]
        distinct = reasoning_metrics(every, every, metrics=distinct_metrics, progress=progress,
                                     **{**common, "sim_model": None})  # type: ignore[arg-type]
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
    return reasoning, per_pair


def per_sample_rows(ids: list[int], samples: dict[int, dict[str, Any]], got: Gathered,
                    ref_rows: dict[int, dict[str, Any]],
                    per_pair: dict[str, dict[int, float]]) -> list[dict[str, Any]]:
    """One row per scored sample: gold, the chain's and the label head's predictions, the reference, the metrics."""
    out = []
    for i in ids:
        chain, label = got.chains.get(i) or {}, got.label_rows.get(i)
        row = {"sample_id": i, "key": samples[i]["key"], "gold": samples[i]["label"], "chain_id": chain.get("id"),
               "chain_stage": chain.get("stage"), "chain_prediction": chain.get("prediction"),
               "label_id": label["id"] if label else None, "label_prediction": label["prediction"] if label else None,
               "label_probabilities": (got.probs or {}).get(i),
               "ref_id": ref_rows[i]["id"] if i in ref_rows else None}
        for m, values in per_pair.items():
            row[m] = values.get(i)
        out.append(row)
    return out


def post_rows(ids: list[int], samples: dict[int, dict[str, Any]], got: Gathered, head: str) -> list[dict[str, Any]]:
    """The per-post predictions stored with the result (``eval_posts``): gold, the headline's prediction, the
    chain's and the label head's, and the label probabilities when there are some."""
    out = []
    for i in ids:
        chain, label = got.chains.get(i) or {}, got.label_rows.get(i)
        p = (got.probs or {}).get(i) or {}
        out.append({
            "sample_id": i, "key": samples[i]["key"], "gold": samples[i]["label"],
            "prediction": (label if head == "label" and label else chain).get("prediction"),
            "chain_prediction": chain.get("prediction"), "chain_id": chain.get("id"),
            "label_prediction": label["prediction"] if label else None, "label_id": label["id"] if label else None,
            **{f"p_{lab}": p.get(lab) for lab in LABELS},
        })
    return out


def _evaluate(store: Store, config: EvalConfig, progress: Progress | None) -> EvalResult:
    """Gather, classify, score the reasoning, store the result and write its files."""
    began = time.perf_counter()
    task = store.require_dataset(config.dataset)["task"]
    samples = store.samples(config.dataset, config.split)
    labelled = [s for s in samples if s["label"]]
    if not labelled:
        raise MulcotError(f"no labelled samples in {config.dataset}/{config.split}: nothing to score against")
    if config.limit:
        labelled = labelled[: config.limit]
    by_id = {s["id"]: s for s in labelled}
    gold_by_id = {i: s["label"] for i, s in by_id.items()}

    got = gather(store, config, task, gold_by_id, progress)
    subject = got.subject
    with_chain = [s["id"] for s in labelled if s["id"] in got.chains]
    ids = with_chain
    if config.max_chains is not None:  # model mode, chains for the first N posts only: every label answer counts
        answered = [s["id"] for s in labelled if s["id"] in got.label_rows]
        ids = answered if len(answered) == len(labelled) else with_chain
    if not ids:
        raise MulcotError(f"no chains to evaluate for {subject.name} in {config.dataset}/{config.split}")
    metrics = classify(task, ids, gold_by_id, got)
    label_ids = [i for i in ids if i in got.label_rows]
    metrics["coverage"] = {
        "samples": len(samples), "unlabelled_skipped": len(samples) - sum(1 for s in samples if s["label"]),
        "limit": config.limit, "considered": len(gold_by_id), "evaluated": len(ids), "max_chains": config.max_chains,
        "without_chain": len(gold_by_id) - len(with_chain), "without_label_answer": len(ids) - len(label_ids),
    }
    metrics.update(got.provenance)
    refs_name, ref_rows = reference_rows(store, config, subject, gold_by_id)
    metrics["reasoning"], per_pair = score_reasoning(config, with_chain, got.chains, refs_name, ref_rows, progress)
    metrics["ratings"] = human_ratings(store, config.dataset, config.split, subject.source)
    metrics["judge"] = judge_verdicts(store, [got.chains[i]["id"] for i in with_chain if got.chains[i].get("id")])

    posts = post_rows(ids, by_id, got, metrics["headline"]["from"])
    metrics["uncertainty"] = uncertainty(store, config.dataset, config.split, posts,
                                         majority_from=config.majority_from, samples=samples)
    if config.calibrate_on is not None:
        from mulcot.evaluate.recalibrate import recalibrate, tuning_config

        gold_fit = {s["id"]: s["label"] for s in store.samples(config.dataset, config.calibrate_on) if s["label"]}
        tuning = gather(store, tuning_config(config), task, gold_fit, progress)
        fit_probs = label_probabilities(list(tuning.label_rows.values())) if tuning.label_rows else None
        metrics["recalibrated"], recalibrated = recalibrate(config, posts, got.probs, gold_fit, fit_probs,
                                                            metrics["uncertainty"].get("majority"), samples)
    public = config.public()
    public["prompt_versions"] = {"cot": get_prompt("cot", task).version, "label": get_prompt("label", task).version}
    public["subject"] = subject.public()
    # which posts were scored: results on other posts do not compare (mulcot eval compare refuses them)
    public["samples_sha256"] = samples_digest(ids)
    result = EvalResult(id=None, dataset=config.dataset, split=config.split, task=task, subject=subject, n=len(ids),
                        metrics=metrics, config=public,
                        per_sample=per_sample_rows(ids, by_id, got, ref_rows, per_pair))
    if config.calibrate_on is not None:
        for row in result.per_sample:
            row.update(recalibrated[row["sample_id"]])
    result.id = store.add_eval_result(dataset=config.dataset, split=config.split, metrics=metrics, n=len(ids),
                                      source=subject.source, model=subject.model, run_id=subject.run_id,
                                      config=public, posts=posts)
    if config.probes:
        from mulcot.evaluate.probes import run_probes

        result.probes = run_probes(store, config, subject, task, posts, samples, result.id, progress)
    result.wall_s = time.perf_counter() - began
    if config.per_post is not None:
        path = write_per_post(per_post_rows(result.to_dict(), posts), config.per_post)
        result.files["per_post"] = str(path)
    if config.write_files:
        out = Path(config.out) if config.out else default_out_dir(config, subject)
        result.files = write_outputs(result, out)
    return result
