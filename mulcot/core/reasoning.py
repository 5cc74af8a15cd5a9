"""The five-field sentiment reasoning record: canonical text form and a tolerant parser.

Canonical form (what models are trained to emit, as in the MulCoT-RD release): five ``"Key": "value"`` lines in a
fixed order, separated by blank lines, values written as JSON string literals::

    "Text_analysis": "..."

    "Image_analysis": "..."

    "Conflict_resolution": "..."

    "Final_conclusion": "..."

    "Prediction": "neutral"

The parser also accepts a JSON object (bare or inside a ```json fence), ``## Key`` / ``### Key`` headings,
``**Key**:`` and plain ``Key:`` lines, and an unquoted or missing ``Prediction`` (then the first label word after
"Prediction", else the last label word in the text).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Literal

from mulcot.core.labels import LABELS, normalize_label

FIELDS: tuple[str, ...] = (
    "Text_analysis",
    "Image_analysis",
    "Conflict_resolution",
    "Final_conclusion",
    "Prediction",
)
ANALYSIS_FIELDS: tuple[str, ...] = FIELDS[:4]

ParseStatus = Literal["full", "partial", "none"]
PredictionSource = Literal["field", "after_keyword", "last_label_word", "none"]


def _squash(key: str) -> str:
    return re.sub(r"[\s_\-]+", "", key).lower()


_FIELD_BY_SQUASHED = {_squash(f): f for f in FIELDS}
_KEY_ALTERNATION = (
    r"text[ _\-]?analysis|image[ _\-]?analysis|conflict[ _\-]?resolution|final[ _\-]?conclusion|prediction"
)
# A field marker: at the start of a line (optionally as a markdown heading / bold / quoted key, then ':' or a
# line break) or, anywhere, as a quoted JSON-like key followed by ':'.
_MARKER = re.compile(
    rf"""(?:
        (?:^|\n)[ \t]*(?:\#{{1,6}}[ \t]*|\*\*|"|')?           # line start, optional heading or bold or quote
        (?P<k1>{_KEY_ALTERNATION})
        (?:\*\*|"|')?[ \t]*(?:\*\*)?[ \t]*(?::|(?=\n))    # optional closing mark, then ':' or end of line
      | "(?P<k2>{_KEY_ALTERNATION})"[ \t]*:
    )""",
    re.IGNORECASE | re.VERBOSE,
)
_FENCE = re.compile(r"```(?:json|JSON)?[ \t]*\n?(?P<body>.*?)```", re.DOTALL)
_LABEL_WORD = re.compile(r"\b(" + "|".join(LABELS) + r")\b", re.IGNORECASE)


@dataclass
class Reasoning:
    """A complete reasoning record."""

    text_analysis: str
    image_analysis: str
    conflict_resolution: str
    final_conclusion: str
    prediction: str

    def as_dict(self) -> dict[str, str]:
        """The record keyed by the canonical field names, in order."""
        return dict(
            zip(
                FIELDS,
                (
                    self.text_analysis,
                    self.image_analysis,
                    self.conflict_resolution,
                    self.final_conclusion,
                    self.prediction,
                ),
                strict=True,
            )
        )

    def to_text(self) -> str:
        """The canonical text form (five quoted key/value lines separated by blank lines)."""
        return format_reasoning(self.as_dict())

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> Reasoning:
        """Build from a mapping keyed by the canonical field names (all five required)."""
        return cls(*(fields[f] for f in FIELDS))


@dataclass
class ParsedReasoning:
    """What the tolerant parser made of a raw model output.

    ``status`` is ``full`` when the four analysis fields are non-empty and a valid label was found under a
    Prediction key; ``partial`` when something (a field or a label) was found; ``none`` otherwise.
    """

    fields: dict[str, str] = field(default_factory=dict)
    prediction: str | None = None
    prediction_source: PredictionSource = "none"
    status: ParseStatus = "none"
    form: str = "text"
    missing: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """True when the output has all five fields and a valid label (what the retry controller accepts)."""
        return self.status == "full"

    def reasoning(self) -> Reasoning | None:
        """The complete record when the parse is full, else None."""
        if not self.valid or self.prediction is None:
            return None
        values = {f: self.fields.get(f, "") for f in ANALYSIS_FIELDS}
        values["Prediction"] = self.prediction
        return Reasoning.from_fields(values)

    def to_text(self) -> str:
        """Canonical text of whatever was found (missing fields are left out; the label normalised)."""
        values = {f: self.fields[f] for f in ANALYSIS_FIELDS if self.fields.get(f)}
        if self.prediction:
            values["Prediction"] = self.prediction
        return format_reasoning(values)


def format_reasoning(fields: dict[str, str]) -> str:
    """Render fields in canonical order as ``"Key": "value"`` lines separated by blank lines."""
    parts = []
    for name in FIELDS:
        if name in fields and fields[name] is not None:
            parts.append(f'"{name}": {json.dumps(str(fields[name]), ensure_ascii=False)}')
    return "\n\n".join(parts)


def format_prediction(label: str) -> str:
    """The classification task's target: ``"Prediction": <label>``."""
    return f'"Prediction": {json.dumps(label)}'


def _clean_value(raw: str) -> str:
    """A field's value: a JSON string literal when it is one (escapes decoded), else the stripped text.

    Handles leftovers of JSON-ish text (trailing comma or brace), unescaped inner quotes, and commentary after a
    closing quote (``"neutral" because ...`` gives ``neutral``).
    """
    value = raw.strip()
    if value.startswith('"'):
        value = re.sub(r"[,\s]*\}?\s*$", "", value)
        try:
            decoded = json.loads(value)
            if isinstance(decoded, str):
                return decoded.strip()
        except json.JSONDecodeError:
            pass
        if len(value) >= 2 and value.endswith('"'):
            return value[1:-1].strip()
        try:
            decoded, _ = json.JSONDecoder().raw_decode(value)
            if isinstance(decoded, str):
                return decoded.strip()
        except json.JSONDecodeError:
            pass
        return value[1:].strip()
    return value.rstrip(",").strip().strip("*").strip()


def _from_json(text: str) -> dict[str, str] | None:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        obj = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    found: dict[str, str] = {}
    for key, value in obj.items():
        name = _FIELD_BY_SQUASHED.get(_squash(str(key)))
        if name and value is not None:
            found[name] = value.strip() if isinstance(value, str) else json.dumps(value)
    return found or None


def _from_markers(text: str) -> tuple[dict[str, str], str]:
    found: dict[str, str] = {}
    matches = list(_MARKER.finditer(text))
    form = "text"
    for i, m in enumerate(matches):
        key = m.group("k1") or m.group("k2")
        name = _FIELD_BY_SQUASHED[_squash(key)]
        if "#" in m.group(0):
            form = "headings"
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        value = _clean_value(text[m.end() : end])
        if name not in found or not found[name]:
            found[name] = value
    return found, form


def _label_from_text(text: str) -> tuple[str | None, PredictionSource]:
    idx = text.lower().rfind("prediction")
    if idx >= 0:
        m = _LABEL_WORD.search(text, idx)
        if m:
            return m.group(1).lower(), "after_keyword"
    words = _LABEL_WORD.findall(text)
    if words:
        return words[-1].lower(), "last_label_word"
    return None, "none"


def parse_reasoning(raw: str | None) -> ParsedReasoning:
    """Parse a model's raw output into a :class:`ParsedReasoning` (never raises)."""
    result = ParsedReasoning()
    if not raw or not raw.strip():
        result.missing = list(FIELDS)
        return result
    text = raw.strip()
    fence = _FENCE.search(text)
    body = fence.group("body") if fence else text

    fields = _from_json(body)
    if fields is not None:
        result.form = "json_fence" if fence else "json"
    else:
        fields, result.form = _from_markers(body)
        if fence and fields:
            result.form = "fence_" + result.form

    result.fields = {name: fields[name] for name in FIELDS if name in fields}
    label: str | None = None
    source: PredictionSource = "none"
    if "Prediction" in result.fields:
        label = normalize_label(result.fields["Prediction"])
        if label:
            source = "field"
        else:
            m = _LABEL_WORD.search(result.fields["Prediction"])
            if m:
                label, source = m.group(1).lower(), "after_keyword"
    if label is None and "Prediction" not in result.fields:
        label, source = _label_from_text(text)
    result.prediction, result.prediction_source = label, source

    result.missing = [f for f in ANALYSIS_FIELDS if not result.fields.get(f)]
    if "Prediction" not in result.fields or label is None:
        result.missing.append("Prediction")
    if not result.missing and source in ("field", "after_keyword"):
        result.status = "full"
    elif any(result.fields.get(f) for f in ANALYSIS_FIELDS) or label is not None:
        result.status = "partial"
    return result
