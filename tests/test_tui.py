"""`mulcot tui`: the store's browsing and rating methods, the app driven by Textual's Pilot, snapshots at 80×24 and
160×48, and the real app in tmux on the embedded sample."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from helpers import wait_until

from mulcot.core.labels import LABELS
from mulcot.core.reasoning import Reasoning
from mulcot.datasets.writers import export_ratings
from mulcot.errors import NotFoundError, StoreError
from mulcot.pipeline.demo import run_demo
from mulcot.sample import SAMPLE_NAME
from mulcot.store import Store
from mulcot.store import migrations as store_migrations
from mulcot.tui import ChainBrowser, Filters, SampleTable

NASTY = ["'", '"', "%", ";--", "*", "NEAR(", "a' OR 1=1; --", '"unclosed', "x AND", "(", "^a", "text:foo", "-", "\\"]


def _chain(sample: dict, source: str, stage: str, prediction: str | None, **extra) -> dict:
    words = extra.pop("words", "")
    r = Reasoning(
        f"The text about {sample['aspect']} reads {prediction or 'unclear'}.{words}",
        "The image shows the scene.",
        "No conflict between text and image.",
        f"Overall {prediction or 'unclear'}.",
        prediction or "neutral",
    )
    text = r.to_text() if prediction else "I cannot decide."
    row = {
        "sample_id": sample["id"], "source": source, "model": f"{source}-model", "stage": stage, "raw": text,
        "text": text, "fields": r.as_dict() if prediction else {}, "prediction": prediction,
        "parse_status": "full" if prediction else "none", "valid": prediction is not None, "attempt": 1,
        "final": True, "origin": "test",
    }
    row.update(extra)
    return row


def build_store(path: Path) -> Path:
    """The embedded sample with its teacher chains, plus deterministic assistant and student chains (right, wrong,
    failed), teacher retries with tokens and costs, and a few words to search for."""
    with Store.open(path) as store:
        run_demo(store)
        rows = []
        for i, s in enumerate(store.samples(SAMPLE_NAME)):
            gold = s["label"]
            wrong = LABELS[(LABELS.index(gold) + 1) % 3]
            if s["split"] == "train":
                rows.append(_chain(s, "assistant", "expand", gold, run_id="expand-1"))
            student = None if i % 10 == 7 else (wrong if i % 3 == 0 else gold)
            words = {0: " zygote", 1: ' qwerty\'s "xyzzy" 4711% done'}.get(i, "")
            rows.append(_chain(s, "student", "predict", student, run_id="eval-1", words=words,
                               error=None if student else "output missing Prediction"))
            if i % 12 == 5:
                common = {"model": "gpt-4o-mini", "prompt_version": "p1", "run_id": "annot-1"}
                rows.append(_chain(s, "teacher", "predict", None, attempt=1, final=False, tokens_in=900,
                                   tokens_out=150, cost_usd=0.0004, latency_s=3.1,
                                   error="output missing Prediction", **common))
                rows.append(_chain(s, "teacher", "predict", gold, attempt=2, final=True, tokens_in=900,
                                   tokens_out=210, cost_usd=0.0005, latency_s=2.9, **common))
        store.add_reasonings(rows)
    return path


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("tui") / "mulcot.db")


@pytest.fixture
def db(demo_db: Path, tmp_path: Path) -> Path:
    """A private copy of the demo store (for tests that write ratings)."""
    target = tmp_path / "mulcot.db"
    shutil.copy(demo_db, target)
    return target


def run(coro):
    return asyncio.run(coro)


# ------------------------------------------------------------------------------------------- store: browsing


def test_fts_query_quotes_every_word():
    assert Store.fts_query("parks rec") == '"parks" "rec"*'
    assert Store.fts_query('say "hi" NEAR(') == '"say" "hi" "NEAR("*'
    assert Store.fts_query("it's") == '"it\'s"*'
    for text in ("", "   ", "%", ";--", "*", "'", '"', "( )", "-", "\x00"):
        assert Store.fts_query(text) is None


def test_search_operators_parse_to_fts5():
    from mulcot.store.browse import SearchSyntaxError, parse_search

    assert Store.fts_query("cat OR dog") == '("cat" OR "dog"*)'
    assert Store.fts_query('"a phrase" OR b c') == '("a phrase" OR "b") "c"*'
    assert Store.fts_query("cat -dog") == Store.fts_query("cat NOT dog") == '("cat") NOT ("dog")'
    assert Store.fts_query('cat -"two words"') == '("cat") NOT ("two words")'
    assert parse_search("-zygote").exclude == '"zygote"' and parse_search("-zygote").match is None
    assert Store.fts_query("zyg\x00ote") == '"zygote"*'  # a NUL is dropped, not an SQLite error
    assert parse_search("21").key == "21" and parse_search("21 x").key is None
    for bad, hint in (("OR cat", "on each side"), ("cat OR", "on each side"), ("cat OR OR dog", "on each side"),
                      ("-cat OR dog", "not excluded ones")):
        with pytest.raises(SearchSyntaxError, match=hint):
            parse_search(bad)


def test_search_operators_find_what_they_say(demo_db):
    with Store.open(demo_db) as s:
        def keys(query: str) -> set[str]:
            return {r["key"] for r in s.browse_page(limit=1000, search=query)}

        swanson, zygote, xyzzy = keys("Swanson"), keys("zygote"), keys("xyzzy")
        assert len(xyzzy) == len(zygote) == 1 and xyzzy != zygote
        assert keys("zygote OR xyzzy") == keys('xyzzy OR "zygote"') == zygote | xyzzy
        assert keys("-zygote") == keys("") - zygote and len(keys("-zygote")) == 59
        parks = keys("Parks")
        assert zygote <= parks and keys("Parks -zygote") == parks - zygote
        assert keys('"Ron Swanson"') == swanson and keys('"Swanson Ron"') == set()
        assert keys("zygote\x00") == zygote
        assert s.browse_count(search="-zygote") == 59 and s.browse_count(search="zygote OR xyzzy") == 2


def test_search_by_sample_id(demo_db):
    with Store.open(demo_db) as s:
        samples = s.samples(SAMPLE_NAME)
        # an id that is no word of any text or chain: only the id finds its sample
        sample = next(x for x in samples if s.browse_count(search=f'"{x["key"]}"') == 0)
        found = s.browse_page(limit=1000, search=sample["key"])
        assert [r["key"] for r in found] == [sample["key"]]
        assert s.browse_count(search=sample["key"]) == 1
        assert s.browse_count(search=sample["key"], dataset=SAMPLE_NAME, split=sample["split"]) == 1
        other = next(sp for sp in ("train", "dev", "test") if sp != sample["split"])
        assert s.browse_count(search=sample["key"], split=other) == 0


def test_browse_filters_count_and_agree_with_pages(demo_db):
    with Store.open(demo_db) as s:
        ds = {"dataset": SAMPLE_NAME}
        assert s.browse_count(**ds) == 60
        assert s.browse_count(**ds, split="train") == 36
        assert s.browse_count(**ds, gold="positive") == 20
        assert s.browse_count(**ds, source="assistant") == 36
        assert s.browse_count(**ds, stage="expand") == 36
        assert s.browse_count(**ds, run_id="annot-1") == 5
        students = s.reasonings(dataset=SAMPLE_NAME, source="student")
        failed = [c for c in students if c["prediction"] is None]
        wrong = [c for c in students if c["prediction"] and c["prediction"] != c["gold"]]
        assert s.browse_count(**ds, source="student", outcome="failed") == len(failed) == 6
        assert s.browse_count(**ds, source="student", outcome="wrong") == len(wrong)
        assert s.browse_count(**ds, source="student", outcome="correct") == 60 - len(failed) - len(wrong)
        # two of the authors' released explanations do not end on the gold label
        teacher_wrong = {c["sample_id"] for c in s.reasonings(source="teacher", final_only=True)
                         if c["prediction"] and c["prediction"] != c["gold"]}
        assert s.browse_count(**ds, source="teacher", outcome="wrong") == len(teacher_wrong) == 2
        assert s.browse_count(**ds, source="student", predicted="negative") == sum(
            c["prediction"] == "negative" for c in students
        )
        for filters in ({"gold": "neutral", "source": "student", "outcome": "wrong"}, {"search": "the"}, {}):
            assert len(s.browse_page(limit=1000, **ds, **filters)) == s.browse_count(**ds, **filters)
        with pytest.raises(StoreError, match="unknown outcome"):
            s.browse_count(outcome="maybe")


def test_browse_page_marks_and_paging(demo_db):
    with Store.open(demo_db) as s:
        everything = s.browse_page(limit=1000)
        ids = [r["id"] for r in everything]
        assert ids == sorted(ids) and len(ids) == 60
        first = everything[0]
        assert first["marks"]["teacher"]["outcome"] == "correct"
        assert first["marks"]["student"] == {"outcome": "wrong", "prediction": first["marks"]["student"]["prediction"],
                                             "chains": 1}
        assert s.browse_page(limit=7, offset=10) == everything[10:17]
        assert s.browse_page(limit=7, after_id=ids[9]) == everything[10:17]
        assert s.browse_page(limit=7, before_id=ids[17]) == everything[10:17]
        assert s.browse_page(limit=7, from_end=True) == everything[-7:]
        assert s.browse_page(limit=7, offset=3, from_end=True) == everything[-10:-3]
        search = s.browse_page(limit=5, search="the", from_end=True)
        assert [r["id"] for r in search] == [r["id"] for r in s.browse_page(limit=1000, search="the")][-5:]


@pytest.mark.parametrize("query", NASTY)
def test_search_survives_sql_and_fts_metacharacters(demo_db, query):
    with Store.open(demo_db) as s:
        n = s.browse_count(search=query)
        assert n == len(s.browse_page(limit=1000, search=query))
        assert s.db.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 60  # nothing was injected


def test_search_finds_text_aspect_and_chains(demo_db):
    with Store.open(demo_db) as s:
        assert [r["key"] for r in s.browse_page(search="zygote")] == ["21"]  # a student chain
        assert [r["key"] for r in s.browse_page(search="Parks and Recreation")] == ["21"]  # text and aspect
        assert len(s.browse_page(search="Ron Swanson")) == 1  # the teacher's chain
        assert len(s.browse_page(search="zyg")) == 1  # the last word is a prefix
        assert len(s.browse_page(search="qwerty's")) == 1 and len(s.browse_page(search='"xyzzy"')) == 1
        assert len(s.browse_page(search="4711%")) == 1
        assert s.browse_count(search="zygote", source="teacher", outcome="wrong") == 0


def test_search_index_follows_writes(tmp_path):
    with Store.open(tmp_path / "m.db") as s:
        run_demo(s)
        sample = s.samples(SAMPLE_NAME)[5]
        assert s.browse_count(search="quixotic") == 0
        rid = s.add_reasoning(**_chain(sample, "student", "predict", "neutral", words=" quixotic"))
        assert [r["id"] for r in s.browse_page(search="quixotic")] == [sample["id"]]
        with s.transaction():
            s.db.execute("UPDATE reasonings SET raw = 'plain', text = 'plain' WHERE id = ?", [rid])
        assert s.browse_count(search="quixotic") == 0
        with s.transaction():
            s.db.execute("DELETE FROM reasonings WHERE id = ?", [rid])
            s.db.execute("UPDATE samples SET text = 'a serendipitous post' WHERE id = ?", [sample["id"]])
        assert s.browse_count(search="plain") == 0
        assert [r["id"] for r in s.browse_page(search="serendipitous")] == [sample["id"]]
        # the sample's remaining chains (the teacher's) are still indexed after its text changed
        teacher = s.reasonings(sample_id=sample["id"], source="teacher")[0]["raw"].split()[3].strip('",.')
        assert s.browse_count(search=teacher) >= 1
        assert s.db.execute("INSERT INTO samples_fts(samples_fts) VALUES ('integrity-check')") is not None


def test_browse_sample_groups_retries(demo_db):
    with Store.open(demo_db) as s:
        sid = s.browse_page(limit=1000, run_id="annot-1")[0]["id"]
        detail = s.browse_sample(sid)
        assert [(c["source"], c["stage"]) for c in detail["chains"]][0][0] == "teacher"
        retried = next(c for c in detail["chains"] if c["model"] == "gpt-4o-mini")
        assert [a["attempt"] for a in retried["attempts"]] == [1, 2] and retried["attempt"] == 2
        assert retried["attempts"][0]["error"] == "output missing Prediction"
        assert (retried["total_tokens_in"], retried["total_tokens_out"]) == (1800, 360)
        assert retried["total_cost_usd"] == pytest.approx(0.0009)
        assert retried["fields"]["Prediction"] == detail["sample"]["label"]
        assert s.browse_choices() == {"sources": ["teacher", "assistant", "student"],
                                      "stages": ["predict", "explain", "expand"],
                                      "runs": ["annot-1", "eval-1", "expand-1"], "judge": []}
        tree = s.browse_tree()
        assert [(d["name"], d["samples"]) for d in tree] == [(SAMPLE_NAME, 60)]
        assert [(sp["split"], sp["samples"]) for sp in tree[0]["splits"]] == [("train", 36), ("dev", 12), ("test", 12)]
        assert tree[0]["chains"] == s.db.execute("SELECT COUNT(*) FROM reasonings").fetchone()[0]


# -------------------------------------------------------------------------------------------- store: ratings


def test_wrong_expansion_chain_is_wrong_not_failed(tmp_path):
    """A parsed expansion chain with another label than the gold one is *wrong* (as a wrong teacher prediction is),
    in the table's marks, the outcome filter and the detail view; only an unparsed one is *failed*."""
    from mulcot.core.chains import chain_row
    from mulcot.tui.detail import chain_outcome

    with Store.open(tmp_path / "m.db") as s:
        run_demo(s)
        first, second = s.samples(SAMPLE_NAME, "train")[:2]
        other = LABELS[(LABELS.index(first["label"]) + 1) % 3]
        wrong = Reasoning("t", "i", "c", "f", other).to_text()
        s.add_reasonings([
            chain_row(sample_id=first["id"], source="assistant", model="base", stage="expand", output=wrong,
                      run_id="asst", origin="expand"),
            chain_row(sample_id=second["id"], source="assistant", model="base", stage="expand", output="no idea",
                      run_id="asst", origin="expand"),
        ])
        marks = {r["id"]: r["marks"]["assistant"]["outcome"] for r in s.browse_page(limit=100, source="assistant")}
        assert marks == {first["id"]: "wrong", second["id"]: "failed"}
        assert s.browse_count(source="assistant", outcome="wrong") == 1
        assert s.browse_count(source="assistant", outcome="failed") == 1
        chain = next(c for c in s.browse_sample(first["id"])["chains"] if c["source"] == "assistant")
        assert chain["valid"] == 1 and chain_outcome(chain) == "wrong"


def test_ratings_store_summary_and_export(db):
    with Store.open(db) as s:
        teacher = s.reasonings(source="teacher")[0]["id"]
        students = [c["id"] for c in s.reasonings(source="student")[:2]]
        s.add_rating(teacher, faithfulness=5, usefulness=4, comment="  solid  ", rater="ann")
        s.add_rating(students[0], faithfulness=2, usefulness=3, rater="ann")
        s.add_rating(students[1], faithfulness=3, usefulness=1, comment="", rater="bob")
        for bad in ({"faithfulness": 0, "usefulness": 3}, {"faithfulness": 3, "usefulness": 6},
                    {"faithfulness": "4", "usefulness": 3}, {"faithfulness": True, "usefulness": 3}):
            with pytest.raises(StoreError, match="from 1 to 5"):
                s.add_rating(teacher, **bad)
        with pytest.raises(NotFoundError):
            s.add_rating(10**9, faithfulness=3, usefulness=3)
        rows = s.ratings()
        assert [(r["source"], r["faithfulness"], r["comment"], r["rater"]) for r in rows] == [
            ("teacher", 5, "solid", "ann"), ("student", 2, None, "ann"), ("student", 3, None, "bob")
        ]
        assert rows[0]["dataset"] == SAMPLE_NAME and rows[0]["gold"] in LABELS
        assert s.ratings(source="student", dataset=SAMPLE_NAME)[1]["rater"] == "bob"
        summary = {r["source"]: r for r in s.rating_summary()}
        assert list(summary) == ["teacher", "student"]
        assert (summary["student"]["ratings"], summary["student"]["faithfulness"]) == (2, 2.5)
        assert summary["student"]["usefulness"] == 2.0 and summary["teacher"]["usefulness"] == 4.0
        buf = io.StringIO()
        assert export_ratings(s, buf, dataset=SAMPLE_NAME) == 3
        first = json.loads(buf.getvalue().splitlines()[0])
        assert first["faithfulness"] == 5 and first["source"] == "teacher" and first["key"]
        assert export_ratings(s, db.parent / "r.csv", fmt="csv") == 3
        assert (db.parent / "r.csv").read_text().splitlines()[0].startswith("id,dataset,split,key,gold")


def test_old_schema_is_migrated_and_indexed(tmp_path, monkeypatch):
    old = tmp_path / "old.db"
    with monkeypatch.context() as m:
        m.setattr(store_migrations, "MIGRATIONS", store_migrations.MIGRATIONS[:1])
        with Store.open(old) as s:
            run_demo(s)
            assert s.applied_migrations() == ["m001_initial"] and "samples_fts" not in s.db.table_names()

    async def go():
        app = ChainBrowser(old)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            assert app.query_one(SampleTable).row_count == 60
            app.apply_filters(search="Ron Swanson")
            await pilot.pause()
            assert app.query_one(SampleTable).row_count == 1
        return app

    run(go())
    with Store(old, migrate=False) as s:
        assert {"m002_browse_search", "m003_ratings"} <= set(s.applied_migrations()) and not s.pending_migrations()


# ---------------------------------------------------------------------------------------------- the app (Pilot)


def _table(app) -> SampleTable:
    return app.query_one(SampleTable)


def _keys(app) -> list[str]:
    t = _table(app)
    return [t.row(i)["key"] for i in range(t.row_count)]


def test_navigation_chains_and_mouse(demo_db):
    async def go():
        app = ChainBrowser(demo_db)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            t = _table(app)
            assert t.row_count == 60 and app.detail["sample"]["key"] == "21"
            await pilot.press("j", "j", "down", "k")
            assert t.cursor_row == 2 and app.detail["sample"]["key"] == _keys(app)[2]
            await pilot.press("G")
            assert t.cursor_row == 59
            await pilot.press("g", "pagedown")
            assert t.cursor_row > 5
            await pilot.press("home")
            chains = app.detail["chains"]
            assert [c["source"] for c in chains] == ["teacher", "assistant", "student"]
            await pilot.press("l")
            assert app.current_chain["source"] == "assistant"
            await pilot.press("l", "l")
            assert app.current_chain["source"] == "teacher"  # wraps
            await pilot.press("h")
            assert app.current_chain["source"] == "student"
            await pilot.press("j")  # the next sample keeps showing the same source's chain
            assert app.current_chain["source"] == "student"
            await pilot.click(SampleTable, offset=(20, 3))  # the header line, then rows 0, 1, 2
            assert t.cursor_row == 2
            await pilot.click("#chain-bar", offset=(3, 0))
            assert app.chain_index == 0
            await pilot.press("f")
            assert not app.query_one("#sidebar").display
            await pilot.press("f", "question_mark")
            assert app.screen.__class__.__name__ == "HelpScreen"
            await pilot.press("escape")
            assert app.screen.__class__.__name__ != "HelpScreen"

    run(go())


def test_each_filter_from_its_widget(demo_db):
    from textual.widgets import Tree

    from mulcot.tui.filters import FilterPanel

    async def go():
        app = ChainBrowser(demo_db)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            panel = app.query_one(FilterPanel)
            with Store.open(demo_db) as s:
                expected = {
                    ("gold", "negative"): s.browse_count(gold="negative"),
                    ("predicted", "neutral"): s.browse_count(predicted="neutral"),
                    ("source", "assistant"): 36,
                    ("source", "run:annot-1"): 5,
                    ("stage", "expand"): 36,
                    ("outcome", "failed"): 6,
                    ("outcome", "wrong"): s.browse_count(outcome="wrong"),
                }
            for (name, value), n in expected.items():
                panel.set_value(name, value, notify=True)
                await pilot.pause()
                assert getattr(app.filters, name) == value
                assert _table(app).row_count == n, (name, value)
                panel.set_value(name, None, notify=True)
                await pilot.pause()
                assert _table(app).row_count == 60
            # the keyboard: to the last row (result) and two steps on: any → correct → wrong
            panel.set_value("source", "student", notify=True)
            panel.focus()
            await pilot.press("down", "down", "down", "down", "right", "right")
            assert app.filters.outcome == "wrong" and app.filters.source == "student"
            with Store.open(demo_db) as s:
                assert _table(app).row_count == s.browse_count(source="student", outcome="wrong")
            await pilot.press("backspace")
            assert app.filters.outcome is None
            # the mouse: a click on a row steps its value on, a click on ◂ steps back
            await pilot.click(FilterPanel, offset=(14, 0))
            assert app.filters.gold == "positive"
            await pilot.click(FilterPanel, offset=(7, 0))
            assert app.filters.gold is None
            await pilot.press("escape", "c")
            assert app.filters == Filters(dataset=SAMPLE_NAME) and _table(app).row_count == 60
            assert all(v is None for v in panel.values.values())
            tree = app.query_one("#datasets", Tree)
            dev = next(n for n in tree.root.children[0].children if n.data[1] == "dev")
            tree.select_node(dev)
            await pilot.pause()
            assert app.filters.split == "dev" and _table(app).row_count == 12
            assert "12 samples" in str(app.query_one("#status").render())

    run(go())


def test_search_typed_with_metacharacters(demo_db):
    async def go():
        app = ChainBrowser(demo_db)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            await pilot.press("slash", *"zygote", "enter")
            assert app.filters.search == "zygote" and _keys(app) == ["21"]
            assert app.focused is _table(app)
            for query in NASTY + ["qwerty's", '"xyzzy"', "4711%"]:
                app.apply_filters(search=query)
                await pilot.pause()
                with Store.open(demo_db) as s:
                    assert _table(app).row_count == s.browse_count(dataset=SAMPLE_NAME, search=query), query
            assert _table(app).row_count == 1  # 4711%
            app.apply_filters(search=";--")
            await pilot.pause()
            assert _table(app).row_count == 0 and app.detail is None
            assert "no sample matches" in str(app.query_one("#status").render())
            # typing without Enter applies after a short pause
            await pilot.press("slash", "ctrl+a", "ctrl+k", *"Swanson")
            await pilot.pause(0.5)
            assert app.filters.search == "Swanson" and _table(app).row_count == 1

    run(go())


def test_rating_is_persisted(db):
    async def go():
        app = ChainBrowser(db, rater="tester")
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            await pilot.press("l", "l")  # the student's chain of the first sample
            chain = app.current_chain
            assert chain["source"] == "student"
            await pilot.press("r")
            assert app.screen.__class__.__name__ == "RatingScreen"
            await pilot.press("ctrl+s")  # nothing chosen yet: refused, the dialog stays
            assert app.screen.__class__.__name__ == "RatingScreen"
            await pilot.press("2", "4", *'wrong label; it\'s "fine"', "enter")
            await pilot.pause()
            assert app.screen.__class__.__name__ != "RatingScreen"
            assert app.current_chain["ratings"][0]["faithfulness"] == 2
            await pilot.press("r")
            await pilot.click("#faith-5")
            await pilot.click("#use-5")
            await pilot.click("#save")
            await pilot.press("r", "escape")  # cancelled: nothing stored
            return chain["id"]

    rid = run(go())
    with Store.open(db) as s:
        rows = s.ratings()
        assert [(r["reasoning_id"], r["faithfulness"], r["usefulness"], r["comment"], r["rater"]) for r in rows] == [
            (rid, 2, 4, 'wrong label; it\'s "fine"', "tester"), (rid, 5, 5, None, "tester")
        ]


def test_rating_dialog_digits_in_the_comment_are_text(db):
    """Scales set with the mouse, then a comment that starts with a digit: the digit is text, no scale changes; the
    dialog shows its keys."""
    from textual.widgets import Input, RadioSet

    async def go():
        app = ChainBrowser(db)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            await pilot.press("r")
            dialog = app.screen
            hints = str(dialog.query_one("#rating-keys").render())
            assert "1–5" in hints and "Esc" in hints and "ctrl+s" in hints
            await pilot.click("#faith-5")
            await pilot.click("#use-4")
            await pilot.press(*"3 stars, 2nd line wrong")
            comment = dialog.query_one("#comment", Input)
            assert comment.value == "3 stars, 2nd line wrong" and dialog.focused is comment
            assert [r.pressed_button.id for r in dialog.query(RadioSet)] == ["faith-5", "use-4"]
            comment.value = ""
            await pilot.press(*"5")  # still in the comment
            assert comment.value == "5" and dialog.focused is comment
            assert [r.pressed_button.id for r in dialog.query(RadioSet)] == ["faith-5", "use-4"]
            await pilot.press("enter")
            await pilot.pause()
            return app.current_chain["ratings"][-1]

    rating = run(go())
    assert (rating["faithfulness"], rating["usefulness"], rating["comment"]) == (5, 4, "5")


def test_search_operators_and_hints_in_the_app(demo_db):
    async def go():
        app = ChainBrowser(demo_db)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            for query, n in (("zygote OR xyzzy", 2), ("-zygote", 59), ('"Ron Swanson"', 1), ("zyg\x00ote", 1)):
                app.apply_filters(search=query)
                await pilot.pause()
                assert _table(app).row_count == n, query
            app.apply_filters(search="zygote OR")
            await pilot.pause()
            status = str(app.query_one("#status").render())
            assert _table(app).row_count == 0 and "search: OR needs a word or phrase on each side" in status
            app.apply_filters(search="zygote")
            await pilot.pause()
            assert _table(app).row_count == 1 and "1 of 1 samples" in str(app.query_one("#status").render())

    run(go())


def test_dataset_column_when_rows_of_several_datasets_are_listed(tmp_path):
    from mulcot.datasets import import_dataset
    from mulcot.sample import SAMPLE_DIR

    path = tmp_path / "two.db"
    with Store.open(path) as s:
        run_demo(s)
        import_dataset(s, "twitter-tsv", SAMPLE_DIR, name="other-copy", split="dev")

    async def go():
        app = ChainBrowser(path)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            table = _table(app)
            assert app.filters.dataset is None and table.row_count == 72
            header, first = table.render_line(0).text, table.render_line(1).text
            assert header.split()[:2] == ["dataset", "id"] and first.startswith(SAMPLE_NAME[:10])
            app.apply_filters(dataset="other-copy")
            await pilot.pause()
            assert table.row_count == 12 and table.render_line(0).text.split()[0] == "id"

    run(go())


def test_empty_and_missing_database(tmp_path):
    async def go(path):
        app = ChainBrowser(path)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            text = str(app.query_one("#empty").render())
            await pilot.press("j", "r", "slash", "q")
        return text

    missing = tmp_path / "nothing.db"
    text = run(go(missing))
    assert "No database at" in text and "mulcot demo --db" in text
    assert not missing.exists()  # not created
    Store.open(tmp_path / "empty.db").close()
    assert "No datasets in" in run(go(tmp_path / "empty.db"))


def test_large_result_pages_and_background_count(demo_db, monkeypatch):
    """With small pages and the count forced into the background: keyset pages while moving, pages from the end on
    a jump, and the exact total once counted."""
    monkeypatch.setattr("mulcot.tui.app.SMALL_STORE", 0)

    async def go():
        app = ChainBrowser(demo_db, page_size=5)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            await app.workers.wait_for_complete()
            await pilot.pause()
            t = _table(app)
            assert t.row_count == 60 and t.count_exact
            with Store.open(demo_db) as s:
                want = [r["key"] for r in s.browse_page(limit=100)]
            await pilot.press("G")
            assert app.detail["sample"]["key"] == want[-1]
            await pilot.press(*"kkkkkkk")  # back across a page boundary: a keyset page before the last one
            assert app.detail["sample"]["key"] == want[-8]
            assert _keys(app) == want
            app.apply_filters(source="student", outcome="correct")
            await pilot.pause()
            assert not t.count_exact or t.row_count > 5
            await pilot.press(*"jjjjjjjjjjjj")  # past the first pages: the list grows while it is being counted
            await app.workers.wait_for_complete()
            await pilot.pause()
            with Store.open(demo_db) as s:
                n = s.browse_count(dataset=SAMPLE_NAME, source="student", outcome="correct")
            assert t.count_exact and t.row_count == n and t.cursor_row == 12

    run(go())


def test_terminal_image_modes(tmp_path):
    from rich.console import Console

    from mulcot.sample import SAMPLE_DIR
    from mulcot.tui.image import TerminalImage

    image = next((SAMPLE_DIR / "images").glob("*.jpg"))
    console = Console(width=60, color_system="truecolor", force_terminal=True, record=True)
    console.print(TerminalImage(image, max_width=30, max_height=6))
    blocks = console.export_text(styles=False).splitlines()
    assert 1 <= len(blocks) <= 6 and all(set(line) <= {"▀"} for line in blocks) and max(map(len, blocks)) <= 30
    console.print(TerminalImage(image, max_width=30, max_height=6, mode="ascii"))
    ascii_lines = console.export_text(styles=False).splitlines()
    assert ascii_lines and all(line.isascii() for line in ascii_lines)
    console.print(TerminalImage(image, mode="none"))
    assert console.export_text() == ""
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    console.print(TerminalImage(bad))
    assert "image unreadable" in console.export_text()


def test_image_mode_auto_falls_back_to_blocks_off_a_terminal():
    from mulcot.tui.image import detect_graphics, resolve_mode

    assert detect_graphics() is None  # pytest's stdout is not a terminal: nobody to answer the query
    assert resolve_mode("auto") == "blocks" and resolve_mode("ascii") == "ascii"
    assert resolve_mode("kitty") == "kitty"


@pytest.mark.parametrize("mode", ["kitty", "sixel"])
def test_graphics_modes_show_the_image_file_through_textual_image(demo_db, mode):
    from textual_image.widget import SixelImage, TGPImage

    from mulcot.tui.image import resolve_mode

    widget = {"kitty": TGPImage, "sixel": SixelImage}[resolve_mode(mode)]

    async def go():
        app = ChainBrowser(demo_db, image_mode=mode)
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.pause()
            gfx = app.query_one("#image-gfx")
            first = app.detail["sample"]["image_path"]
            assert isinstance(gfx, widget) and gfx.image == first and Path(first).is_file()
            assert gfx.display and not app.query_one("#image").display
            assert gfx.size.height == 14 and 0 < gfx.size.width <= 40
            await pilot.press("j")
            await pilot.pause()
            assert gfx.image == app.detail["sample"]["image_path"] != first
            await pilot.press("i")  # hide images
            await pilot.pause()
            assert not gfx.display and gfx.image is None

    run(go())


def test_cli_command_reports_bad_input(tmp_path):
    import typer
    from typer.testing import CliRunner

    from mulcot.cli.tui import tui

    cli = typer.Typer()
    cli.command()(tui)
    result = CliRunner().invoke(cli, ["--image", "jpeg", "--db", str(tmp_path / "x.db")])
    assert result.exit_code != 0 and "--image must be one of" in str(result.exception)
    result = CliRunner().invoke(cli, ["--db", str(tmp_path)])
    assert result.exit_code != 0 and "is a folder" in str(result.exception)


# ------------------------------------------------------------------------------------------------- snapshots


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_snapshot_main_screen(snap_compare, demo_db, size):
    async def before(pilot):
        await pilot.pause()
        await pilot.press("j", "k")  # back on the first sample: its student is wrong, so the sources disagree
        await pilot.pause()

    assert snap_compare(ChainBrowser(demo_db, image_mode="blocks"), terminal_size=size, run_before=before)


# ------------------------------------------------------------------------------------------------------ tmux


def _tmux_command(db: Path) -> str:
    command = f"{sys.executable} -m mulcot tui"
    return f"env -u COLUMNS -u LINES {command} --db {db}"  # the pane's size, not the test runner's


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_real_app_in_tmux(tmp_path):
    db = tmp_path / "demo.db"
    with Store.open(db) as s:
        run_demo(s)
    socket = f"mulcot-test-{uuid.uuid4().hex[:8]}"
    tmux = ["tmux", "-L", socket]

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True).stdout

    def wait_for(*texts: str, timeout: float = 20) -> str:
        def showing() -> str:
            shot = screen()
            return shot if all(text in shot for text in texts) else ""

        shot = wait_until(showing, timeout, interval=0.2)
        assert shot, f"{texts!r} not on screen:\n{screen()}"
        return shot

    def wait_gone(text: str, timeout: float = 10) -> None:
        wait_until(lambda: text not in screen(), timeout, interval=0.2, what=f"{text!r} gone from the screen")

    subprocess.run([*tmux, "new-session", "-d", "-x", "120", "-y", "40", _tmux_command(db)], check=True)
    try:
        wait_for("1 of 60 samples", "twitter2015-sample · train · 21", "gold neutral", "Parks and", "j/k", "q quit")
        subprocess.run([*tmux, "send-keys", "j", "j"], check=True)
        wait_for("3 of 60 samples", "gold negative", "Virginia TV")
        subprocess.run([*tmux, "send-keys", "/", "Swanson", "Enter"], check=True)
        wait_for("search “Swanson”", "1 of 1 samples", "Ron Swanson")
        subprocess.run([*tmux, "send-keys", "?"], check=True)
        wait_for("Marks in the sample list")
        subprocess.run([*tmux, "send-keys", "Escape"], check=True)  # alone: Escape then q would read as alt+q
        wait_gone("Marks in the sample list")
        subprocess.run([*tmux, "send-keys", "q"], check=True)
        wait_gone("mulcot")  # the app quit and its pane closed
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
