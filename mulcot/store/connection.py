"""The store's connection: opening (WAL, foreign keys), migrations, all-or-nothing transactions and the small
helpers every table module shares."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlite_utils

from mulcot.errors import StoreError
from mulcot.store import migrations

if TYPE_CHECKING:
    from typing_extensions import Self

DEFAULT_DB = "mulcot.db"


def now() -> str:
    """UTC timestamp in ISO 8601 (seconds)."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def default_db_path() -> Path:
    """``$MULCOT_DB`` when set, else ``./mulcot.db``."""
    return Path(os.environ.get("MULCOT_DB") or DEFAULT_DB)


def to_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


def from_json(value: str | None) -> Any:
    return None if value is None else json.loads(value)


def decoded(rows: Iterable[dict[str, Any]], *columns: str) -> list[dict[str, Any]]:
    """Rows with their JSON ``columns`` read back into Python values."""
    out = []
    for row in rows:
        for col in columns:
            row[col] = from_json(row[col])
        out.append(row)
    return out


def equals(*pairs: tuple[str, Any]) -> tuple[list[str], list[Any]]:
    """``col = ?`` clauses and their parameters for the (column, value) pairs whose value is not None."""
    clauses, params = [], []
    for col, value in pairs:
        if value is not None:
            clauses.append(f"{col} = ?")
            params.append(value)
    return clauses, params


class Connection:
    """The SQLite connection, its migrations and transactions; :class:`mulcot.store.Store` adds the tables' methods."""

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
    def open(cls, path: str | Path | None = None) -> Self:
        """Open (creating and migrating as needed) the store at ``path`` or the default location."""
        return cls(path or default_db_path())

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> Self:
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
        return [fn.__name__ for fn in migrations.MIGRATIONS if fn.__name__ not in done]

    def migrate(self) -> list[str]:
        """Apply pending migrations (each in its own transaction); returns the names applied."""
        applied = []
        with self._lock:
            if "_mulcot_migrations" not in self.db.table_names():
                self.db.execute(
                    "CREATE TABLE IF NOT EXISTS _mulcot_migrations (name TEXT PRIMARY KEY, applied_at TEXT)"
                )
            done = set(self.applied_migrations())
            known = {fn.__name__ for fn in migrations.MIGRATIONS}
            if done - known:
                raise StoreError(
                    f"{self.path} was written by a newer mulcot (schema {sorted(done - known)[-1]}): upgrade mulcot"
                )
            for fn in migrations.MIGRATIONS:
                if fn.__name__ in done:
                    continue
                with self.transaction():
                    # another process (a second rank, a second terminal) may have applied it since we looked
                    if fn.__name__ in self.applied_migrations():
                        continue
                    fn(self.db)
                    self.db.execute(
                        "INSERT INTO _mulcot_migrations (name, applied_at) VALUES (?, ?)",
                        [fn.__name__, now()],
                    )
                    self.db.execute(f"PRAGMA user_version = {len(self.applied_migrations())}")
                applied.append(fn.__name__)
        return applied

    @contextmanager
    def transaction(self) -> Iterator[Self]:
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
