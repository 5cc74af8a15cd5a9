"""The rationale judge's rubric and prompts (``mulcot judge``), versioned, and the parsing of its answers.

The rubric (:data:`CRITERIA`) scores one chain on four criteria, each an integer 1-5 with a one-line reason:

- ``follows``: the Final_conclusion follows from the three analyses;
- ``image``: the Image_analysis is about this image (not generic, not another picture);
- ``supports``: the chain as a whole supports its Prediction;
- ``argues``: it argues from the post rather than restating a label.

A chain's ``mean`` is the mean of the four. The leakage prompt gives the judge the chain alone — no post, no image,
the ``Prediction`` field removed — and asks which label it argues for: when a stage-2 chain (written given the
gold label) gives the label away more often than a stage-1 chain, the label leaked into its wording.

Each prompt's ``version`` is a short hash of its wording (and of the criteria), stored with every verdict, so
verdicts from different rubrics never mix. An answer that is not a JSON object with every criterion scored 1-5
(or, for leakage, one label) is a failed attempt with its reason, retried a bounded number of times.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from mulcot.core.labels import LABELS, normalize_label
from mulcot.core.reasoning import ANALYSIS_FIELDS, FIELDS

CRITERIA: dict[str, str] = {
    "follows": "The Final_conclusion follows from the Text_analysis, Image_analysis and Conflict_resolution.",
    "image": "The Image_analysis is about this image (what it actually shows), not generic or about another one.",
    "supports": "The chain as a whole supports its Prediction (the label it ends with).",
    "argues": "It argues from the post's content rather than restating or presupposing a label.",
}
SCALE = (1, 5)
REASON_CHARS = 200  # a reason is kept to one line of at most this many characters

_RUBRIC = (
    "You are grading a chain of sentiment reasoning that a model wrote about a social-media post (text and "
    "image{aspect_note}). Score it on each criterion from 1 (not at all) to 5 (fully), with a one-line reason.\n\n"
    "Criteria:\n{criteria}\n\n"
    "The post:\n{post}\n\n"
    "The reasoning:\n{chain}\n\n"
    "Answer with a JSON object only, one key per criterion, each {{\"score\": <1-5>, \"reason\": \"<one line>\"}}, "
    "e.g. {example}"
)
_LEAKAGE = (
    "Below is a chain of sentiment reasoning about a social-media post; the post itself and the final label are "
    "not shown. From the reasoning alone, which sentiment label does it argue for: {labels}?\n\n"
    "The reasoning:\n{chain}\n\n"
    'Answer with a JSON object only: {{"label": "<one of: {labels}>"}}'
)
_NO_IMAGE = "\nImage: not shown to you; judge the Image_analysis by its consistency with the text."


def _criteria_text() -> str:
    return "\n".join(f"- {name}: {text}" for name, text in CRITERIA.items())


def _example() -> str:
    return json.dumps({name: {"score": 4, "reason": "..."} for name in CRITERIA})


def _hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


RUBRIC_VERSION = _hash("rubric", _RUBRIC, _criteria_text(), _NO_IMAGE)
LEAKAGE_VERSION = _hash("leakage", _LEAKAGE)


def chain_text(fields: dict[str, str], *, with_prediction: bool = True) -> str:
    """A chain as the judge reads it: its fields as ``"Key": "value"`` lines (without ``Prediction`` for leakage)."""
    names = FIELDS if with_prediction else ANALYSIS_FIELDS
    return "\n".join(f'"{name}": {json.dumps(str(fields.get(name, "")), ensure_ascii=False)}' for name in names)


def rubric_prompt(chain: dict[str, Any], *, image: bool) -> str:
    """The rubric prompt for one chain (a :meth:`~mulcot.store.Store.judge_candidates` row); the image, when
    ``image``, travels as a content part."""
    post = f"Text: {chain['text']}"
    if chain.get("aspect"):
        post += f"\nTarget aspect: {chain['aspect']}"
    post += "\nImage: the attached image." if image else _NO_IMAGE
    aspect_note = ", and the sentiment toward one target aspect" if chain.get("aspect") else ""
    return _RUBRIC.format(aspect_note=aspect_note, criteria=_criteria_text(), post=post,
                          chain=chain_text(chain["fields"]), example=_example())


def leakage_prompt(chain: dict[str, Any]) -> str:
    """The leakage prompt: the chain's four analysis fields alone (no post, no image, no Prediction)."""
    return _LEAKAGE.format(labels=", ".join(LABELS), chain=chain_text(chain["fields"], with_prediction=False))


class AnswerError(ValueError):
    """The judge's answer is unusable; the message says why (stored as the attempt's error)."""


@dataclass
class RubricVerdict:
    scores: dict[str, int]
    reasons: dict[str, str]

    @property
    def mean(self) -> float:
        return round(sum(self.scores.values()) / len(self.scores), 4)


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


def _json_object(text: str | None) -> dict[str, Any]:
    """The first JSON object in an answer (bare, fenced, or with words around it)."""
    text = (text or "").strip()
    if not text:
        raise AnswerError("empty answer")
    fence = _FENCE.search(text)
    candidates = [fence.group(1)] if fence else []
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        candidates.append(text[start: end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise AnswerError(f"no JSON object in the answer ({_clip(text, 60)!r})")


def _score(name: str, value: Any) -> int:
    raw = value.get("score") if isinstance(value, dict) else value
    if isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
        raw = int(raw.strip())
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise AnswerError(f"criterion '{name}' has no integer score ({_clip(json.dumps(value), 40)})")
    if not SCALE[0] <= raw <= SCALE[1]:
        raise AnswerError(f"criterion '{name}' scored {raw}, outside {SCALE[0]}-{SCALE[1]}")
    return raw


def parse_rubric(text: str | None) -> RubricVerdict:
    """The scores and reasons in a judge's answer; raises :class:`AnswerError` (garbage, a missing criterion, a
    score that is not an integer 1-5)."""
    data = _json_object(text)
    missing = [name for name in CRITERIA if name not in data]
    if missing:
        raise AnswerError(f"criteria missing from the answer: {', '.join(missing)}")
    scores = {name: _score(name, data[name]) for name in CRITERIA}
    reasons = {}
    for name in CRITERIA:
        value = data[name]
        reason = value.get("reason") if isinstance(value, dict) else None
        reasons[name] = _clip(str(reason), REASON_CHARS) if reason else ""
    return RubricVerdict(scores, reasons)


def parse_leakage(text: str | None) -> str:
    """The label a leakage answer names; raises :class:`AnswerError` when it names none."""
    try:
        data = _json_object(text)
        label = normalize_label(data.get("label"))
    except AnswerError:
        words = [w for w in re.findall(r"[A-Za-z]+", text or "") if normalize_label(w) in LABELS]
        label = normalize_label(words[0]) if len(set(map(normalize_label, words))) == 1 else None
    if label is None:
        raise AnswerError(f"no label in the answer ({_clip(text or '', 60)!r})")
    return label


def _clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
