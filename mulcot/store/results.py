"""The ``eval_results`` table (one row per evaluation: metrics and settings as JSON) and ``eval_posts`` (each
evaluation's per-post predictions and label probabilities)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mulcot.errors import StoreError
from mulcot.store.connection import Connection, decoded, equals, now, to_json

#: The columns of one ``eval_posts`` row a caller gives (``result_id`` is added).
EVAL_POST_COLUMNS = ("sample_id", "key", "gold", "prediction", "chain_prediction", "label_prediction", "chain_id",
                     "label_id", "p_positive", "p_neutral", "p_negative")


class ResultsMixin(Connection):
    """Evaluation results."""

    def add_eval_result(self, *, dataset: str, split: str, metrics: dict, n: int, source: str | None = None,
                        model: str | None = None, run_id: str | None = None, config: dict | None = None,
                        posts: Iterable[dict[str, Any]] = ()) -> int:
        """Store one evaluation's metrics (and settings) for a split, with its per-post rows (:data:`EVAL_POST_COLUMNS`;
        missing ones are NULL) in the same transaction; returns its id."""
        with self.transaction():
            rid = self._insert(
                "eval_results",
                {"run_id": run_id, "dataset": dataset, "split": split, "source": source, "model": model, "n": n,
                 "metrics": to_json(metrics), "config": to_json(config), "created_at": now()},
            )
            rows = []
            for post in posts:
                unknown = set(post) - set(EVAL_POST_COLUMNS)
                if unknown:
                    raise StoreError(f"unknown eval_posts columns: {sorted(unknown)}")
                rows.append([rid, *(post.get(c) for c in EVAL_POST_COLUMNS)])
            if rows:
                sql = (f"INSERT INTO eval_posts (result_id, {', '.join(EVAL_POST_COLUMNS)}) VALUES "
                       f"({', '.join('?' for _ in range(len(EVAL_POST_COLUMNS) + 1))})")
                self.db.conn.executemany(sql, rows)
            return rid

    def eval_results(self, dataset: str | None = None) -> list[dict[str, Any]]:
        clauses, params = equals(("dataset", dataset or None))
        sql = "SELECT * FROM eval_results" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        return decoded(self.db.query(sql + " ORDER BY id", params), "metrics", "config")

    def eval_posts(self, result_id: int) -> list[dict[str, Any]]:
        """The per-post rows of one evaluation result, by sample id (empty for a result stored without them)."""
        return list(self.db.query("SELECT * FROM eval_posts WHERE result_id = ? ORDER BY sample_id", [result_id]))
