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
