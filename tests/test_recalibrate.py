"""`mulcot eval --calibrate-on SPLIT` (mulcot.evaluate.recalibrate): the label head's bias and temperature fitted on
a tuning split's forced-choice answers, applied unchanged to the evaluated split, compared post by post."""

from __future__ import annotations

import json

import pytest
from conftest import dump
from typer.testing import CliRunner

from mulcot.core.labels import LABELS
from mulcot.evaluate import EvalConfig, evaluate
from mulcot.metrics import classification_metrics
from mulcot.metrics.calibration import apply_label_bias, fit_label_bias
from mulcot.sample import SAMPLE_NAME
from mulcot.store.reasonings import LABEL

runner = CliRunner()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MULCOT_CACHE", str(tmp_path / "cache"))


def _config(model, tmp_path, **kw) -> EvalConfig:
    return EvalConfig(dataset=SAMPLE_NAME, split="test", model=str(model), max_chains=0, max_pixels=56 * 56,
                      write_files=False, runs_dir=str(tmp_path / "runs"), **kw)


def test_the_fit_comes_from_the_tuning_split_and_is_applied_unchanged(demo_store, compact_model, tmp_path):
    model = compact_model()
    res = evaluate(demo_store, _config(model, tmp_path, calibrate_on="dev"))
    r = res.metrics["recalibrated"]
    assert r["on"] == "dev" and r["method"] == "bcts"
    # the fit is the one computed by hand from the dev posts' stored forced-choice answers of this model
    dev_gold = {s["id"]: s["label"] for s in demo_store.samples(SAMPLE_NAME, "dev") if s["label"]}
    answers = {a["sample_id"]: a for a in demo_store.reasonings(dataset=SAMPLE_NAME, split="dev", stage=LABEL,
                                                                final_only=True)}
    assert set(answers) == set(dev_gold) and r["n_fit"] == len(dev_gold)
    ids = sorted(dev_gold)
    fit = fit_label_bias([dev_gold[i] for i in ids], [answers[i]["fields"]["probabilities"] for i in ids])
    assert r["temperature"] == pytest.approx(fit["temperature"]) and r["fit_nll_after"] <= r["fit_nll_before"]
    # ... applied to the test posts' raw probabilities, it gives the per-post rows and the scores
    rows = res.per_sample
    fixed = apply_label_bias([row["label_probabilities"] for row in rows], fit)
    for row, q in zip(rows, fixed, strict=True):
        assert row["recalibrated_probabilities"] == pytest.approx(q)
        assert row["recalibrated_prediction"] == max(LABELS, key=q.__getitem__)
    gold = [row["gold"] for row in rows]
    assert r["label"]["accuracy"] == classification_metrics(gold, [row["recalibrated_prediction"] for row in rows])[
        "accuracy"]
    pair = r["vs_label_head"]
    assert pair["n"] == res.n == len(rows)
    changed = sum(row["label_prediction"] != row["recalibrated_prediction"] for row in rows)
    assert pair["agreement"] == pytest.approx(1 - changed / len(rows))
    assert r["vs_majority"]["label"] == res.metrics["uncertainty"]["majority"]["label"]
    # the raw label head is reported as it was: the same headline as without --calibrate-on
    plain = evaluate(demo_store, _config(model, tmp_path))
    assert plain.metrics["headline"] == res.metrics["headline"] and "recalibrated" not in plain.metrics
    assert plain.metrics["generated"]["labels_generated"] == 0  # the test answers were stored the first time
    # a second recalibrated evaluation asks the model nothing again, dev included
    again = evaluate(demo_store, _config(model, tmp_path, calibrate_on="dev"))
    assert again.metrics["recalibrated"]["temperature"] == pytest.approx(r["temperature"])
    assert again.metrics["generated"]["labels_generated"] == 0

    # as a row of `mulcot run`'s table, beside the model's own
    from mulcot.evaluate.recalibrate import recalibrated_row

    row = recalibrated_row("student", res.metrics)
    assert row["subject"] == "student recalibrated on dev" and row["accuracy"] == r["label"]["accuracy"]
    assert row["vs_majority"]["mcnemar_p"] == r["vs_majority"]["mcnemar"]["p_value"]


def test_a_recipe_asks_for_it_and_keeps_its_hashes_without_it():
    from pathlib import Path

    from mulcot.pipeline.recipes import load_recipe, parse_recipe

    base = load_recipe("@tiny-cpu")
    text = Path(base.source).read_text()
    assert base.eval.calibrate_on is None
    with_it = parse_recipe(text.replace("[eval]", '[eval]\ncalibrate_on = "dev"', 1), "r.toml")
    assert with_it.eval.calibrate_on == "dev"
    assert with_it.stage_hash("distill") == base.stage_hash("distill")
    assert with_it.stage_hash("eval") != base.stage_hash("eval")


def test_the_cli_shows_it_and_refuses_what_cannot_be_recalibrated(demo_store, compact_model, tmp_path):
    from mulcot.cli import app

    model, db = str(compact_model()), str(demo_store.path)
    common = ["eval", SAMPLE_NAME, "--model", model, "--db", db, "--max-chains", "0", "--max-pixels", "3136",
              "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    result = runner.invoke(app, [*common, "--calibrate-on", "dev"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "recalibrated on dev (bias-corrected temperature scaling, n=12" in text
    assert "recalibrated − the raw label head: Acc" in text and "recalibrated − majority: Acc" in text
    per_sample = [json.loads(line) for line in (tmp_path / "out" / "per_sample.jsonl").read_text().splitlines()]
    assert all(row["recalibrated_prediction"] in LABELS for row in per_sample)

    before = dump(demo_store)
    for extra, message in (
        (["--calibrate-on", "test"], "--calibrate-on test is the evaluated split itself"),
        (["--calibrate-on", "tune"], "has no split 'tune'"),
        (["--calibrate-on", "dev", "--label-scoring", "generate"], "--calibrate-on fits the label head's"),
    ):
        result = runner.invoke(app, [*common, *extra])
        assert result.exit_code != 0 and message in " ".join(result.output.split()), result.output
        assert "Traceback" not in result.output
    result = runner.invoke(app, ["eval", SAMPLE_NAME, "--source", "teacher", "--db", db, "--calibrate-on", "dev"])
    assert result.exit_code != 0 and "--calibrate-on fits the label head's" in " ".join(result.output.split())
    assert dump(demo_store) == before
