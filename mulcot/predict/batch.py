"""Predicting with a backend: one post, or every sample of a dataset split.

The student is asked with the reasoning prompt P_cot; its answer is parsed into the five fields and the label
(:func:`mulcot.core.reasoning.parse_reasoning`). In batch mode every answer is stored as a chain (source
``student-gguf``, stage ``eval``, model = the GGUF file name, prompt version of P_cot) so ``mulcot eval`` can score
it; samples that already have one for that model and prompt are skipped, so an interrupted run resumes. With
the label prompt P_label too, its answers are stored as ``mulcot.evaluate`` stores them (stage ``label``, fields
``{"Prediction": label}``), so eval reports the label head beside the chains' own Prediction. With
``label_scoring="choice"`` the label head is read by forced choice instead (:meth:`Backend.score_labels
<mulcot.generation.base.Backend.score_labels>`): the most probable of the three answers, stored with its
probabilities (origin ``predict-choice``, kept apart from generated answers as eval keeps them).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mulcot.core.chains import EVAL, LABEL, chain_row, choice_fields, parse_output
from mulcot.core.gguf import safe_name
from mulcot.core.prompts import get_prompt
from mulcot.core.reasoning import format_prediction
from mulcot.core.refs import check_name
from mulcot.errors import DataError, ModelError, MulcotError
from mulcot.events import Progress, emit
from mulcot.generation.base import Backend, Generated, LabelScoringError, Post, Request

PROMPT_STAGES = {"cot": EVAL, "label": LABEL}  # the stage a prompt's answers are stored under, as eval stores them
CHOICE_ORIGIN = "predict-choice"  # the origin of forced-choice label answers (generated ones: "predict")


@dataclass
class PostPrediction:
    """What the student made of one post with one prompt."""

    prompt: str
    task: str
    prompt_version: str
    raw: str
    fields: dict[str, str]
    prediction: str | None
    parse_status: str
    valid: bool
    tokens_in: int | None
    tokens_out: int
    latency_s: float
    finish_reason: str | None = None
    token_ids: list[int] | None = None

    def as_dict(self, with_ids: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not with_ids:
            out.pop("token_ids")
        return out


def _prediction(gen: Generated, prompt: str, task: str) -> PostPrediction:
    template = get_prompt(prompt, task)
    said = parse_output(PROMPT_STAGES[prompt], gen.text)  # a label answer: only its label counts
    return PostPrediction(prompt=prompt, task=task, prompt_version=template.version, raw=gen.text,
                          fields=said["fields"], prediction=said["prediction"], parse_status=said["parse_status"],
                          valid=said["valid"],
                          tokens_in=gen.tokens_in, tokens_out=gen.tokens_out, latency_s=round(gen.latency_s, 4),
                          finish_reason=gen.finish_reason, token_ids=gen.token_ids)


def _check_prompts(prompts: Sequence[str]) -> None:
    if not prompts or any(p not in PROMPT_STAGES for p in prompts) or prompts[0] != "cot" and "cot" in prompts:
        raise MulcotError(f"prompts must be cot and/or label (cot first), not {list(prompts)}")


def predict_post(backend: Backend, post: Post, *, task: str | None = None, prompts: Sequence[str] = ("cot",),
                 label_scoring: str = "generate") -> list[PostPrediction]:
    """Predict one post with each of ``prompts`` (``cot``: the five-field reasoning; ``label``: the label only,
    generated or, with ``label_scoring="choice"``, by forced choice). ``task`` defaults to ``masc`` when the post
    has an aspect, else ``msa``."""
    _check_prompts(prompts)
    post = backend.shown(post)  # a model trained without images (or text) is shown its posts so
    _check_scoring(backend, label_scoring, prompts, [post])
    task = task or ("masc" if post.aspect else "msa")
    if task == "masc" and not post.aspect:
        raise MulcotError("an aspect-level (masc) prediction needs --aspect")
    out = []
    for p in prompts:
        if p == "label" and label_scoring == "choice":
            t0 = time.perf_counter()
            choice = backend.score_labels([post], task)[0]
            out.append(_chosen(choice, task, time.perf_counter() - t0))
        else:
            out.append(_prediction(backend.generate([post], p, task)[0], p, task))
    return out


def _check_scoring(backend: Backend, label_scoring: str, prompts: Sequence[str], posts: Sequence[Post]) -> None:
    if label_scoring not in ("choice", "generate"):
        raise MulcotError(f"--label-scoring is {label_scoring!r}; allowed: choice, generate")
    if label_scoring == "choice" and "label" in prompts:
        problem = backend.cannot_score_labels(posts)
        if problem:
            raise LabelScoringError(problem)


def _chosen(choice: Any, task: str, seconds: float) -> PostPrediction:
    """A forced-choice label answer as a prediction: ``"Prediction": "<label>"`` with the probabilities."""
    raw = format_prediction(choice.prediction)
    return PostPrediction(prompt="label", task=task, prompt_version=get_prompt("label", task).version, raw=raw,
                          fields={"Prediction": choice.prediction, **choice_fields(choice)},
                          prediction=choice.prediction, parse_status="full", valid=True, tokens_in=None, tokens_out=0,
                          latency_s=round(seconds, 4))


@dataclass
class BatchSummary:
    """A batch prediction run: what it did now, and the figures over every stored chain of the model."""

    run_id: str
    model: str
    source: str
    dataset: str
    split: str
    prompt_version: str
    predicted: int = 0
    skipped_done: int = 0
    skipped_other_writer: int = 0  # with force: answers another process writing the run has taken
    samples: int = 0
    chains: int = 0  # final chains of this model and prompt on the split (this run and earlier ones)
    accuracy: float | None = None
    macro_f1: float | None = None
    weighted_f1: float | None = None
    invalid: int = 0
    mean_latency_s: float | None = None
    tokens_per_s: float | None = None
    wall_s: float = 0.0
    extra_prompts: dict[str, int] = field(default_factory=dict)
    served: dict[str, Any] | None = None  # through a server: requests, failures, budget stop (ServeSummary)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)




def predict_dataset(
    store: Any,
    backend: Backend,
    dataset: str,
    split: str = "test",
    *,
    limit: int | None = None,
    run_id: str | None = None,
    source: str | None = None,
    prompts: Sequence[str] = ("cot",),
    label_scoring: str = "generate",
    progress: Progress | None = None,
    force: bool = False,
) -> BatchSummary:
    """Predict every sample of ``dataset``/``split`` (the first ``limit``) and store each answer as a chain (source
    ``student-gguf`` or ``student-hf``, stage ``eval``, model = the backend's name); samples that already have a
    final chain for this model and prompt are skipped. The label prompt's answers are generated, or scored by
    forced choice (``label_scoring="choice"``). The run is recorded in the store (kind ``predict``); a second
    process predicting the same run is refused, or with ``force`` shares the work (no sample is asked twice)."""
    start = time.perf_counter()
    _check_prompts(prompts)
    if run_id is not None:
        check_name(run_id, "run name", "--name")
    ds = store.require_dataset(dataset)
    task = ds["task"]
    if split not in store.splits(dataset):
        raise MulcotError(f"dataset '{dataset}' has no split '{split}' (splits: {', '.join(store.splits(dataset))})")
    source = source or backend.source
    samples = store.samples(dataset, split)
    if limit is not None:
        samples = samples[:limit]
    cot = get_prompt("cot", task)
    run_id = run_id or f"predict-{safe_name(backend.name)}-{dataset}-{split}"
    summary = BatchSummary(run_id=run_id, model=backend.name, source=source, dataset=dataset, split=split,
                           prompt_version=cot.version)
    choice = label_scoring == "choice" and "label" in prompts
    todo = _todo(store, backend, dataset, split, samples, prompts, task, source, choice)
    summary.skipped_done = len(samples) - len(todo[prompts[0]])
    text_only = backend.text_only  # a text-only backbone reads captions, never images
    config = _run_config(backend, split, prompts, label_scoring, limit)
    def post(s: dict[str, Any]) -> Post:
        return backend.shown(_post(s, text_only=text_only))

    _check_scoring(backend, label_scoring, prompts, [post(s) for s in todo.get("label", [])])
    requests = [Request(post=post(s), prompt=p, task=task, tag=s["id"], name=f"sample {s['key']} ({p})")
                for p in prompts if not (choice and p == "label") for s in todo[p]]
    emit(progress, "predict", done=0, total=len(requests))
    server = getattr(backend, "server", None)
    if server is not None:
        from mulcot.generation.server import served_identity

        config.update(served_identity(server, None)[0])
    count = 0
    numbers = _attempt_numbers(store, dataset, split, source, run_id, prompts, task)

    def store_answer(request: Request, gen: Generated) -> None:
        nonlocal count
        pred = _prediction(gen, request.prompt, task)
        store.add_reasoning(**chain_row(
            sample_id=request.tag, source=source, model=backend.name, stage=PROMPT_STAGES[request.prompt],
            output=pred.raw, run_id=run_id, prompt_version=pred.prompt_version, origin="predict",
            attempt=numbers[request.prompt].get(request.tag, 1), tokens_in=pred.tokens_in, tokens_out=pred.tokens_out,
            latency_s=pred.latency_s,
        ))
        count += 1
        if request.prompt == prompts[0]:
            summary.predicted += 1
        else:
            summary.extra_prompts[request.prompt] = summary.extra_prompts.get(request.prompt, 0) + 1
        emit(progress, "predict", done=count, total=len(requests), prediction=pred)

    with store.run(run_id, kind="predict", dataset=dataset, config=config, force=force) as run:
        run.metrics = summary

        def claimed() -> Any:
            """Each request, claimed just before it is asked: another writer of the run (force) may have taken it."""
            for request in requests:
                if run.claim([_job(request.tag, request.prompt)]):
                    yield request
                else:
                    summary.skipped_other_writer += 1

        served = backend.run(claimed(), store_answer, stage="predict")
        if choice and todo["label"]:
            mine = run.claim([_job(x["id"], "label-choice") for x in todo["label"]])
            chosen = [x for x in todo["label"] if _job(x["id"], "label-choice") in mine]
            summary.skipped_other_writer += len(todo["label"]) - len(chosen)
            summary.extra_prompts["label"] = _store_choices(store, backend, chosen, list(map(post, chosen)), task,
                                                            source, run_id, numbers["label"])
        if server is not None:
            summary.served = served.as_dict()
            if served.stopped:
                run.status = "stopped"
        summary.samples = len(samples)
        _score(store, summary, task)
        summary.wall_s = round(time.perf_counter() - start, 3)
    return summary


def _run_config(backend: Backend, split: str, prompts: Sequence[str], label_scoring: str,
                limit: int | None) -> dict[str, Any]:
    """What a predict run records of how it was made."""
    config = {"backend": backend.kind, "model": backend.name, "split": split, "prompts": list(prompts),
              "label_scoring": label_scoring if "label" in prompts else None, "limit": limit,
              **{k: v for k, v in asdict(backend.config).items() if k not in ("device",)}}
    if backend.inputs != "all":  # an ablated run: its posts are shown as it was trained on them
        config["inputs"] = backend.inputs
    return config


def _post(s: dict[str, Any], *, text_only: bool) -> Post:
    """A stored sample as a post (a text-only backbone reads its caption, never its image)."""
    return Post(text=s["text"], aspect=s["aspect"], image=s["image_path"] if s["has_image"] and not text_only else None,
                caption=(s.get("meta") or {}).get("caption"))


def _attempt_numbers(store: Any, dataset: str, split: str, source: str, run_id: str, prompts: Sequence[str],
                     task: str) -> dict[str, dict[int, int]]:
    """Per prompt and sample, the attempt number a new answer takes (one more than the run's rows for it): label
    answers read the other way, or by other weights under the run's name, keep their rows."""
    out = {}
    for p in prompts:
        counts = store.chain_counts(dataset, split, source=source, stage=PROMPT_STAGES[p], run_id=run_id,
                                    prompt_version=get_prompt(p, task).version)
        out[p] = {sid: n + 1 for sid, n in counts.items()}
    return out


def _store_choices(store: Any, backend: Backend, samples: list[dict[str, Any]], posts: list[Post], task: str,
                   source: str, run_id: str, numbers: dict[int, int]) -> int:
    """Forced-choice label answers for ``samples``, a chunk at a time, each chunk stored at once (``numbers``: each
    sample's attempt number); returns how many."""
    version = get_prompt("label", task).version
    step = max(8, 8 * backend.batch_size())
    for begin in range(0, len(posts), step):
        t0 = time.perf_counter()
        scored = backend.score_labels(posts[begin : begin + step], task)
        each = round((time.perf_counter() - t0) / max(1, len(scored)), 4)
        store.add_reasonings(chain_row(sample_id=samples[begin + c.sample_id]["id"], source=source, model=backend.name,
                                       stage=LABEL, output=format_prediction(c.prediction), run_id=run_id,
                                       prompt_version=version, origin=CHOICE_ORIGIN, latency_s=each,
                                       attempt=numbers.get(samples[begin + c.sample_id]["id"], 1),
                                       extra_fields=choice_fields(c)) for c in scored)
    return len(posts)


def _todo(store: Any, backend: Backend, dataset: str, split: str, samples: list[dict[str, Any]],
          prompts: Sequence[str], task: str, source: str, choice: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Per prompt, the samples without a final answer of this model yet (label answers: read the same way, generated
    or by forced choice); refuses images the backend cannot read and image files that are gone, in one line, before
    anything is generated."""
    todo: dict[str, list[dict[str, Any]]] = {}
    for p in prompts:
        version = get_prompt(p, task).version
        if p == "label":
            done = {r["sample_id"] for r in store.reasonings(dataset=dataset, split=split, source=source, stage=LABEL,
                                                             final_only=True)
                    if r["model"] == backend.name and r["prompt_version"] == version
                    and (r["origin"] == CHOICE_ORIGIN) == choice}
            todo[p] = [s for s in samples if s["id"] not in done]
            continue
        progress = store.chain_progress(dataset, split, source=source, model=backend.name, stage=PROMPT_STAGES[p],
                                        prompt_version=version)
        todo[p] = [s for s in samples if (progress.get(s["id"]) or {}).get("final") is None]
    text_only = backend.text_only or backend.inputs == "no-image"  # a run trained without images is shown none
    needs_vision = not text_only and any(s["has_image"] for p in prompts for s in todo[p])
    if needs_vision and not backend.has_vision:
        raise ModelError(
            f"{backend.name} has no vision projector (mmproj) loaded, but {dataset}/{split} has images: export with "
            "`mulcot export` (writes mmproj-*.gguf beside it) or pass --mmproj FILE"
        )
    for s in {s["id"]: s for p in prompts for s in todo[p]}.values():
        if s["has_image"] and not text_only and not (s["image_path"] and Path(s["image_path"]).is_file()):
            raise DataError(f"image of sample {s['key']} not found: {s['image_path']}", file=s["image_path"])
    return todo


def _job(sample_id: int, prompt: str) -> str:
    """The name of one answer a predict run makes (what its writers claim)."""
    return f"sample {sample_id} {prompt}"


def _score(store: Any, summary: BatchSummary, task: str) -> None:
    """Figures over every final chain of the model and prompt on the split."""
    from mulcot.metrics import classification_metrics

    chains = [c for c in store.reasonings(dataset=summary.dataset, split=summary.split, source=summary.source,
                                          stage=EVAL, final_only=True)
              if c["model"] == summary.model and c["prompt_version"] == summary.prompt_version]
    summary.chains = len(chains)
    summary.invalid = sum(1 for c in chains if not c["valid"])
    latencies = [c["latency_s"] for c in chains if c["latency_s"] is not None]
    if latencies:
        summary.mean_latency_s = round(sum(latencies) / len(latencies), 4)
        tokens = sum(c["tokens_out"] or 0 for c in chains if c["latency_s"] is not None)
        summary.tokens_per_s = round(tokens / sum(latencies), 2) if sum(latencies) > 0 else None
    labelled = [c for c in chains if c["gold"]]
    if labelled:
        m = classification_metrics([c["gold"] for c in labelled], [c["prediction"] for c in labelled])
        summary.accuracy, summary.macro_f1, summary.weighted_f1 = m["accuracy"], m["macro_f1"], m["weighted_f1"]
