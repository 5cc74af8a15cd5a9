"""The three sentiment labels and their normalisation."""

from __future__ import annotations

LABELS: tuple[str, ...] = ("positive", "neutral", "negative")

_ALIASES = {
    "positive": "positive",
    "pos": "positive",
    "neutral": "neutral",
    "neu": "neutral",
    "negative": "negative",
    "neg": "negative",
}


def normalize_label(value: object) -> str | None:
    """Return the canonical label for `value` ("Positive", " neg ", ...) or None when it is not a label."""
    if not isinstance(value, str):
        return None
    return _ALIASES.get(value.strip().strip("\"'.,;:!*` ").lower())
