import sqlite3

import pytest

from mulcot.errors import StoreError
from mulcot.store import MIGRATIONS, Store


def _sample(key, split="train", label="positive", text="t"):
    return {
        "split": split,
        "key": key,
        "text": text,
        "raw_text": text,
        "aspect": None,
        "label": label,
        "image_name": None,
        "image_path": None,
        "image_sha256": None,
        "has_image": False,
    }


def test_new_store_is_migrated_and_wal(tmp_path):
    s = Store.open(tmp_path / "a.db")
    assert s.schema_version == len(MIGRATIONS)
    assert s.pending_migrations() == []
    assert s.db.journal_mode == "wal"
    assert {"datasets", "samples", "reasonings", "runs", "eval_results"} <= set(s.db.table_names())
    assert s.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    s.close()
    assert Store.open(tmp_path / "a.db").migrate() == []


def test_default_path_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MULCOT_DB", str(tmp_path / "env.db"))
    with Store.open() as s:
        assert s.path == tmp_path / "env.db"


def test_newer_schema_refused(tmp_path):
    with Store.open(tmp_path / "a.db") as s:
        s.db.execute("INSERT INTO _mulcot_migrations VALUES ('m999_future', 'x')")
    with pytest.raises(StoreError, match="newer mulcot"):
        Store.open(tmp_path / "a.db")


def test_not_a_database(tmp_path):
    bad = tmp_path / "x.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a mulcot database"):
        Store.open(bad)
    with pytest.raises(StoreError, match="is a folder"):
        Store.open(tmp_path)


def test_upsert_is_idempotent_and_reports_changes(store):
    with store.transaction():
        store.upsert_dataset("d", task="msa", format="jsonl", source="x", images_root=None, has_images=False)
        c = store.upsert_samples("d", [_sample("1"), _sample("2")])
    assert (c.added, c.updated, c.unchanged) == (2, 0, 0)
    with store.transaction():
        c2 = store.upsert_samples("d", [_sample("1"), _sample("2", label="negative"), _sample("3")])
    assert (c2.added, c2.updated, c2.unchanged) == (1, 1, 1)
    assert c2.ids[("train", "1")] == c.ids[("train", "1")]
    assert [s["label"] for s in store.samples("d")] == ["positive", "negative", "positive"]


def test_caption_survives_a_reimport_that_keeps_the_image(store):
    with store.transaction():
        store.upsert_dataset("d", task="msa", format="jsonl", source="x", images_root=None, has_images=True)
        ids = store.upsert_samples("d", [_sample("1"), _sample("2")]).ids
    for key in ("1", "2"):
        store.set_caption(ids[("train", key)], f"a photo for {key}")
    changed_image = {**_sample("2", text="new"), "image_sha256": "ab" * 32}
    with store.transaction():
        c = store.upsert_samples("d", [_sample("1", text="edited text"), changed_image])
    assert c.updated == 2
    first, second = store.samples("d")
    assert first["text"] == "edited text" and first["meta"]["caption"] == "a photo for 1"
    assert "caption" not in second["meta"]  # another image: its old caption no longer describes it


def test_transaction_rolls_back_everything(store):
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.upsert_dataset("d", task="msa", format="jsonl", source="x", images_root=None, has_images=False)
            store.upsert_samples("d", [_sample("1")])
            raise RuntimeError("boom")
    assert store.list_datasets() == []
    assert store.db.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 0


def test_foreign_keys_enforced(store):
    with pytest.raises(sqlite3.IntegrityError):
        store.add_reasoning(sample_id=999, source="teacher", stage="predict", raw="x")


def test_reasonings_runs_and_eval(store):
    with store.transaction():
        store.upsert_dataset("d", task="msa", format="jsonl", source="x", images_root=None, has_images=False)
        ids = store.upsert_samples("d", [_sample("1")]).ids
    sid = ids[("train", "1")]
    rid = store.add_reasoning(
        sample_id=sid,
        source="teacher",
        model="m",
        stage="predict",
        raw="r",
        fields={"Prediction": "positive"},
        prediction="positive",
        parse_status="full",
        valid=True,
        attempt=1,
        final=True,
    )
    chains = store.reasonings(dataset="d", source="teacher")
    assert [c["id"] for c in chains] == [rid]
    assert chains[0]["fields"] == {"Prediction": "positive"} and chains[0]["gold"] == "positive"
    st = store.dataset_stats("d")
    assert st["chains"][0]["correct"] == 1 and st["chains"][0]["full"] == 1
    with pytest.raises(StoreError, match="unknown reasoning columns"):
        store.add_reasoning(sample_id=sid, source="t", stage="p", api_key="sk-x")

    run = store.create_run("r1", kind="train-assistant", dataset="d", config={"lr": 3e-4})
    assert run["status"] == "running" and run["config"] == {"lr": 3e-4}
    store.update_run("r1", status="done", metrics={"acc": 0.5})
    assert store.get_run("r1")["metrics"] == {"acc": 0.5} and store.get_run("r1")["finished_at"]
    with pytest.raises(StoreError, match="already exists"):
        store.create_run("r1", kind="distill")
    store.add_eval_result(dataset="d", split="test", metrics={"acc": 1.0}, n=1, source="teacher")
    assert store.eval_results("d")[0]["metrics"] == {"acc": 1.0}


def test_run_context_records_status_transitions(store):
    with store.run("a", kind="annotate", dataset=None, config={"x": 1}) as run:
        assert store.get_run("a")["status"] == "running"
        run.metrics = {"n": 3}
    assert store.get_run("a")["status"] == "done" and store.get_run("a")["metrics"] == {"n": 3}
    with pytest.raises(KeyboardInterrupt), store.run("a", kind="annotate") as run:
        run.metrics = {"n": 4}
        raise KeyboardInterrupt
    got = store.get_run("a")
    assert got["status"] == "interrupted" and got["metrics"] == {"n": 4} and "run the same command" in got["error"]
    with pytest.raises(ValueError), store.run("a", kind="annotate"):
        raise ValueError("disk full")
    assert store.get_run("a")["status"] == "failed" and store.get_run("a")["error"] == "disk full"
    with store.run("a", kind="annotate") as run:
        run.status = "stopped"
    assert store.get_run("a")["status"] == "stopped" and store.get_run("a")["error"] is None
    with pytest.raises(StoreError, match="already exists as a annotate run"), store.run("a", kind="distill"):
        pass


def test_migration_gives_valid_one_meaning(tmp_path, monkeypatch):
    """A store written before m005 (valid = parsed *and* correct for expansions and explanations, final NULL
    allowed, expansion chains naming the run as model) reads with one meaning after the upgrade."""
    from mulcot.store import migrations

    path = tmp_path / "old.db"
    with monkeypatch.context() as m:
        m.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:4])
        with Store.open(path) as old:
            with old.transaction():
                old.upsert_dataset("d", task="msa", format="jsonl", source="x", images_root=None, has_images=False)
                sid = old.upsert_samples("d", [_sample("1")]).ids[("train", "1")]
            old.create_run("asst", kind="train-assistant", config={"model": "Qwen/Qwen2.5-VL-7B-Instruct"})
            rows = [
                # what expand wrote for a parsed chain with the wrong label, and annotate for a wrong explanation
                ("assistant", "expand", "asst", "negative", "full", 0, 1, "asst"),
                ("teacher", "explain", "gpt", "neutral", "full", 0, 0, None),
                ("teacher", "predict", "gpt", None, "none", 0, 1, None),
                ("teacher", "predict", "gpt", "positive", "full", 1, None, None),
            ]
            for source, stage, model, pred, status, valid, final, run_id in rows:
                old.db.execute(
                    "INSERT INTO reasonings (sample_id, source, model, stage, prediction, parse_status, valid, final,"
                    " run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [sid, source, model, stage, pred, status, valid, final, run_id],
                )
    with Store.open(path) as new:
        assert "m005_valid_means_parsed" in new.applied_migrations()
        got = [(r["source"], r["stage"], r["model"], r["valid"], r["final"]) for r in new.reasonings(dataset="d")]
        assert got == [
            ("assistant", "expand", "Qwen/Qwen2.5-VL-7B-Instruct", 1, 1),
            ("teacher", "explain", "gpt", 1, 0),
            ("teacher", "predict", "gpt", 0, 1),
            ("teacher", "predict", "gpt", 1, 1),
        ]
        marks = new.browse_page(dataset="d")[0]["marks"]
        assert marks["assistant"]["outcome"] == "wrong" and marks["teacher"]["outcome"] == "failed"
        assert [c["sample_id"] for c in new.teacher_set("d")] == [sid]  # the correct prediction, final now
        assert new.assistant_set("d", "train", "asst") == []  # a wrong expansion is valid but not in D_a
