"""The chain row: how every stage turns a model's output into one ``reasonings`` row.

annotate, the importer, expand, eval and predict all build their rows with :func:`chain_row`, so the columns mean
the same whoever wrote them:

- ``valid``: the output parsed into the five fields with a valid label (for a label answer, stage ``label``: a
  label was found). Whether the chain is *correct* is derived from ``prediction`` and the sample's gold label, never
  stored in ``valid`` (the store's ``OUTCOME``, ``TEACHER_SET`` and ``ASSISTANT_SET`` in
  :mod:`mulcot.store.reasonings`).
- ``model``: what generated the text — the teacher's model name, the base model of a LoRA run (the run is
  ``run_id``; generated chains carry the adapter's hash in ``origin``), or a GGUF file's name.
- ``final``: the last attempt of a retry sequence (annotate's ARC); every other chain is its own final attempt.
"""

from __future__ import annotations

from typing import Any

from mulcot.core.reasoning import format_prediction, parse_reasoning
from mulcot.store.reasonings import (
    ANSWERS,
    EVAL,
    EXPAND,
    EXPLAIN,
    LABEL,
    OUTCOMES,
    PREDICT,
    PROBE,
    SOURCES,
    STAGES,
)

__all__ = [
    "ANSWERS", "EVAL", "EXPAND", "EXPLAIN", "LABEL", "OUTCOMES", "PREDICT", "PROBE", "SOURCES", "STAGES",
    "arc_accepts", "arc_error",
    "chain_row", "choice_fields", "parse_output", "release_chain",
]

# Teachers whose chains were not written by mulcot's stage 1 but taken from a release that keeps only the chains that
# passed (correct stage-1 answers and gold-conditioned explanations): importing the authors' JSON, or replaying it.
RELEASE_ORIGIN = "import:"
REPLAY_PREFIX = "replay:"


def parse_output(stage: str, output: str | None) -> dict[str, Any]:
    """What a model's output says: ``text`` (canonical form), ``fields``, ``prediction``, ``parse_status`` and
    ``valid``. A ``label`` answer keeps only its label (``fields = {"Prediction": label}``); every other stage is
    parsed into the five fields."""
    parsed = parse_reasoning(output)
    if stage in ANSWERS:
        label = parsed.prediction
        text = format_prediction(label) if label else output
        fields = {"Prediction": label} if label else {}
        status = "full" if label else "none"
    else:
        text, fields, status = parsed.to_text(), parsed.fields, parsed.status
    return {"text": text, "fields": fields, "prediction": parsed.prediction, "parse_status": status,
            "valid": status == "full"}


def chain_row(
    *,
    sample_id: int,
    source: str,
    model: str | None,
    stage: str,
    output: str | None,
    run_id: str | None = None,
    prompt_version: str | None = None,
    origin: str | None = None,
    attempt: int = 1,
    final: bool = True,
    error: str | None = None,
    tokens_in: int | None = None,
    tokens_out: int | None = None,
    cost_usd: float | None = None,
    latency_s: float | None = None,
    extra_fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``reasonings`` row for one output (``None`` when the request failed), parsed by :func:`parse_output`;
    ``extra_fields`` are stored beside the parsed fields (a forced-choice label answer's probabilities)."""
    parsed = parse_output(stage, output)
    if extra_fields:
        parsed["fields"] = {**parsed["fields"], **extra_fields}
    return {
        "sample_id": sample_id, "source": source, "model": model, "stage": stage, "prompt_version": prompt_version,
        "raw": output, **parsed, "attempt": attempt, "final": final, "run_id": run_id,
        "error": error, "origin": origin, "tokens_in": tokens_in, "tokens_out": tokens_out, "cost_usd": cost_usd,
        "latency_s": latency_s,
    }


def choice_fields(choice: Any) -> dict[str, Any]:
    """What a forced-choice label answer (a :class:`mulcot.generation.choice.LabelChoice`) stores beside its
    ``Prediction``: the probabilities, the log-probabilities and the scored token counts per label."""
    return {"probabilities": choice.probabilities, "log_probs": choice.log_probs, "tokens": choice.tokens}


def arc_accepts(row: dict[str, Any], gold: str | None) -> bool:
    """Whether annotate's retry controller (ARC) keeps an attempt: it parsed, and an explanation (stage 2, written
    given the gold label) explains that label."""
    return bool(row["valid"]) and (row["stage"] != EXPLAIN or row["prediction"] == gold)


def arc_error(row: dict[str, Any], gold: str | None) -> str | None:
    """Why ARC rejects an attempt (None when it accepts it or the request failed with its own error)."""
    if row["raw"] is None:
        return row.get("error")
    if not row["valid"]:
        return f"output missing {', '.join(parse_reasoning(row['raw']).missing)}"
    if not arc_accepts(row, gold):
        return f"explained label {row['prediction']} is not the gold label {gold}"
    return None


def release_chain(row: dict[str, Any]) -> bool:
    """A teacher chain from a release that kept only passing chains (imported, or replayed by the demo's teacher):
    its Prediction was either correct zero-shot or written given the gold label, so it is no measure of the
    teacher's accuracy — only a reference for the reasoning metrics."""
    return (row.get("origin") or "").startswith(RELEASE_ORIGIN) or (row.get("model") or "").startswith(REPLAY_PREFIX)
