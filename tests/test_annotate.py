"""`mulcot annotate` against real HTTP servers on 127.0.0.1 with scripted answers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import wait_until
from typer.testing import CliRunner

from mulcot.annotate import AnnotateConfig, annotate
from mulcot.annotate.chat_server import ChatServer, Reply, post_of, prompt_text
from mulcot.cli import app
from mulcot.core.client import TeacherConfig
from mulcot.core.reasoning import Reasoning
from mulcot.datasets import import_dataset
from mulcot.sample import SAMPLE_DIR
from mulcot.store import Store

SECRET = "sk-test-THISISNOTAREALKEY1234567890abcd"
WRONG = {"positive": "negative", "neutral": "positive", "negative": "neutral"}


def chain(label: str, note: str = "") -> str:
    return Reasoning(
        f"The text {note}.", "The image shows a scene.", "No conflict.", f"Overall {label}.", label
    ).to_text()


class Script:
    """Scripted teacher: per post, a list of replies for P_pre and for P_exp (the last one repeats)."""

    def __init__(self, store: Store, dataset: str, split: str = "train"):
        self.gold = {(s["text"], s["aspect"]): s["label"] for s in store.samples(dataset, split)}
        self.keys = list(self.gold)
        self.plan: dict[tuple, dict[str, list[Reply]]] = {}
        self.calls: Counter = Counter()
        self.lock = threading.Lock()

    def set(self, index: int, stage: str, replies: list[Reply]) -> None:
        self.plan.setdefault(self.keys[index], {})[stage] = replies

    def __call__(self, body: dict) -> Reply:
        post = post_of(body)
        stage = "explain" if "The correct sentiment label" in prompt_text(body) else "predict"
        with self.lock:
            n = self.calls[(post, stage)]
            self.calls[(post, stage)] += 1
        replies = self.plan.get(post, {}).get(stage)
        if replies:
            return replies[min(n, len(replies) - 1)]
        return Reply(text=chain(self.gold[post]))


def _cfg(server: ChatServer, **kw) -> AnnotateConfig:
    teacher = TeacherConfig(
        model="gpt-4o-mini",
        base_url=server.base_url,
        api_key="x",
        backoff_base_s=0.01,
        timeout_s=kw.pop("timeout_s", 10),
        http_retries=kw.pop("http_retries", 3),
    )
    return AnnotateConfig(dataset="t15", teacher=teacher, concurrency=kw.pop("concurrency", 4), **kw)


def _finals(store: Store, stage: str) -> Counter:
    return Counter(
        r["sample_id"]
        for r in store.reasonings(dataset="t15", split="train", source="teacher", stage=stage, final_only=True)
    )


def test_two_stages_arc_and_http_retries(sample_store):
    script = Script(sample_store, "t15")
    wrong, malformed, limited, broken = [], [], [], []
    for i, label in enumerate(script.gold.values()):
        if i % 4 == 0:
            script.set(i, "predict", [Reply(text=chain(WRONG[label]))])
            wrong.append(i)
        elif i % 4 == 1:
            script.set(i, "predict", [Reply(text='"Text_analysis": "only this"'), Reply(text=chain(label))])
            malformed.append(i)
        elif i % 4 == 2:
            script.set(i, "predict", [Reply(status=429, headers={"Retry-After": "0"}), Reply(text=chain(label))])
            limited.append(i)
        else:
            script.set(i, "predict", [Reply(status=500), Reply(text=chain(label))])
            broken.append(i)
    with ChatServer(script) as server:
        summary = annotate(sample_store, _cfg(server))
    assert summary.predicted == 36 and summary.predicted_correct == 27 and summary.explained == 9
    assert summary.failed == 0 and summary.samples == 36
    assert summary.retries == {0: 36, 1: 9}
    assert summary.http_retries == 18
    assert summary.requests == 36 + 9 + 9  # every predict, the malformed ones again, and the explanations
    assert summary.teacher_set == 36 and summary.cost_usd > 0 and summary.tokens_in > 0
    assert set(_finals(sample_store, "predict").values()) == {1} and len(_finals(sample_store, "predict")) == 36
    assert len(_finals(sample_store, "explain")) == 9
    # every attempt is stored, the final one marked
    attempts = sample_store.reasonings(dataset="t15", source="teacher", stage="predict")
    assert len(attempts) == 45 and sum(1 for a in attempts if not a["final"]) == 9
    assert all(a["error"].startswith("output missing") for a in attempts if not a["final"])
    st = sample_store.dataset_stats("t15")
    assert st["teacher_set"] == {"train": 36}
    # a second run has nothing left to do
    with ChatServer(script) as server:
        again = annotate(sample_store, _cfg(server))
        assert server.requests == []
    assert again.samples == 0 and again.skipped_done == 36


def test_only_concurrency_samples_are_in_memory_and_each_image_is_encoded_once(sample_store, monkeypatch):
    """However large the split, at most ``concurrency`` samples are in progress (their images encoded, their
    answers pending); a sample that is explained again reuses its encoded image."""
    import mulcot.annotate.live as annotate_module

    real = annotate_module.jpeg_data_url
    counts = {"encoded": 0, "served": 0}
    seen: list[tuple[int, int]] = []
    lock = threading.Lock()

    def encode(*args, **kwargs):
        with lock:
            counts["encoded"] += 1
        return real(*args, **kwargs)

    script = Script(sample_store, "t15")
    for i, label in enumerate(list(script.gold.values())[:6]):
        script.set(i, "predict", [Reply(text=chain(WRONG[label]))])

    def responder(body: dict) -> Reply:
        with lock:
            seen.append((counts["encoded"], counts["served"]))
        time.sleep(0.01)
        reply = script(body)
        with lock:
            counts["served"] += 1
        return reply

    monkeypatch.setattr(annotate_module, "jpeg_data_url", encode)
    with ChatServer(responder) as server:
        summary = annotate(sample_store, _cfg(server, concurrency=3))
    assert summary.predicted == 36 and summary.explained == 6 and summary.requests == 42
    assert counts["encoded"] == sum(1 for s in sample_store.samples("t15", "train") if s["has_image"])
    assert all(encoded <= served + 3 for encoded, served in seen), seen


def test_failures_are_stored_and_do_not_stop_the_run(sample_store):
    script = Script(sample_store, "t15")
    script.set(0, "predict", [Reply(text="I refuse.")])
    script.set(
        0,
        "explain",
        [Reply(text=chain("positive" if script.gold[script.keys[0]] != "positive" else "negative"))],
    )  # never the gold label
    script.set(1, "predict", [Reply(status=503)])
    script.set(2, "predict", [Reply(drop=True), Reply(text=chain(script.gold[script.keys[2]]))])
    script.set(3, "predict", [Reply(delay_s=1.5), Reply(text=chain(script.gold[script.keys[3]]))])
    with ChatServer(script) as server:
        summary = annotate(sample_store, _cfg(server, max_retries=2, http_retries=1, timeout_s=0.5, limit=6))
    assert summary.samples == 6
    # sample 0: 3 invalid predictions, then 3 explanations with the wrong label; sample 1: HTTP 503 each time
    # (counted as attempts), then its explanation succeeds
    assert summary.failed == 3
    zero = sample_store.reasonings(dataset="t15", source="teacher", sample_id=_sid(sample_store, script, 0))
    assert [(c["stage"], c["attempt"], c["final"], c["valid"]) for c in zero] == [
        ("predict", 1, 0, 0),
        ("predict", 2, 0, 0),
        ("predict", 3, 1, 0),
        ("explain", 1, 0, 1),  # valid = parsed; ARC rejects them for explaining another label than the gold one
        ("explain", 2, 0, 1),
        ("explain", 3, 1, 1),
    ]
    assert "not the gold label" in zero[-1]["error"]
    one = sample_store.reasonings(dataset="t15", source="teacher", sample_id=_sid(sample_store, script, 1))
    assert one[0]["raw"] is None and "HTTP 503" in one[0]["error"]
    # the summary counts what each line says: 3 attempts of sample 1 "gave up after 2 tries" (1 retry each), and
    # samples 2 and 3 needed one retry each
    assert all("gave up after 2 tries" in c["error"] for c in one if c["raw"] is None)
    assert summary.http_retries == 3 * 1 + 1 + 1 and summary.answered == summary.requests - 3
    assert [c["stage"] for c in one if c["final"]] == ["predict", "explain"]
    assert one[-1]["valid"] == 1
    two = sample_store.reasonings(dataset="t15", source="teacher", sample_id=_sid(sample_store, script, 2))
    assert len(two) == 1 and two[0]["valid"] == 1  # the dropped connection was retried at the HTTP level
    three = sample_store.reasonings(dataset="t15", source="teacher", sample_id=_sid(sample_store, script, 3))
    assert len(three) == 1 and three[0]["valid"] == 1  # the timeout too
    run = sample_store.get_run(summary.run_id)
    assert run["status"] == "done" and run["metrics"]["failed"] == 3


def _sid(store, script, index):
    text, aspect = script.keys[index]
    return next(s["id"] for s in store.samples("t15", "train") if s["text"] == text and s["aspect"] == aspect)


def test_budget_stops_cleanly_and_resumes(sample_store):
    script = Script(sample_store, "t15")
    with ChatServer(script) as server:
        cfg = _cfg(server, concurrency=1, budget_usd=0.05)
        cfg.teacher.price = (10.0, 10.0)  # USD per 1M tokens: ~0.005 per request
        summary = annotate(sample_store, cfg)
        assert summary.stopped == "budget" and 0 < summary.cost_usd <= 0.05
        assert summary.predicted < 36
        cfg.budget_usd = None
        rest = annotate(sample_store, cfg)
    assert rest.predicted == 36 - summary.predicted
    assert len(_finals(sample_store, "predict")) == 36


def test_cli_never_stores_the_key(tmp_path, monkeypatch):
    db = tmp_path / "k.db"
    with Store.open(db) as s:
        import_dataset(s, "twitter-tsv", SAMPLE_DIR, name="t15")
        script = Script(s, "t15")
    monkeypatch.setenv("MY_TEACHER_KEY", SECRET)
    with ChatServer(script) as server:
        result = CliRunner().invoke(
            app,
            [
                "annotate",
                "t15",
                "--teacher",
                "gpt-4o-mini",
                "--base-url",
                server.base_url,
                "--api-key-env",
                "MY_TEACHER_KEY",
                "--db",
                str(db),
                "--limit",
                "5",
                "--json",
            ],
        )
        assert result.exit_code == 0, result.output
        assert server.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"
    assert '"predicted": 5' in result.output
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in result.output


def test_cli_bad_input(tmp_path):
    db = tmp_path / "e.db"
    r = CliRunner().invoke(
        app, ["annotate", "nope", "--teacher", "m", "--base-url", "http://127.0.0.1:9/v1", "--db", str(db)]
    )
    assert r.exit_code != 0 and "no dataset named 'nope'" in r.output
    with Store.open(db) as s:
        import_dataset(s, "twitter-tsv", SAMPLE_DIR, name="t15")
    r = CliRunner().invoke(
        app,
        [
            "annotate",
            "t15",
            "--teacher",
            "m",
            "--split",
            "val2",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--db",
            str(db),
        ],
    )
    assert r.exit_code != 0 and "has no split 'val2'" in r.output
    r = CliRunner().invoke(app, ["annotate", "t15", "--teacher", "m", "--db", str(db)], env={"OPENAI_API_KEY": ""})
    assert r.exit_code != 0 and "no API key" in r.output


@pytest.mark.slow
def test_kill_9_then_resume(tmp_path):
    """SIGKILL the annotate process mid-run; the same command again finishes with exactly one final chain per
    sample and stage, and nothing finished before is requested again."""
    db = tmp_path / "r.db"
    with Store.open(db) as s:
        import_dataset(s, "twitter-tsv", SAMPLE_DIR, name="t15")
        script = Script(s, "t15")
    for i, label in enumerate(script.gold.values()):
        if i % 3 == 0:
            script.set(i, "predict", [Reply(text=chain(WRONG[label]), delay_s=0.15)])
            script.set(i, "explain", [Reply(text=chain(label), delay_s=0.15)])
        else:
            script.set(i, "predict", [Reply(text=chain(label), delay_s=0.15)])
    exe = str(Path(sys.executable).parent / "mulcot")
    with ChatServer(script) as server:
        cmd = [
            exe,
            "annotate",
            "t15",
            "--teacher",
            "gpt-4o-mini",
            "--base-url",
            server.base_url,
            "--concurrency",
            "2",
            "--db",
            str(db),
            "--json",
        ]
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "OPENAI_API_KEY": "x"},
        )
        with Store.open(db) as s:
            wait_until(lambda: len(s.reasonings(dataset="t15", source="teacher", final_only=True)) >= 8, 60,
                       interval=0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with Store.open(db) as s:
            done_before = {
                r["sample_id"] for r in s.reasonings(dataset="t15", source="teacher", stage="predict", final_only=True)
            }
        assert 0 < len(done_before) < 36
        calls_before = sum(script.calls.values())
        rerun = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OPENAI_API_KEY": "x"})
        assert rerun.returncode == 0, rerun.stderr
    with Store.open(db) as s:
        finals = Counter(
            (r["sample_id"], r["stage"]) for r in s.reasonings(dataset="t15", source="teacher", final_only=True)
        )
        assert set(finals.values()) == {1}
        assert sum(1 for k in finals if k[1] == "predict") == 36
        assert sum(1 for k in finals if k[1] == "explain") == 12
        texts = {s_["id"]: (s_["text"], s_["aspect"]) for s_ in s.samples("t15", "train")}
    assert sum(script.calls.values()) - calls_before <= (36 - len(done_before)) + 12 + 2
    for sid in done_before:
        assert script.calls[(texts[sid], "predict")] == 1
