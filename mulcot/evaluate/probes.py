"""Modality probes (``mulcot eval … --probe image-blank,image-swap,text-drop``): does the model use the image, the
text? The same model answers the label prompt for the same posts with one input changed, and each probe's answers
are compared post by post with the intact ones.

Probes (:data:`PROBES`):

- ``image-blank``: the image replaced by a blank (mid-grey) one of the same size, so a vision model sees as many
  image tokens and no content; a text-only backbone reads no caption;
- ``image-swap``: the image (and its caption) of another post of the same evaluation, a fixed derangement (seed 0)
  that never hands a post an image (or caption) it already has;
- ``text-drop``: the post's text removed — the image (or caption) and, for an aspect-level post, the aspect alone.

For a text-only backbone (SmolLM2, Qwen2) the caption is what is blanked or swapped, since that is how it sees the
image; a model that reads neither image nor caption shows no change under the image probes, which is the point.

A probe reads the **label head** only (forced choice or generated, as the evaluation's ``label_scoring``), on the
posts the intact evaluation scored with a label answer. Its answers are stored (stage ``probe``, ``origin``
``probe:<name>:<digest of the input shown>:<the label answer's origin>``, so they resume and are reused only for
the very same input and weights, and are never taken for chains), and each probe is stored as its own evaluation
result (``config["probe"]``, shown by ``eval list`` as ``[probe NAME]``; ``mulcot eval compare RUN RUN@image-swap``
compares it with the intact result) whose ``metrics["probe"]`` holds the comparison: ΔAcc and Δm-F1 (probe −
intact) with paired bootstrap 95 % intervals resampling whole tweets, exact McNemar p, the share of posts whose
answer changed, and the mean total-variation distance between the two answers' label probabilities (how far the
probabilities moved, even where the answer did not).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mulcot.core.inputs import TrainItem, without_text
from mulcot.core.labels import LABELS
from mulcot.core.prompts import get_prompt
from mulcot.errors import MulcotError
from mulcot.evaluate.config import PROBES, parse_probes
from mulcot.evaluate.generate import answer_storer, open_subject, origin, post_of, score_choices
from mulcot.evaluate.select import Subject
from mulcot.events import Progress, emit
from mulcot.generation import Request
from mulcot.generation.base import LabelScoringError
from mulcot.metrics import classification_metrics
from mulcot.metrics.calibration import probability_metrics
from mulcot.metrics.paired import paired_comparison, post_clusters
from mulcot.store import Store
from mulcot.store.reasonings import PROBE

if TYPE_CHECKING:
    from mulcot.evaluate.config import EvalConfig

__all__ = ["PROBES", "parse_probes", "perturb", "recipe_row", "run_probes", "swap_donors"]

SWAP_SEED = 0


def _image_key(item: TrainItem) -> tuple[str | None, str | None]:
    return item.image_path, (item.caption or "").strip() or None


def _differs(mine: tuple[str | None, str | None], theirs: tuple[str | None, str | None]) -> bool:
    """Whether another post's image and caption are both new to this post (the same image file or caption, as
    several aspects of one tweet share, is no swap)."""
    if theirs == (None, None):
        return False
    return all(m is None or m != t for m, t in zip(mine, theirs, strict=True))


def swap_donors(items: Sequence[TrainItem], seed: int = SWAP_SEED) -> list[int | None]:
    """For each item, the index of the item whose image (and caption) it gets: the items in a seeded order, each
    taking the next one's in that order whose image and caption both differ from its own (None where no other item
    has, or the item has neither image nor caption)."""
    n = len(items)
    order = random.Random(seed).sample(range(n), n)
    donors: list[int | None] = [None] * n
    for k, i in enumerate(order):
        if _image_key(items[i]) == (None, None):
            continue
        for step in range(1, n):
            j = order[(k + step) % n]
            if _differs(_image_key(items[i]), _image_key(items[j])):
                donors[i] = j
                break
    return donors


BLANK = "<blank>"  # image-blank's image until the backend is known: a grey image of the post's size, or nothing


def perturb(items: Sequence[TrainItem], probe: str) -> list[TrainItem]:
    """The items as ``probe`` changes them (see the module doc), whatever the backend: image-blank's image is
    :data:`BLANK` (made real by :func:`as_shown`). A swap is computed over all of ``items``, so pass the whole
    split: a post's donor must not depend on which posts are evaluated."""
    if probe == "text-drop":
        return [without_text(it) for it in items]
    if probe == "image-blank":
        return [replace(it, caption=None, image_path=BLANK if it.image_path else None) for it in items]
    if probe == "image-swap":
        donors = swap_donors(items)
        return [it if d is None else replace(it, image_path=items[d].image_path, caption=items[d].caption)
                for it, d in zip(items, donors, strict=True)]
    raise MulcotError(f"unknown probe {probe!r}: use {', '.join(PROBES)}")


def as_shown(before: TrainItem, after: TrainItem, *, text_only: bool, folder: Path) -> TrainItem:
    """A perturbed item as the backend gets it: :data:`BLANK` becomes a grey image of the original's size (a vision
    model) or nothing (a text-only backbone, which never reads images)."""
    from mulcot.core.images import blank_like

    if after.image_path != BLANK:
        return after
    assert before.image_path is not None
    return replace(after, image_path=None if text_only else str(blank_like(before.image_path, folder)))


def input_digest(probe: str, before: TrainItem, after: TrainItem) -> str:
    """What a probe showed for one post (text, aspect, image file, caption, and the original image a blank stands
    for), as a short digest kept in its answers' ``origin``: an answer is reused only for the very same input."""
    shown = [probe, after.text, after.aspect, after.image_path, after.caption, before.image_path]
    return hashlib.sha256(json.dumps(shown).encode()).hexdigest()[:12]


def inputs_changed(before: Sequence[TrainItem], after: Sequence[TrainItem], *, text_only: bool) -> int:
    """How many posts a probe really changed, as the model sees them (a text-only backbone: text and caption)."""
    def seen(it: TrainItem) -> tuple:
        return (it.text, it.caption) if text_only else (it.text, it.image_path)

    return sum(seen(a) != seen(b) for a, b in zip(before, after, strict=True))


def probe_origin(probe: str, digest: str, subject: Subject, scoring: str) -> str:
    return f"probe:{probe}:{digest}:{origin(subject, scoring)}"


def stored_probe_answers(store: Store, config: EvalConfig, subject: Subject, task: str,
                         origins: dict[int, str]) -> dict[int, dict[str, Any]]:
    """The newest stored answer per sample with the origin ``origins`` wants for it (this probe, this input, these
    weights, this label reading) and the label prompt's version."""
    version = get_prompt("label", task).version
    out: dict[int, dict[str, Any]] = {}
    for r in store.reasonings(dataset=config.dataset, split=config.split, source=subject.source or "model",
                              stage=PROBE, run_id=subject.run_id, final_only=True):
        if r["run_id"] != subject.run_id or r["model"] != subject.model or r["prompt_version"] != version:
            continue
        sid = r["sample_id"]
        if r["origin"] == origins.get(sid) and (sid not in out or r["id"] > out[sid]["id"]):
            out[sid] = r
    return out


@dataclass
class ProbeRun:
    """One probe's answers, generated where missing: per sample the stored row, and how many inputs it changed."""

    name: str
    answers: dict[int, dict[str, Any]]
    inputs_changed: int | None
    generated: int


def answer_probes(store: Store, config: EvalConfig, subject: Subject, task: str, split_items: list[TrainItem],
                  wanted: set[int], progress: Progress | None) -> list[ProbeRun]:
    """Each configured probe's label answers for the ``wanted`` posts (swaps drawn over the whole split,
    ``split_items``): the model opened once, only the missing answers asked."""
    plans = []
    for probe in config.probes or []:
        pairs = [(b, a) for b, a in zip(split_items, perturb(split_items, probe), strict=True) if b.sample_id in wanted]
        origins = {b.sample_id: probe_origin(probe, input_digest(probe, b, a), subject, config.label_scoring)
                   for b, a in pairs}
        have = stored_probe_answers(store, config, subject, task, origins)
        plans.append((probe, pairs, origins, [(b, a) for b, a in pairs if b.sample_id not in have]))
    changed: dict[str, int | None] = {p[0]: None for p in plans}  # None: every answer reused, the model not opened
    if any(todo for *_, todo in plans):
        emit(progress, "eval", message="loading model", done=0, total=None)
        folder = Path(config.runs_dir or "runs") / "probes"
        with open_subject(subject, config) as backend:
            for probe, pairs, origins, todo in plans:
                shown = [as_shown(b, a, text_only=backend.text_only, folder=folder) for b, a in pairs]
                changed[probe] = inputs_changed([b for b, _ in pairs], shown, text_only=backend.text_only)
                asked = {b.sample_id for b, _ in todo}
                _ask(store, config, subject, task, probe, backend, [it for it in shown if it.sample_id in asked],
                     origins, progress)
    return [ProbeRun(probe, stored_probe_answers(store, config, subject, task, origins), changed[probe], len(todo))
            for probe, _, origins, todo in plans]


def _ask(store: Store, config: EvalConfig, subject: Subject, task: str, probe: str, backend: Any,
         items: list[TrainItem], origins: dict[int, str], progress: Progress | None) -> None:
    if not items:
        return
    posts = [post_of(it, text_only=backend.text_only) for it in items]
    if config.label_scoring == "choice":
        problem = backend.cannot_score_labels(posts)
        if problem:
            raise LabelScoringError(problem)
        score_choices(store, backend, subject, config, task, items, posts, progress, stage=PROBE, origins=origins)
        return
    version = get_prompt("label", task).version
    requests = [Request(post=post, prompt="label", task=task, tag=it.sample_id,
                        name=f"sample {it.sample_id} (probe {probe})") for it, post in zip(items, posts, strict=True)]
    backend.run(requests, answer_storer(store, subject, config, {"label": (PROBE, version)}, len(requests), progress,
                                        origins=origins), stage="eval")


def _probabilities(row: dict[str, Any] | None) -> dict[str, float] | None:
    probs = ((row or {}).get("fields") or {}).get("probabilities")
    if isinstance(probs, dict) and all(isinstance(probs.get(lab), int | float) for lab in LABELS):
        return {lab: float(probs[lab]) for lab in LABELS}
    return None


def probe_metrics(run: ProbeRun, intact: dict[int, dict[str, Any]], samples: Sequence[dict[str, Any]], task: str,
                  against: int | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A probe's result metrics (its classification, the paired comparison with the intact label answers in
    ``metrics["probe"]``) and its per-post rows, over the posts both answered."""
    ids = sorted(i for i in intact if i in run.answers)
    if not ids:
        raise MulcotError(f"probe {run.name}: no post has both an intact and a probe label answer")
    by_id = {s["id"]: s for s in samples}
    gold = [by_id[i]["label"] for i in ids]
    before = [intact[i]["label_prediction"] for i in ids]
    after = [run.answers[i]["prediction"] for i in ids]
    clusters = post_clusters(samples)
    comparison = paired_comparison(gold, before, after, clusters=[clusters.get(i, f"sample {i}") for i in ids])
    probs = {i: _probabilities(run.answers[i]) for i in ids}
    shifts = [0.5 * sum(abs(probs[i][lab] - float(intact[i][f"p_{lab}"])) for lab in LABELS)
              for i in ids if probs[i] is not None and all(intact[i].get(f"p_{lab}") is not None for lab in LABELS)]
    label = classification_metrics(gold, after)
    f1 = "macro_f1" if task == "masc" else "weighted_f1"
    metrics: dict[str, Any] = {
        "task": task, "f1_reported": f1, "label": label, "chain": None, "consistency": None,
        "headline": {"from": "label", "accuracy": label["accuracy"], "f1": label[f1],
                     "weighted_f1": label["weighted_f1"], "macro_f1": label["macro_f1"]},
        "probabilities": (probability_metrics(gold, [probs[i] for i in ids])
                          if all(p is not None for p in probs.values()) else None),
        "probe": {
            "name": run.name, "description": PROBES[run.name], "against": against, "n": len(ids),
            "inputs_changed": run.inputs_changed,
            "answers_generated": run.generated, "changed": 1.0 - comparison["agreement"],
            "probability_shift": sum(shifts) / len(shifts) if shifts else None, "comparison": comparison,
        },
    }
    posts = [{"sample_id": i, "key": by_id[i]["key"], "gold": by_id[i]["label"],
              "prediction": run.answers[i]["prediction"], "label_prediction": run.answers[i]["prediction"],
              "label_id": run.answers[i]["id"], **{f"p_{lab}": (probs[i] or {}).get(lab) for lab in LABELS}}
             for i in ids]
    return metrics, posts


def run_probes(store: Store, config: EvalConfig, subject: Subject, task: str, posts: Sequence[dict[str, Any]],
               samples: Sequence[dict[str, Any]], against: int | None,
               progress: Progress | None) -> list[dict[str, Any]]:
    """Every configured probe on the posts of the intact evaluation ``against`` (its per-post rows ``posts``) that
    have a label answer; each stored as its own evaluation result. Returns, per probe, its result id and
    ``metrics["probe"]`` with its accuracy and macro-F1."""
    from mulcot.core.inputs import mask_items, sample_items
    from mulcot.evaluate.report import samples_digest

    intact = {p["sample_id"]: p for p in posts if p.get("label_prediction") is not None}
    if not intact:
        raise MulcotError(f"the probes compare label answers, and {subject.name} gave none on "
                          f"{config.dataset}/{config.split}")
    split_items = mask_items(sample_items(store, config.dataset, config.split), subject.inputs)
    public = {**config.public(), "probes": None}
    out = []
    for run in answer_probes(store, config, subject, task, split_items, set(intact), progress):
        metrics, rows = probe_metrics(run, intact, samples, task, against)
        record = {**public, "probe": run.name, "subject": subject.public(),
                  "prompt_versions": {"label": get_prompt("label", task).version},
                  "samples_sha256": samples_digest([r["sample_id"] for r in rows])}
        rid = store.add_eval_result(dataset=config.dataset, split=config.split, metrics=metrics, n=len(rows),
                                    source=subject.source, model=subject.model, run_id=subject.run_id,
                                    config=record, posts=rows)
        out.append({"id": rid, **metrics["probe"], "accuracy": metrics["label"]["accuracy"],
                    "macro_f1": metrics["label"]["macro_f1"]})
    return out


def recipe_row(label: str, probe: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """A probe of the ``label`` model (an entry of :func:`run_probes`) as a row of ``mulcot run``'s table, with its
    difference from the model's own row."""
    f1 = probe["macro_f1"] if metrics.get("f1_reported") == "macro_f1" else None
    return {"subject": f"{label}@{probe['name']}", "accuracy": probe["accuracy"], "f1": f1,
            "probe": {"of": label, "name": probe["name"], "changed": probe["changed"], "n": probe["n"],
                      "accuracy": probe["comparison"]["bootstrap"]["accuracy"],
                      "mcnemar_p": probe["comparison"]["mcnemar"]["p_value"]}}
