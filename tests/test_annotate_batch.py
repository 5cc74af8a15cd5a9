"""Batch annotation (`mulcot annotate --batch`, `--batch-file`, `--ingest`) against a real Batch API server on
127.0.0.1 (fakes.batch_server) through the unmodified openai SDK, with the scripted teacher of test_annotate."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import openai
import pytest
from fakes.batch_server import BatchPlan, BatchServer
from helpers import wait_until
from test_annotate import SECRET, WRONG, Script, chain
from typer.testing import CliRunner

from mulcot.annotate import AnnotateConfig, annotate
from mulcot.annotate.batch import BatchConfig, annotate_batch, parse_custom_id
from mulcot.annotate.chat_server import ChatServer, Reply, completion
from mulcot.cli import app
from mulcot.core.client import TeacherConfig
from mulcot.datasets import import_dataset
from mulcot.sample import SAMPLE_DIR
from mulcot.store import Store


def _mixed(script: Script) -> Script:
    """Every fourth post predicted wrong (→ explained), every fourth malformed once (→ ARC retry), one post that
    never answers in form (→ failed after the retries), one explained with another label than the gold one."""
    for i, label in enumerate(script.gold.values()):
        if i == 2:
            script.set(i, "predict", [Reply(text="I refuse.")])
            script.set(i, "explain", [Reply(text=chain(WRONG[label]))])
        elif i % 4 == 0:
            script.set(i, "predict", [Reply(text=chain(WRONG[label]))])
        elif i % 4 == 1:
            script.set(i, "predict", [Reply(text='"Text_analysis": "only this"'), Reply(text=chain(label))])
    return script


def _teacher(base_url: str, **kw) -> TeacherConfig:
    return TeacherConfig(model="gpt-4o-mini", base_url=base_url, api_key="x", backoff_base_s=0.01, **kw)


def _chains(store: Store) -> list[tuple]:
    """Every teacher attempt, as (sample, stage, attempt, final, valid, prediction, error kind)."""
    return sorted(
        (r["sample_id"], r["stage"], r["attempt"], r["final"], r["valid"], r["prediction"], (r["error"] or "")[:20])
        for r in store.reasonings(dataset="t15", source="teacher")
    )


COUNTS = ("predicted", "predicted_correct", "explained", "failed", "retries", "requests", "samples", "teacher_set")


def test_batch_equals_live_on_the_same_answers(tmp_path):
    """Stage split, ARC counts and every stored attempt are the same whether the answers come live or in batches
    (output shuffled, malformed lines mixed in)."""
    live_store, batch_store = (Store.open(tmp_path / f"{n}.db") for n in ("live", "batch"))
    for s in (live_store, batch_store):
        import_dataset(s, "twitter-tsv", SAMPLE_DIR, name="t15")
    with ChatServer(_mixed(Script(live_store, "t15"))) as server:
        live = annotate(live_store, AnnotateConfig(dataset="t15", teacher=_teacher(server.base_url)))
    script = _mixed(Script(batch_store, "t15"))
    with BatchServer(script, default=BatchPlan(garbage=2, polls=2)) as server:
        cfg = AnnotateConfig(dataset="t15", teacher=_teacher(server.base_url))
        got = annotate_batch(batch_store, cfg, BatchConfig(poll_s=0.01, runs_dir=str(tmp_path / "runs")))
        rounds = len(server.batches)
        answered = server.state.answered
    assert {k: getattr(got, k) for k in COUNTS} == {k: getattr(live, k) for k in COUNTS}
    assert live.failed == 2 and live.explained == 9 and live.retries == {0: 35, 1: 9, 3: 2} and live.requests == 61
    assert _chains(batch_store) == _chains(live_store)
    # stage 1; stage 2 + ARC retries; the post that never answers: two more predict rounds, then four explain ones
    assert rounds == 8
    assert len(answered) == len(set(answered)) == got.requests
    assert got.malformed_lines == 2 * rounds and got.batches_ingested == rounds and got.stopped is None
    # batch prices: half the live price for the same tokens
    assert got.tokens_in == live.tokens_in and got.cost_usd == pytest.approx(live.cost_usd / 2)
    rows = batch_store.batches(dataset="t15")
    assert [r["stage"] for r in rows] == ["predict", "predict+explain", "predict", "predict", *["explain"] * 4]
    assert all(r["ingested"] and r["status"] == "completed" for r in rows)
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(got.cost_usd)
    # nothing left: a rerun submits nothing
    with BatchServer(script) as server:
        again = annotate_batch(batch_store, AnnotateConfig(dataset="t15", teacher=_teacher(server.base_url)),
                               BatchConfig(poll_s=0.01, runs_dir=str(tmp_path / "runs")))
        assert server.batches == {} and again.requests == 0 and again.skipped_done == 36
    live_store.close()
    batch_store.close()


def test_expired_failed_error_file_and_split(sample_store, tmp_path):
    """An expired batch gives its finished part and the rest goes out again; a failed batch and error-file entries
    count as attempts with their reason; files split at --batch-max-requests; every sample ends valid or failed."""
    script = Script(sample_store, "t15")
    keys = list(script.gold)
    for i in (3, 4):
        script.set(i, "predict", [Reply(status=500), Reply(text=chain(script.gold[keys[i]]))])
    script.set(5, "predict", [Reply(status=400)])
    plans = [
        BatchPlan(outcome="expired", finish=7, garbage=1),  # first file of stage 1 (20 requests): 7 answered
        BatchPlan(outcome="failed"),  # second file (16 requests): nothing answered
    ]
    with BatchServer(script, plans=plans) as server:
        cfg = AnnotateConfig(dataset="t15", teacher=_teacher(server.base_url), max_retries=2)
        got = annotate_batch(sample_store, cfg, BatchConfig(poll_s=0.01, max_requests=20,
                                                            runs_dir=str(tmp_path / "runs")))
        answered = server.state.answered
    rows = sample_store.batches(dataset="t15")
    assert [(r["status"], r["requests"]) for r in rows[:2]] == [("expired", 20), ("failed", 16)]
    assert len(answered) == len(set(answered))  # no request answered twice
    finals = Counter((r["sample_id"], r["stage"]) for r in sample_store.reasonings(dataset="t15", final_only=True,
                                                                                   source="teacher"))
    assert set(finals.values()) == {1} and sum(1 for k in finals if k[1] == "predict") == 36
    sids = [s["id"] for s in sample_store.samples("t15", "train")]  # in the script's order
    # the expired batch's 13 unanswered requests went out again as the same attempt; the failed batch's 16 each
    # count one failed attempt ("batch failed: ...") and were asked again
    first = {parse_custom_id(c)[1] for c in rows[0]["custom_ids"]}
    second = {parse_custom_id(c)[1] for c in rows[1]["custom_ids"]}
    for sid in second:
        attempts = sample_store.reasonings(dataset="t15", source="teacher", sample_id=sid, stage="predict")
        assert attempts[0]["error"].startswith("batch failed: scripted batch failure")
    for sid in first - {sids[i] for i in (3, 4, 5)}:
        attempts = sample_store.reasonings(dataset="t15", source="teacher", sample_id=sid, stage="predict")
        assert [(a["attempt"], a["valid"]) for a in attempts] == [(1, 1)]
    # error-file entries: an attempt each, with the HTTP status as reason
    a3 = sample_store.reasonings(dataset="t15", source="teacher", sample_id=sids[3], stage="predict")
    assert [(a["attempt"], a["valid"], a["final"]) for a in a3] == [(1, 0, 0), (2, 1, 1)]
    assert "HTTP 500" in a3[0]["error"]
    a5 = sample_store.reasonings(dataset="t15", source="teacher", sample_id=sids[5], stage="predict")
    assert len(a5) == 3 and a5[-1]["final"] and "HTTP 400" in a5[-1]["error"]
    assert got.failed == 1 and got.malformed_lines == 1 and got.stopped is None
    assert any("HTTP 400" in f for f in got.failures)


def _answer_file(path: Path, script: Script, out: Path, extra: list[str] = ()) -> int:
    """Do what `vllm run-batch -i path -o out` does, with the script's answers, lines in another order."""
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    results = []
    for n, line in enumerate(lines):
        reply = script(line["body"])
        body = completion(line["body"], reply.text or "", f"c{n}")
        results.append(json.dumps({"id": f"vllm-{n}", "custom_id": line["custom_id"], "error": None,
                                   "response": {"status_code": 200, "request_id": f"r{n}", "body": body}}))
    random.Random(0).shuffle(results)
    out.write_text("\n".join([*results, *extra]) + "\n")
    return len(lines)


def test_offline_files_round_trip_with_the_cli(tmp_path):
    """--batch-file writes Batch JSONL without a key or an upload; --ingest takes the results in (any order, bad
    lines skipped, twice is harmless) and writes the next round; the end state equals the live path's."""
    db = tmp_path / "o.db"
    with Store.open(db) as s:
        import_dataset(s, "twitter-tsv", SAMPLE_DIR, name="t15")
        script = _mixed(Script(s, "t15"))
    runner = CliRunner()
    base = ["annotate", "t15", "--teacher", "Qwen/Qwen2.5-VL-72B-Instruct", "--db", str(db), "--json",
            "--runs-dir", str(tmp_path / "runs")]
    r = runner.invoke(app, [*base, "--batch-file", str(tmp_path / "round1.jsonl"), "--batch-max-requests", "30"],
                      env={"OPENAI_API_KEY": ""})
    assert r.exit_code == 0, r.output
    first = json.loads(r.output)
    assert first["batch_files"] == [str(tmp_path / "round1.jsonl"), str(tmp_path / "round1-2.jsonl")]
    line = json.loads((tmp_path / "round1.jsonl").read_text().splitlines()[0])
    assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
    assert line["body"]["model"] == "Qwen/Qwen2.5-VL-72B-Instruct"
    image = line["body"]["messages"][0]["content"][0]
    assert image["type"] == "image_url" and image["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert parse_custom_id(line["custom_id"])[2:4] == ("predict", 1)
    # writing again supersedes the files nobody answered (same requests, not twice in the store's pending set)
    r = runner.invoke(app, [*base, "--batch-file", str(tmp_path / "round1.jsonl")])
    assert r.exit_code == 0, r.output
    with Store.open(db) as s:
        assert [b["status"] for b in s.batches(dataset="t15")] == ["superseded", "superseded", "written"]
    results = tmp_path / "out1.jsonl"
    _answer_file(tmp_path / "round1.jsonl", script, results, extra=["{broken", '{"custom_id": "nope"}'])
    r = runner.invoke(app, [*base, "--ingest", str(results), "--batch-file", str(tmp_path / "round2.jsonl")])
    assert r.exit_code == 0, r.output
    second = json.loads(r.output)
    assert second["predicted"] == 36 - 9 - 1 and second["malformed_lines"] == 2
    assert second["batch_files"] == [str(tmp_path / "round2.jsonl")]
    # the same results again: nothing recorded twice
    r = runner.invoke(app, [*base, "--ingest", str(results), "--batch-file", str(tmp_path / "round2.jsonl")])
    assert r.exit_code == 0 and json.loads(r.output)["requests"] == 0
    n = 2
    while True:
        req = tmp_path / f"round{n}.jsonl"
        _answer_file(req, script, tmp_path / f"out{n}.jsonl")
        r = runner.invoke(app, [*base, "--ingest", str(tmp_path / f"out{n}.jsonl"), "--batch-file",
                                str(tmp_path / f"round{n + 1}.jsonl")])
        assert r.exit_code == 0, r.output
        if not json.loads(r.output)["batch_files"]:
            break
        n += 1
    assert n == 8  # as many rounds as the Batch API path needs (see test_batch_equals_live_on_the_same_answers)
    live_db = tmp_path / "live.db"
    with Store.open(live_db) as live_store, Store.open(db) as s:
        import_dataset(live_store, "twitter-tsv", SAMPLE_DIR, name="t15")
        with ChatServer(_mixed(Script(live_store, "t15"))) as server:
            cfg = AnnotateConfig(dataset="t15", teacher=_teacher(server.base_url))
            cfg.teacher.model = "Qwen/Qwen2.5-VL-72B-Instruct"
            annotate(live_store, cfg)
        assert _chains(s) == _chains(live_store)
        assert s.dataset_stats("t15")["teacher_set"] == {"train": 35}


def _client(server: BatchServer) -> openai.OpenAI:
    return openai.OpenAI(api_key="x", base_url=server.base_url, max_retries=0)


@pytest.mark.parametrize("crash_after", ["upload", "create"])
def test_crash_inside_a_submission_never_duplicates_a_batch(sample_store, tmp_path, crash_after):
    """A process dying right after the upload, or right after batches.create but before the store knew the batch
    id: the rerun adopts the uploaded file / finds the batch by its metadata instead of submitting again."""
    script = Script(sample_store, "t15")
    with BatchServer(script) as server:
        client = _client(server)
        real = client.files.create if crash_after == "upload" else client.batches.create

        def then_die(*args, **kwargs):
            real(*args, **kwargs)
            raise KeyboardInterrupt  # what the store sees of a kill: the call happened, its answer never arrived

        if crash_after == "upload":
            client.files.create = then_die
        else:
            client.batches.create = then_die
        cfg = AnnotateConfig(dataset="t15", teacher=_teacher(server.base_url))
        bcfg = BatchConfig(poll_s=0.01, runs_dir=str(tmp_path / "runs"))
        with pytest.raises(KeyboardInterrupt):
            annotate_batch(sample_store, cfg, bcfg, client=client)
        assert sample_store.batches(pending=True)[0]["remote_id"] is None
        assert sample_store.get_run("annotate-t15-train-gpt-4o-mini")["status"] == "interrupted"
        got = annotate_batch(sample_store, cfg, bcfg, client=_client(server))
        uploads = [f for f in server.files.values() if f["purpose"] == "batch"]
        assert len(uploads) == 1 and len(server.batches) == 1
    assert got.predicted == 36 and got.batches_ingested == 1
    assert len(server.state.answered) == len(set(server.state.answered)) == 36


@pytest.mark.slow
def test_kill_9_between_upload_and_completion_then_rerun(tmp_path):
    """SIGKILL `mulcot annotate --batch` while its batch is in progress; the same command again polls that batch
    (no second batch), takes it in, follows up stage 2, and leaves one final chain per sample and stage."""
    db = tmp_path / "k.db"
    with Store.open(db) as s:
        import_dataset(s, "twitter-tsv", SAMPLE_DIR, name="t15")
        script = Script(s, "t15")
    for i, label in enumerate(script.gold.values()):
        if i % 3 == 0:
            script.set(i, "predict", [Reply(text=chain(WRONG[label]))])
    exe = str(Path(sys.executable).parent / "mulcot")
    env = {**os.environ, "OPENAI_API_KEY": "x"}
    with BatchServer(script, plans=[BatchPlan(hold=True)]) as server:
        cmd = [exe, "annotate", "t15", "--teacher", "gpt-4o-mini", "--base-url", server.base_url, "--batch",
               "--poll-s", "0.05", "--db", str(db), "--runs-dir", str(tmp_path / "runs"), "--json"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        wait_until(lambda: any(b["status"] == "in_progress" for b in server.batches.values()), 60, interval=0.05)
        time.sleep(0.2)  # a few polls while in progress
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with Store.open(db) as s:
            rows = s.batches(dataset="t15")
            assert len(rows) == 1 and rows[0]["remote_id"] and not rows[0]["ingested"]
            assert s.reasonings(dataset="t15", source="teacher") == []
        assert len(server.batches) == 1 and server.state.answered == []
        server.release()
        rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert rerun.returncode == 0, rerun.stderr
        assert len(server.batches) == 2  # the held one, then stage 2
        assert len(server.state.answered) == len(set(server.state.answered)) == 36 + 12
    summary = json.loads(rerun.stdout)
    assert summary["predicted"] == 36 and summary["explained"] == 12 and summary["batches_ingested"] == 2
    with Store.open(db) as s:
        finals = Counter((r["sample_id"], r["stage"]) for r in s.reasonings(dataset="t15", source="teacher"))
        assert set(finals.values()) == {1} and len(finals) == 48


def test_the_key_never_lands_in_files_store_or_run_folder(tmp_path, monkeypatch):
    db = tmp_path / "k.db"
    with Store.open(db) as s:
        import_dataset(s, "twitter-tsv", SAMPLE_DIR, name="t15")
        script = Script(s, "t15")
    monkeypatch.setenv("MY_TEACHER_KEY", SECRET)
    runner = CliRunner()
    with BatchServer(script) as server:
        common = ["annotate", "t15", "--teacher", "gpt-4o-mini", "--base-url", server.base_url, "--api-key-env",
                  "MY_TEACHER_KEY", "--db", str(db), "--runs-dir", str(tmp_path / "runs")]
        r = runner.invoke(app, [*common, "--limit", "6", "--batch", "--poll-s", "0.01"])
        assert r.exit_code == 0, r.output
        assert f"Bearer {SECRET}" in server.state.auth  # the key was used...
        r2 = runner.invoke(app, [*common, "--limit", "10", "--batch-file", str(tmp_path / "req.jsonl")])
        assert r2.exit_code == 0, r2.output
        status = runner.invoke(app, ["annotate", "--batch-status", "--db", str(db)])
        assert status.exit_code == 0 and "completed" in status.output
    assert (tmp_path / "runs").is_dir() and (tmp_path / "req.jsonl").is_file()
    for path in tmp_path.rglob("*"):  # ...and is nowhere on disk: store (and its WAL), run folder, request files
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    for text in (r.output, r2.output, status.output):
        assert SECRET not in text


def test_budget_at_batch_prices_and_status(sample_store, tmp_path):
    """--budget-usd is checked before each upload at batch prices; raising it and running again continues."""
    script = Script(sample_store, "t15")
    with BatchServer(script) as server:
        cfg = AnnotateConfig(dataset="t15", teacher=_teacher(server.base_url, price=(20.0, 20.0)), budget_usd=0.2)
        bcfg = BatchConfig(poll_s=0.01, runs_dir=str(tmp_path / "runs"))  # batch price: 10 USD per 1M tokens
        got = annotate_batch(sample_store, cfg, bcfg)
        assert got.stopped == "budget" and 0 < got.predicted < 36 and got.cost_usd <= 0.2
        assert sample_store.get_run(got.run_id)["status"] == "stopped"
        cfg.budget_usd = None
        rest = annotate_batch(sample_store, cfg, bcfg)
    assert rest.predicted == 36 - got.predicted and rest.stopped is None
    r = CliRunner().invoke(app, ["annotate", "--batch-status", "--json", "--db", str(sample_store.path)])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert len(rows) >= 2 and sum(b["requests"] for b in rows) == 36 and all(b["cost_usd"] > 0 for b in rows)


def test_bad_input(tmp_path):
    db = tmp_path / "b.db"
    with Store.open(db) as s:
        import_dataset(s, "twitter-tsv", SAMPLE_DIR, name="t15")
    runner = CliRunner()
    r = runner.invoke(app, ["annotate", "t15", "--teacher", "m", "--db", str(db), "--ingest", str(tmp_path / "x")])
    assert r.exit_code == 2 and "no such results file" in r.output
    (tmp_path / "junk.jsonl").write_text("{nope\n")
    r = runner.invoke(app, ["annotate", "t15", "--teacher", "m", "--db", str(db), "--ingest",
                            str(tmp_path / "junk.jsonl")])
    assert r.exit_code == 2 and "no result lines with a mulcot custom_id" in r.output
    r = runner.invoke(app, ["annotate", "t15", "--teacher", "m", "--db", str(db), "--batch", "--batch-file", "f"])
    assert r.exit_code == 1 and "choose one" in r.output
    r = runner.invoke(app, ["annotate", "t15", "--db", str(db), "--batch"])
    assert r.exit_code == 1 and "--teacher MODEL is required" in r.output
    r = runner.invoke(app, ["annotate", "t15", "--teacher", "m", "--db", str(db), "--batch", "--runs-dir",
                            str(tmp_path / "runs")], env={"OPENAI_API_KEY": ""})
    assert r.exit_code != 0 and "no API key" in r.output and "Traceback" not in r.output
