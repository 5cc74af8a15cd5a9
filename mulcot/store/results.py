"""The ``eval_results`` table: one row per evaluation (metrics and settings as JSON)."""

from __future__ import annotations

from typing import Any

from mulcot.store.connection import Connection, from_json, now, to_json


class ResultsMixin(Connection):
    """Evaluation results."""

    def add_eval_result(
        self,
        *,
        dataset: str,
        split: str,
        metrics: dict,
        n: int,
        source: str | None = None,
        model: str | None = None,
        run_id: str | None = None,
        config: dict | None = None,
    ) -> int:
        with self.transaction():
            return self._insert(
                "eval_results",
                {"run_id": run_id, "dataset": dataset, "split": split, "source": source, "model": model, "n": n,
                 "metrics": to_json(metrics), "config": to_json(config), "created_at": now()},
            )  # fmt: skip

    def eval_results(self, dataset: str | None = None) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM eval_results", []
        if dataset:
            sql += " WHERE dataset = ?"
            params.append(dataset)
        out = list(self.db.query(sql + " ORDER BY id", params))
        for r in out:
            r["metrics"] = from_json(r["metrics"])
            r["config"] = from_json(r["config"])
        return out
