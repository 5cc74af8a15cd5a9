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


# The text of every chain of a sample (raw output, else the canonical text), one per line: what search sees.
_SAMPLE_CHAINS_SQL = (
    "SELECT COALESCE(group_concat(COALESCE(r.raw, r.text, ''), char(10)), '') FROM reasonings r"
    " WHERE r.sample_id = {sid}"
)


@migration
def m002_browse_search(db: sqlite_utils.Database) -> None:
    """Browsing (TUI): full-text search over a sample's text, aspect and chains, kept in sync by triggers (one FTS5
    document per sample, rowid = sample id), and covering indexes for paged, filtered sample lists."""
    db.execute(
        "CREATE VIRTUAL TABLE samples_fts USING fts5(text, aspect, chains, tokenize = 'unicode61 remove_diacritics 2')"
    )
    db.execute(
        "INSERT INTO samples_fts (rowid, text, aspect, chains) SELECT s.id, s.text, s.aspect, ("
        + _SAMPLE_CHAINS_SQL.format(sid="s.id")
        + ") FROM samples s"
    )
    db.execute(
        "CREATE TRIGGER samples_fts_insert AFTER INSERT ON samples BEGIN"
        " INSERT OR REPLACE INTO samples_fts (rowid, text, aspect, chains)"
        f" VALUES (new.id, new.text, new.aspect, ({_SAMPLE_CHAINS_SQL.format(sid='new.id')})); END"
    )
    db.execute(
        "CREATE TRIGGER samples_fts_update AFTER UPDATE OF id, text, aspect ON samples BEGIN"
        " DELETE FROM samples_fts WHERE rowid = old.id;"
        " INSERT OR REPLACE INTO samples_fts (rowid, text, aspect, chains)"
        f" VALUES (new.id, new.text, new.aspect, ({_SAMPLE_CHAINS_SQL.format(sid='new.id')})); END"
    )
    db.execute("CREATE TRIGGER samples_fts_delete AFTER DELETE ON samples BEGIN"
               " DELETE FROM samples_fts WHERE rowid = old.id; END")  # fmt: skip
    db.execute(
        "CREATE TRIGGER reasonings_fts_insert AFTER INSERT ON reasonings BEGIN"
        " UPDATE samples_fts SET chains = COALESCE(NULLIF(chains, '') || char(10), '')"
        " || COALESCE(new.raw, new.text, '') WHERE rowid = new.sample_id; END"
    )
    db.execute(
        "CREATE TRIGGER reasonings_fts_update AFTER UPDATE OF sample_id, raw, text ON reasonings BEGIN"
        f" UPDATE samples_fts SET chains = ({_SAMPLE_CHAINS_SQL.format(sid='old.sample_id')})"
        " WHERE rowid = old.sample_id;"
        f" UPDATE samples_fts SET chains = ({_SAMPLE_CHAINS_SQL.format(sid='new.sample_id')})"
        " WHERE rowid = new.sample_id AND new.sample_id IS NOT old.sample_id; END"
    )
    db.execute(
        "CREATE TRIGGER reasonings_fts_delete AFTER DELETE ON reasonings BEGIN"
        f" UPDATE samples_fts SET chains = ({_SAMPLE_CHAINS_SQL.format(sid='old.sample_id')})"
        " WHERE rowid = old.sample_id; END"
    )
    db.execute("CREATE INDEX idx_samples_dataset ON samples (dataset)")
    db.execute("CREATE INDEX idx_samples_dataset_split ON samples (dataset, split)")
    db.execute("CREATE INDEX idx_reasonings_browse ON reasonings (sample_id, source, stage, final, valid, prediction)")
    db.execute("CREATE INDEX idx_reasonings_stage ON reasonings (stage)")


@migration
def m003_ratings(db: sqlite_utils.Database) -> None:
    """Human ratings of chains (beyond the paper): faithfulness and usefulness 1-5, an optional comment."""
    db.execute(
        """
        CREATE TABLE ratings (
          id INTEGER PRIMARY KEY,
          reasoning_id INTEGER NOT NULL REFERENCES reasonings (id) ON DELETE CASCADE,
          faithfulness INTEGER NOT NULL CHECK (faithfulness BETWEEN 1 AND 5),
          usefulness INTEGER NOT NULL CHECK (usefulness BETWEEN 1 AND 5),
          comment TEXT,
          rater TEXT,
          created_at TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX idx_ratings_reasoning ON ratings (reasoning_id)")


@migration
def m004_soft_label_index(db: sqlite_utils.Database) -> None:
    """Where each cached soft label lives: the assistant's top-k log-probs per target position of one training
    sequence, in a safetensors shard under the distill run's folder."""
    db.execute(
        """
        CREATE TABLE soft_labels (
          run_id TEXT NOT NULL,
          item_key TEXT NOT NULL,
          shard TEXT NOT NULL,
          positions INTEGER NOT NULL,
          k INTEGER NOT NULL,
          created_at TEXT NOT NULL,
          PRIMARY KEY (run_id, item_key)
        )
        """
    )


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

    def assistant_set(self, dataset: str, split: str, run_id: str) -> list[dict[str, Any]]:
        """D_a: the assistant run's expansion chains that parse fully and whose Prediction equals the gold label."""
        rows = list(
            self.db.query(
                """
                SELECT r.*, s.split, s.key, s.label AS gold FROM reasonings r JOIN samples s ON s.id = r.sample_id
                WHERE s.dataset = ? AND s.split = ? AND r.source = 'assistant' AND r.stage = 'expand'
                  AND r.run_id = ? AND r.parse_status = 'full' AND r.prediction = s.label
                ORDER BY r.sample_id, r.id
                """,
                [dataset, split, run_id],
            )
        )
        for r in rows:
            r["fields"] = _loads(r["fields"]) or {}
        return rows

    def chain_counts(self, dataset: str, split: str, *, source: str, stage: str, run_id: str,
                     prompt_version: str) -> dict[int, int]:  # fmt: skip
        """Per sample, how many chains a run has already produced (for resuming generation)."""
        return {
            r["sample_id"]: r["n"]
            for r in self.db.query(
                """
                SELECT r.sample_id, COUNT(*) AS n FROM reasonings r JOIN samples s ON s.id = r.sample_id
                WHERE s.dataset = ? AND s.split = ? AND r.source = ? AND r.stage = ? AND r.run_id = ?
                  AND r.prompt_version IS ?
                GROUP BY r.sample_id
                """,
                [dataset, split, source, stage, run_id, prompt_version],
            )
        }

    # -- soft labels -------------------------------------------------------------------------------------

    def soft_label_index(self, run_id: str) -> dict[str, dict[str, Any]]:
        """item key -> {shard, positions, k} for a distill run's cached soft labels."""
        return {
            r["item_key"]: r
            for r in self.db.query("SELECT item_key, shard, positions, k FROM soft_labels WHERE run_id = ?", [run_id])
        }

    def add_soft_labels(self, run_id: str, shard: str, entries: Iterable[tuple[str, int, int]]) -> None:
        """Index one written shard: (item key, positions, k) per entry, all in one transaction."""
        stamp = now()
        with self.transaction():
            for key, positions, k in entries:
                self.db.execute(
                    "INSERT OR REPLACE INTO soft_labels (run_id, item_key, shard, positions, k, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    [run_id, key, shard, positions, k, stamp],
                )

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

    # -- browsing (TUI) ---------------------------------------------------------------------------------------
    # Read-only views for the chain browser (paged, filtered sample lists with per-source marks; one sample with
    # its chains and retry attempts) plus the one thing it writes: human ratings of chains.

    BROWSE_OUTCOMES = ("correct", "wrong", "failed")
    SOURCE_ORDER = ("teacher", "assistant", "student")
    STAGE_ORDER = ("predict", "explain", "expand")

    @staticmethod
    def fts_query(text: str) -> str | None:
        """The FTS5 query for words a user typed: each whitespace-separated word becomes a quoted phrase (inner
        quotes doubled, so no FTS5 syntax such as NEAR(, *, ^, column: or AND/OR survives), all words required, the
        last one also as a prefix. None when nothing searchable is left (only punctuation)."""
        words = [w for w in text.split() if any(ch.isalnum() for ch in w)]
        if not words:
            return None
        phrases = ['"' + w.replace('"', '""') + '"' for w in words]
        return " ".join(phrases) + "*"

    def _browse_where(
        self,
        *,
        dataset: str | None = None,
        split: str | None = None,
        gold: str | None = None,
        predicted: str | None = None,
        source: str | None = None,
        stage: str | None = None,
        outcome: str | None = None,
        run_id: str | None = None,
        search: str | None = None,
    ) -> tuple[str, str, list[Any]]:
        """FROM and WHERE clauses over ``samples s`` and the column that orders the rows by sample id. A search
        joins the full-text index and is driven by it (its rowids come in sample-id order). Chain filters
        (source, run, stage, predicted label, outcome) select the samples that have one final chain meeting them."""
        tables, where, params = "samples s", [], []
        if search is not None and search.strip():
            query = self.fts_query(search)
            if query is None:
                where.append("0")
            else:
                tables = "samples_fts f JOIN samples s ON s.id = f.rowid"
                where.append("samples_fts MATCH ?")
                params.append(query)
        for col, value in (("s.dataset", dataset), ("s.split", split), ("s.label", gold)):
            if value is not None:
                where.append(f"{col} = ?")
                params.append(value)
        chain: list[str] = []
        for col, value in (("r.source", source), ("r.run_id", run_id), ("r.stage", stage), ("r.prediction", predicted)):
            if value is not None:
                chain.append(f"{col} = ?")
                params.append(value)
        if outcome == "correct":
            chain.append("COALESCE(r.valid, 1) = 1 AND r.prediction = s.label")
        elif outcome == "wrong":
            chain.append("COALESCE(r.valid, 1) = 1 AND r.prediction <> s.label")
        elif outcome == "failed":
            chain.append("(r.valid = 0 OR r.prediction IS NULL)")
        elif outcome is not None:
            raise StoreError(f"unknown outcome '{outcome}': use {', '.join(self.BROWSE_OUTCOMES)}")
        if chain:
            where.append(
                "EXISTS (SELECT 1 FROM reasonings r WHERE r.sample_id = s.id AND (r.final = 1 OR r.final IS NULL)"
                " AND " + " AND ".join(chain) + ")"
            )
        return tables, " AND ".join(where) or "1", params

    def browse_tree(self, *, chains: bool = True) -> list[dict[str, Any]]:
        """Datasets (name, task, samples, chains) each with its splits (split, samples, chains). Counting chains
        reads every chain's index entry; ``chains=False`` leaves them None (instant)."""
        tree: dict[str, dict[str, Any]] = {}
        for d in self.db.query("SELECT name, task FROM datasets ORDER BY name"):
            tree[d["name"]] = {"name": d["name"], "task": d["task"], "samples": 0, "chains": 0 if chains else None,
                               "splits": {}}  # fmt: skip
        for r in self.db.query("SELECT dataset, split, COUNT(*) AS n FROM samples GROUP BY dataset, split"):
            ds = tree.get(r["dataset"])
            if ds is not None:
                ds["splits"][r["split"]] = {"split": r["split"], "samples": r["n"], "chains": 0 if chains else None}
                ds["samples"] += r["n"]
        query = (
            "SELECT s.dataset, s.split, COUNT(*) AS n FROM reasonings r JOIN samples s ON s.id = r.sample_id"
            " GROUP BY s.dataset, s.split"
        )
        for r in self.db.query(query) if chains else []:
            ds = tree.get(r["dataset"])
            if ds is not None and r["split"] in ds["splits"]:
                ds["splits"][r["split"]]["chains"] = r["n"]
                ds["chains"] += r["n"]
        order = {"train": 0, "dev": 1, "test": 2}
        return [
            {**ds, "splits": sorted(ds["splits"].values(), key=lambda s: (order.get(s["split"], 3), s["split"]))}
            for ds in tree.values()
        ]

    def browse_choices(self) -> dict[str, list[str]]:
        """The values the chain filters can take in this store: sources, stages and run ids (all in use)."""

        def distinct(col: str) -> set[str]:  # a loose index scan: one index seek per distinct value
            return {
                r["v"]
                for r in self.db.query(
                    f"WITH RECURSIVE v(v) AS (SELECT MIN({col}) FROM reasonings UNION ALL"
                    f" SELECT (SELECT MIN({col}) FROM reasonings WHERE {col} > v.v) FROM v WHERE v.v IS NOT NULL)"
                    " SELECT v FROM v WHERE v IS NOT NULL"
                )
            }

        sources, stages, runs = distinct("source"), distinct("stage"), distinct("run_id")

        def ordered(values: set[str], first: tuple[str, ...]) -> list[str]:
            return [v for v in first if v in values] + sorted(values - set(first))

        return {
            "sources": ordered(sources, self.SOURCE_ORDER),
            "stages": ordered(stages, self.STAGE_ORDER),
            "runs": sorted(runs),
        }

    def browse_count(self, **filters: Any) -> int:
        """How many samples match the filters (see :meth:`browse_page`)."""
        tables, where, params = self._browse_where(**filters)
        return self.db.execute(f"SELECT COUNT(*) FROM {tables} WHERE {where}", params).fetchone()[0]

    def browse_page(
        self,
        *,
        limit: int = 100,
        offset: int = 0,
        after_id: int | None = None,
        before_id: int | None = None,
        from_end: bool = False,
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """One page of the samples matching ``filters``, in id order, each with a text excerpt and ``marks``: per
        source, the outcome of its final chains (``wrong`` before ``failed`` before ``correct``; ``predicted`` when
        the sample has no gold label) and that chain's prediction.

        Filters: dataset, split, gold (label), predicted (label), source, run_id, stage, outcome (correct, wrong,
        failed) and search (free text over text, aspect and chains; any input is safe). Paging: ``offset`` rows
        after the start, or keyset — rows after ``after_id`` / the ``limit`` rows before ``before_id`` — or, with
        ``from_end``, the page ending ``offset`` rows before the last match (cheap near the end).
        """
        tables, where, params = self._browse_where(**filters)
        order = "f.rowid" if tables.startswith("samples_fts") else "s.id"
        descending = from_end or before_id is not None
        if after_id is not None:
            where += f" AND {order} > ?"
            params.append(after_id)
        if before_id is not None:
            where += f" AND {order} < ?"
            params.append(before_id)
        rows = list(
            self.db.query(
                "SELECT s.id, s.dataset, s.split, s.key, s.label, s.aspect, substr(s.text, 1, 240) AS text,"
                f" s.has_image FROM {tables} WHERE {where} ORDER BY {order} {'DESC' if descending else 'ASC'}"
                " LIMIT ? OFFSET ?",
                [*params, limit, offset],
            )
        )
        if descending:
            rows.reverse()
        marks = self._browse_marks([r["id"] for r in rows], stage=filters.get("stage"), run_id=filters.get("run_id"))
        for r in rows:
            r["marks"] = marks.get(r["id"], {})
        return rows

    def _browse_marks(
        self, sample_ids: list[int], *, stage: str | None = None, run_id: str | None = None
    ) -> dict[int, dict[str, dict[str, Any]]]:
        rank = {"wrong": 3, "failed": 2, "correct": 1, "predicted": 0}
        out: dict[int, dict[str, dict[str, Any]]] = {}
        if not sample_ids:
            return out
        sql = (
            "SELECT r.sample_id, r.source, r.prediction, r.valid, s.label FROM reasonings r"
            " JOIN samples s ON s.id = r.sample_id"
            f" WHERE r.sample_id IN ({', '.join('?' for _ in sample_ids)}) AND (r.final = 1 OR r.final IS NULL)"
        )
        params: list[Any] = list(sample_ids)
        for col, value in (("r.stage", stage), ("r.run_id", run_id)):
            if value is not None:
                sql += f" AND {col} = ?"
                params.append(value)
        for r in self.db.query(sql + " ORDER BY r.id", params):
            if r["valid"] == 0 or r["prediction"] is None:
                outcome = "failed"
            elif r["label"] is None:
                outcome = "predicted"
            else:
                outcome = "correct" if r["prediction"] == r["label"] else "wrong"
            per = out.setdefault(r["sample_id"], {})
            mark = per.get(r["source"])
            if mark is None or rank[outcome] > rank[mark["outcome"]]:
                per[r["source"]] = {"outcome": outcome, "prediction": r["prediction"],
                                    "chains": (mark or {}).get("chains", 0) + 1}  # fmt: skip
            else:
                mark["chains"] += 1
        return out

    def browse_sample(self, sample_id: int) -> dict[str, Any]:
        """One sample with its chains: each final chain (or, for an unfinished retry sequence, its last attempt)
        with ``fields`` parsed, ``attempts`` (every attempt of that sequence, this one last: attempt, valid,
        parse status, prediction, error, tokens, cost, latency), totals over the attempts, and its ``ratings``.
        Chains are ordered teacher, assistant, student (then others), predict, explain, expand."""
        sample = self.get_sample(sample_id)
        rows = list(self.db.query("SELECT * FROM reasonings WHERE sample_id = ? ORDER BY id", [sample_id]))
        sequences: dict[tuple, list[dict[str, Any]]] = {}
        for r in rows:
            key = (r["source"], r["model"], r["stage"], r["prompt_version"], r["run_id"])
            sequences.setdefault(key, []).append(r)
        chains: list[dict[str, Any]] = []
        for seq in sequences.values():
            pending: list[dict[str, Any]] = []
            for r in seq:
                pending.append(r)
                if r["final"] is None or r["final"] == 1:
                    chains.append(self._browse_chain(pending))
                    pending = []
            if pending:
                chains.append(self._browse_chain(pending))
        ratings: dict[int, list[dict[str, Any]]] = {}
        ids = [c["id"] for c in chains]
        if ids:
            for r in self.db.query(
                f"SELECT * FROM ratings WHERE reasoning_id IN ({', '.join('?' for _ in ids)}) ORDER BY id", ids
            ):
                ratings.setdefault(r["reasoning_id"], []).append(r)
        for c in chains:
            c["ratings"] = ratings.get(c["id"], [])
        src_rank = {s: i for i, s in enumerate(self.SOURCE_ORDER)}
        stage_rank = {s: i for i, s in enumerate(self.STAGE_ORDER)}
        chains.sort(key=lambda c: (src_rank.get(c["source"], 9), c["source"], stage_rank.get(c["stage"], 9), c["id"]))
        return {"sample": sample, "chains": chains}

    @staticmethod
    def _browse_chain(attempts: list[dict[str, Any]]) -> dict[str, Any]:
        chain = dict(attempts[-1])
        chain["fields"] = _loads(chain["fields"]) or {}
        keep = ("id", "attempt", "valid", "parse_status", "prediction", "error", "tokens_in", "tokens_out",
                "cost_usd", "latency_s")  # fmt: skip
        chain["attempts"] = [{k: a[k] for k in keep} for a in attempts]
        for key in ("tokens_in", "tokens_out", "cost_usd", "latency_s"):
            values = [a[key] for a in attempts if a[key] is not None]
            chain[f"total_{key}"] = sum(values) if values else None
        return chain

    def add_reasonings(self, rows: Iterable[dict[str, Any]]) -> int:
        """Bulk-insert chains (``executemany`` in one transaction); returns how many. Same columns as
        :meth:`add_reasoning`; missing columns are NULL, ``created_at`` defaults to now."""
        stamp = now()

        def values(row: dict[str, Any]) -> list[Any]:
            unknown = set(row) - set(REASONING_COLUMNS)
            if unknown:
                raise StoreError(f"unknown reasoning columns: {sorted(unknown)}")
            out = []
            for col in REASONING_COLUMNS:
                v = row.get(col)
                if col == "fields" and isinstance(v, dict):
                    v = _json(v)
                elif col in ("valid", "final") and v is not None:
                    v = int(bool(v))
                elif col == "created_at" and v is None:
                    v = stamp
                out.append(v)
            return out

        sql = (
            f"INSERT INTO reasonings ({', '.join(REASONING_COLUMNS)})"
            f" VALUES ({', '.join('?' for _ in REASONING_COLUMNS)})"
        )
        count = 0

        def counted() -> Iterator[list[Any]]:
            nonlocal count
            for row in rows:
                count += 1
                yield values(row)

        with self.transaction():
            self.db.conn.executemany(sql, counted())
        return count

    # -- ratings -----------------------------------------------------------------------------------------------

    def add_rating(
        self,
        reasoning_id: int,
        *,
        faithfulness: int,
        usefulness: int,
        comment: str | None = None,
        rater: str | None = None,
    ) -> int:
        """Store a human rating of one chain (faithfulness and usefulness, integers 1-5); returns its id."""
        for name, value in (("faithfulness", faithfulness), ("usefulness", usefulness)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
                raise StoreError(f"{name} must be an integer from 1 to 5, not {value!r}")
        if not self.db.execute("SELECT 1 FROM reasonings WHERE id = ?", [reasoning_id]).fetchall():
            raise NotFoundError(f"no reasoning chain with id {reasoning_id}")
        comment = (comment or "").strip() or None
        with self.transaction():
            return self._insert(
                "ratings",
                {"reasoning_id": reasoning_id, "faithfulness": faithfulness, "usefulness": usefulness,
                 "comment": comment, "rater": rater, "created_at": now()},
            )  # fmt: skip

    def ratings(
        self,
        *,
        dataset: str | None = None,
        split: str | None = None,
        source: str | None = None,
        reasoning_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """Ratings in the order given, each with its chain (source, model, stage, prompt version, run, prediction)
        and sample (dataset, split, key, gold label)."""
        where, params = [], []
        for col, value in (("s.dataset", dataset), ("s.split", split), ("r.source", source),
                           ("t.reasoning_id", reasoning_id)):  # fmt: skip
            if value is not None:
                where.append(f"{col} = ?")
                params.append(value)
        sql = (
            "SELECT t.id, t.reasoning_id, t.faithfulness, t.usefulness, t.comment, t.rater, t.created_at,"
            " r.source, r.model, r.stage, r.prompt_version, r.run_id, r.prediction,"
            " s.dataset, s.split, s.key, s.label AS gold"
            " FROM ratings t JOIN reasonings r ON r.id = t.reasoning_id JOIN samples s ON s.id = r.sample_id"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        return list(self.db.query(sql + " ORDER BY t.id", params))

    def rating_summary(self, *, dataset: str | None = None, split: str | None = None) -> list[dict[str, Any]]:
        """Mean ratings per source and model: ratings, chains rated, mean faithfulness, mean usefulness."""
        where, params = [], []
        for col, value in (("s.dataset", dataset), ("s.split", split)):
            if value is not None:
                where.append(f"{col} = ?")
                params.append(value)
        sql = (
            "SELECT r.source, r.model, COUNT(*) AS ratings, COUNT(DISTINCT t.reasoning_id) AS chains,"
            " AVG(t.faithfulness) AS faithfulness, AVG(t.usefulness) AS usefulness"
            " FROM ratings t JOIN reasonings r ON r.id = t.reasoning_id JOIN samples s ON s.id = r.sample_id"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = list(self.db.query(sql + " GROUP BY r.source, r.model", params))
        rank = {s: i for i, s in enumerate(self.SOURCE_ORDER)}
        rows.sort(key=lambda r: (rank.get(r["source"], 9), r["source"], r["model"] or ""))
        return rows
