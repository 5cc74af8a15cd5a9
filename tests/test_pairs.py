"""Preference pairs from a scripted store: exact counts, one sample per pair, no dev/test chains, ratings respected,
and the TRL / LLaMA-Factory exports (library and CLI)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mulcot.cli import app
from mulcot.core.reasoning import Reasoning
from mulcot.errors import MulcotError
from mulcot.train.pairs import build_pairs, export_pairs


def _sample(key, split, label):
    text = f"post {key}"
    return {"split": split, "key": key, "text": text, "raw_text": text, "aspect": None, "label": label,
            "image_name": None, "image_path": None, "image_sha256": None, "has_image": False}


@pytest.fixture
def scripted(store):
    """Samples a, b, c, e (train), x (dev), y (test) with chains of every kind; returns (store, chain ids)."""
    with store.transaction():
        store.upsert_dataset("d", task="msa", format="jsonl", source="x", images_root=None, has_images=False)
    store.upsert_samples("d", [_sample("a", "train", "positive"), _sample("b", "train", "negative"),
                               _sample("c", "train", "neutral"), _sample("e", "train", "positive"),
                               _sample("x", "dev", "positive"), _sample("y", "test", "negative")])
    sid = {s["key"]: s["id"] for s in store.samples("d")}
    ids = {}

    def chain(name, key, source, stage, prediction, *, valid=True, final=True, raw=None, attempt=None):
        text = Reasoning(f"{name} text", "img", "conf", "concl", prediction).to_text() if valid else None
        ids[name] = store.add_reasoning(
            sample_id=sid[key], source=source, model="m", stage=stage, raw=raw if raw is not None else text,
            text=text, prediction=prediction if valid else None, parse_status="full" if valid else "none",
            final=final, attempt=attempt, run_id="r" if source != "teacher" else None)

    # a: ARC failure then a wrong prediction, explained (D_t); one kept and one rejected expansion; a wrong student
    chain("a_fail", "a", "teacher", "predict", None, valid=False, final=False, raw="I think it is sad", attempt=1)
    chain("a_wrong", "a", "teacher", "predict", "negative", attempt=2)
    chain("a_explain", "a", "teacher", "explain", "positive")
    chain("a_exp_ok", "a", "assistant", "expand", "positive")
    chain("a_exp_bad", "a", "assistant", "expand", "neutral")
    chain("a_student", "a", "student", "eval", "neutral")
    chain("a_label", "a", "student", "label", "neutral")  # a label answer is not a chain: never paired
    # b: a correct prediction rated 5; a correct expansion rated 2 (never chosen, rejected by rating); a wrong
    # student chain rated 4 (a correctness pair, 1 point below: no rating pair)
    chain("b_pred", "b", "teacher", "predict", "negative")
    chain("b_exp_low", "b", "assistant", "expand", "negative")
    chain("b_student", "b", "student", "eval", "positive")
    # c: a correct prediction rated 3; a wrong expansion a person rated higher (4.5): no pair; an error without output
    chain("c_pred", "c", "teacher", "predict", "neutral")
    chain("c_exp_bad", "c", "assistant", "expand", "positive")
    chain("c_error", "c", "teacher", "predict", None, valid=False, final=False, raw="", attempt=1)
    # e: only a wrong chain (nothing to prefer); x (dev) and y (test): correct and wrong chains, never paired
    chain("e_wrong", "e", "teacher", "predict", "negative")
    for key, gold, bad in (("x", "positive", "negative"), ("y", "negative", "positive")):
        chain(f"{key}_pred", key, "teacher", "predict", gold)
        chain(f"{key}_student", key, "student", "eval", bad)
    for name, f, u in (("b_pred", 5, 5), ("b_exp_low", 2, 2), ("b_student", 4, 4), ("c_pred", 3, 3),
                       ("c_exp_bad", 4, 5), ("x_student", 1, 1), ("x_pred", 5, 5)):
        store.add_rating(ids[name], faithfulness=f, usefulness=u)
    return store, ids


def _by(pairs, ids):
    names = {v: k for k, v in ids.items()}
    return sorted((p.source, p.reason, names[p.chosen_id], names[p.rejected_id]) for p in pairs.pairs)


def test_pairs_exact_counts_and_chosen_in_turn(scripted):
    store, ids = scripted
    pairs = build_pairs(store, "d")
    assert _by(pairs, ids) == sorted([
        ("teacher", "failed", "a_explain", "a_fail"),
        ("teacher", "wrong", "a_exp_ok", "a_wrong"),
        ("assistant", "wrong", "a_explain", "a_exp_bad"),
        ("student", "wrong", "a_exp_ok", "a_student"),
        ("student", "wrong", "b_pred", "b_student"),
        ("ratings", "rated", "b_pred", "b_exp_low"),
    ])
    assert pairs.counts() == {
        "teacher": {"positive": 2, "neutral": 0, "negative": 0},
        "assistant": {"positive": 1, "neutral": 0, "negative": 0},
        "student": {"positive": 1, "neutral": 0, "negative": 1},
        "ratings": {"positive": 0, "neutral": 0, "negative": 1},
    }
    summary = pairs.summary()
    assert summary["pairs"] == 6 and summary["samples"] == 2
    assert summary["reasons"] == {"failed": 1, "wrong": 4, "rated": 1}
    # a failed chain is what the model said (raw); a wrong one its canonical five-field text
    fail = next(p for p in pairs.pairs if p.reason == "failed")
    assert fail.rejected == "I think it is sad" and '"Prediction": "positive"' in fail.chosen


def test_pairs_never_cross_samples_or_leave_train(scripted):
    store, ids = scripted
    pairs = build_pairs(store, "d")
    chains = {c["id"]: c for c in store.reasonings(dataset="d")}
    for p in pairs.pairs:
        assert chains[p.chosen_id]["sample_id"] == chains[p.rejected_id]["sample_id"] == p.sample_id
        assert chains[p.chosen_id]["split"] == chains[p.rejected_id]["split"] == "train"
        assert chains[p.rejected_id]["stage"] != "label"
    assert not {ids[k] for k in ids if k[0] in "xy"} & {i for p in pairs.pairs for i in (p.chosen_id, p.rejected_id)}
    for split in ("dev", "test"):
        with pytest.raises(MulcotError, match="evaluation split"):
            build_pairs(store, "d", split)
    with pytest.raises(MulcotError, match="no split 'extra'"):
        build_pairs(store, "d", "extra")


def test_pairs_respect_ratings_and_sources(scripted):
    store, ids = scripted
    pairs = build_pairs(store, "d")
    chosen = {p.chosen_id for p in pairs.pairs}
    assert ids["b_exp_low"] not in chosen  # correct, but a person rated it 2: never chosen
    assert ids["c_exp_bad"] not in {p.rejected_id for p in pairs.pairs}  # a person preferred it to c's chain
    assert _by(build_pairs(store, "d", sources="ratings"), ids) == [("ratings", "rated", "b_pred", "b_exp_low")]
    assert len(build_pairs(store, "d", sources="teacher").pairs) == 2
    assert _by(build_pairs(store, "d", sources="student,assistant"), ids) == sorted([
        ("assistant", "wrong", "a_explain", "a_exp_bad"), ("student", "wrong", "a_exp_ok", "a_student"),
        ("student", "wrong", "b_pred", "b_student"),
    ])
    with pytest.raises(MulcotError, match="--from 'humans'"):
        build_pairs(store, "d", sources="humans")


def test_exports_and_cli(scripted, tmp_path):
    store, _ = scripted
    pairs = build_pairs(store, "d")
    trl = tmp_path / "p.jsonl"
    assert export_pairs(pairs, "trl", trl) == 6
    rows = [json.loads(x) for x in trl.read_text().splitlines()]
    assert len(rows) == 6 and rows[0]["prompt"][0]["role"] == "user" and "post a" in rows[0]["prompt"][0]["content"]
    assert rows[0]["chosen"][0]["role"] == rows[0]["rejected"][0]["role"] == "assistant" and rows[0]["images"] == []
    lf = tmp_path / "p.json"
    assert export_pairs(pairs, "llamafactory", lf) == 6
    data = json.loads(lf.read_text())
    assert data[0]["conversations"][0]["from"] == "human" and set(data[0]["chosen"]) == {"from", "value"}
    runner = CliRunner()
    db = str(store.path)
    r = runner.invoke(app, ["data", "pairs", "d", "--db", db, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["pairs"] == 6
    r = runner.invoke(app, ["data", "pairs", "d", "--db", db, "--from", "teacher"])
    assert r.exit_code == 0 and "2 pairs over 1 samples" in r.stdout
    r = runner.invoke(app, ["data", "pairs", "d", "--db", db, "--format", "trl"])
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 6
    r = runner.invoke(app, ["data", "pairs", "d", "--db", db, "--split", "test"])
    assert r.exit_code == 1 and "evaluation split" in r.output and "Traceback" not in r.output


def test_pairs_of_a_dataset_with_images(demo_store, tmp_path):
    from pathlib import Path

    from mulcot.sample import SAMPLE_NAME

    good = demo_store.teacher_set(SAMPLE_NAME, "train")[0]
    text = Reasoning("t", "i", "c", "f", "negative" if good["gold"] != "negative" else "positive").to_text()
    demo_store.add_reasoning(sample_id=good["sample_id"], source="student", model="s", stage="eval", raw=text,
                             text=text, prediction="negative" if good["gold"] != "negative" else "positive",
                             parse_status="full", final=True, run_id="stud")
    pairs = build_pairs(demo_store, SAMPLE_NAME)
    assert [(p.source, p.chosen_id, p.sample_id) for p in pairs.pairs] == [("student", good["id"], good["sample_id"])]
    export_pairs(pairs, "trl", tmp_path / "p.jsonl")
    row = json.loads((tmp_path / "p.jsonl").read_text())
    assert len(row["images"]) == 1 and Path(row["images"][0]).is_file()
    assert "aspect" in row["prompt"][0]["content"].lower()  # the MASC P_cot, with the sample's aspect
    export_pairs(pairs, "llamafactory", tmp_path / "p.json")
    lf = json.loads((tmp_path / "p.json").read_text())[0]
    assert lf["conversations"][0]["value"].startswith("<image>") and lf["images"] == row["images"]
