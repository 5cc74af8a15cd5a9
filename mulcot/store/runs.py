"""The ``runs`` table and the one place where a run's status changes.

Every long command records itself through :meth:`RunsMixin.run`::

    with store.run("asst", kind="train-assistant", dataset="t15", config=cfg) as run:
        ...                      # the work
        run.metrics = {...}      # what it measured (also kept when it fails or is interrupted)

Status transitions: ``running`` on entry (a finished run entered again is resumed), then ``done`` (or the
``status`` the body set, e.g. ``stopped`` at a budget), ``interrupted`` on Ctrl-C, ``failed`` on an error (its
one-line message kept in ``error``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mulcot.errors import StoreError
from mulcot.store.connection import Connection, decoded, equals, now, to_json

RUNNING, DONE, FAILED, INTERRUPTED, STOPPED = "running", "done", "failed", "interrupted", "stopped"
FINISHED = (DONE, FAILED, INTERRUPTED, STOPPED)


@dataclass
class RunRecord:
    """What the body of :meth:`RunsMixin.run` may set: its metrics (a dict, or an object with ``as_dict()`` read when
    the run ends), a final status other than ``done``, and the message a failure or interruption records (default:
    the exception's text / how to resume)."""

    id: str
    metrics: Any = None
    status: str = DONE
    error: str | None = None
    resume_hint: str = "run the same command again to resume"


class RunsMixin(Connection):
    """Runs: kind, config, status, metrics, output folder."""

    def create_run(
        self,
        run_id: str,
        *,
        kind: str,
        dataset: str | None = None,
        config: dict | None = None,
        output_dir: str | None = None,
        recipe_hash: str | None = None,
    ) -> dict[str, Any]:
        """Register a run (status ``running``); an existing run of the same id and kind is resumed."""
        existing = self.get_run(run_id)
        with self.transaction():
            if existing is None:
                self._insert(
                    "runs",
                    {"id": run_id, "kind": kind, "dataset": dataset, "status": RUNNING, "config": to_json(config),
                     "output_dir": output_dir, "recipe_hash": recipe_hash, "created_at": now(),
                     "updated_at": now()},
                )  # fmt: skip
            else:
                if existing["kind"] != kind:
                    raise StoreError(f"run '{run_id}' already exists as a {existing['kind']} run: choose another name")
                values: dict[str, Any] = {"status": RUNNING, "updated_at": now(), "error": None}
                if recipe_hash is not None:
                    values["recipe_hash"] = recipe_hash
                self._update("runs", "id", run_id, values)
        return self.get_run(run_id)  # type: ignore[return-value]

    def update_run(self, run_id: str, **values: Any) -> None:
        for key in ("config", "metrics"):
            if key in values and not isinstance(values[key], str | None):
                values[key] = to_json(values[key])
        values["updated_at"] = now()
        if values.get("status") in FINISHED:
            values.setdefault("finished_at", now())
        with self.transaction():
            self._update("runs", "id", run_id, values)

    @contextmanager
    def run(self, run_id: str, *, kind: str, resume_hint: str = "run the same command again to resume",
            **record: Any) -> Iterator[RunRecord]:  # fmt: skip
        """Record a run around its work: ``running`` now (:meth:`create_run` takes ``record``: dataset, config,
        output_dir, recipe_hash), then ``done`` / ``interrupted`` / ``failed``."""
        self.create_run(run_id, kind=kind, **record)
        record = RunRecord(id=run_id, resume_hint=resume_hint)
        try:
            yield record
        except KeyboardInterrupt:
            self._end(record, INTERRUPTED, record.error or f"interrupted: {record.resume_hint}")
            raise
        except BaseException as exc:
            self._end(record, FAILED, record.error or str(exc)[:500] or type(exc).__name__)
            raise
        self._end(record, record.status, record.error)

    def _end(self, record: RunRecord, status: str, error: str | None) -> None:
        values: dict[str, Any] = {"status": status, "error": error}
        metrics = record.metrics
        if callable(getattr(metrics, "as_dict", None)):
            metrics = metrics.as_dict()  # a summary dataclass, read when the run ends
        if metrics is not None:
            values["metrics"] = metrics
        self.update_run(record.id, **values)

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        rows = decoded(self.db.query("SELECT * FROM runs WHERE id = ?", [run_id]), "config", "metrics")
        return rows[0] if rows else None

    def list_runs(self, kind: str | None = None) -> list[dict[str, Any]]:
        clauses, params = equals(("kind", kind or None))
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        return decoded(self.db.query(sql + " ORDER BY created_at, id", params), "config", "metrics")
