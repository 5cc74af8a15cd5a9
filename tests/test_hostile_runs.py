"""Hostile and faulty inputs around runs and the store (issue 28): unsafe names, stores that are missing, foreign,
read-only or locked, two writers of one run, resumes with other settings, SIGTERM and kills while an adapter is
saved. Each case: one line and a non-zero exit where nothing was done, the store's integrity_check ok and its row
counts unchanged, nothing written outside the named folders."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mulcot.annotate.chat_server import ChatServer, Reply, post_of, prompt_text
from mulcot.cli import app
from mulcot.core.chains import chain_row
from mulcot.core.reasoning import Reasoning
from mulcot.errors import MulcotError, StoreError
from mulcot.store import Store
from mulcot.store.connection import Connection

runner = CliRunner()
TABLES = ("datasets", "samples", "reasonings", "runs", "eval_results", "ratings", "run_jobs")


# ---------------------------------------------------------------------------------------------------- helpers


def _chain(label: str) -> str:
    return Reasoning("The text.", "The image.", "No conflict.", f"Overall {label}.", label).to_text()


def _store(path: Path, n: int = 4, chains: bool = False) -> Path:
    """A store with one text-only dataset ``d`` of ``n`` labelled train samples and 2 test ones (with teacher
    chains when ``chains``)."""
    labels = ("positive", "negative", "neutral")
    path.parent.mkdir(parents=True, exist_ok=True)
    with Store.open(path) as s, s.transaction():
        s.upsert_dataset("d", task="msa", format="jsonl", source="x", images_root=None, has_images=False)
        rows = [{"split": split, "key": f"{split}{i}", "text": f"post {split} {i}", "raw_text": None, "aspect": None,
                 "label": labels[i % 3], "image_name": None, "image_path": None, "image_sha256": None,
                 "has_image": False} for split, k in (("train", n), ("test", 2)) for i in range(k)]
        ids = s.upsert_samples("d", rows).ids
        if chains:
            for (split, key), sid in ids.items():
                label = labels[int(key[len(split) :]) % 3]
                s.add_reasoning(**chain_row(sample_id=sid, source="teacher", model="t", stage="predict",
                                            output=_chain(label), run_id="a", prompt_version="v"))
    return path


def _counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)  # read and write: the last connection to close leaves no -wal / -shm behind
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES if t in names}
    finally:
        conn.close()


def _intact(db: Path, before: dict[str, int]) -> None:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    assert _counts(db) == before


def _one_line(result, *needles: str, code: int | None = None) -> str:
    """The error a refused command printed: one line, no traceback, non-zero exit (``code`` when given)."""
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _cli(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def _files(folder: Path) -> set[Path]:
    """Every file and folder under ``folder`` (a store's -wal / -shm come and go with its connections)."""
    return {p.relative_to(folder) for p in folder.rglob("*") if not p.name.endswith(("-wal", "-shm"))}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Frozen:
    """Make files and folders unwritable for this process (``chattr +i`` where it runs as root, else permissions);
    undone on exit. ``ok`` is False where neither works (the test then skips)."""

    def __init__(self, *paths: Path):
        self.paths = paths
        self.ok = False
        self.how = ""

    def __enter__(self) -> Frozen:
        if os.geteuid() == 0:
            done = subprocess.run(["chattr", "+i", *map(str, self.paths)], capture_output=True).returncode == 0
            self.how = "chattr" if done else ""
        else:
            for p in self.paths:
                p.chmod(0o555 if p.is_dir() else 0o444)
            self.how = "chmod"
        self.ok = bool(self.how) and not self._writable()
        return self

    def _writable(self) -> bool:
        for p in self.paths:
            try:
                if p.is_dir():
                    (p / ".probe").touch()
                    (p / ".probe").unlink()
                else:
                    with open(p, "r+b"):
                        pass
                return True
            except OSError:
                continue
        return False

    def __exit__(self, *exc: object) -> None:
        if self.how == "chattr":
            subprocess.run(["chattr", "-i", *map(str, self.paths)], capture_output=True)
        elif self.how == "chmod":
            for p in self.paths:
                p.chmod(0o755 if p.is_dir() else 0o644)


# ------------------------------------------------------------------------------------------- 1. safe names

BAD_NAMES = ["../escape", "a/b", "..", ".hidden", "/abs", "x\n"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_unsafe_run_names_are_refused_before_anything_is_written(tmp_path, monkeypatch, bad):
    db = _store(tmp_path / "s" / "m.db")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before, files = _counts(db), _files(tmp_path)
    runs = ["--runs-dir", tmp_path / "runs"]
    cases = [
        ("train-assistant", "d", "--model", tmp_path / "nomodel", "--name", bad, *runs),
        ("distill", "d", "--assistant", tmp_path / "noadapter", "--student", tmp_path / "nomodel", "--name", bad,
         *runs),
        ("dpo", "d", "--model", tmp_path / "noadapter", "--name", bad, *runs),
        ("predict", "--dataset", "d", "--server", "http://127.0.0.1:9/v1", "--served-model", "m", "--name", bad),
        ("annotate", "d", "--teacher", "m", "--base-url", "http://127.0.0.1:9/v1", "--run", bad),
        ("export", tmp_path / "noadapter", "--out", tmp_path / "exp", "--name", bad),
        ("data", "import", "jsonl", tmp_path / "nofile.jsonl", "--name", bad),
    ]
    for args in cases:
        if args[0] == "data":
            (tmp_path / "nofile.jsonl").write_text('{"text": "hi", "label": "positive"}\n')
        result = _cli(*args, "--db", db)
        _one_line(result, "may use only letters, digits")
        (tmp_path / "nofile.jsonl").unlink(missing_ok=True)
        _intact(db, before)
    assert _files(tmp_path) == files  # no run folder, no export folder, nothing beside or above


def test_out_folders_are_created_for_the_files_commands_write(tmp_path, monkeypatch):
    db = _store(tmp_path / "m.db", chains=True)
    monkeypatch.chdir(tmp_path)
    before = _counts(db)
    r = _cli("data", "export", "d", "--format", "sharegpt", "--out", "lf/t15_train.json", "--db", db)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "lf" / "t15_train.json").read_text())
    r = _cli("data", "export", "d", "--out", "deep/er/d.jsonl", "--db", db)
    assert r.exit_code == 0 and (tmp_path / "deep" / "er" / "d.jsonl").read_text().count("\n") == 6
    r = _cli("data", "pairs", "d", "--format", "trl", "--out", "p/pairs.jsonl", "--db", db)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "p" / "pairs.jsonl").is_file()
    _one_line(_cli("data", "export", "d", "--out", "lf", "--db", db), "is a folder")
    # an unknown dataset writes no file and no folder
    _one_line(_cli("data", "export", "nope", "--out", "nope/x.jsonl", "--db", db), "no dataset named 'nope'")
    assert not (tmp_path / "nope").exists()
    _intact(db, before)


# ---------------------------------------------------------------------------------- 2. where run folders live


def test_run_folders_are_stored_absolute_and_found_from_anywhere(tmp_path, monkeypatch):
    from mulcot.core.refs import resolve_run

    db = _store(tmp_path / "proj" / "m.db")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(tmp_path / "proj")
    with Store.open(db) as s:
        with s.run("asst", kind="train-assistant", dataset="d", config={"model": "base"}, output_dir="runs/asst"):
            adapter = tmp_path / "proj" / "runs" / "asst" / "adapter"
            adapter.mkdir(parents=True)
            (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "base"}))
        assert s.get_run("asst")["output_dir"] == str(tmp_path / "proj" / "runs" / "asst")
        # an older store recorded the folder relative to the command's working directory
        s.db.execute("UPDATE runs SET output_dir = 'runs/asst' WHERE id = 'asst'")
    monkeypatch.chdir(elsewhere)
    with Store.open(db, readonly=True) as s:
        ref = resolve_run(s, "asst")  # beside the database first, then the working directory
        assert ref.adapter == adapter and ref.base_model == "base"
        assert s.runs_dir == tmp_path / "proj" / "runs"
    assert list(elsewhere.iterdir()) == []


def test_default_runs_folder_is_beside_the_database(tmp_path, monkeypatch):
    from mulcot.train.config import TrainConfig, with_runs_dir

    db = _store(tmp_path / "proj" / "m.db", chains=True)
    monkeypatch.chdir(tmp_path)
    with Store.open(db) as s:
        cfg = with_runs_dir(TrainConfig(dataset="d", model="m", name="r"), s.runs_dir)
        assert cfg.folder == tmp_path / "proj" / "runs" / "r"
        kept = with_runs_dir(TrainConfig(dataset="d", model="m", name="r", runs_dir="mine"), s.runs_dir)
        assert kept.folder == Path("mine") / "r"  # a folder the user names stays theirs
    # eval writes its files beside the database's runs, not ./runs/eval
    r = _cli("eval", "d", "--source", "teacher", "--refs", "none", "--metrics", "distinct_1", "--db", db, "--json")
    assert r.exit_code == 0, r.output
    files = json.loads(r.stdout)["files"]
    assert Path(files["json"]).parent.parent == tmp_path / "proj" / "runs" / "eval"
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------ 3. opening the store

READS = [("data", "list"), ("data", "stats", "d"), ("eval", "compare", "1"), ("data", "export", "d"),
         ("data", "pairs", "d")]


@pytest.mark.parametrize("args", READS, ids=[" ".join(a) for a in READS])
def test_reading_a_missing_store_creates_nothing(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    _one_line(_cli(*args, "--db", "typo.db"), "no mulcot database at typo.db")
    assert list(tmp_path.iterdir()) == []


def test_another_applications_database_is_refused_and_left_alone(tmp_path):
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE samples (id INTEGER PRIMARY KEY, what TEXT)")
    conn.execute("INSERT INTO samples (what) VALUES ('theirs')")
    conn.commit()
    conn.close()
    digest = _sha(other)
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "hi", "label": "positive"}\n')
    for args in [*READS, ("data", "import", "jsonl", jsonl, "--no-images"), ("eval", "d", "--source", "teacher")]:
        _one_line(_cli(*args, "--db", other), "another application", "not a mulcot store")
    assert _sha(other) == digest and sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "other.sqlite"]
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    _one_line(_cli("data", "list", "--db", empty), "empty SQLite file")
    assert empty.read_bytes() == b""


def test_a_read_only_store_reads_and_refuses_writes_in_one_line(tmp_path):
    db = _store(tmp_path / "m.db", chains=True)
    before = _counts(db)
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text('{"text": "hi", "label": "positive"}\n')
    with Frozen(db) as frozen:
        if not frozen.ok:
            pytest.skip("cannot make a file read-only here")
        listed = _cli("data", "list", "--db", db, "--json")
        assert listed.exit_code == 0 and json.loads(listed.stdout)[0]["name"] == "d"
        assert _cli("data", "stats", "d", "--db", db).exit_code == 0
        _one_line(_cli("data", "import", "jsonl", jsonl, "--name", "more", "--no-images", "--db", db), "read-only")
        _one_line(_cli("eval", "d", "--source", "teacher", "--refs", "none", "--metrics", "distinct_1", "--db", db),
                  "read-only")
    _intact(db, before)


def test_a_store_on_a_read_only_filesystem_reads(tmp_path):
    folder = tmp_path / "ro"
    db = _store(folder / "m.db", chains=True)  # closed cleanly: no -wal or -shm beside it
    before = _counts(db)
    assert sorted(p.name for p in folder.iterdir()) == ["m.db"]
    with Frozen(db, folder) as frozen:
        if not frozen.ok:
            pytest.skip("cannot make a folder read-only here")
        listed = _cli("data", "list", "--db", db, "--json")
        assert listed.exit_code == 0, listed.output
        assert json.loads(listed.stdout)[0]["samples"] == 6
        assert _cli("data", "stats", "d", "--db", db).exit_code == 0
        _one_line(_cli("eval", "d", "--source", "teacher", "--db", db), "read-only")
        from mulcot.tui import ChainBrowser

        browser = ChainBrowser(db)  # the TUI opens it read-only too
        assert browser.store is not None and browser.store.browse_count() == 6
        browser.store.close()
    _intact(db, before)


def test_tui_rating_on_a_read_only_store_is_a_notification(tmp_path):
    import asyncio

    from mulcot.tui import ChainBrowser

    db = _store(tmp_path / "m.db", chains=True)
    before = _counts(db)
    with Frozen(db) as frozen:
        if not frozen.ok:
            pytest.skip("cannot make a file read-only here")

        async def go() -> list[str]:
            app = ChainBrowser(db)
            async with app.run_test(size=(100, 30)) as pilot:
                await pilot.pause()
                chain = app.current_chain
                assert chain is not None
                app._rated(chain["id"], {"faithfulness": 4, "usefulness": 5, "comment": None})
                await pilot.pause()
                return [n.message for n in app._notifications]

        notes = asyncio.run(go())
    assert any("rating not saved" in n and "read-only" in n for n in notes), notes
    _intact(db, before)


def test_a_lock_held_past_the_busy_timeout_is_one_line(tmp_path, monkeypatch):
    db = _store(tmp_path / "m.db")
    before = _counts(db)
    monkeypatch.setattr(Connection, "busy_timeout_s", 0.2)
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text('{"text": "hi", "label": "positive"}\n')
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.perf_counter()
        _one_line(_cli("data", "import", "jsonl", jsonl, "--name", "more", "--no-images", "--db", db),
                  "locked by another process")
        assert time.perf_counter() - started < 5
        assert _cli("data", "list", "--db", db).exit_code == 0  # reading is not blocked by a writer
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    _intact(db, before)


def _teacher(server: ChatServer, db: Path, **kw: object):
    from mulcot.annotate import AnnotateConfig
    from mulcot.core.client import TeacherConfig

    teacher = TeacherConfig(model="gpt-x", base_url=server.base_url, api_key="x", backoff_base_s=0.01, timeout_s=10,
                            http_retries=1)
    return AnnotateConfig(dataset="d", teacher=teacher, concurrency=kw.pop("concurrency", 2), run_id="ann", **kw)


class Teacher:
    """A scripted teacher: right for even samples, wrong for odd ones (they go to pass 2); counts every request by
    (post, stage); ``on_request`` runs first (e.g. to lock the store), ``delay_s`` slows every answer."""

    WRONG = {"positive": "negative", "negative": "neutral", "neutral": "positive"}

    def __init__(self, db: Path, delay_s: float = 0.0, on_request=None):
        with Store.open(db, readonly=True) as s:
            self.gold = {s_["text"]: s_["label"] for s_ in s.samples("d", "train")}
        self.calls: Counter = Counter()
        self.lock = threading.Lock()
        self.delay_s = delay_s
        self.on_request = on_request

    def __call__(self, body: dict) -> Reply:
        if self.on_request is not None:
            self.on_request()
        text, _ = post_of(body)
        stage = "explain" if "The correct sentiment label" in prompt_text(body) else "predict"
        with self.lock:
            self.calls[(text, stage)] += 1
        gold = self.gold[text]
        odd = int(text.split()[-1]) % 2
        label = self.WRONG[gold] if stage == "predict" and odd else gold
        return Reply(text=_chain(label), delay_s=self.delay_s)


def _finals(db: Path) -> Counter:
    with Store.open(db, readonly=True) as s:
        return Counter((r["sample_id"], r["stage"]) for r in s.reasonings(dataset="d", source="teacher")
                       if r["final"] and r["run_id"] == "ann")


def test_annotate_keeps_a_paid_answer_when_the_store_is_locked(tmp_path, monkeypatch):
    from mulcot.annotate import annotate

    db = _store(tmp_path / "m.db", n=2)
    monkeypatch.setattr(Connection, "busy_timeout_s", 0.1)
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    held: list[float] = []

    def lock_once() -> None:  # another process writes for 0.6 s just as the first answer comes back
        if not held:
            holder.execute("BEGIN IMMEDIATE")
            held.append(time.perf_counter())
            threading.Timer(0.6, lambda: holder.execute("ROLLBACK")).start()

    teacher = Teacher(db, on_request=lock_once)
    with ChatServer(teacher) as server, Store.open(db) as store:
        summary = annotate(store, _cfg := _teacher(server, db, concurrency=1))
        assert len(server.requests) == 3  # two predictions, one explanation: none asked again
    holder.close()
    assert held and summary.failed == 0 and summary.requests == 3
    assert sorted(_finals(db).values()) == [1, 1, 1] and _cfg.run_id == "ann"
    with Store.open(db, readonly=True) as s:
        assert s.get_run("ann")["status"] == "done"


def test_a_lock_that_outlasts_the_retries_fails_in_one_line(tmp_path, monkeypatch):
    db = _store(tmp_path / "m.db", n=1)
    before = _counts(db)
    monkeypatch.setattr(Connection, "busy_timeout_s", 0.05)
    holder = sqlite3.connect(db, isolation_level=None)
    teacher = Teacher(db)
    with ChatServer(teacher) as server:
        holder.execute("BEGIN IMMEDIATE")
        try:
            r = _cli("annotate", "d", "--teacher", "gpt-x", "--base-url", server.base_url, "--db", db)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert server.requests == []  # refused when it opened the store, before any request
    _one_line(r, "locked by another process")
    _intact(db, before)


# ------------------------------------------------------------------------------------------ 4. one writer per run


def _claim(db: Path, run_id: str, *, pid: int, host: str, age_s: float = 0.0) -> None:
    """A run that another process claimed ``age_s`` seconds ago (its last heartbeat)."""
    from datetime import datetime, timedelta, timezone

    stamp = (datetime.now(timezone.utc) - timedelta(seconds=age_s)).replace(microsecond=0).isoformat()
    with Store.open(db) as s:
        if s.get_run(run_id) is None:
            s.create_run(run_id, kind="annotate", dataset="d")
        s.db.execute("UPDATE runs SET status = 'running', writer_token = 'theirs', writer_pid = ?, writer_host = ?,"
                     " heartbeat_at = ? WHERE id = ?", [pid, host, stamp, run_id])


def test_a_live_writer_is_refused_and_a_stale_one_taken_over(tmp_path):
    import socket

    db = _store(tmp_path / "m.db", n=2)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        teacher = Teacher(db)
        with ChatServer(teacher) as server:
            args = ("annotate", "d", "--teacher", "gpt-x", "--base-url", server.base_url, "--run", "ann", "--db", db)
            _claim(db, "ann", pid=sleeper.pid, host=socket.gethostname())
            before = _counts(db)
            _one_line(_cli(*args), f"is being written by process {sleeper.pid}", "--force")
            _claim(db, "ann", pid=12345, host="another-host", age_s=5)  # another machine, heartbeat fresh
            _one_line(_cli(*args), "on another-host")
            assert server.requests == []
            _intact(db, before)
            _claim(db, "ann", pid=12345, host="another-host", age_s=3600)  # no heartbeat for an hour: stale
            assert _cli(*args).exit_code == 0
            assert len(server.requests) == 3
            # the claim's holder ended, but a writer that joined it with --force is still at work
            with Store.open(db) as s:
                s.db.execute("INSERT INTO run_jobs (run_id, job, token, pid, host, claimed_at) VALUES ('ann',"
                             " 'sample 99', 'joined', ?, ?, ?)",
                             [sleeper.pid, socket.gethostname(), s.get_run("ann")["updated_at"]])
            _one_line(_cli(*args), f"is being written by process {sleeper.pid}")
            _claim(db, "ann", pid=sleeper.pid, host=socket.gethostname())
            sleeper.kill()
            sleeper.wait()  # its process is gone: the claim is stale
            done = _cli(*args)
            assert done.exit_code == 0 and len(server.requests) == 3  # (nothing left to ask)
    finally:
        sleeper.kill()
        sleeper.wait()


def _annotate_in_thread(db: Path, server: ChatServer, **kw: object) -> tuple[threading.Thread, dict]:
    from mulcot.annotate import annotate

    out: dict = {}

    def go() -> None:
        with Store.open(db) as store:
            try:
                out["summary"] = annotate(store, _teacher(server, db, **kw))
            except MulcotError as err:
                out["error"] = err

    thread = threading.Thread(target=go)
    thread.start()
    return thread, out


def _wait_running(db: Path, run_id: str) -> None:
    deadline = time.time() + 10
    while time.time() < deadline:
        with Store.open(db, readonly=True) as s:
            run = s.get_run(run_id)
            if run is not None and run["status"] == "running":
                return
        time.sleep(0.01)
    raise AssertionError(f"run {run_id} did not start")


def test_two_annotates_of_one_run_the_second_refuses(tmp_path):
    db = _store(tmp_path / "m.db", n=6)
    teacher = Teacher(db, delay_s=0.05)
    with ChatServer(teacher) as server:
        thread, out = _annotate_in_thread(db, server)
        _wait_running(db, "ann")
        second = _cli("annotate", "d", "--teacher", "gpt-x", "--base-url", server.base_url, "--run", "ann",
                      "--db", db)
        thread.join()
    _one_line(second, "run 'ann' is being written by process")
    assert "error" not in out and out["summary"].requests == 9
    assert set(teacher.calls.values()) == {1} and len(teacher.calls) == 9  # 6 predictions, 3 explanations
    assert sorted(_finals(db).values()) == [1] * 9


def test_two_forced_annotates_share_the_work(tmp_path):
    from mulcot.annotate import annotate

    db = _store(tmp_path / "m.db", n=12)
    teacher = Teacher(db, delay_s=0.03)
    with ChatServer(teacher) as server:
        thread, out = _annotate_in_thread(db, server)
        _wait_running(db, "ann")
        with Store.open(db) as store:
            second = annotate(store, _teacher(server, db, force=True))
        thread.join()
    first = out["summary"]
    assert set(teacher.calls.values()) == {1} and len(teacher.calls) == 18  # every request reached it once
    assert first.requests + second.requests == 18 and second.skipped_other_writer > 0 and second.samples > 0
    assert sorted(_finals(db).values()) == [1] * 18  # one final chain per (sample, stage)


def _predict(db: Path, server: ChatServer, force: bool = False):
    from mulcot.generation import PredictConfig, open_backend
    from mulcot.generation.server import ServerConfig
    from mulcot.predict import predict_dataset

    backend = open_backend("server", server=ServerConfig(url=server.base_url, served_model="local"),
                           config=PredictConfig())
    with Store.open(db) as store:
        return predict_dataset(store, backend, "d", "train", run_id="pred", force=force)


def test_two_predicts_of_one_run(tmp_path):
    db = _store(tmp_path / "m.db", n=10)
    asked: Counter = Counter()
    lock = threading.Lock()

    def answer(body: dict) -> Reply:
        with lock:
            asked[post_of(body)[0]] += 1
        return Reply(text=_chain("positive"), delay_s=0.03)

    with ChatServer(answer) as server:
        out: dict = {}
        thread = threading.Thread(target=lambda: out.update(first=_predict(db, server)))
        thread.start()
        _wait_running(db, "pred")
        with pytest.raises(StoreError, match="run 'pred' is being written by process"):
            _predict(db, server)
        shared = _predict(db, server, force=True)
        thread.join()
    assert set(asked.values()) == {1} and len(asked) == 10
    assert out["first"].predicted + shared.predicted == 10
    with Store.open(db, readonly=True) as s:
        finals = Counter(r["sample_id"] for r in s.reasonings(dataset="d", stage="eval") if r["final"])
    assert sorted(finals.values()) == [1] * 10


def test_one_row_per_attempt_and_the_migration_keeps_the_first_copy(tmp_path, monkeypatch):
    from mulcot.store import migrations

    path = tmp_path / "old.db"
    with monkeypatch.context() as m:
        m.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:6])
        with Store.open(path) as old:
            with old.transaction():
                old.upsert_dataset("d", task="msa", format="jsonl", source="x", images_root=None, has_images=False)
                sid = old.upsert_samples("d", [{"split": "train", "key": "1", "text": "t", "raw_text": None,
                                                "aspect": None, "label": "positive", "image_name": None,
                                                "image_path": None, "image_sha256": None,
                                                "has_image": False}]).ids[("train", "1")]
            row = chain_row(sample_id=sid, source="teacher", model="t", stage="predict", output=_chain("positive"),
                            run_id="a", prompt_version="v")
            first, copy = old.add_reasoning(**row), old.add_reasoning(**row)  # two writers of one run, before
            exp = chain_row(sample_id=sid, source="assistant", model="b", stage="expand", output=_chain("positive"),
                            run_id="asst", prompt_version="c")
            old.add_reasoning(**exp)
            old.add_reasoning(**exp)  # n = 2 expansions: both attempt 1 then
            old.add_rating(copy, faithfulness=2, usefulness=3, rater="me")
    with Store.open(path) as new:
        rows = new.reasonings(dataset="d")
        assert [(r["id"], r["stage"], r["attempt"]) for r in rows] == [
            (first, "predict", 1), (copy + 1, "expand", 1), (copy + 2, "expand", 2)]
        assert [r["reasoning_id"] for r in new.ratings()] == [first]  # the copy's rating moved to the kept row
        assert new.add_reasoning(**row) == first and len(new.reasonings(dataset="d")) == 3
        assert new.add_reasonings([row, {**row, "attempt": 2}]) == 1
        assert new.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# ------------------------------------------------------------------------------------------------- 5. resume


def _interrupted_training(db: Path, cfg) -> None:
    """A training run as ``fit`` records one that was then interrupted: its deciding settings in its config."""
    from mulcot.train.config import deciding_settings

    with Store.open(db) as s:
        s.create_run(cfg.name, kind="train-assistant", dataset="d", config={**cfg.public(), **deciding_settings(cfg)})
        s.update_run(cfg.name, status="interrupted", error="interrupted")


def test_resume_with_other_settings_is_refused_naming_them(tmp_path):
    from mulcot.train.config import TrainConfig
    from mulcot.train.loop import check_settings

    db = _store(tmp_path / "m.db")
    model = tmp_path / "model"
    cfg = TrainConfig(dataset="d", model=str(model), name="asst", runs_dir=str(tmp_path / "runs"))
    _interrupted_training(db, cfg)
    before, files = _counts(db), _files(tmp_path)
    base = ("train-assistant", "d", "--model", model, "--name", "asst", "--resume", "--db", db)
    _one_line(_cli(*base, "--lr", "0.1"), "was started with other settings", "--lr 0.1 (was 0.0003)")
    line = _one_line(_cli(*base, "--task-weights", "0.5,0.5", "--two-pass", "--lora-r", "8"))
    assert "--task-weights 0.5,0.5 (was 0.2,0.8)" in line and "--two-pass on (was off)" in line
    assert "--lora-r 8 (was 16)" in line
    _intact(db, before)
    assert _files(tmp_path) == files
    with Store.open(db, readonly=True) as s:
        from mulcot.train.config import deciding_settings

        # what only changes where or how it runs may differ on a resume
        same = TrainConfig(dataset="d", model=str(model), name="asst", runs_dir="elsewhere", device="cpu",
                           report_to="tensorboard", save_steps=3, dev_batch_size=2)
        check_settings(s, same, True, deciding_settings(same))


def _fake_adapter(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "base", "r": 4}))
    (folder / "adapter_model.safetensors").write_bytes(bytes([seed]) * 64)
    (folder / "mulcot.json").write_text(json.dumps({"run": folder.parent.name, "base": "base"}))
    return folder


def test_distill_resume_with_another_assistant_or_top_k_is_refused(tmp_path):
    from mulcot.core.refs import adapter_digest
    from mulcot.train.config import DistillConfig, deciding_settings

    db = _store(tmp_path / "m.db")
    one = _fake_adapter(tmp_path / "runs" / "one" / "adapter", 1)
    two = _fake_adapter(tmp_path / "runs" / "two" / "adapter", 2)
    cfg = DistillConfig(dataset="d", model="student", name="stud", assistant=str(one.parent))
    with Store.open(db) as s:
        settings = deciding_settings(cfg, assistant_sha256=adapter_digest(one))
        s.create_run("stud", kind="distill", dataset="d", config={**cfg.public(), **settings})
        s.update_run("stud", status="interrupted")
    before = _counts(db)
    base = ("distill", "d", "--student", "student", "--name", "stud", "--resume", "--db", db)
    _one_line(_cli(*base, "--assistant", two.parent), "--assistant (another adapter")
    _one_line(_cli(*base, "--assistant", one.parent, "--top-k", "8"), "--top-k 8 (was 32)")
    _intact(db, before)


def test_the_soft_label_cache_is_keyed_by_the_assistant_and_k(tmp_path):
    import torch

    from mulcot.core.inputs import TrainItem
    from mulcot.train.soft_labels import build_soft_label_cache, cache_source

    db = _store(tmp_path / "m.db")
    items = [TrainItem(sample_id=i, chain_id=10 + i, text=f"t{i}", aspect=None, image_path=None, label="positive",
                       chain="r") for i in range(3)]
    computed: list[int] = []

    def compute(k: int, value: float):
        def run(jobs):
            computed.append(len(jobs))
            return [(f"s{it.sample_id}/cls" if task == 1 else f"c{it.chain_id}/rea",
                     torch.zeros(2, k, dtype=torch.int32), torch.full((2, k), value)) for it, task in jobs]

        return run

    folder = tmp_path / "runs" / "stud" / "soft_labels"
    with Store.open(db) as s:
        a32, b32, a8 = cache_source("cache", "a" * 64, 32), cache_source("cache", "b" * 64, 32), cache_source(
            "cache", "a" * 64, 8)
        cache, _ = build_soft_label_cache(s, "stud", folder, compute(32, -1.0), items, source=a32)
        build_soft_label_cache(s, "stud", folder, compute(32, -1.0), items, source=a32)  # resumed: all there
        assert computed == [6]
        cache, _ = build_soft_label_cache(s, "stud", folder, compute(32, -2.0), items, source=b32)
        assert computed == [6, 6] and float(cache.get("c10/rea")[1][0, 0]) == -2.0
        cache, _ = build_soft_label_cache(s, "stud", folder, compute(8, -3.0), items, source=a8)
        assert computed == [6, 6, 6] and cache.get("s0/cls")[0].shape == (2, 8)
        assert set(s.soft_label_index("stud")) == set(s.soft_label_index("stud", a8))


def test_the_interrupt_message_and_the_resume_agree(tmp_path, monkeypatch):
    """Ctrl-C in a training run says how to resume it, and the same command with that advice resumes."""
    import mulcot.train.assistant as assistant
    from mulcot.train.loop import RESUME_HINT, check_request

    db = _store(tmp_path / "m.db")

    def interrupted(store, config, *, resume=False, progress=None):  # the run's record, cut by Ctrl-C
        check_request(store, config, resume)
        with store.run(config.name, kind="train-assistant", dataset="d", resume_hint=RESUME_HINT):
            raise KeyboardInterrupt

    monkeypatch.setattr(assistant, "train_assistant", interrupted)
    args = ("train-assistant", "d", "--model", tmp_path / "m", "--name", "asst", "--db", db)
    first = _cli(*args)
    assert first.exit_code == 130 and "interrupted: run the same command with --resume to continue" in first.output
    again = _cli(*args)
    _one_line(again, "already exists (interrupted): pass --resume")
    assert _cli(*args, "--resume").exit_code == 130  # --resume goes on (and is cut again here)
    with Store.open(db, readonly=True) as s:
        assert s.get_run("asst")["error"] == f"interrupted: {RESUME_HINT}"


# -------------------------------------------------------------------------------------------------- 6. SIGTERM


def test_sigterm_interrupts_a_run_and_a_rerun_resumes_it(tmp_path):
    db = _store(tmp_path / "m.db", n=8)
    sent: list[int] = []

    def on_request() -> None:  # SIGTERM (kill, timeout) as the third request comes in
        if len(sent) == 0 and sum(teacher.calls.values()) >= 2:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM)

    teacher = Teacher(db, delay_s=0.05, on_request=on_request)
    with ChatServer(teacher) as server:
        args = ("annotate", "d", "--teacher", "gpt-x", "--base-url", server.base_url, "--run", "ann",
                "--concurrency", 1, "--db", db)
        cut = _cli(*args)
        assert cut.exit_code == 143, cut.output
        assert "interrupted (SIGTERM): run the same command again to resume" in cut.output
        with Store.open(db, readonly=True) as s:
            run = s.get_run("ann")
            assert run["status"] == "interrupted" and "run the same command again" in run["error"]
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the run's only
        done = _cli(*args)
        assert done.exit_code == 0, done.output
    assert sorted(_finals(db).values()) == [1] * 12
    # what was answered before SIGTERM was kept; only the request in flight then was asked again
    assert sum(teacher.calls.values()) <= 13 and max(teacher.calls.values()) <= 2


# ---------------------------------------------------------------------------------------- 7. adapters saved whole


SAVER = """
import json, sys, time
from pathlib import Path
from mulcot.train.checkpoints import swap_into_place, _fresh_tmp, write_meta
folder = Path(sys.argv[1])
for i in range(1, 10**6):
    tmp = _fresh_tmp(folder / "best")
    tmp.mkdir()
    (tmp / "adapter_config.json").write_text("{}")
    (tmp / "adapter_model.safetensors").write_bytes(bytes(4096))
    write_meta(tmp, {"best": {"eval_select": i, "epoch": i}})
    swap_into_place(tmp, folder / "best")
    print(i, flush=True)
"""


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_a_kill_while_saving_leaves_a_whole_best_adapter(tmp_path, monkeypatch, exchange):
    """A process saving ``best/`` over and over is killed -9 at random moments: every time, resume finds a whole
    adapter with the best metric (the last one saved, or the one being saved)."""
    import random

    from mulcot.train import checkpoints
    from mulcot.train.checkpoints import is_complete_adapter, resume_best

    script = SAVER if exchange else SAVER.replace("import json", "import mulcot.train.checkpoints as c\n"
                                                  "c._exchange = lambda a, b: False\nimport json")
    rng = random.Random(0)
    saved = 0
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        proc.stdout.readline()  # one whole save first
        time.sleep(rng.uniform(0.0, 0.05))
        proc.kill()
        out = proc.communicate()[0].split()
        proc.wait()
        last = int(out[-1]) if out else 1
        best = resume_best(tmp_path)
        assert best is not None and best["eval_select"] in (last, last + 1)
        assert is_complete_adapter(tmp_path / "best")
        saved += last
    assert saved > 12
    if not exchange:  # the gap between the two renames is closed by recover()
        (tmp_path / "best").rename(tmp_path / "best.old")
        monkeypatch.setattr(checkpoints, "_exchange", lambda a, b: False)
        assert resume_best(tmp_path) is not None and not (tmp_path / "best.old").exists()


@pytest.mark.slow
def test_sigterm_during_training_then_resume_keeps_the_best_epoch(demo_store, compact_model, tmp_path):
    """`timeout`/`kill` (SIGTERM) of a real training run after its first dev evaluation: the run is interrupted (not
    running forever), the message says to resume with --resume, and the resumed run remembers the best epoch."""
    from mulcot.sample import SAMPLE_NAME

    runs = tmp_path / "runs"
    common = ["train-assistant", SAMPLE_NAME, "--model", str(compact_model()), "--db", str(demo_store.path),
              "--runs-dir", str(runs), "--epochs", "2", "--batch-size", "2", "--grad-accum", "1", "--max-pixels",
              "3136", "--max-train-items", "4", "--max-dev-samples", "3", "--save-steps", "1", "--lr", "1e-3",
              "--lora-dropout", "0", "--name", "cut", "--json"]
    exe = str(Path(sys.executable).parent / "mulcot")
    proc = subprocess.Popen([exe, *common], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = runs / "cut" / "log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (runs / "cut" / "best" / "mulcot.json").exists():  # the first epoch's dev evaluation is kept
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "interrupted (SIGTERM): run the same command with --resume to continue" in err
    run = demo_store.get_run("cut")
    assert run["status"] == "interrupted" and "--resume" in run["error"]
    resumed = subprocess.run([exe, *common, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    best = json.loads(resumed.stdout)["best"]
    evals = [json.loads(x) for x in log.read_text().splitlines() if '"eval_select"' in x]
    assert len(evals) >= 2 and best["eval_select"] == max(e["eval_select"] for e in evals)


def test_a_first_save_killed_while_writing_its_metadata_is_not_taken_for_an_adapter(tmp_path, monkeypatch):
    """A kill while ``mulcot.json`` is being written (here: before its rename) leaves no ``mulcot.json`` at all, so a
    half-written first save is never promoted to ``best/`` and resume starts clean instead of reading an empty file."""
    from mulcot.train import checkpoints
    from mulcot.train.checkpoints import _fresh_tmp, resume_best, write_meta

    tmp = _fresh_tmp(tmp_path / "best")
    tmp.mkdir()
    (tmp / "adapter_config.json").write_text("{}")
    (tmp / "adapter_model.safetensors").write_bytes(bytes(16))

    def killed(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_meta(tmp, {"best": {"eval_select": 1}})
    monkeypatch.undo()
    assert not (tmp / "mulcot.json").exists()
    assert resume_best(tmp_path) is None and not (tmp_path / "best").exists()
