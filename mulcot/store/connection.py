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
from urllib.parse import quote

import sqlite_utils

from mulcot.errors import StoreBusyError, StoreError
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
    """The SQLite connection, its migrations and transactions; :class:`mulcot.store.Store` adds the tables' methods.

    Opened for writing (the default: created when missing, migrated, refused in one line when the file belongs to
    another application or cannot be written) or ``readonly`` (never created and never written, a file of another
    application never touched: what browsing and reporting commands use; works on a read-only file or filesystem;
    a mulcot store of an older schema is upgraded once first, as any mulcot command would)."""

    # How long a write waits for another process's write transaction before giving up (one line, StoreError).
    busy_timeout_s: float = 30.0

    def __init__(self, path: str | Path, *, migrate: bool = True, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        if self.path.exists() and self.path.is_dir():
            raise StoreError(f"{self.path} is a folder, not a database file: pass --db FILE")
        if not self.path.parent.exists():
            raise StoreError(f"folder {self.path.parent} does not exist: create it or pass another --db")
        if readonly and not self.path.is_file():
            raise StoreError(f"no mulcot database at {self.path}: check --db (mulcot data import creates one)")
        existed = self.path.is_file() and self.path.stat().st_size > 0
        try:
            conn = self._connect()
            self.db = sqlite_utils.Database(conn)
            self._check_mulcot(existed)
            if readonly:
                self.db.execute("PRAGMA query_only = 1")
            else:
                self.db.execute("PRAGMA foreign_keys = ON")
                if self.db.journal_mode != "wal":
                    self.db.enable_wal()
                # WAL + NORMAL: every commit survives a crash or kill -9 of the process; only an OS crash or power
                # loss can lose the last commits. One fsync per checkpoint instead of per commit.
                self.db.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.DatabaseError as exc:
            self._close_quietly()
            if not existed and not readonly and "unable to open" in str(exc):
                raise StoreError(f"cannot create {self.path}: its folder is read-only (or not ours to write): pass "
                                 "--db FILE in a writable folder") from None
            raise self.store_error(exc) or StoreError(f"{self.path} is not a mulcot database ({exc})") from None
        except StoreError:
            self._close_quietly()
            raise
        self._lock = threading.RLock()
        self._depth = 0
        if readonly and migrate and self.pending_migrations():
            self._upgrade()
        if not readonly:
            try:
                self._check_writable()
                if migrate:
                    self.migrate()
            except BaseException:
                self._close_quietly()
                raise

    def _upgrade(self) -> None:
        """A mulcot store of an older schema opened for reading: upgraded once (what any mulcot command does; the
        readers need the current tables), then read through a read-only connection again."""
        self._close_quietly()
        try:
            type(self)(self.path).close()
        except StoreError as err:
            done, known = len(self.applied_migrations_of(self.path)), len(migrations.MIGRATIONS)
            raise StoreError(f"{self.path} was written by an older mulcot (schema {done} of {known}) and cannot be "
                             f"upgraded here: {err}") from None
        self.db = sqlite_utils.Database(self._connect())
        self.db.execute("PRAGMA query_only = 1")

    @staticmethod
    def applied_migrations_of(path: Path) -> list[str]:
        """The migrations a store file records (read-only)."""
        uri = "file:" + quote(str(path.resolve())) + "?mode=ro&immutable=1"
        conn = sqlite3.connect(uri, uri=True)
        try:
            return [r[0] for r in conn.execute("SELECT name FROM _mulcot_migrations")]
        except sqlite3.Error:
            return []
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        if not self.readonly:
            return sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None,
                                   timeout=self.busy_timeout_s)
        uri = "file:" + quote(str(self.path.resolve())) + "?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None,
                                   timeout=self.busy_timeout_s)
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError as exc:
            if "unable to open" not in str(exc):
                raise
            # a WAL store on a read-only filesystem (or in a folder we may not write): its -shm file cannot be
            # made, so no process can be writing it either; read the file as it is
            return sqlite3.connect(uri + "&immutable=1", uri=True, check_same_thread=False, isolation_level=None)

    def _check_mulcot(self, existed: bool) -> None:
        """Refuse a file that is not a mulcot store: another application's tables, or (read-only) nothing at all."""
        tables = self.db.table_names()
        if "_mulcot_migrations" in tables:
            return
        if tables:
            shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
            raise StoreError(f"{self.path} is an SQLite database of another application (tables: {shown}), not a "
                             "mulcot store: pass another --db")
        if self.readonly:
            raise StoreError(f"{self.path} is an empty SQLite file, not a mulcot database: check --db (mulcot data "
                             "import creates one)")
        if existed and self.db.execute("PRAGMA user_version").fetchone()[0]:
            raise StoreError(f"{self.path} is an SQLite database of another application, not a mulcot store: pass "
                             "another --db")

    def _check_writable(self) -> None:
        """A write command refuses a store it cannot write (read-only file or filesystem, held by another writer)
        now, in one line, rather than after its work."""
        with self.transaction():
            self.db.execute(f"PRAGMA user_version = {self.db.execute('PRAGMA user_version').fetchone()[0]}")

    def store_error(self, exc: BaseException) -> StoreError | None:
        """The one-line :class:`StoreError` for an SQLite failure a user can act on (locked, read-only, disk full),
        else None."""
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            return StoreBusyError(f"{self.path} is locked by another process (waited {self.busy_timeout_s:g} s for its "
                              "write to finish): try again when it is done")
        if "readonly" in text or "read-only" in text or "unable to open database file" in text:
            if self.readonly:
                return StoreError(f"{self.path} was opened read-only: this needs a command that writes")
            return StoreError(f"{self.path} is read-only (file permissions or a read-only filesystem) and this "
                              "command writes to it: copy it somewhere writable and pass --db")
        if "disk is full" in text or "disk i/o error" in text:
            return StoreError(f"cannot write {self.path}: {exc}")
        return None

    def _close_quietly(self) -> None:
        db = getattr(self, "db", None)
        if db is not None:
            try:
                db.conn.close()
            except sqlite3.Error:
                pass

    @classmethod
    def open(cls, path: str | Path | None = None, *, readonly: bool = False) -> Self:
        """Open (creating and migrating as needed) the store at ``path`` or the default location; ``readonly``:
        open an existing store for reading only (nothing created, migrated or written)."""
        return cls(path or default_db_path(), readonly=readonly)

    def close(self) -> None:
        self.db.conn.close()

    @property
    def runs_dir(self) -> Path:
        """The default folder of run folders: ``runs/`` beside the database (whatever the working directory)."""
        return self.path.resolve().parent / "runs"

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
        """All-or-nothing block; nests (inner blocks join the outer transaction). A lock held by another process past
        :attr:`busy_timeout_s`, a read-only store or a full disk is a one-line :class:`StoreError`."""
        with self._lock:
            if self._depth == 0:
                try:
                    self.db.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    raise self.store_error(exc) or exc from None
            self._depth += 1
            try:
                yield self
            except BaseException as exc:
                self._depth -= 1
                if self._depth == 0:
                    if self.db.conn.in_transaction:
                        self.db.execute("ROLLBACK")
                    if isinstance(exc, sqlite3.OperationalError) and (err := self.store_error(exc)) is not None:
                        raise err from None
                raise
            else:
                self._depth -= 1
                if self._depth == 0:
                    try:
                        self.db.execute("COMMIT")
                    except sqlite3.OperationalError as exc:
                        if self.db.conn.in_transaction:
                            self.db.execute("ROLLBACK")
                        raise self.store_error(exc) or exc from None

    def _insert(self, table: str, row: dict[str, Any]) -> int:
        cols = list(row)
        sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
        return self.db.execute(sql, [row[c] for c in cols]).lastrowid

    def _update(self, table: str, pk: str, pk_value: Any, values: dict[str, Any]) -> None:
        sets = ", ".join(f"{c} = ?" for c in values)
        self.db.execute(f"UPDATE {table} SET {sets} WHERE {pk} = ?", [*values.values(), pk_value])

    # -- datasets ----------------------------------------------------------------------------------------
