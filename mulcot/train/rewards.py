"""The rewards of ``mulcot grpo``: small pure functions of one sampled chain (and its post's columns), each in
[0, 1], combined by TRL's ``GRPOTrainer`` as a weighted sum (``--reward-weights``) and normalised within each group
of completions of the same prompt.

- :func:`label_correct` — the chain's ``Prediction`` (as the tolerant parser reads it, the same reading ``eval``
  gives a chain) is the gold label: 1, else 0;
- :func:`fields_parse` — how much of the five-field format came out: 1 for a full parse (four non-empty analysis
  fields and a label under ``Prediction``), else the share of the five that were found (a dense signal for a model
  that has not learnt the format yet);
- :func:`agrees_with_label_head` — the chain's ``Prediction`` is what the run's own label head (P_label, by forced
  choice) answers for the post: 1, else 0. The label head is the **starting** run's, scored once before training
  (``label_heads.json`` in the run folder): a reward that reads only the completion and its row stays a pure
  function (identical on resume, on every rank, and testable), it costs one forced-choice pass over the training
  posts instead of one per step, and the KL term keeps the policy near that starting adapter anyway. What it
  rewards is the consistency of the two heads the paper trains jointly (a chain that argues for one label while the
  classifier gives another), not correctness — :func:`label_correct` does that.

A judge's score (another branch's ``mulcot judge``) is not a reward here yet: it would be one more function with
this signature, reading a ``judge`` column or calling the judge, and one more weight.

TRL calls each function as ``f(prompts=..., completions=..., **columns)`` with one value per completion and logs
``rewards/<name>/mean`` per step; :data:`REWARDS` is their order, the order of ``--reward-weights``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mulcot.core.reasoning import FIELDS, parse_reasoning

REWARDS = ("label_correct", "fields_parse", "agrees_with_label_head")
DEFAULT_WEIGHTS = (1.0, 0.5, 0.5)


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a plain string, or (conversational) the content of its assistant messages."""
    if isinstance(completion, str):
        return completion
    parts = []
    for message in completion or []:
        content = message.get("content", "") if isinstance(message, dict) else str(message)
        if isinstance(content, list):  # multimodal message content: its text parts
            content = "".join(c.get("text", "") for c in content if isinstance(c, dict))
        parts.append(str(content))
    return "".join(parts)


def chain_prediction(text: str) -> str | None:
    """The label a chain's ``Prediction`` gives (the parser's reading), or None."""
    return parse_reasoning(text).prediction


def label_correct_score(text: str, gold: str) -> float:
    """1.0 when the chain's prediction is ``gold``, else 0.0."""
    return 1.0 if chain_prediction(text) == gold else 0.0


def fields_parse_score(text: str) -> float:
    """1.0 for a full parse of the five fields; else the share of the five found (a field counts when non-empty,
    ``Prediction`` when it holds a label)."""
    parsed = parse_reasoning(text)
    if parsed.valid:
        return 1.0
    return (len(FIELDS) - len(parsed.missing)) / len(FIELDS)


def agreement_score(text: str, label_head: str | None) -> float:
    """1.0 when the chain's prediction is the label head's answer, else 0.0 (no answer: 0.0)."""
    predicted = chain_prediction(text)
    return 1.0 if predicted is not None and predicted == label_head else 0.0


def label_correct(completions: Sequence[Any], gold: Sequence[str], **_: Any) -> list[float]:
    """TRL reward: :func:`label_correct_score` per completion."""
    return [label_correct_score(completion_text(c), g) for c, g in zip(completions, gold, strict=True)]


def fields_parse(completions: Sequence[Any], **_: Any) -> list[float]:
    """TRL reward: :func:`fields_parse_score` per completion."""
    return [fields_parse_score(completion_text(c)) for c in completions]


def agrees_with_label_head(completions: Sequence[Any], label_head: Sequence[str], **_: Any) -> list[float]:
    """TRL reward: :func:`agreement_score` per completion."""
    return [agreement_score(completion_text(c), h) for c, h in zip(completions, label_head, strict=True)]


FUNCTIONS = {f.__name__: f for f in (label_correct, fields_parse, agrees_with_label_head)}


def total(text: str, gold: str, label_head: str | None, weights: Sequence[float] = DEFAULT_WEIGHTS) -> float:
    """The weighted reward of one chain, as the trainer sums it (before the group normalisation)."""
    scores = (label_correct_score(text, gold), fields_parse_score(text), agreement_score(text, label_head))
    return sum(w * s for w, s in zip(weights, scores, strict=True))
