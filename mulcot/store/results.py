"""The ``eval_results`` table: one row per evaluation (metrics and settings as JSON)."""

from __future__ import annotations

from typing import Any

from mulcot.store.connection import Connection, decoded, equals, now, to_json


class ResultsMixin(Connection):
    """Evaluation results."""

    def add_eval_result(self, *, dataset: str, split: str, metrics: dict, n: int, source: str | None = None,
                        model: str | None = None, run_id: str | None = None, config: dict | None = None) -> int:
        """Store one evaluation's metrics (and settings) for a split; returns its id."""
        with self.transaction():
            return self._insert(
                "eval_results",
                {"run_id": run_id, "dataset": dataset, "split": split, "source": source, "model": model, "n": n,
                 "metrics": to_json(metrics), "config": to_json(config), "created_at": now()},
            )  # fmt: skip

    def eval_results(self, dataset: str | None = None) -> list[dict[str, Any]]:
        clauses, params = equals(("dataset", dataset or None))
        sql = "SELECT * FROM eval_results" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        return decoded(self.db.query(sql + " ORDER BY id", params), "metrics", "config")
