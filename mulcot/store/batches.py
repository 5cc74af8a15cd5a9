"""The ``batches`` table: annotation requests sent as a batch (the OpenAI Batch API) or written to a file
(``vllm run-batch``), each with the ``custom_id`` of every request it holds.

A row is written *before* its file is uploaded and updated after each step (uploaded, created, polled, ingested),
so a process killed anywhere leaves a row that says how far it got: :mod:`mulcot.annotate_batch` resumes from it
instead of submitting the same requests twice.
"""

from __future__ import annotations

from typing import Any

from mulcot.store.connection import Connection, decoded, equals, now, to_json

API, FILE = "api", "file"
# the Batch API's terminal statuses; expired and cancelled batches still return what finished
TERMINAL = ("completed", "failed", "expired", "cancelled")
SUPERSEDED = "superseded"  # an offline file replaced by a newer one before its results came back


class BatchesMixin(Connection):
    """Batches: ids (ours, the provider's, their files), stage, status, counts, cost, and the custom_ids held."""

    def add_batch(self, batch_id: str, *, run_id: str, dataset: str, split: str, model: str, kind: str,
                  stage: str, custom_ids: list[str], status: str, input_path: str | None = None,
                  estimate_usd: float | None = None) -> dict[str, Any]:
        """Register a batch about to be submitted (or a file just written)."""
        stamp = now()
        with self.transaction():
            self._insert("batches", {
                "id": batch_id, "run_id": run_id, "dataset": dataset, "split": split, "model": model, "kind": kind,
                "stage": stage, "custom_ids": to_json(custom_ids), "status": status, "requests": len(custom_ids),
                "input_path": input_path, "estimate_usd": estimate_usd, "created_at": stamp, "updated_at": stamp,
            })
        return self.get_batch(batch_id)  # type: ignore[return-value]

    def update_batch(self, batch_id: str, **values: Any) -> None:
        """Set columns of one batch (``errors`` may be a list)."""
        if "errors" in values and not isinstance(values["errors"], str | None):
            values["errors"] = to_json(values["errors"])
        if values.get("ingested"):
            values.setdefault("ingested_at", now())
        values["updated_at"] = now()
        with self.transaction():
            self._update("batches", "id", batch_id, values)

    def delete_batch(self, batch_id: str) -> None:
        """Forget a batch that never reached the provider."""
        with self.transaction():
            self.db.execute("DELETE FROM batches WHERE id = ?", [batch_id])

    def get_batch(self, batch_id: str) -> dict[str, Any] | None:
        rows = decoded(self.db.query("SELECT * FROM batches WHERE id = ?", [batch_id]), "custom_ids", "errors")
        return rows[0] if rows else None

    def batches(self, *, dataset: str | None = None, run_id: str | None = None, kind: str | None = None,
                pending: bool | None = None) -> list[dict[str, Any]]:
        """Batches, oldest first; ``pending=True``: those whose results are not in the store yet (and not
        superseded)."""
        clauses, params = equals(("dataset", dataset), ("run_id", run_id), ("kind", kind))
        if pending is True:
            clauses.append(f"ingested = 0 AND status != '{SUPERSEDED}'")
        elif pending is False:
            clauses.append("ingested = 1")
        sql = "SELECT * FROM batches" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        return decoded(self.db.query(sql + " ORDER BY created_at, rowid", params), "custom_ids", "errors")
