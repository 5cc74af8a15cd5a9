"""`mulcot eval compare` post by post (McNemar, paired bootstrap, agreement), per-post export (`--per-post`), and the
metrics of label probabilities carried by label answers (mulcot.evaluate.posts, mulcot.evaluate.run)."""

from __future__ import annotations

import csv
import json
import re

import pytest
from conftest import dump
from typer.testing import CliRunner

from mulcot.core.chains import chain_row
from mulcot.core.labels import LABELS
from mulcot.evaluate import EvalConfig, evaluate
from mulcot.evaluate.posts import post_clusters
from mulcot.metrics.calibration import probability_metrics
from mulcot.metrics.paired import mcnemar_exact, paired_bootstrap
from mulcot.sample import SAMPLE_NAME

runner = CliRunner()


def _run(*args, code: int = 0):
    from mulcot.cli import app

    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MULCOT_CACHE", str(tmp_path / "cache"))


def _other_label(label: str) -> str:
    return LABELS[(LABELS.index(label) + 1) % 3]


def _add_model_chains(store, *, wrong: set[int], only: set[int] | None = None, probabilities: bool = False) -> None:
    """Chains and label answers of a pretend assistant on the demo test split: the teacher's chains with the
    Prediction changed on the ``wrong`` samples (by position); label answers agree with the chains and, when asked,
    carry forced-choice probabilities."""
    teacher = store.reasonings(dataset=SAMPLE_NAME, split="test", source="teacher", final_only=True)
    rows = []
    for pos, t in enumerate(sorted(teacher, key=lambda r: r["sample_id"])):
        if only is not None and pos not in only:
            continue
        label = _other_label(t["gold"]) if pos in wrong else t["gold"]
        text = re.sub(r'"Prediction": "\w+"', f'"Prediction": "{label}"', t["text"])
        common = dict(sample_id=t["sample_id"], source="assistant", model="pretend", run_id=None)
        rows.append(chain_row(stage="eval", output=text, **common))
        answer = chain_row(stage="label", output=f'"Prediction": "{label}"', **common)
        if probabilities:
            p = {lab: 0.1 for lab in LABELS}
            p[label] = 0.8
            answer["fields"] = {**answer["fields"], "probabilities": p}
        rows.append(answer)
    store.add_reasonings(rows)


def test_compare_post_by_post(demo_store, tmp_path):
    runs = str(tmp_path / "runs")
    teacher = evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, source="teacher", runs_dir=runs))
    _add_model_chains(demo_store, wrong={0, 3, 4, 7, 9})
    model = evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, source="assistant", metrics=["bleu"], runs_dir=runs))
    assert model.metrics["headline"]["from"] == "label" and model.metrics["headline"]["accuracy"] == 7 / 12
    posts = demo_store.eval_posts(model.id)
    assert len(posts) == 12 and sum(p["prediction"] == p["gold"] for p in posts) == 7
    assert all(p["label_id"] is not None and p["p_positive"] is None for p in posts)

    data = json.loads(_run("eval", "compare", teacher.id, model.id, "--db", demo_store.path, "--json",
                           "--n-boot", 500, "--seed", 3).stdout)
    assert data[0]["paired"] is None
    paired = data[1]["paired"]
    gold = [p["gold"] for p in posts]
    first = {p["sample_id"]: p["prediction"] for p in demo_store.eval_posts(teacher.id)}
    a = [first[p["sample_id"]] for p in posts]
    b = [p["prediction"] for p in posts]
    assert paired["against"] == teacher.id and paired["n"] == 12 and paired["clusters"] == 12
    assert paired["agreement"] == pytest.approx(7 / 12)
    assert paired["mcnemar"] == mcnemar_exact(gold, a, b).to_dict()
    assert paired["mcnemar"]["a_only"] == 5 and paired["mcnemar"]["p_value"] == pytest.approx(2 / 32)
    boot = paired_bootstrap(gold, a, b, clusters=list(range(12)), n_boot=500, seed=3).to_dict()
    assert paired["bootstrap"] == boot  # JSON keeps floats exactly
    assert paired["bootstrap"]["accuracy"]["diff"] == pytest.approx(-5 / 12)
    text = " ".join(_run("eval", "compare", teacher.id, model.id, "--db", demo_store.path).stdout.split())
    assert "exact McNemar p = 0.0625" in text and "-41.67" in text and "2000 paired bootstrap draws" in text
    # overlapping subsets: only the posts both scored
    five = evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, source="teacher", limit=5, runs_dir=runs))
    data = json.loads(_run("eval", "compare", five.id, model.id, "--db", demo_store.path, "--json").stdout)
    assert data[1]["paired"]["n"] == 5 and data[1]["paired"]["mcnemar"]["a_only"] == 3


def test_compare_refuses_other_post_sets(demo_store, tmp_path):
    runs = str(tmp_path / "runs")
    test = evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, source="teacher", runs_dir=runs))
    dev = evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, split="dev", source="teacher", runs_dir=runs))
    before = dump(demo_store)
    r = _run("eval", "compare", test.id, dev.id, "--db", demo_store.path, code=1)
    assert len(r.output.strip().splitlines()) == 1 and "different posts" in r.output and "--no-paired" in r.output
    assert dump(demo_store) == before
    data = json.loads(_run("eval", "compare", test.id, dev.id, "--no-paired", "--db", demo_store.path,
                           "--json").stdout)
    assert [d["paired"] for d in data] == [None, None]
    # no post in common
    first = evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, source="teacher", limit=5, runs_dir=runs))
    _add_model_chains(demo_store, wrong=set(), only=set(range(5, 12)))
    rest = evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, source="assistant", metrics=["bleu"], runs_dir=runs))
    r = _run("eval", "compare", first.id, rest.id, "--db", demo_store.path, code=1)
    assert len(r.output.strip().splitlines()) == 1 and "share no post" in r.output
    # a result stored without per-post predictions (an older mulcot)
    old = demo_store.add_eval_result(dataset=SAMPLE_NAME, split="test", metrics=test.metrics, n=12, source="teacher")
    r = _run("eval", "compare", test.id, old, "--db", demo_store.path, code=1)
    assert len(r.output.strip().splitlines()) == 1 and f"#{old} has no per-post predictions" in r.output
    r = _run("eval", "compare", test.id, test.id, "--n-boot", 0, "--db", demo_store.path, code=1)
    assert "--n-boot" in r.output


def test_post_clusters():
    samples = [
        {"id": 1, "text": "A meets B", "image_sha256": "x", "has_image": 1},
        {"id": 2, "text": "A meets B", "image_sha256": "x", "has_image": 1},  # another aspect of tweet 1
        {"id": 3, "text": "C", "image_sha256": "y", "has_image": 1},
        {"id": 4, "text": "D", "image_sha256": "y", "has_image": 1},  # same image: linked
        {"id": 5, "text": "D", "image_sha256": None, "image_name": None, "has_image": 0},  # same text: linked
        {"id": 6, "text": "E", "image_sha256": None, "image_name": "e.jpg", "has_image": 1},
        {"id": 7, "text": "F", "image_sha256": "y", "has_image": 0},  # no image: its own post
    ]
    c = post_clusters(samples)
    assert c[1] == c[2] and c[3] == c[4] == c[5]
    assert len({c[1], c[3], c[6], c[7]}) == 4 and sorted(set(c.values())) == [0, 1, 2, 3]


def test_per_post_export(demo_store, tmp_path):
    _add_model_chains(demo_store, wrong={1}, probabilities=True)
    out_csv, out_jsonl = tmp_path / "posts" / "a.csv", tmp_path / "b.jsonl"
    base = ("eval", SAMPLE_NAME, "--split", "test", "--source", "assistant", "--metrics", "bleu", "--db",
            demo_store.path, "--runs-dir", tmp_path / "runs")
    text = _run(*base, "--per-post", out_csv).stdout
    assert "per_post" in text and "ECE" in text and "AUROC" in text
    with out_csv.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["post_id", "dataset", "split", "gold", "prediction", "p_positive", "p_neutral",
                             "p_negative"]
    samples = {s["key"]: s for s in demo_store.samples(SAMPLE_NAME, "test")}
    assert sorted(r["post_id"] for r in rows) == sorted(samples) and {r["split"] for r in rows} == {"test"}
    assert all(r["gold"] == samples[r["post_id"]]["label"] for r in rows)
    assert sum(r["gold"] != r["prediction"] for r in rows) == 1
    assert all(float(r[f"p_{r['prediction']}"]) == 0.8 for r in rows)
    data = json.loads(_run(*base, "--per-post", out_jsonl, "--json").stdout)
    lines = [json.loads(line) for line in out_jsonl.read_text().splitlines()]
    assert len(lines) == 12 and data["files"]["per_post"] == str(out_jsonl)
    # the probabilities' metrics and the reliability diagram
    probs = data["metrics"]["probabilities"]
    gold = [x["gold"] for x in lines]
    expected = probability_metrics(gold, [{lab: x[f"p_{lab}"] for lab in LABELS} for x in lines])
    assert probs == expected and probs["ece"] == pytest.approx(abs(11 / 12 - 0.8))
    assert data["files"]["reliability"].endswith("reliability.png")
    assert json.loads(open(data["files"]["json"]).read())["files"]["reliability"] == data["files"]["reliability"]
    # teacher chains have no probabilities: empty cells
    _run("eval", SAMPLE_NAME, "--split", "test", "--source", "teacher", "--metrics", "bleu", "--db", demo_store.path,
         "--runs-dir", tmp_path / "runs", "--per-post", out_csv)
    with out_csv.open(newline="", encoding="utf-8") as fh:
        assert {r["p_neutral"] for r in csv.DictReader(fh)} == {""}


def test_per_post_bad_file_is_refused_before_evaluating(demo_store, tmp_path):
    before = dump(demo_store)
    for bad in (tmp_path / "posts.txt", tmp_path):
        r = _run("eval", SAMPLE_NAME, "--source", "teacher", "--db", demo_store.path, "--per-post", bad, code=1)
        assert len(r.output.strip().splitlines()) == 1 and ".csv or .jsonl" in r.output
    assert dump(demo_store) == before
