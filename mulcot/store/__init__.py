"""The project store: one SQLite file (sqlite-utils, WAL), the single source of truth, and the only package with
SQL. One module per group of tables:

- :mod:`~mulcot.store.connection` — opening (for writing, or read-only for commands that only read), migrations,
  all-or-nothing transactions, one-line errors for a locked or read-only store;
- :mod:`~mulcot.store.migrations` — the forward migrations (``_mulcot_migrations`` records which ran);
- :mod:`~mulcot.store.samples` — ``datasets`` and ``samples``;
- :mod:`~mulcot.store.reasonings` — ``reasonings`` (every chain, every attempt), D_t, D_a, statistics, ``soft_labels``;
- :mod:`~mulcot.store.runs` — ``runs`` and :meth:`Store.run`, the one place a run's status changes, and
  ``run_jobs``: one writer per run (a claim with pid, host and heartbeat; job claims when writers share a run);
- :mod:`~mulcot.store.results` — ``eval_results``;
- :mod:`~mulcot.store.browse` — the TUI's read model and ``ratings``;
- :mod:`~mulcot.store.batches` — ``batches``: annotation requests sent as batches or written to batch files;
- :mod:`~mulcot.store.judgements` — ``judgements``: an LLM judge's rubric scores and leakage guesses per chain.
"""

from __future__ import annotations

from mulcot.store.batches import BatchesMixin
from mulcot.store.browse import BrowseMixin
from mulcot.store.connection import DEFAULT_DB, default_db_path, now
from mulcot.store.judgements import JudgementsMixin
from mulcot.store.migrations import MIGRATIONS
from mulcot.store.reasonings import REASONING_COLUMNS, ChainsMixin
from mulcot.store.results import ResultsMixin
from mulcot.store.runs import RunRecord, RunsMixin
from mulcot.store.samples import SAMPLE_CONTENT, SamplesMixin, UpsertCounts


class Store(SamplesMixin, ChainsMixin, RunsMixin, ResultsMixin, BrowseMixin, BatchesMixin,
            JudgementsMixin):
    """A project store. Open with :meth:`Store.open`; safe to share between threads (one lock for writes)."""


__all__ = [
    "DEFAULT_DB", "MIGRATIONS", "REASONING_COLUMNS", "SAMPLE_CONTENT", "RunRecord", "Store", "UpsertCounts",
    "default_db_path", "now",
]
