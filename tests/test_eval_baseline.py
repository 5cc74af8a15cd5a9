"""Every evaluation's intervals and its comparison with the majority baseline (mulcot.evaluate.baseline,
mulcot.metrics.paired.score_intervals), in the library, in `mulcot eval` and in its JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_eval_paired import _add_model_chains, _run

from mulcot.core.labels import LABELS
from mulcot.evaluate import EvalConfig, evaluate
from mulcot.evaluate.baseline import majority_label, uncertainty
from mulcot.metrics import classification_metrics
from mulcot.metrics.paired import mcnemar_exact, paired_bootstrap, score_intervals
from mulcot.sample import SAMPLE_NAME


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MULCOT_CACHE", str(tmp_path / "cache"))


def test_score_intervals_bracket_the_observed_scores():
    rng = np.random.default_rng(1)
    gold = [LABELS[i] for i in rng.integers(0, 3, 300)]
    pred = [g if rng.random() < 0.6 else LABELS[int(rng.integers(0, 3))] for g in gold]
    clusters = [i // 2 for i in range(300)]
    got = score_intervals(gold, pred, clusters=clusters, n_boot=400, seed=5)
    scores = classification_metrics(gold, pred)
    assert got["accuracy"]["diff"] == pytest.approx(scores["accuracy"])
    assert got["macro_f1"]["diff"] == pytest.approx(scores["macro_f1"])
    for key in ("accuracy", "macro_f1"):
        assert got[key]["low"] < got[key]["diff"] < got[key]["high"]
        assert got[key]["high"] - got[key]["low"] < 0.2  # 150 tweets: about ±6 points
    assert got["clusters"] == 150 and got["n"] == 300
    # the same draws as the paired bootstrap: model B against one that never answers
    boot = paired_bootstrap(gold, ["-"] * 300, pred, clusters=clusters, n_boot=400, seed=5)
    assert got["accuracy"]["low"] == pytest.approx(boot.accuracy.low)
    assert got["macro_f1"]["high"] == pytest.approx(boot.macro_f1.high)


def test_majority_label_counts_and_ties(sample_store):
    # the embedded sample's train split has 12 posts of each label: ties go to the order of LABELS
    label, counts = majority_label(sample_store, "t15", "train")
    assert counts == {"positive": 12, "neutral": 12, "negative": 12} and label == LABELS[0]
    assert majority_label(sample_store, "t15", "no-such-split") == (None, {})


def test_uncertainty_refuses_a_baseline_from_the_scored_split(sample_store):
    posts = [{"sample_id": s["id"], "gold": s["label"], "prediction": "neutral"}
             for s in sample_store.samples("t15", "test")]
    out = uncertainty(sample_store, "t15", "test", posts, majority_from="test", n_boot=50)
    assert "label" not in out["majority"] and "evaluated split" in out["majority"]["note"]
    out = uncertainty(sample_store, "t15", "test", posts, majority_from="nowhere", n_boot=50)
    assert "has no split 'nowhere'" in out["majority"]["note"]
    out = uncertainty(sample_store, "t15", "test", posts, majority_from="none", n_boot=50)
    assert "label" not in out["majority"]
    out = uncertainty(sample_store, "t15", "test", posts, majority_from="train", n_boot=50)
    assert out["majority"]["label"] == "positive" and out["majority"]["accuracy"] == pytest.approx(4 / 12)


def test_every_evaluation_is_compared_with_the_majority(demo_store, tmp_path):
    _add_model_chains(demo_store, wrong={0, 3, 4})
    result = evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, source="assistant", metrics=["bleu"],
                                             runs_dir=str(tmp_path / "runs")))
    u = result.metrics["uncertainty"]
    assert u["intervals"]["accuracy"]["diff"] == pytest.approx(9 / 12)
    maj = u["majority"]
    assert maj["from_split"] == "train" and maj["label"] == "positive" and maj["accuracy"] == pytest.approx(4 / 12)
    posts = demo_store.eval_posts(result.id)
    gold = [p["gold"] for p in posts]
    assert maj["vs_model"]["mcnemar"] == mcnemar_exact(gold, ["positive"] * 12,
                                                       [p["prediction"] for p in posts]).to_dict()
    assert maj["vs_model"]["bootstrap"]["accuracy"]["diff"] == pytest.approx(9 / 12 - 4 / 12)
    # stored with the result, and shown by the CLI
    data = json.loads(_run("eval", "run", SAMPLE_NAME, "--source", "assistant", "--metrics", "bleu", "--db",
                           demo_store.path, "--runs-dir", tmp_path / "runs", "--json").stdout)
    assert data["metrics"]["uncertainty"]["majority"]["label"] == "positive"
    shown = _run("eval", "run", SAMPLE_NAME, "--source", "assistant", "--metrics", "bleu", "--db", demo_store.path,
                 "--runs-dir", tmp_path / "runs").stdout
    assert "majority baseline (positive for every post" in shown and "this model − majority: Acc +41.67" in shown
    none = _run("eval", "run", SAMPLE_NAME, "--source", "assistant", "--metrics", "bleu", "--db", demo_store.path,
                "--runs-dir", tmp_path / "runs", "--majority-from", "none").stdout
    assert "no majority baseline" in none


def test_max_chains_scores_every_label_and_few_chains(demo_store, compact_model, tmp_path):
    """--max-chains N: chains for the first N posts only, the label head (forced choice) on every post; the
    headline, the intervals and the majority comparison cover every post."""
    common = dict(dataset=SAMPLE_NAME, model=str(compact_model()), limit=4, max_new_tokens=4, max_pixels=56 * 56,
                  metrics=["distinct_1"], runs_dir=str(tmp_path / "runs"))
    few = evaluate(demo_store, EvalConfig(**common, max_chains=1))
    m = few.metrics
    assert few.n == 4 and m["headline"]["from"] == "label" and m["label"]["n"] == 4 and m["chain"]["n"] == 1
    assert m["consistency_n"] == 1 and m["coverage"]["without_chain"] == 3 and m["coverage"]["max_chains"] == 1
    assert m["generated"]["chains_generated"] == 1 and m["generated"]["labels_generated"] == 4
    assert m["uncertainty"]["intervals"]["n"] == 4 and m["uncertainty"]["majority"]["vs_model"]["n"] == 4
    assert len(demo_store.eval_posts(few.id)) == 4
    none = evaluate(demo_store, EvalConfig(**common, max_chains=0))
    assert none.n == 4 and none.metrics["chain"] is None and none.metrics["consistency"] is None
    assert none.metrics["reasoning"]["metrics"] == [] and none.metrics["generated"]["labels_reused"] == 4
    assert none.metrics["headline"]["accuracy"] == m["headline"]["accuracy"]
    with pytest.raises(Exception, match="--max-chains limits the chains a model generates"):
        EvalConfig(dataset=SAMPLE_NAME, source="teacher", max_chains=1)
