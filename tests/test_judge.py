"""`mulcot judge` against a scripted OpenAI-compatible judge on 127.0.0.1: good answers, garbage, 429/500,
out-of-range scores, a judge that dies mid-run, the budget, leakage, agreement with ratings, pairs by judge score."""

from __future__ import annotations

import html
import json
import re
import threading
from collections import Counter

import pytest
from scipy.stats import spearmanr
from sklearn.metrics import cohen_kappa_score
from typer.testing import CliRunner

from mulcot.annotate.chat_server import ChatServer, Reply, has_image, prompt_text
from mulcot.cli import app
from mulcot.core.chains import chain_row
from mulcot.core.client import TeacherConfig
from mulcot.core.reasoning import Reasoning
from mulcot.core.rubric import RUBRIC_VERSION, AnswerError, parse_leakage, parse_rubric
from mulcot.judge import CRITERIA, JudgeConfig, judge_report, run_judge
from mulcot.metrics.judge import GOOD_AT, agreement
from mulcot.store import Store
from mulcot.train.pairs import build_pairs
from tests.conftest import dump

SECRET = "sk-test-JUDGEKEYNOTREAL1234567890abcdef"
OTHER = {"positive": "negative", "neutral": "positive", "negative": "neutral"}


def _answer(score: int | str = 4, reason: str = "fine") -> str:
    return json.dumps({name: {"score": score, "reason": reason} for name in CRITERIA})


def _add_chains(store: Store, n: int = 12) -> dict[str, list[int]]:
    """Chains on the first ``n`` train posts of t15: a stage-1 chain each (its conclusion hedged, "case=K" in its
    text analysis), a stage-2 chain on every third post (conclusion naming the gold label), a student chain on every
    fourth (naming the other label). Returns chain ids per group."""
    ids: dict[str, list[int]] = {"stage1": [], "stage2": [], "student": []}
    for i, s in enumerate(store.samples("t15", "train")[:n]):
        gold = s["label"]
        specs = [("stage1", "teacher", "predict", f"Hard to say, {gold} on balance", gold)]
        if i % 3 == 0:
            specs.append(("stage2", "teacher", "explain", f"Overall {gold}.", gold))
        if i % 4 == 0:
            specs.append(("student", "student", "eval", f"Overall {OTHER[gold]}.", OTHER[gold]))
        for group, source, stage, conclusion, label in specs:
            text = Reasoning(f"The text case={i}-{group}.", "The image shows a scene.", "No conflict.",
                             conclusion, label).to_text()
            row = chain_row(sample_id=s["id"], source=source, model="m", stage=stage, output=text, run_id="r")
            ids[group].append(store.add_reasoning(**row))
    return ids


class Judge:
    """Scripted judge: per case (``case=K`` in the chain), a list of replies, the last repeating; rubric answers
    default to all 4s; leakage answers name the label a conclusion states ("Overall X."), else neutral."""

    def __init__(self, plan: dict[str, list[Reply]] | None = None, die_after: int | None = None):
        self.plan = plan or {}
        self.calls: Counter = Counter()
        self.lock = threading.Lock()
        self.die_after = die_after
        self.server: ChatServer | None = None
        self.dead = False
        self.images = 0

    def __call__(self, body: dict) -> Reply:
        prompt = prompt_text(body)
        found = re.search(r"case=(\S+?)\.", prompt)
        case = found.group(1) if found else "-"
        with self.lock:
            n = self.calls[case]
            self.calls[case] += 1
            total = sum(self.calls.values())
            self.images += has_image(body)
            if self.die_after is not None and total > self.die_after and not self.dead:
                self.dead = True  # the judge dies: no new connection is accepted, open ones are dropped
                threading.Thread(target=self.server.stop, daemon=True).start()
        if self.dead:
            return Reply(drop=True)
        if "final label are not shown" in prompt:
            said = re.search(r"Overall (positive|neutral|negative)\.", prompt)
            return Reply(text=json.dumps({"label": said.group(1) if said else "neutral"}))
        replies = self.plan.get(case)
        return replies[min(n, len(replies) - 1)] if replies else Reply(text=_answer())


def _cfg(server: ChatServer, **kw) -> JudgeConfig:
    endpoint = TeacherConfig(model=kw.pop("model", "judge-m"), base_url=server.base_url, api_key="x",
                             backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=5, http_retries=kw.pop("http", 1))
    return JudgeConfig(dataset="t15", judge=endpoint, concurrency=kw.pop("concurrency", 4), **kw)


def _rows(store: Store, kind: str = "rubric") -> list[dict]:
    return store.judgements(dataset="t15", kind=kind)


def test_parsing_rejects_garbage_and_out_of_range():
    v = parse_rubric("Here you go:\n```json\n" + _answer(5, "clear\nline") + "\n```")
    assert v.scores == dict.fromkeys(CRITERIA, 5) and v.mean == 5 and v.reasons["follows"] == "clear line"
    assert parse_rubric(_answer("3")).scores["image"] == 3
    for bad, why in (("", "empty answer"), ("<html>oops</html>", "no JSON object"),
                     (_answer(6), "scored 6, outside 1-5"), (_answer(0), "scored 0"),
                     (_answer(2.5), "no integer score"), (json.dumps({"follows": 3}), "criteria missing")):
        with pytest.raises(AnswerError, match=why):
            parse_rubric(bad)
    assert parse_leakage('{"label": "Negative"}') == "negative" and parse_leakage("I'd say positive.") == "positive"
    with pytest.raises(AnswerError):
        parse_leakage("positive or negative")


def test_every_chain_ends_judged_or_failed_and_a_rerun_completes(sample_store):
    ids = _add_chains(sample_store)
    chains = sum(len(v) for v in ids.values())
    plan = {
        "0-stage1": [Reply(raw=b"\x00garbage, not a completion")],  # every try: failed
        "1-stage1": [Reply(text="I like it a lot")],  # no JSON at all, every try: failed
        "2-stage1": [Reply(status=429, headers={"Retry-After": "0"}), Reply(text=_answer(5))],
        "3-stage1": [Reply(status=500), Reply(text=_answer(2))],
        "4-stage1": [Reply(text=_answer(7)), Reply(text=_answer(3))],  # out of range, then fine (ARC-like)
        "5-stage1": [Reply(text=_answer(9))],  # out of range every time: failed
    }
    script = Judge(plan)
    with ChatServer(script) as server:
        summary = run_judge(sample_store, _cfg(server, max_retries=1))
    rows = {r["reasoning_id"]: r for r in _rows(sample_store)}
    assert len(rows) == chains == summary.chains and summary.judged + summary.failed == chains
    assert summary.failed == 3 and script.images == sum(script.calls.values())  # every rubric prompt had its image
    failed = {r["key"]: r["error"] for r in rows.values() if r["status"] == "failed"}
    keys = [s["key"] for s in sample_store.samples("t15", "train")]
    assert "HTTP" in failed[keys[0]] or "malformed" in failed[keys[0]]
    assert "no JSON object" in failed[keys[1]] and "scored 9, outside 1-5" in failed[keys[5]]
    assert all(r["attempts"] == 2 for r in rows.values() if r["status"] == "failed")
    judged = {r["key"]: r for r in rows.values() if r["status"] == "judged" and r["group"] == "stage1"}
    assert judged[keys[2]]["mean"] == 5 and judged[keys[3]]["mean"] == 2 and judged[keys[4]]["mean"] == 3
    assert judged[keys[4]]["attempts"] == 2 and judged[keys[2]]["http_retries"] == 1
    assert all(r["rubric_version"] == RUBRIC_VERSION and r["tokens_in"] for r in judged.values())
    # the rerun judges only the failed ones (now answered well) and duplicates nothing
    with ChatServer(Judge()) as server:
        again = run_judge(sample_store, _cfg(server))
        assert len(server.requests) == 3
    assert again.skipped_done == chains - 3 and again.judged == 3 and again.failed == 0
    rows = _rows(sample_store)
    assert len(rows) == chains and all(r["status"] == "judged" for r in rows)
    with ChatServer(Judge()) as server:
        assert run_judge(sample_store, _cfg(server)).judged == 0 and server.requests == []


def test_a_judge_that_dies_mid_run(sample_store):
    ids = _add_chains(sample_store)
    chains = sum(len(v) for v in ids.values())
    script = Judge(die_after=6)
    with ChatServer(script) as server:
        script.server = server
        summary = run_judge(sample_store, _cfg(server, concurrency=2))
    assert summary.stopped == "unreachable" and 0 < summary.judged < chains
    rows = _rows(sample_store)
    assert len(rows) == chains  # every chain ended judged or failed, each with its reason
    assert all(r["error"] for r in rows if r["status"] == "failed")
    assert any((r["error"] or "").startswith("not sent: the judge stopped answering") for r in rows)
    assert sample_store.get_run(summary.run_id)["status"] == "stopped"
    with ChatServer(Judge()) as server:
        again = run_judge(sample_store, _cfg(server))
    assert again.judged == chains - summary.judged and again.skipped_done == summary.judged
    assert len(_rows(sample_store)) == chains and {r["status"] for r in _rows(sample_store)} == {"judged"}


def test_budget_stops_and_the_rest_waits(sample_store):
    _add_chains(sample_store)
    with ChatServer(Judge()) as server:
        cfg = _cfg(server, concurrency=1, budget_usd=0.02, source="stage1")
        cfg.judge.price = (10.0, 10.0)
        summary = run_judge(sample_store, cfg)
        assert summary.stopped == "budget" and 0 < summary.cost_usd <= 0.02 and summary.pending > 0
        assert summary.judged + summary.pending == 12 and len(_rows(sample_store)) == summary.judged
        cfg.budget_usd = None
        rest = run_judge(sample_store, cfg)
    assert rest.judged == summary.pending and len(_rows(sample_store)) == 12


def test_leakage_by_group(sample_store):
    ids = _add_chains(sample_store)
    with ChatServer(Judge()) as server:
        summary = run_judge(sample_store, _cfg(server, kind="leakage", limit=100))
        # the judge sees no post, no image and no Prediction
        for req in server.requests:
            text = prompt_text(req["body"])
            assert not has_image(req["body"]) and "Prediction" not in text and "Text:" not in text
    assert summary.judged == sum(len(v) for v in ids.values())
    gold = {s["id"]: s["label"] for s in sample_store.samples("t15", "train")}
    stage1_neutral = sum(1 for c in sample_store.reasonings(dataset="t15", stage="predict") if gold[c["sample_id"]]
                         == "neutral")
    table = {r["group"]: r for r in judge_report(sample_store, "t15")["leakage"]}
    assert [r["group"] for r in judge_report(sample_store, "t15")["leakage"]] == ["stage1", "stage2", "student"]
    # stage 2 names its gold label: always given away; stage 1 hedges (the judge says neutral); the student names
    # the other label: never
    assert table["stage2"]["rate"] == 1.0 and table["stage2"]["judged"] == len(ids["stage2"])
    assert table["stage1"]["leaked"] == stage1_neutral and table["student"]["leaked"] == 0


def test_agreement_with_ratings_matches_scipy_and_sklearn(sample_store):
    ids = _add_chains(sample_store)
    scores = [5, 4, 2, 1, 3, 5, 2, 4]
    people = [(5, 4), (4, 4), (2, 3), (1, 1), (4, 4), (3, 3), (1, 2), (5, 5)]
    plan = {f"{i}-stage1": [Reply(text=_answer(sc))] for i, sc in enumerate(scores)}
    with ChatServer(Judge(plan)) as server:
        run_judge(sample_store, _cfg(server, source="stage1"))
    for chain_id, (f, u) in zip(ids["stage1"], people, strict=False):
        sample_store.add_rating(chain_id, faithfulness=f, usefulness=u)
    result = judge_report(sample_store, "t15")["agreement"]
    assert len(result) == 1 and result[0]["n"] == 8 and result[0]["judge"] == "judge-m"
    means = [(f + u) / 2 for f, u in people]
    rho = spearmanr(scores, means).statistic
    kappa = cohen_kappa_score([s >= GOOD_AT for s in scores], [m >= GOOD_AT for m in means])
    assert result[0]["spearman"] == pytest.approx(rho, abs=1e-4) and result[0]["kappa"] == pytest.approx(kappa, 1e-4)
    assert 0.5 < rho < 1 and 0 < kappa < 1
    assert agreement([(4, 4)])["spearman"] is None and agreement([(4, 4), (4, 2)])["spearman"] is None


def test_pairs_by_judge_score(sample_store):
    ids = _add_chains(sample_store, n=3)  # post 0 has a stage-1 and a stage-2 chain (both D_t) and a student chain
    plan = {"0-stage1": [Reply(text=_answer(5))], "0-stage2": [Reply(text=_answer(2))],
            "0-student": [Reply(text=_answer(4))]}
    with ChatServer(Judge(plan)) as server:
        run_judge(sample_store, _cfg(server))
    pairs = build_pairs(sample_store, "t15", sources="judge")
    assert [(p.source, p.reason, p.chosen_id, p.rejected_id) for p in pairs.pairs] == [
        ("judge", "judged", ids["stage1"][0], ids["stage2"][0])]
    # 5 against 2: a pair; the student's 4 is within 1.5 of the 5; the stage-2 chain (2, below 3) is never chosen
    assert build_pairs(sample_store, "t15").counts().keys() == {"teacher", "assistant", "student", "ratings"}


def test_cli_never_stores_the_key_and_reports(tmp_path, monkeypatch):
    db = tmp_path / "k.db"
    from mulcot.datasets import import_dataset
    from mulcot.sample import SAMPLE_DIR

    with Store.open(db) as s:
        import_dataset(s, "twitter-tsv", SAMPLE_DIR, name="t15")
        _add_chains(s, n=4)
    monkeypatch.setenv("MY_JUDGE_KEY", SECRET)
    with ChatServer(Judge()) as server:
        result = CliRunner().invoke(app, ["judge", "t15", "--judge", "gpt-4o-mini", "--base-url", server.base_url,
                                          "--api-key-env", "MY_JUDGE_KEY", "--db", str(db), "--json"])
        assert result.exit_code == 0, result.output
        assert server.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"
    data = json.loads(result.output)
    assert data["summary"]["judged"] == 7 and data["summary"]["cost_usd"] > 0
    assert {r["group"]: r["judged"] for r in data["report"]["rubric"]} == {"stage1": 4, "stage2": 2, "student": 1}
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    report = CliRunner().invoke(app, ["judge", "t15", "--report", "--db", str(db)])
    assert report.exit_code == 0 and "stage2" in report.output and "judge rubric" in report.output


def test_cli_bad_input_changes_nothing(tmp_path):
    db = tmp_path / "b.db"
    from mulcot.datasets import import_dataset
    from mulcot.sample import SAMPLE_DIR

    with Store.open(db) as s:
        import_dataset(s, "twitter-tsv", SAMPLE_DIR, name="t15")
    before = dump(db)
    url = "http://127.0.0.1:9/v1"
    for args, said in ((["nope", "--judge", "m"], "no dataset named 'nope'"),
                       (["t15", "--judge", "m"], "no chains to judge in t15"),
                       (["t15", "--judge", "m", "--source", "humans"], "--source 'humans' is not one of"),
                       (["t15", "--judge", "m", "--split", "val2"], "has no split 'val2'"),
                       (["t15"], "--judge MODEL is required"),
                       (["t15", "--judge", "m", "--price", "cheap"], "--price 'cheap' is not 'INPUT,OUTPUT'")):
        r = CliRunner().invoke(app, ["judge", *args, "--base-url", url, "--db", str(db)])
        assert r.exit_code != 0 and said in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert dump(db) == before


def test_tui_shows_and_filters_by_judge_score(sample_store, tmp_path):
    import asyncio

    from mulcot.tui import ChainBrowser, SampleTable
    from mulcot.tui.filters import FilterPanel

    ids = _add_chains(sample_store, n=6)
    plan = {"1-stage1": [Reply(text=_answer(1, "the conclusion ignores the image"))],
            "2-stage1": [Reply(text=_answer(2))], "3-stage1": [Reply(text=_answer(9))]}  # 3: failed
    with ChatServer(Judge(plan)) as server:
        run_judge(sample_store, _cfg(server, max_retries=0))
    low = sample_store.browse_count(dataset="t15", judge="low")
    assert low == 2 and sample_store.browse_count(dataset="t15", judge="failed") == 1
    # high: posts 0, 4, 5, and 3 (its stage-2 chain scored 4 while its stage-1 chain failed)
    assert sample_store.browse_count(dataset="t15", judge="high") == 4
    assert sample_store.browse_count(dataset="t15", judge="low", source="student") == 0
    first = sample_store.reasonings(dataset="t15")[0]["sample_id"]
    sample_ids = [c["sample_id"] for c in sample_store.reasonings(dataset="t15", stage="predict")]

    async def go():
        app = ChainBrowser(sample_store.path)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            panel = app.query_one(FilterPanel)
            assert panel.names[-1] == "judge" and [v for _, v in panel.options["judge"]][1:] == [
                "high", "mid", "low", "failed"]
            panel.set_value("judge", "low", notify=True)
            await pilot.pause()
            assert app.filters.judge == "low" and app.query_one(SampleTable).row_count == low
            await pilot.pause()
            assert app.detail["sample"]["id"] == sample_ids[1]
            svg = app.export_screenshot()  # what the screen shows, as text
            shown = html.unescape(re.sub(r"<[^>]+>", "", svg)).replace("\xa0", " ")
            assert "judged judge-m · rubric" in shown and "mean 1.00" in shown
            assert shown.index("follows 1/5 — the conclusion") < shown.index("argues 1/5 — the conclusion")
            panel.set_value("judge", None, notify=True)
            await pilot.pause()
            assert app.query_one(SampleTable).row_count == 60  # every post of t15

    asyncio.run(go())
    assert first == sample_ids[0] and len(ids["stage1"]) == 6


def test_eval_summarises_the_verdicts_on_the_chains_it_evaluates(demo_store, tmp_path):
    from mulcot.evaluate import EvalConfig, evaluate
    from mulcot.sample import SAMPLE_NAME

    with ChatServer(Judge()) as server:
        cfg = _cfg(server, split="test", source="teacher")
        cfg.dataset = SAMPLE_NAME
        summary = run_judge(demo_store, cfg)
        cfg.split = "train"  # verdicts on other chains do not count toward the test split's result
        cfg.limit = 3
        run_judge(demo_store, cfg)
    chains = demo_store.reasonings(dataset=SAMPLE_NAME, split="test", source="teacher", final_only=True)
    for c, (f, u) in zip(chains, [(5, 5), (2, 1), (4, 4)], strict=False):
        demo_store.add_rating(c["id"], faithfulness=f, usefulness=u)
    result = evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, source="teacher", runs_dir=str(tmp_path / "r")))
    judge = result.metrics["judge"]
    assert sum(r["judged"] for r in judge["rubric"]) == summary.judged == result.n == len(chains)
    assert all(r["mean"] == 4 for r in judge["rubric"]) and judge["agreement"][0]["n"] == 3
    assert judge["agreement"][0]["spearman"] is None  # the judge gave every chain 4: no ranking to compare
    db = demo_store.path
    out = CliRunner().invoke(app, ["eval", "run", SAMPLE_NAME, "--source", "teacher", "--db", str(db),
                                   "--runs-dir", str(tmp_path / "r2")])
    assert out.exit_code == 0, out.output
    assert "judge rubric" in out.output and "agreement of judge-m with people's ratings on 3 chains" in out.output
