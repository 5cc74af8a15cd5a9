"""The ``runs`` table and the one place where a run's status changes.

Every long command records itself through :meth:`RunsMixin.run`::

    with store.run("asst", kind="train-assistant", dataset="t15", config=cfg) as run:
        ...                      # the work
        run.metrics = {...}      # what it measured (also kept when it fails or is interrupted)

Status transitions: ``running`` on entry (a finished run entered again is resumed), then ``done`` (or the
``status`` the body set, e.g. ``stopped`` at a budget), ``interrupted`` on Ctrl-C or SIGTERM, ``failed`` on an
error (its one-line message kept in ``error``).

One writer per run: entering a run claims it (pid, host, a token per invocation, a heartbeat every
:data:`HEARTBEAT_S`). A second process entering a run whose claim is live is refused in one line; a stale claim
(its process gone on this host, or no heartbeat for :data:`STALE_S`) is taken over. With ``force`` the second
process joins instead: the writers then split the work through job claims (:meth:`RunsMixin.claim_jobs`), so no
request is made twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mulcot.errors import StoreError
from mulcot.store.connection import Connection, decoded, equals, now, to_json

RUNNING, DONE, FAILED, INTERRUPTED, STOPPED = "running", "done", "failed", "interrupted", "stopped"
FINISHED = (DONE, FAILED, INTERRUPTED, STOPPED)
RESUME_HINT = "run the same command again to resume"

HEARTBEAT_S = 30.0  # how often a writer says it is still there
STALE_S = 300.0  # a claim without a heartbeat for this long is taken over

_ACTIVE: set[str] = set()  # tokens of the runs this process is writing now
_INTERRUPT: dict[str, Any] = {"hint": None, "sigterm": False}


def last_interrupt() -> tuple[str | None, bool]:
    """How the last run interrupted in this process says it resumes (None: no run was interrupted), and whether a
    SIGTERM (``kill``, ``timeout``) interrupted it: what the CLI prints after Ctrl-C or SIGTERM."""
    return _INTERRUPT["hint"], _INTERRUPT["sigterm"]


@dataclass
class RunRecord:
    """What the body of :meth:`RunsMixin.run` may set: its metrics (a dict, or an object with ``as_dict()`` read when
    the run ends), a final status other than ``done``, and the message a failure or interruption records (default:
    the exception's text / how to resume). :meth:`claim` takes jobs (requests) for this writer."""

    id: str
    metrics: Any = None
    status: str = DONE
    error: str | None = None
    resume_hint: str = RESUME_HINT
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    store: Any = field(default=None, repr=False)

    def claim(self, jobs: Iterable[str]) -> set[str]:
        """The jobs of ``jobs`` this writer may do: those no other writer of the run has claimed (all of them
        without a store, e.g. on a rank that does not write)."""
        jobs = list(jobs)
        if self.store is None:
            return set(jobs)
        return self.store.claim_jobs(self.id, self.token, jobs)


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process its parent has not reaped yet is gone
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def _age_s(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return (datetime.fromisoformat(now()) - datetime.fromisoformat(stamp)).total_seconds()
    except ValueError:
        return None


def claim_is_live(run: dict[str, Any]) -> bool:
    """Whether the process that claimed ``run`` may still be writing it: the run is ``running`` and its writer is
    this process (a run still open), or alive on this host, or (another host) has sent a heartbeat within
    :data:`STALE_S`."""
    if run.get("status") != RUNNING:
        return False
    return _writer_alive(run.get("writer_token"), run.get("writer_pid"), run.get("writer_host"),
                         run.get("heartbeat_at"))


def _writer_alive(token: str | None, pid: int | None, host: str | None, stamp: str | None) -> bool:
    """A writer (its token, pid, host and last sign of life) that may still be writing: a run this process has open,
    a process alive on this host, or (another host) one heard from within :data:`STALE_S`."""
    if not token:
        return False
    if token in _ACTIVE:
        return True
    age = _age_s(stamp)
    if age is None or age > STALE_S:
        return False
    if host == socket.gethostname():
        return pid != os.getpid() and _pid_alive(pid)
    return True


class _Heartbeat:
    """Every ``every`` seconds, on its own connection, the run's ``heartbeat_at`` (while this writer holds it)."""

    def __init__(self, path: Any, run_id: str, token: str, every: float):
        self.args = (str(path), run_id, token, every)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"mulcot-heartbeat-{run_id}", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        path, run_id, token, every = self.args
        while not self.stop.wait(every):
            try:
                conn = sqlite3.connect(path, timeout=5, isolation_level=None)
                try:
                    conn.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ? AND writer_token = ?",
                                 [now(), run_id, token])
                finally:
                    conn.close()
            except sqlite3.Error:
                continue  # a busy store: the next beat will do


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While a run is open, SIGTERM (``kill``, ``timeout``) interrupts it as Ctrl-C does (through the SIGINT handler
    in force: asyncio's cancels the running task), so the run ends ``interrupted``, not ``running`` forever."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        _INTERRUPT["sigterm"] = True
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler) and handler is not signal.default_int_handler:
            handler(signal.SIGINT, frame)
            return
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class RunsMixin(Connection):
    """Runs: kind, config, status, metrics, output folder, the writer holding it and its job claims."""

    def create_run(
        self,
        run_id: str,
        *,
        kind: str,
        dataset: str | None = None,
        config: dict | None = None,
        output_dir: str | None = None,
        recipe_hash: str | None = None,
        settings_hash: str | None = None,
        writer: str | None = None,
        force: bool | None = None,
    ) -> dict[str, Any]:
        """Register a run (status ``running``); an existing run of the same id and kind is resumed. ``output_dir``
        is stored absolute. With ``writer`` (a token) the run is claimed for this process: a live claim of another
        process is refused in one line unless ``force`` (then both write it, splitting the work by job claims;
        ``force=None``: the command offers no such option)."""
        with self.transaction():
            existing = self.get_run(run_id)
            claim = {}
            if writer is not None:
                claim = {"writer_pid": os.getpid(), "writer_host": socket.gethostname(), "writer_token": writer,
                         "heartbeat_at": now()}
            folder = None if output_dir is None else os.path.abspath(output_dir)
            if existing is None:
                self._insert(
                    "runs",
                    {"id": run_id, "kind": kind, "dataset": dataset, "status": RUNNING, "config": to_json(config),
                     "output_dir": folder, "recipe_hash": recipe_hash, "created_at": now(), "updated_at": now(),
                     **({"settings_hash": settings_hash} if settings_hash is not None else {}), **claim},
                )
            else:
                if existing["kind"] != kind:
                    raise StoreError(f"run '{run_id}' already exists as a {existing['kind']} run: choose another name")
                live = writer is not None and claim_is_live(existing)
                # a writer that joined with force may still be at work after the one holding the claim ended
                joined = None if live or writer is None else self._live_job_owner(run_id)
                if (live or joined) and not force:
                    raise StoreError(self._busy_message(joined or existing, force is not None))
                values: dict[str, Any] = {"status": RUNNING, "updated_at": now(), "error": None, **claim}
                for key, value in (("recipe_hash", recipe_hash), ("settings_hash", settings_hash)):
                    if value is not None:
                        values[key] = value
                if folder is not None and existing.get("output_dir") != folder:
                    values["output_dir"] = folder
                self._update("runs", "id", run_id, values)
                if writer is not None:
                    self._release_dead_claims(run_id, keep=existing["writer_token"] if live else None)
        return self.get_run(run_id)  # type: ignore[return-value]

    @staticmethod
    def _busy_message(run: dict[str, Any], forceable: bool) -> str:
        age = _age_s(run.get("heartbeat_at"))
        beat = f", last heartbeat {age:.0f} s ago" if age is not None else ""
        where = f"process {run.get('writer_pid')} on {run.get('writer_host')}{beat}"
        more = "; or pass --force to share the run with it (no request is sent twice)" if forceable else ""
        return (f"run '{run['id']}' is being written by {where}: wait for it to finish or stop it (a stopped run "
                f"resumes){more}")

    def _job_owners(self, run_id: str) -> list[dict[str, Any]]:
        return list(self.db.query(
            "SELECT token, pid, host, MAX(claimed_at) AS claimed_at FROM run_jobs WHERE run_id = ? GROUP BY token",
            [run_id],
        ))

    def _live_job_owner(self, run_id: str) -> dict[str, Any] | None:
        """A writer of the run (by its job claims) that may still be at work, as a run row names its writer."""
        for r in self._job_owners(run_id):
            if _writer_alive(r["token"], r["pid"], r["host"], r["claimed_at"]):
                return {"id": run_id, "writer_pid": r["pid"], "writer_host": r["host"], "heartbeat_at": r["claimed_at"]}
        return None

    def _release_dead_claims(self, run_id: str, keep: str | None) -> None:
        """Drop the job claims of writers that are gone; those of the live writer ``keep`` and of any other writer
        still at work stay (their jobs are theirs)."""
        for r in self._job_owners(run_id):
            if r["token"] == keep or _writer_alive(r["token"], r["pid"], r["host"], r["claimed_at"]):
                continue
            self.db.execute("DELETE FROM run_jobs WHERE run_id = ? AND token = ?", [run_id, r["token"]])

    def claim_jobs(self, run_id: str, token: str, jobs: Iterable[str]) -> set[str]:
        """Claim ``jobs`` (one name per request, e.g. ``sample 12 predict``) of a run for the writer ``token``;
        returns those that are its own now (new claims and its earlier ones), never one another writer holds."""
        jobs = list(dict.fromkeys(jobs))
        if not jobs:
            return set()
        stamp, pid, host = now(), os.getpid(), socket.gethostname()
        mine: set[str] = set()
        with self.transaction():
            self.db.conn.executemany(
                "INSERT OR IGNORE INTO run_jobs (run_id, job, token, pid, host, claimed_at) VALUES (?, ?, ?, ?, ?, ?)",
                [(run_id, job, token, pid, host, stamp) for job in jobs],
            )
            for i in range(0, len(jobs), 500):
                chunk = jobs[i : i + 500]
                marks = ", ".join("?" * len(chunk))
                sql = f"SELECT job FROM run_jobs WHERE run_id = ? AND token = ? AND job IN ({marks})"
                mine.update(r[0] for r in self.db.execute(sql, [run_id, token, *chunk]))
        return mine

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
    def run(self, run_id: str, *, kind: str, resume_hint: str = RESUME_HINT, force: bool | None = None,
            **record: Any) -> Iterator[RunRecord]:
        """Record a run around its work: ``running`` now (:meth:`create_run` takes ``record``: dataset, config,
        output_dir, recipe_hash, settings_hash; and ``force``), then ``done`` / ``interrupted`` (Ctrl-C, SIGTERM) /
        ``failed``. The run is claimed for this process meanwhile (one writer per run)."""
        run = RunRecord(id=run_id, resume_hint=resume_hint, store=self)
        self.create_run(run_id, kind=kind, writer=run.token, force=force, **record)
        _ACTIVE.add(run.token)
        beat = _Heartbeat(self.path, run_id, run.token, HEARTBEAT_S)
        _INTERRUPT.update(hint=None, sigterm=False)
        try:
            with _sigterm_interrupts():
                yield run
        except (KeyboardInterrupt, asyncio.CancelledError):
            _INTERRUPT["hint"] = run.resume_hint  # what the CLI says after it
            self._end(run, INTERRUPTED, run.error or f"interrupted: {run.resume_hint}")
            raise
        except BaseException as exc:
            self._end(run, FAILED, run.error or str(exc)[:500] or type(exc).__name__)
            raise
        else:
            self._end(run, run.status, run.error)
        finally:
            beat.stop.set()
            _ACTIVE.discard(run.token)

    def _end(self, record: RunRecord, status: str, error: str | None) -> None:
        """The run's end, written while this writer still holds it (a writer that took it over with ``force``
        records the end itself)."""
        values: dict[str, Any] = {"status": status, "error": error}
        metrics = record.metrics
        if callable(getattr(metrics, "as_dict", None)):
            metrics = metrics.as_dict()  # a summary dataclass, read when the run ends
        if metrics is not None:
            values["metrics"] = metrics
        with self.transaction():
            row = self.db.execute("SELECT writer_token FROM runs WHERE id = ?", [record.id]).fetchone()
            if row is not None and row[0] not in (None, record.token):
                return
            self.update_run(record.id, **values)

    def run_folder(self, run: dict[str, Any]) -> Path | None:
        """A run's folder (``output_dir``) as a path to use from any working directory: stored absolute now; an older
        store's relative one is looked for beside the database first, then in the working directory."""
        if not run.get("output_dir"):
            return None
        path = Path(run["output_dir"]).expanduser()
        if path.is_absolute():
            return path
        beside = self.path.resolve().parent / path
        return path if not beside.exists() and path.exists() else beside

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        rows = decoded(self.db.query("SELECT * FROM runs WHERE id = ?", [run_id]), "config", "metrics")
        return rows[0] if rows else None

    def list_runs(self, kind: str | None = None) -> list[dict[str, Any]]:
        clauses, params = equals(("kind", kind or None))
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        return decoded(self.db.query(sql + " ORDER BY created_at, id", params), "config", "metrics")
