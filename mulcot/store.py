"""The project store: one SQLite file (sqlite-utils, WAL), the single source of truth. The only module with SQL.

Tables: ``datasets``, ``samples``, ``reasonings`` (every chain ever produced, every attempt), ``runs`` and
``eval_results``; ``_mulcot_migrations`` records the schema migrations applied (forward only, each once, as plain
functions in order — the pattern of simonw/llm). Multi-row writes happen inside :meth:`Store.transaction`, which is
all-or-nothing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlite_utils

from mulcot.errors import NotFoundError, StoreError

DEFAULT_DB = "mulcot.db"

# Sample columns that define a sample's content; a re-import that changes one of them counts as an update (and
# then also rewrites raw_text and meta, which alone do not: the same post may come from two formats).
SAMPLE_CONTENT = ("text", "aspect", "label", "image_name", "image_path", "image_sha256", "has_image")
REASONING_COLUMNS = (
    "sample_id", "source", "model", "stage", "prompt_version", "raw", "text", "fields", "prediction",
    "parse_status", "valid", "attempt", "final", "tokens_in", "tokens_out", "cost_usd", "latency_s", "run_id",
    "error", "origin", "created_at",
)  # fmt: skip


def now() -> str:
    """UTC timestamp in ISO 8601 (seconds)."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def default_db_path() -> Path:
    """``$MULCOT_DB`` when set, else ``./mulcot.db``."""
    return Path(os.environ.get("MULCOT_DB") or DEFAULT_DB)


# --------------------------------------------------------------------------------------------------- migrations

MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = []


def migration(fn: Callable[[sqlite_utils.Database], None]) -> Callable[[sqlite_utils.Database], None]:
    """Register a forward migration; they run in definition order, each once."""
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_initial(db: sqlite_utils.Database) -> None:
    db["datasets"].create(
        {
            "name": str, "task": str, "format": str, "source": str, "images_root": str, "has_images": int,
            "created_at": str, "updated_at": str,
        },
        pk="name",
        not_null={"task", "format"},
    )  # fmt: skip
    db["samples"].create(
        {
            "id": int, "dataset": str, "split": str, "key": str, "text": str, "raw_text": str, "aspect": str,
            "label": str, "image_name": str, "image_path": str, "image_sha256": str, "has_image": int,
            "meta": str, "created_at": str, "updated_at": str,
        },
        pk="id",
        not_null={"dataset", "split", "key", "text"},
        foreign_keys=[("dataset", "datasets", "name")],
    )  # fmt: skip
    db["samples"].create_index(["dataset", "split", "key"], unique=True)
    db["samples"].create_index(["dataset", "label"])
    db["runs"].create(
        {
            "id": str, "kind": str, "dataset": str, "status": str, "config": str, "metrics": str,
            "output_dir": str, "recipe_hash": str, "error": str, "created_at": str, "updated_at": str,
            "finished_at": str,
        },
        pk="id",
        not_null={"kind", "status"},
    )  # fmt: skip
    db["reasonings"].create(
        {
            "id": int, "sample_id": int, "source": str, "model": str, "stage": str, "prompt_version": str,
            "raw": str, "text": str, "fields": str, "prediction": str, "parse_status": str, "valid": int,
            "attempt": int, "final": int, "tokens_in": int, "tokens_out": int, "cost_usd": float,
            "latency_s": float, "run_id": str, "error": str, "origin": str, "created_at": str,
        },
        pk="id",
        not_null={"sample_id", "source", "stage"},
        foreign_keys=[("sample_id", "samples", "id")],
    )  # fmt: skip
    db["reasonings"].create_index(["sample_id", "source", "stage"])
    db["reasonings"].create_index(["source", "model", "prompt_version", "final"])
    db["reasonings"].create_index(["run_id"])
    db["eval_results"].create(
        {
            "id": int, "run_id": str, "dataset": str, "split": str, "source": str, "model": str, "n": int,
            "metrics": str, "config": str, "created_at": str,
        },
        pk="id",
        not_null={"dataset", "split", "metrics"},
    )  # fmt: skip
    db["eval_results"].create_index(["dataset", "split"])


# ------------------------------------------------------------------------------------------------------ records


@dataclass
class UpsertCounts:
    """What a sample upsert changed."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    ids: dict[tuple[str, str], int] = field(default_factory=dict)  # (split, key) -> sample id


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


def _loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)


class Store:
    """A project store. Open with :meth:`Store.open`; safe to share between threads (one lock for writes)."""

    def __init__(self, path: str | Path, *, migrate: bool = True):
        self.path = Path(path)
        if self.path.exists() and self.path.is_dir():
            raise StoreError(f"{self.path} is a folder, not a database file: pass --db FILE")
        if not self.path.parent.exists():
            raise StoreError(f"folder {self.path.parent} does not exist: create it or pass another --db")
        try:
            conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
            self.db = sqlite_utils.Database(conn)
            self.db.execute("PRAGMA foreign_keys = ON")
            if self.db.journal_mode != "wal":
                self.db.enable_wal()
            # WAL + NORMAL: every commit survives a crash or kill -9 of the process; only an OS crash or power
            # loss can lose the last commits. One fsync per checkpoint instead of per commit.
            self.db.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a mulcot database ({exc})") from exc
        self._lock = threading.RLock()
        self._depth = 0
        if migrate:
            self.migrate()

    @classmethod
    def open(cls, path: str | Path | None = None) -> Store:
        """Open (creating and migrating as needed) the store at ``path`` or the default location."""
        return cls(path or default_db_path())

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema ------------------------------------------------------------------------------------------

    def applied_migrations(self) -> list[str]:
        if "_mulcot_migrations" not in self.db.table_names():
            return []
        return [r["name"] for r in self.db.query("SELECT name FROM _mulcot_migrations ORDER BY rowid")]

    @property
    def schema_version(self) -> int:
        return len(self.applied_migrations())

    def pending_migrations(self) -> list[str]:
        done = set(self.applied_migrations())
        return [fn.__name__ for fn in MIGRATIONS if fn.__name__ not in done]

    def migrate(self) -> list[str]:
        """Apply pending migrations (each in its own transaction); returns the names applied."""
        applied = []
        with self._lock:
            if "_mulcot_migrations" not in self.db.table_names():
                self.db.execute(
                    "CREATE TABLE IF NOT EXISTS _mulcot_migrations (name TEXT PRIMARY KEY, applied_at TEXT)"
                )
            done = set(self.applied_migrations())
            known = {fn.__name__ for fn in MIGRATIONS}
            if done - known:
                raise StoreError(
                    f"{self.path} was written by a newer mulcot (schema {sorted(done - known)[-1]}): upgrade mulcot"
                )
            for fn in MIGRATIONS:
                if fn.__name__ in done:
                    continue
                with self.transaction():
                    fn(self.db)
                    self.db.execute(
                        "INSERT INTO _mulcot_migrations (name, applied_at) VALUES (?, ?)",
                        [fn.__name__, now()],
                    )
                    self.db.execute(f"PRAGMA user_version = {len(done) + len(applied) + 1}")
                applied.append(fn.__name__)
        return applied

    @contextmanager
    def transaction(self) -> Iterator[Store]:
        """All-or-nothing block; nests (inner blocks join the outer transaction)."""
        with self._lock:
            if self._depth == 0:
                self.db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield self
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    self.db.execute("ROLLBACK")
                raise
            else:
                self._depth -= 1
                if self._depth == 0:
                    self.db.execute("COMMIT")

    def _insert(self, table: str, row: dict[str, Any]) -> int:
        cols = list(row)
        sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
        return self.db.execute(sql, [row[c] for c in cols]).lastrowid

    def _update(self, table: str, pk: str, pk_value: Any, values: dict[str, Any]) -> None:
        sets = ", ".join(f"{c} = ?" for c in values)
        self.db.execute(f"UPDATE {table} SET {sets} WHERE {pk} = ?", [*values.values(), pk_value])

    # -- datasets ----------------------------------------------------------------------------------------

    def get_dataset(self, name: str) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM datasets WHERE name = ?", [name]))
        return rows[0] if rows else None

    def require_dataset(self, name: str) -> dict[str, Any]:
        ds = self.get_dataset(name)
        if ds is None:
            names = ", ".join(d["name"] for d in self.list_datasets()) or "none yet"
            raise NotFoundError(f"no dataset named '{name}' in {self.path} (datasets: {names})")
        return ds

    def upsert_dataset(
        self, name: str, *, task: str, format: str, source: str, images_root: str | None, has_images: bool
    ) -> bool:
        """Create or refresh a dataset row; returns True when it was created."""
        existing = self.get_dataset(name)
        with self.transaction():
            if existing is None:
                self._insert(
                    "datasets",
                    {
                        "name": name, "task": task, "format": format, "source": source,
                        "images_root": images_root, "has_images": int(has_images), "created_at": now(),
                        "updated_at": now(),
                    },
                )  # fmt: skip
                return True
            has = int(bool(existing["has_images"]) or has_images)
            self._update(
                "datasets", "name", name,
                {"images_root": images_root or existing["images_root"], "has_images": has, "updated_at": now()},
            )  # fmt: skip
            return False

    def list_datasets(self) -> list[dict[str, Any]]:
        """Datasets with sample and chain counts."""
        return list(
            self.db.query(
                """
                SELECT d.*,
                  (SELECT COUNT(*) FROM samples s WHERE s.dataset = d.name) AS samples,
                  (SELECT COUNT(*) FROM reasonings r JOIN samples s ON s.id = r.sample_id
                     WHERE s.dataset = d.name) AS chains
                FROM datasets d ORDER BY d.name
                """
            )
        )

    # -- samples -----------------------------------------------------------------------------------------

    def upsert_samples(self, dataset: str, rows: Iterable[dict[str, Any]]) -> UpsertCounts:
        """Insert or update samples keyed by (dataset, split, key); must run inside :meth:`transaction`.

        Each row has ``split``, ``key`` and the columns of :data:`SAMPLE_CONTENT` (``meta`` optional).
        """
        counts = UpsertCounts()
        existing = {
            (r["split"], r["key"]): r for r in self.db.query("SELECT * FROM samples WHERE dataset = ?", [dataset])
        }
        stamp = now()
        for row in rows:
            ident = (row["split"], row["key"])
            content = {c: row.get(c) for c in SAMPLE_CONTENT}
            content["has_image"] = int(bool(content["has_image"]))
            extra = {"raw_text": row.get("raw_text") or row["text"], "meta": _json(row.get("meta") or {})}
            old = existing.get(ident)
            if old is None:
                sid = self._insert(
                    "samples",
                    {"dataset": dataset, "split": row["split"], "key": row["key"], **content, **extra,
                     "created_at": stamp, "updated_at": stamp},
                )  # fmt: skip
                existing[ident] = {"id": sid, **content}
                counts.added += 1
            else:
                sid = old["id"]
                if any(old[c] != content[c] for c in SAMPLE_CONTENT):
                    self._update("samples", "id", sid, {**content, **extra, "updated_at": stamp})
                    existing[ident] = {"id": sid, **content}
                    counts.updated += 1
                else:
                    counts.unchanged += 1
            counts.ids[ident] = sid
        return counts

    def sample_ids(self, dataset: str) -> dict[tuple[str, str], int]:
        """(split, key) -> sample id for one dataset."""
        return {
            (r["split"], r["key"]): r["id"]
            for r in self.db.query("SELECT id, split, key FROM samples WHERE dataset = ?", [dataset])
        }

    def samples(
        self, dataset: str, split: str | None = None, *, limit: int | None = None, offset: int = 0
    ) -> list[dict[str, Any]]:
        """Samples of a dataset (optionally one split), in import order."""
        sql = "SELECT * FROM samples WHERE dataset = ?"
        params: list[Any] = [dataset]
        if split is not None:
            sql += " AND split = ?"
            params.append(split)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [limit, offset]
        out = []
        for r in self.db.query(sql, params):
            r["meta"] = _loads(r["meta"]) or {}
            out.append(r)
        return out

    def get_sample(self, sample_id: int) -> dict[str, Any]:
        rows = list(self.db.query("SELECT * FROM samples WHERE id = ?", [sample_id]))
        if not rows:
            raise NotFoundError(f"no sample with id {sample_id}")
        rows[0]["meta"] = _loads(rows[0]["meta"]) or {}
        return rows[0]

    def splits(self, dataset: str) -> list[str]:
        return [
            r["split"]
            for r in self.db.query("SELECT DISTINCT split FROM samples WHERE dataset = ? ORDER BY split", [dataset])
        ]

    # -- reasonings --------------------------------------------------------------------------------------

    def add_reasoning(self, **row: Any) -> int:
        """Store one chain (one attempt). ``fields`` may be a dict; ``created_at`` defaults to now."""
        unknown = set(row) - set(REASONING_COLUMNS)
        if unknown:
            raise StoreError(f"unknown reasoning columns: {sorted(unknown)}")
        row = dict(row)
        if isinstance(row.get("fields"), dict):
            row["fields"] = _json(row["fields"])
        for flag in ("valid", "final"):
            if flag in row and row[flag] is not None:
                row[flag] = int(bool(row[flag]))
        row.setdefault("created_at", now())
        with self.transaction():
            return self._insert("reasonings", row)

    def reasoning_exists(self, sample_id: int, source: str, stage: str, raw: str, model: str | None) -> bool:
        rows = self.db.execute(
            "SELECT 1 FROM reasonings WHERE sample_id = ? AND source = ? AND stage = ? AND raw = ?"
            " AND model IS ? LIMIT 1",
            [sample_id, source, stage, raw, model],
        ).fetchall()
        return bool(rows)

    def reasonings(
        self,
        *,
        dataset: str | None = None,
        split: str | None = None,
        source: str | None = None,
        stage: str | None = None,
        sample_id: int | None = None,
        run_id: str | None = None,
        final_only: bool = False,
    ) -> list[dict[str, Any]]:
        """Chains matching the filters, joined with their sample's dataset, split, key and gold label."""
        where, params = [], []
        for col, value in (
            ("s.dataset", dataset), ("s.split", split), ("r.source", source), ("r.stage", stage),
            ("r.sample_id", sample_id), ("r.run_id", run_id),
        ):  # fmt: skip
            if value is not None:
                where.append(f"{col} = ?")
                params.append(value)
        if final_only:
            where.append("r.final = 1")
        sql = (
            "SELECT r.*, s.dataset, s.split, s.key, s.label AS gold FROM reasonings r"
            " JOIN samples s ON s.id = r.sample_id"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY r.id"
        out = []
        for r in self.db.query(sql, params):
            r["fields"] = _loads(r["fields"]) or {}
            out.append(r)
        return out

    def chain_progress(
        self,
        dataset: str,
        split: str | None,
        *,
        source: str,
        model: str | None,
        stage: str,
        prompt_version: str,
    ) -> dict[int, dict[str, Any]]:
        """Per sample: the number of attempts so far and the final chain (or None), for one source, model, stage
        and prompt version — what a resumable generator needs to know."""
        sql = """
            SELECT r.sample_id, COUNT(*) AS attempts,
              MAX(CASE WHEN r.final = 1 THEN r.id END) AS final_id
            FROM reasonings r JOIN samples s ON s.id = r.sample_id
            WHERE s.dataset = ? AND r.source = ? AND r.model IS ? AND r.stage = ? AND r.prompt_version IS ?
        """
        params: list[Any] = [dataset, source, model, stage, prompt_version]
        if split is not None:
            sql += " AND s.split = ?"
            params.append(split)
        sql += " GROUP BY r.sample_id"
        out: dict[int, dict[str, Any]] = {}
        finals = []
        for r in self.db.query(sql, params):
            out[r["sample_id"]] = {"attempts": r["attempts"], "final": None}
            if r["final_id"] is not None:
                finals.append(r["final_id"])
        for i in range(0, len(finals), 500):
            chunk = finals[i : i + 500]
            for r in self.db.query(
                f"SELECT id, sample_id, valid, prediction, parse_status FROM reasonings WHERE id IN "
                f"({', '.join('?' for _ in chunk)})",
                chunk,
            ):
                out[r["sample_id"]]["final"] = r
        return out

    def teacher_set(self, dataset: str, split: str | None = None, model: str | None = None) -> list[dict[str, Any]]:
        """D_t: final, fully parsed teacher chains that are stage-1 predictions equal to the gold label or stage-2
        explanations (whose Prediction equals the gold label)."""
        sql = """
            SELECT r.*, s.split, s.key, s.label AS gold FROM reasonings r JOIN samples s ON s.id = r.sample_id
            WHERE s.dataset = ? AND r.source = 'teacher' AND r.final = 1 AND r.parse_status = 'full'
              AND r.prediction = s.label AND r.stage IN ('predict', 'explain')
        """
        params: list[Any] = [dataset]
        if split is not None:
            sql += " AND s.split = ?"
            params.append(split)
        if model is not None:
            sql += " AND r.model = ?"
            params.append(model)
        rows = list(self.db.query(sql + " ORDER BY r.sample_id, r.id", params))
        for r in rows:
            r["fields"] = _loads(r["fields"]) or {}
        return rows

    # -- stats -------------------------------------------------------------------------------------------

    def dataset_stats(self, name: str) -> dict[str, Any]:
        """Counts per split and label, images found, and per reasoning source/stage: parse quality and
        agreement of the chain's Prediction with the gold label (final attempts only)."""
        ds = self.require_dataset(name)
        splits: dict[str, dict[str, Any]] = {}
        for r in self.db.query(
            "SELECT split, label, COUNT(*) AS n, SUM(has_image) AS images FROM samples WHERE dataset = ?"
            " GROUP BY split, label ORDER BY split, label",
            [name],
        ):
            s = splits.setdefault(r["split"], {"samples": 0, "images": 0, "labels": {}})
            s["samples"] += r["n"]
            s["images"] += r["images"] or 0
            s["labels"][r["label"] or "unlabelled"] = r["n"]
        chains = []
        for r in self.db.query(
            """
            SELECT r.source, r.stage, s.split, COUNT(*) AS chains,
              COUNT(DISTINCT r.sample_id) AS samples,
              SUM(r.parse_status = 'full') AS full, SUM(r.parse_status = 'partial') AS partial,
              SUM(r.parse_status = 'none' OR r.parse_status IS NULL) AS unparsed,
              SUM(r.prediction IS NOT NULL AND r.prediction = s.label) AS correct
            FROM reasonings r JOIN samples s ON s.id = r.sample_id
            WHERE s.dataset = ? AND (r.final = 1 OR r.final IS NULL)
            GROUP BY r.source, r.stage, s.split ORDER BY r.source, r.stage, s.split
            """,
            [name],
        ):
            chains.append(dict(r))
        teacher_set = {
            r["split"]: r["n"]
            for r in self.db.query(
                """
                SELECT s.split, COUNT(DISTINCT r.sample_id) AS n FROM reasonings r JOIN samples s ON s.id = r.sample_id
                WHERE s.dataset = ? AND r.source = 'teacher' AND r.final = 1 AND r.parse_status = 'full'
                  AND r.prediction = s.label AND r.stage IN ('predict', 'explain')
                GROUP BY s.split
                """,
                [name],
            )
        }
        attempts = self.db.execute(
            "SELECT COUNT(*) FROM reasonings r JOIN samples s ON s.id = r.sample_id WHERE s.dataset = ?",
            [name],
        ).fetchone()[0]
        return {
            "dataset": name,
            "task": ds["task"],
            "format": ds["format"],
            "source": ds["source"],
            "samples": sum(s["samples"] for s in splits.values()),
            "splits": splits,
            "chains": chains,
            "teacher_set": teacher_set,
            "attempts": attempts,
        }

    # -- runs --------------------------------------------------------------------------------------------

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
                    {"id": run_id, "kind": kind, "dataset": dataset, "status": "running", "config": _json(config),
                     "output_dir": output_dir, "recipe_hash": recipe_hash, "created_at": now(),
                     "updated_at": now()},
                )  # fmt: skip
            else:
                if existing["kind"] != kind:
                    raise StoreError(f"run '{run_id}' already exists as a {existing['kind']} run: choose another name")
                self._update("runs", "id", run_id, {"status": "running", "updated_at": now(), "error": None})
        return self.get_run(run_id)  # type: ignore[return-value]

    def update_run(self, run_id: str, **values: Any) -> None:
        for key in ("config", "metrics"):
            if key in values and not isinstance(values[key], str | None):
                values[key] = _json(values[key])
        values["updated_at"] = now()
        if values.get("status") in ("done", "failed", "interrupted", "stopped"):
            values.setdefault("finished_at", now())
        with self.transaction():
            self._update("runs", "id", run_id, values)

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM runs WHERE id = ?", [run_id]))
        if not rows:
            return None
        run = rows[0]
        run["config"] = _loads(run["config"])
        run["metrics"] = _loads(run["metrics"])
        return run

    def list_runs(self, kind: str | None = None) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM runs", []
        if kind:
            sql += " WHERE kind = ?"
            params.append(kind)
        runs = list(self.db.query(sql + " ORDER BY created_at, id", params))
        for run in runs:
            run["config"] = _loads(run["config"])
            run["metrics"] = _loads(run["metrics"])
        return runs

    # -- evaluation results ------------------------------------------------------------------------------

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
                 "metrics": _json(metrics), "config": _json(config), "created_at": now()},
            )  # fmt: skip

    def eval_results(self, dataset: str | None = None) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM eval_results", []
        if dataset:
            sql += " WHERE dataset = ?"
            params.append(dataset)
        out = list(self.db.query(sql + " ORDER BY id", params))
        for r in out:
            r["metrics"] = _loads(r["metrics"])
            r["config"] = _loads(r["config"])
        return out
