"""What the browser shows: the filter state, and the short forms of labels and outcomes used on screen."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

RUN_PREFIX = "run:"
LABEL_SHORT = {"positive": "pos", "neutral": "neu", "negative": "neg"}
LABEL_MARK = {"positive": "+", "neutral": "0", "negative": "-"}
OUTCOME_MARK = {"correct": "✓", "wrong": "✗", "failed": "!", "predicted": "?"}
MARK_SOURCES = ("teacher", "assistant", "student")  # one mark column each, in this order


@dataclass(frozen=True)
class Filters:
    """The sample list's filters; None is "any". ``source`` is a source name or ``run:<id>`` for one run."""

    dataset: str | None = None
    split: str | None = None
    gold: str | None = None
    predicted: str | None = None
    source: str | None = None
    stage: str | None = None
    outcome: str | None = None
    judge: str | None = None  # a judge score band (high, mid, low, failed)
    search: str = ""

    def store_filters(self) -> dict[str, Any]:
        """Keyword arguments for :meth:`mulcot.store.Store.browse_page` and ``browse_count``."""
        out = asdict(self)
        out["run_id"] = None
        if self.source and self.source.startswith(RUN_PREFIX):
            out["source"], out["run_id"] = None, self.source[len(RUN_PREFIX) :]
        out["search"] = self.search.strip() or None
        return out

    def with_(self, **changes: Any) -> Filters:
        return replace(self, **changes)

    def describe(self) -> str:
        """A short description of the active filters (empty when none)."""
        parts = []
        for name in ("gold", "predicted", "source", "stage", "outcome", "judge"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name} {value}")
        if self.search.strip():
            parts.append(f"search “{self.search.strip()}”")
        return " · ".join(parts)

    @property
    def active(self) -> bool:
        """Whether any filter besides the dataset and split is set."""
        return bool(self.describe())
