"""Progress: one event type for every stage, and one callback signature, ``progress(event)``.

The library never prints; long jobs report what they are doing through ``progress`` and the CLI, the TUI or a
test decide what to show. An :class:`Event` says which stage speaks, what kind of moment it is, how far it got
(``done`` of ``total``, when countable), a one-line ``message`` and any figures in ``data``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# kinds of moment (a stage may use others: a training run's "log", "eval", ...)
PROGRESS, INFO, START, DONE, SKIPPED, FAILED = "progress", "info", "start", "done", "skipped", "failed"


@dataclass(frozen=True)
class Event:
    """One progress report. Its ``data`` entries read as attributes and items too (``event.step``,
    ``event["loss"]``); ``event["event"]`` is its ``kind``."""

    stage: str  # import | annotate | train | soft_labels | expand | eval | export | predict | models | run | ...
    kind: str = PROGRESS
    done: int | None = None
    total: int | None = None
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        data = object.__getattribute__(self, "data")
        if name in data:
            return data[name]
        raise AttributeError(name)

    def __getitem__(self, key: str) -> Any:
        if key == "event":
            return self.kind
        if key in ("stage", "kind", "done", "total", "message") and key not in self.data:
            return getattr(self, key)
        return self.data[key]

    def __contains__(self, key: str) -> bool:
        return key in self.data or key in ("event", "stage", "kind", "done", "total", "message")

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


Progress = Callable[[Event], None]


def emit(progress: Progress | None, stage: str, kind: str = PROGRESS, *, done: int | None = None,
         total: int | None = None, message: str = "", **data: Any) -> None:
    """Report one event when someone listens."""
    if progress is not None:
        progress(Event(stage, kind, done, total, message, data))
