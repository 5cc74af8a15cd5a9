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

from mulcot.chains import chain_row
from mulcot.chat_server import ChatServer, Reply, post_of, prompt_text
from mulcot.cli import app
from mulcot.errors import MulcotError, StoreError
from mulcot.reasoning import Reasoning
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
                 "has_image": False} for split, k in (("train", n), ("test", 2)) for i in range(k)]  # fmt: skip
        ids = s.upsert_samples("d", rows).ids
        if chains:
            for (split, key), sid in ids.items():
                label = labels[int(key[len(split) :]) % 3]
                s.add_reasoning(**chain_row(sample_id=sid, source="teacher", model="t", stage="predict",
                                            output=_chain(label), run_id="a", prompt_version="v"))  # fmt: skip
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
    return {p.relative_to(folder) for p in folder.rglob("*")}


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
    ]  # fmt: skip
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
    from mulcot.refs import resolve_run

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
         ("data", "pairs", "d")]  # fmt: skip


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
                  "read-only")  # fmt: skip
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
                  "locked by another process")  # fmt: skip
        assert time.perf_counter() - started < 5
        assert _cli("data", "list", "--db", db).exit_code == 0  # reading is not blocked by a writer
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    _intact(db, before)
