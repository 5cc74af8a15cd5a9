"""`mulcot eval`: stored chains and models evaluated, results compared, files of chains scored (mulcot.evaluate,
mulcot.cli.eval)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mulcot import metrics as M
from mulcot.core.labels import normalize_label
from mulcot.core.prompts import get_prompt
from mulcot.core.reasoning import parse_reasoning
from mulcot.errors import MulcotError
from mulcot.evaluate import EvalConfig, compare_results, evaluate, read_chain_file, select_chains
from mulcot.sample import SAMPLE_NAME

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
AUTHORS = DATA / "mulcot-rd" / "t15-test.json"
T15_IMAGES = DATA / "twitter2015" / "images"
REFERENCE_VALUES = DATA / "metric_reference_values.json"

runner = CliRunner()


def _app():
    """The root app with `eval` registered (a no-op once mulcot/cli/__init__.py registers it)."""
    from mulcot.cli import app
    from mulcot.cli import eval as eval_cli

    if not any(g.name == "eval" for g in app.registered_groups):
        app.add_typer(eval_cli.app, name="eval")
    return app


def _run(*args, code: int = 0):
    result = runner.invoke(_app(), [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Sim embeddings go to a cache folder of the test's own."""
    monkeypatch.setenv("MULCOT_CACHE", str(tmp_path / "cache"))


def _share_correct(rows) -> float:
    return sum(r["prediction"] is not None and r["prediction"] == r["gold"] for r in rows) / len(rows)


# ------------------------------------------------------------------------------------------- stored chains


def test_teacher_on_the_demo_store(demo_store, tmp_path):
    result = evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, source="teacher", runs_dir=str(tmp_path / "runs")))
    chains = demo_store.reasonings(dataset=SAMPLE_NAME, split="test", source="teacher", final_only=True)
    assert result.n == len({c["sample_id"] for c in chains}) == 12
    m = result.metrics
    assert m["chain"]["accuracy"] == _share_correct(chains)
    assert m["headline"]["from"] == "chain" and m["headline"]["f1"] == m["chain"]["macro_f1"]  # MASC: macro-F1
    assert m["label"] is None and m["consistency"] is None  # a teacher has no label head
    reasoning = m["reasoning"]
    assert reasoning["refs"] is None and set(reasoning["headline"]) == {"distinct_1", "distinct_2"}
    folder = tmp_path / "runs" / "eval" / f"{SAMPLE_NAME}-test-teacher"
    assert result.files["json"] == str(folder / "result.json")
    for name in ("result.json", "per_sample.jsonl", "confusion.png"):
        assert (folder / name).is_file(), name
    saved = json.loads((folder / "result.json").read_text())
    assert saved["metrics"]["chain"]["accuracy"] == m["chain"]["accuracy"] and saved["id"] == result.id
    assert len((folder / "per_sample.jsonl").read_text().splitlines()) == 12
    stored = demo_store.eval_results(SAMPLE_NAME)
    assert [(r["id"], r["source"], r["n"]) for r in stored] == [(result.id, "teacher", 12)]


def test_teacher_through_the_cli_table(demo_store, tmp_path):
    out = tmp_path / "out"
    text = _run("eval", SAMPLE_NAME, "--split", "test", "--source", "teacher", "--db", demo_store.path, "--out",
                out).stdout
    flat = " ".join(text.split())
    for word in ("Acc", "m-F1", "Sim", "METEOR", "BLEU", "ROUGE-L", "Dist-1", "Dist-2", "100.00", "All values × 100"):
        assert word in flat, word
    assert "unweighted mean of the three labels' F1" in flat  # the footer defines every metric
    assert "no label head" in flat and (out / "confusion.png").is_file()
    data = json.loads(_run("eval", "--json", SAMPLE_NAME, "--source", "teacher", "--db", demo_store.path, "--out",
                           out).stdout)
    assert data["metrics"]["chain"]["accuracy"] == 1.0 and data["n"] == 12


def test_release_chains_are_labelled_gold_conditioned(demo_store, tmp_path):
    """The release holds only kept chains (correct answers and gold-conditioned explanations): its 100 % is labelled
    as such wherever it is shown; a teacher's own stage-1 chains are scored as predictions. Every eval is a run."""
    from mulcot.core.chains import chain_row

    runs = str(tmp_path / "runs")
    result = evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, source="teacher", runs_dir=runs))
    assert result.metrics["gold_conditioned"] is True
    flat = " ".join(_run("eval", SAMPLE_NAME, "--source", "teacher", "--db", demo_store.path, "--out",
                         tmp_path / "o").stdout.split())
    assert "teacher* 100.00" in flat and "*: gold-conditioned, a release's kept chains" in flat
    for r in demo_store.reasonings(dataset=SAMPLE_NAME, split="test", source="teacher"):
        demo_store.add_reasoning(**chain_row(sample_id=r["sample_id"], source="teacher", model="gpt-4o-mini",
                                             stage="predict", output=r["raw"], run_id="annot", origin="annotate"))
    own = evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, source="annot", runs_dir=runs))
    assert own.metrics["gold_conditioned"] is False and own.subject.model == "gpt-4o-mini"
    recorded = {r["id"]: r for r in demo_store.list_runs(kind="eval")}
    assert recorded[f"eval-annot-{SAMPLE_NAME}-test"]["status"] == "done"
    assert recorded[f"eval-teacher-{SAMPLE_NAME}-test"]["metrics"]["gold_conditioned"] is True


def test_authors_teacher_accuracy(tmp_path):
    """The authors' released teacher chains of the Twitter-2015 test split: accuracy = the share of chains whose
    Prediction equals the gold label (1016/1037)."""
    if not AUTHORS.is_file() or not T15_IMAGES.is_dir():
        pytest.skip(f"the authors' data not found at {AUTHORS}")
    db = tmp_path / "m.db"
    _run("data", "import", "mulcot-json", AUTHORS, "--images", T15_IMAGES, "--db", db, "--json")
    items = json.loads(AUTHORS.read_text(encoding="utf-8"))
    expected = sum(parse_reasoning(x["cot"]).prediction == normalize_label(x["label"]) for x in items)
    assert (expected, len(items)) == (1016, 1037)
    data = json.loads(_run("eval", "t15", "--split", "test", "--source", "teacher", "--db", db, "--json",
                           "--runs-dir", tmp_path / "runs").stdout)
    assert data["n"] == 1037 and data["metrics"]["chain"]["n"] == 1037
    assert data["metrics"]["chain"]["accuracy"] == pytest.approx(1016 / 1037, abs=1e-12)
    assert data["metrics"]["headline"]["accuracy"] == pytest.approx(1016 / 1037, abs=1e-12)
    assert data["metrics"]["f1_reported"] == "macro_f1"
    assert Path(data["files"]["confusion"]).is_file()
    assert data["metrics"]["coverage"]["without_chain"] == 0


def test_chain_choice_is_deterministic():
    rows = [
        {"id": 1, "sample_id": 7, "stage": "predict", "final": 1, "prediction": "neutral", "gold": "positive"},
        {"id": 2, "sample_id": 7, "stage": "explain", "final": 1, "prediction": "positive", "gold": "positive"},
        {"id": 3, "sample_id": 7, "stage": "predict", "final": 0, "prediction": "positive", "gold": "positive"},
        {"id": 4, "sample_id": 7, "stage": "label", "final": 1, "prediction": "positive", "gold": "positive"},
        {"id": 5, "sample_id": 8, "stage": "expand", "final": 1, "prediction": "positive", "gold": "positive"},
        {"id": 6, "sample_id": 8, "stage": "eval", "final": 1, "prediction": "neutral", "gold": "positive"},
        {"id": 9, "sample_id": 8, "stage": "eval", "final": 1, "prediction": "negative", "gold": "positive"},
    ]
    from mulcot.evaluate import select_references

    assert {k: v["id"] for k, v in select_chains(rows).items()} == {7: 1, 8: 9}  # predict before explain; newest
    assert {k: v["id"] for k, v in select_references(rows).items()} == {7: 2, 8: 9}  # D_t-like first


def test_one_models_chains_are_evaluated_never_a_mix(demo_store, tmp_path):
    """A second teacher model that annotated a few samples: the release's chains (all 12 samples) are evaluated,
    and the other model is listed; its chains are evaluated when it covers more samples."""
    test = demo_store.samples(SAMPLE_NAME, "test")
    for s in test[:3]:
        demo_store.add_reasoning(sample_id=s["id"], source="teacher", model="other", stage="predict", final=True,
                                 raw='"Prediction": "neutral"', prediction="neutral")
    runs = str(tmp_path / "runs")
    result = evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, source="teacher", runs_dir=runs))
    groups = result.metrics["chains_from"]["groups"]
    assert [(g["model"], g["samples"], g["chosen"]) for g in groups] == [("mulcot-rd-release", 12, True),
                                                                          ("other", 3, False)]
    assert result.subject.model == "mulcot-rd-release" and result.metrics["chain"]["accuracy"] == 1.0
    limited = evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, source="teacher", limit=3, runs_dir=runs))
    assert limited.subject.model == "other"  # same coverage (3 samples): the newest chains win the tie
    assert limited.metrics["chain"]["accuracy"] == sum(s["label"] == "neutral" for s in test[:3]) / 3


def test_human_ratings_are_reported(demo_store, tmp_path):
    if not hasattr(demo_store, "add_rating") or not hasattr(demo_store, "rating_summary"):
        pytest.skip("this store has no ratings yet")
    chains = demo_store.reasonings(dataset=SAMPLE_NAME, split="test", source="teacher")
    demo_store.add_rating(chains[0]["id"], faithfulness=4, usefulness=2)
    demo_store.add_rating(chains[1]["id"], faithfulness=2, usefulness=5)
    result = evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, source="teacher", runs_dir=str(tmp_path / "r")))
    [row] = result.metrics["ratings"]
    assert (row["source"], row["ratings"], row["faithfulness"], row["usefulness"]) == ("teacher", 2, 3.0, 3.5)
    text = " ".join(_run("eval", SAMPLE_NAME, "--source", "teacher", "--db", demo_store.path, "--runs-dir",
                         tmp_path / "r").stdout.split())
    assert "human ratings" in text and "3.50" in text


def test_meteor_unavailable_without_wordnet(demo_store, tmp_path):
    empty = tmp_path / "no-nltk"
    empty.mkdir()
    args = ("eval", SAMPLE_NAME, "--source", "teacher", "--refs", "teacher", "--metrics", "meteor,bleu,distinct_1",
            "--nltk-data", empty, "--db", demo_store.path, "--runs-dir", tmp_path / "runs")
    data = json.loads(_run(*args, "--json").stdout)
    reasoning = data["metrics"]["reasoning"]
    assert "meteor" in reasoning["unavailable"] and "fix:" in reasoning["unavailable"]["meteor"]
    assert reasoning["headline"]["meteor"] is None and reasoning["headline"]["bleu"] > 0.5
    assert reasoning["pairs"] == 12 and reasoning["missing_refs"] == 0
    result = _run(*args)
    assert "meteor unavailable" in " ".join(result.output.split()) and "BLEU" in result.stdout


def test_missing_references_are_counted(demo_store, tmp_path):
    """Chains without a reference chain are counted and left out of the reference metrics; Distinct covers all."""
    teacher = demo_store.reasonings(dataset=SAMPLE_NAME, split="test", source="teacher")
    for i, r in enumerate(teacher):
        for source in ("student-gguf", "student") if i else ("student-gguf",):  # refs for all samples but one
            demo_store.add_reasoning(sample_id=r["sample_id"], source=source, model="m.gguf", stage="eval",
                                     raw=r["raw"], text=r["text"], prediction=r["prediction"], final=True)
    config = EvalConfig(dataset=SAMPLE_NAME, source="student-gguf", refs="student", metrics=["bleu", "distinct_1"],
                        runs_dir=str(tmp_path / "runs"))
    result = evaluate(demo_store, config)
    reasoning = result.metrics["reasoning"]
    assert (result.n, reasoning["refs"], reasoning["pairs"], reasoning["missing_refs"]) == (12, "student", 11, 1)
    assert reasoning["headline"]["bleu"] > 0.9  # the same texts (raw vs canonical)
    rows = [json.loads(x) for x in Path(result.files["per_sample"]).read_text().splitlines()]
    assert sum(r["bleu"] is None for r in rows) == 1 and all(r["distinct_1"] is not None for r in rows)


def test_bad_settings(demo_store, tmp_path):
    with pytest.raises(MulcotError, match="--model RUN_OR_FOLDER or --source"):
        evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME))
    with pytest.raises(MulcotError, match="no chains from 'student'.*sources with chains there: teacher"):
        evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, source="student"))
    with pytest.raises(MulcotError, match="has no split 'nope'"):
        evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, split="nope", source="teacher"))
    with pytest.raises(MulcotError, match="model folder not found"):
        evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, model=str(tmp_path / "missing" / "model")))
    r = _run("eval", "nope", "--source", "teacher", "--db", demo_store.path, code=1)
    assert "no dataset named 'nope'" in r.output and len(r.output.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------ compare


def test_compare(demo_store, tmp_path):
    runs = str(tmp_path / "runs")
    first = evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, source="teacher", runs_dir=runs))
    second = evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, source="teacher", limit=5, runs_dir=runs))
    # a source alone means its latest result; beside a result named by id, its latest on the same posts
    latest = compare_results(demo_store, ["teacher"])
    assert [r["id"] for r in latest] == [second.id] and latest[0]["picked"]["how"] == "the latest"
    rows = compare_results(demo_store, [str(first.id), "teacher"])
    assert [r["id"] for r in rows] == [first.id, first.id] and [r["n"] for r in rows] == [12, 12]
    assert rows[1]["picked"] == {"spec": "teacher", "results": 2, "how": "the latest on the same posts"}
    # results on different posts (n=12 and n=5): each line says its n, the paired part counts the posts both scored
    r = _run("eval", "compare", first.id, second.id, "--db", demo_store.path)
    assert f"#{first.id} teacher · {SAMPLE_NAME}/test · n=12" in r.stdout and f"#{second.id} teacher" in r.stdout
    assert "n=5" in r.stdout
    third = evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, source="teacher", metrics=["bleu"], runs_dir=runs))
    data = json.loads(_run("eval", "compare", first.id, third.id, "--db", demo_store.path, "--json").stdout)
    assert [d["id"] for d in data] == [first.id, third.id] and data[0]["row"]["accuracy"] == 1.0
    r = _run("eval", "compare", first.id, "teacher", "--db", demo_store.path)
    text = " ".join(r.stdout.split())
    assert f"#{first.id} teacher · {SAMPLE_NAME}/test · n=12" in r.stdout and "m-F1" in text and "Dist-2" in text
    assert f"'teacher' is result #{third.id} (the latest on the same posts of its 3)" in r.output
    r = _run("eval", "compare", "nope", "--db", demo_store.path, code=1)
    assert "no evaluation result for 'nope'" in r.output and "teacher" in r.output
    r = _run("eval", "compare", "#99", "--db", demo_store.path, code=1)
    assert "no evaluation result #99" in r.output
    # no argument: what to pass, in one line; eval list shows every stored result with its n
    r = _run("eval", "compare", "--db", demo_store.path, code=1)
    assert len(r.output.strip().splitlines()) == 1
    assert f"mulcot eval compare {second.id} {third.id}" in r.output and "mulcot eval list" in r.output
    listed = _run("eval", "list", "--db", demo_store.path).stdout.splitlines()
    assert [line.split()[0] for line in listed[:3]] == [f"#{first.id}", f"#{second.id}", f"#{third.id}"]
    assert "n=5" in listed[1] and "n=12" in listed[0] and listed[-1].startswith("compare some with")
    assert [d["n"] for d in json.loads(_run("eval", "list", "--db", demo_store.path, "--json").stdout)] == [12, 5, 12]


# -------------------------------------------------------------------------------------------------- score


def _write_chain_files(tmp_path: Path, preds: list[str], refs: list[str]) -> tuple[Path, Path]:
    p = tmp_path / "preds.jsonl"
    p.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(preds)), encoding="utf-8")
    r = tmp_path / "refs.json"
    r.write_text(json.dumps(refs, indent=1), encoding="utf-8")
    return p, r


PREDS = ['"Text_analysis": "The text praises the team." "Prediction": positive', "A calm street.", "neutral"]
REFS = ['"Text_analysis": "The text praises the team and its win." "Prediction": positive', "A quiet street.",
        "The post is neutral."]


def test_score_files_cheap_metrics(tmp_path):
    p, r = _write_chain_files(tmp_path, PREDS, REFS)
    data = json.loads(_run("eval", "score", p, r, "--metrics", "bleu,rouge-l,distinct_1,distinct_2", "--json").stdout)
    expected = M.reasoning_metrics(PREDS, REFS, metrics=["bleu", "rouge_l", "distinct_1", "distinct_2"])
    assert data["n"] == 3 and data["means"] == pytest.approx(expected.means)
    assert data["per_pair"]["bleu"] == pytest.approx(expected.per_pair["bleu"])
    text = " ".join(_run("eval", "score", p, r, "--metrics", "bleu,rouge_l", "--per-pair").stdout.split())
    assert "BLEU" in text and "ROUGE-L" in text and "per pair" in text and "13a" in text


@pytest.mark.slow
def test_score_files_all_metrics_reference_values(tmp_path):
    if not REFERENCE_VALUES.is_file():
        pytest.skip(f"reference values not found at {REFERENCE_VALUES}")
    ref = json.loads(REFERENCE_VALUES.read_text(encoding="utf-8"))
    p, r = _write_chain_files(tmp_path, ref["preds"], ref["refs"])
    data = json.loads(_run("eval", "score", p, r, "--json").stdout)
    if "meteor" in data["unavailable"]:
        pytest.skip(data["unavailable"]["meteor"])
    assert data["means"]["bleu"] == pytest.approx(ref["bleu_pairwise_mean_13a_nosmooth (MulCoT-RD/HF-evaluate)"])
    assert data["per_pair"]["rouge_l"] == pytest.approx(ref["rougeL_f_pltrdy_rouge_1.0.1_each (MulCoT-RD)"])
    assert data["per_pair"]["meteor"] == pytest.approx(ref["meteor_nltk_treebank_lower_each (MulCoT-RD)"])
    assert data["per_pair"]["sim"] == pytest.approx(ref["sim_all-MiniLM-L6-v2_each"], abs=1e-5)
    d1, d2 = ref["distinct12_per_text_mean (MulCoT-RD)"]
    assert (data["means"]["distinct_1"], data["means"]["distinct_2"]) == pytest.approx((d1, d2))
    assert data["sim_cache"]["embedded"] == 6
    again = json.loads(_run("eval", "score", p, r, "--json", "--metrics", "sim").stdout)
    assert again["sim_cache"]["cached"] == 6 and again["sim_cache"]["embedded"] == 0  # the embedding cache
    assert again["per_pair"]["sim"] == pytest.approx(data["per_pair"]["sim"], abs=1e-6)


def test_score_bad_files(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "a"}\n{"text": "b"}\n')
    cases = {
        "missing.jsonl": (None, "missing.jsonl: file not found"),
        "broken.jsonl": ('{"text": "a"}\n{"text": "b"\n', "broken.jsonl:2: not valid JSON"),
        "nofield.jsonl": ('{"text": "a"}\n{"cot": "b"}\n', "nofield.jsonl:2: no 'text' field (keys: cot)"),
        "notext.jsonl": ('{"text": "a"}\n{"text": 3}\n', "notext.jsonl:2: 'text' is int, not text"),
        "array.json": ('[\n  "a",\n  {"text": "b"},\n  {"x": 1}\n]\n', "array.json:4: no 'text' field"),
        "badarray.json": ('[\n  "a",\n  "b" "c"\n]\n', "badarray.json:3: not valid JSON"),
        "empty.jsonl": ("", "empty.jsonl: empty file"),
        "short.jsonl": ('{"text": "a"}\n', "has 1 chains but"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_text(content)
        r = runner.invoke(_app(), ["eval", "score", str(path), str(good), "--metrics", "bleu"])
        assert r.exit_code in (1, 2), (name, r.output)
        assert message in r.output, (name, r.output)
        assert len(r.output.strip().splitlines()) == 1, (name, r.output)
    assert read_chain_file(good) == ["a", "b"]
    fields = tmp_path / "cot.json"
    fields.write_text(json.dumps([{"cot": "x"}, {"cot": None}]))
    assert read_chain_file(fields, field_name="cot") == ["x", ""]


# ------------------------------------------------------------------------------------------------- routing


def test_eval_group_routing():
    text = _run("eval", "--help").stdout
    assert "compare" in text and "score" in text and "run" in text
    r = runner.invoke(_app(), ["eval"])
    assert "compare" in r.output  # no arguments: the group's help
    assert "--source" in _run("eval", "run", "--help").stdout


# ----------------------------------------------------------------------------------------------- a model


@pytest.mark.slow
def test_model_run_generates_stores_scores_and_resumes(demo_store, compact_model, tmp_path, monkeypatch):
    from mulcot.train import TrainConfig, train_assistant

    runs = tmp_path / "runs"
    cfg = TrainConfig(dataset=SAMPLE_NAME, model=str(compact_model()), name="tiny", runs_dir=str(runs), epochs=1,
                      max_train_items=2, dev_split=None, batch_size=2, grad_accum=1, max_pixels=56 * 56, lr=2e-3,
                      lora_dropout=0.0)
    train_assistant(demo_store, cfg)
    args = ("eval", SAMPLE_NAME, "--split", "test", "--model", runs / "tiny", "--limit", 3, "--max-new-tokens", 8,
            "--label-max-new-tokens", 6, "--batch-size", 2, "--max-pixels", 56 * 56, "--db", demo_store.path,
            "--runs-dir", runs, "--json")
    data = json.loads(_run(*args).stdout)
    assert data["subject"]["source"] == "assistant" and data["run_id"] == "tiny" and data["n"] == 3
    assert data["model"] == str(compact_model())
    m = data["metrics"]
    assert m["generated"] == {"chains_generated": 3, "chains_reused": 0, "labels_generated": 3, "labels_reused": 0}
    chains = demo_store.reasonings(dataset=SAMPLE_NAME, split="test", source="assistant", stage="eval", run_id="tiny")
    labels = demo_store.reasonings(dataset=SAMPLE_NAME, split="test", source="assistant", stage="label", run_id="tiny")
    assert len(chains) == len(labels) == 3
    assert {c["prompt_version"] for c in chains} == {get_prompt("cot", "masc").version}
    assert {c["prompt_version"] for c in labels} == {get_prompt("label", "masc").version}
    assert all(c["final"] == 1 and c["model"] == str(compact_model()) for c in chains + labels)
    assert m["label"]["n"] == 3 and m["chain"]["n"] == 3
    assert m["label"]["accuracy"] == _share_correct(labels) and m["chain"]["accuracy"] == _share_correct(chains)
    assert m["headline"]["from"] == "label" and m["consistency"] is not None and m["consistency_n"] == 3
    reasoning = m["reasoning"]
    assert reasoning["refs"] == "teacher" and reasoning["pairs"] == 3 and reasoning["missing_refs"] == 0
    assert set(reasoning["headline"]) == set(M.REASONING_METRICS)
    folder = runs / "tiny" / "eval" / f"{SAMPLE_NAME}-test"
    assert Path(data["files"]["json"]) == folder / "result.json"
    assert (folder / "result.json").is_file() and (folder / "confusion.png").is_file()

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded although everything was generated already")

    monkeypatch.setattr("mulcot.models.load_model", no_loading)
    again = json.loads(_run(*args).stdout)
    assert again["metrics"]["generated"] == {"chains_generated": 0, "chains_reused": 3, "labels_generated": 0,
                                             "labels_reused": 3}
    assert again["metrics"]["label"]["accuracy"] == m["label"]["accuracy"]
    monkeypatch.undo()
    assert len(demo_store.reasonings(dataset=SAMPLE_NAME, source="assistant")) == 6
    # the stored chains, as a source (with their label answers), and by run id
    stored = evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, source="assistant", metrics=["bleu"],
                                             runs_dir=str(runs)))
    assert stored.n == 3 and stored.metrics["label"]["accuracy"] == m["label"]["accuracy"]
    assert stored.metrics["consistency"] == m["consistency"]
    by_run = evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, source="tiny", metrics=["bleu"], runs_dir=str(runs)))
    assert by_run.subject.source == "assistant" and by_run.metrics["chain"] == stored.metrics["chain"]
    rows = compare_results(demo_store, ["tiny", str(data["id"])])
    assert [r["id"] for r in rows] == [by_run.id, data["id"]]
    # the run's name works too, and a text table is printed
    by_name = ["tiny" if a == runs / "tiny" else a for a in args[:-1]]
    text = " ".join(_run(*by_name).stdout.split())
    assert "tiny" in text and "label prompt (P_label)" in text and "consistency" in text
    # a plain model folder: source "model", no run, results under runs/eval/
    plain = evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, model=str(compact_model()), limit=2, max_new_tokens=4,
                                            label_max_new_tokens=4, max_pixels=56 * 56, metrics=["bleu"],
                                            runs_dir=str(runs)))
    assert (plain.subject.source, plain.subject.run_id, plain.n) == ("model", None, 2)
    assert Path(plain.files["json"]).parent == runs / "eval" / f"{SAMPLE_NAME}-test-model"
    assert len(demo_store.reasonings(dataset=SAMPLE_NAME, source="model")) == 4
    # the same run name with other weights (retrained): nothing the old weights generated is reused
    from safetensors.torch import load_file, save_file

    weights = runs / "tiny" / "adapter" / "adapter_model.safetensors"
    save_file({k: v * 2 for k, v in load_file(weights).items()}, weights)
    fresh = json.loads(_run(*args).stdout)
    assert fresh["metrics"]["generated"] == {"chains_generated": 3, "chains_reused": 0, "labels_generated": 3,
                                             "labels_reused": 0}
