"""Training-time ablations (the paper's Table 6) as recipe switches: what each changes, inputs masked in training and
afterwards (`TrainConfig.inputs`), and a student without an assistant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mulcot.cli import app
from mulcot.core.inputs import TrainItem, mask_items
from mulcot.core.refs import resolve_run
from mulcot.errors import MulcotError
from mulcot.pipeline.recipes import ABLATIONS, PIPELINE_STAGES, RecipeError, ablate, load_recipe, parse_recipe
from mulcot.sample import SAMPLE_NAME
from mulcot.train.config import DistillConfig, TrainConfig

FAST = dict(batch_size=2, grad_accum=1, max_pixels=56 * 56, lr=2e-3, lora_dropout=0.0, dev_split=None, epochs=1,
            max_train_items=4)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MULCOT_CACHE", str(tmp_path / "cache"))


def test_each_ablation_changes_what_its_row_says_and_only_that():
    base = load_recipe("@tiny-cpu")
    rows = {name: ablate(base, name) for name in ABLATIONS}
    assert rows["none"] is base
    assert rows["no-image"].training.inputs == "no-image" and rows["no-text"].training.inputs == "no-text"
    cot = rows["no-cot"]
    assert cot.training.task_weights == [1.0, 0.0] and cot.expand.skip and cot.eval.max_chains == 0
    asst = rows["no-assistant"]
    assert asst.expand.skip and asst.student.lam == 0 and "assistant" not in asst.eval.subjects
    for name, r in rows.items():
        if name == "none":
            continue
        assert r.name == f"tiny-cpu-{name}" and r.ablation == name
        # its own runs: the stages it changes hash differently, the data stages do not
        assert r.stage_hash("import") == base.stage_hash("import")
        assert r.stage_hash("annotate") == base.stage_hash("annotate")
        assert r.stage_hash("distill") != base.stage_hash("distill")
    # the base recipe is untouched, and applying the same ablation twice changes nothing more
    assert base.training.inputs == "all" and base.expand.skip is False and base.student.lam == 0.3
    assert ablate(rows["no-cot"], "no-cot") is rows["no-cot"]
    with pytest.raises(RecipeError, match="one ablation at a time"):
        ablate(rows["no-cot"], "no-image")


def test_an_ablation_in_the_recipe_file_and_bad_names(tmp_path):
    text = Path(load_recipe("@tiny-cpu").source).read_text()
    r = parse_recipe('ablation = "no-text"\n' + text, "r.toml")
    assert r.name == "tiny-cpu-no-text" and r.training.inputs == "no-text"
    with pytest.raises(RecipeError, match="'ablation' is 'no-audio'; allowed: none, no-image"):
        parse_recipe('ablation = "no-audio"\n' + text, "r.toml")
    result = CliRunner().invoke(app, ["run", "@tiny-cpu", "--ablation", "no-audio", "--db", str(tmp_path / "m.db")])
    assert result.exit_code == 2 and "ablation 'no-audio' is not one of none, no-image" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "m.db").exists()


def test_inputs_mask_text_or_image():
    item = TrainItem(1, "Great game by the Bulls", "the Bulls", "positive", "a.jpg", None, caption="a crowd")
    assert mask_items([item], "all") == [item]
    (no_image,) = mask_items([item], "no-image")
    assert (no_image.text, no_image.image_path, no_image.caption) == ("Great game by the Bulls", None, None)
    (no_text,) = mask_items([item], "no-text")
    assert (no_text.text, no_text.image_path, no_text.caption) == ("the Bulls", "a.jpg", "a crowd")
    with pytest.raises(Exception, match="'training.inputs'|inputs"):
        TrainConfig(dataset="d", model="m", name="n", inputs="no-audio")


def test_a_no_image_run_is_shown_no_image_in_training_and_in_eval(demo_store, compact_model, tmp_path):
    from mulcot.evaluate import EvalConfig, evaluate
    from mulcot.train.assistant import train_assistant

    cfg = TrainConfig(dataset=SAMPLE_NAME, model=str(compact_model()), name="blind", runs_dir=str(tmp_path / "runs"),
                      inputs="no-image", **FAST)
    result = train_assistant(demo_store, cfg)
    meta = json.loads((Path(result.folder) / "adapter" / "mulcot.json").read_text())
    assert meta["inputs"] == "no-image" and resolve_run(demo_store, "blind").inputs == "no-image"
    assert demo_store.get_run("blind")["config"]["inputs"] == "no-image"
    assert demo_store.get_run("blind")["config"]["image_input"] == "image"  # the base is a vision model ...
    # ... but eval shows the run its posts as it was trained: no image, so blanking one changes nothing
    res = evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, model="blind", limit=4, max_chains=0,
                                          max_pixels=56 * 56, majority_from="none", write_files=False,
                                          runs_dir=str(tmp_path / "runs"), probes=["image-blank", "text-drop"]))
    probes = {p["name"]: p for p in res.probes}
    assert probes["image-blank"]["inputs_changed"] == 0 and probes["image-blank"]["probability_shift"] < 1e-6
    assert probes["text-drop"]["inputs_changed"] == 4 and probes["text-drop"]["probability_shift"] > 1e-4

    # predict shows it posts the same way: the image a user passes is not shown to it, and the CLI says so
    from mulcot.generation import Post, open_backend
    from mulcot.generation.base import PredictConfig
    from mulcot.predict import predict_dataset, predict_post

    sample = next(s for s in demo_store.samples(SAMPLE_NAME, "test") if s["has_image"])
    backend = open_backend("hf", model="blind", store=demo_store, config=PredictConfig(max_pixels=56 * 56))
    assert backend.inputs == "no-image"
    with_image = Post(text=sample["text"], aspect=sample["aspect"], image=sample["image_path"], caption="a crowd")
    (seen,) = predict_post(backend, with_image, prompts=("label",), label_scoring="choice")
    (text_alone,) = predict_post(backend, Post(text=sample["text"], aspect=sample["aspect"]), prompts=("label",),
                                 label_scoring="choice")
    assert seen.fields == text_alone.fields
    summary = predict_dataset(demo_store, backend, SAMPLE_NAME, "test", limit=2, prompts=("label",),
                              label_scoring="choice")
    assert summary.extra_prompts["label"] == 2
    assert demo_store.get_run(summary.run_id)["config"]["inputs"] == "no-image"
    result = CliRunner().invoke(app, ["predict", "--backend", "hf", "--model", "blind", "--db", str(demo_store.path),
                                      "--text", sample["text"], "--aspect", sample["aspect"] or "", "--image",
                                      sample["image_path"], "--max-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert "trained with --inputs no-image: the post's image is not shown to it" in " ".join(result.output.split())


def test_an_ablated_run_is_followed_by_what_starts_from_it(demo_store, tmp_path):
    """An export of an ablated run records its inputs for predict and eval; DPO rows of it are masked the same."""
    from mulcot.core.gguf import MANIFEST, MANIFEST_FORMAT
    from mulcot.core.refs import trained_inputs
    from mulcot.train.dpo import preference_rows
    from mulcot.train.pairs import Pair, PairSet

    export = tmp_path / "export"
    (export / "hf").mkdir(parents=True)
    (export / "student-f16.gguf").write_bytes(b"GGUF")
    assert trained_inputs(export / "student-f16.gguf") == "all"  # no manifest: nothing says otherwise
    (export / MANIFEST).write_text(json.dumps({"format": MANIFEST_FORMAT, "inputs": "no-text"}))
    assert {trained_inputs(p) for p in (export, export / "hf", export / "student-f16.gguf")} == {"no-text"}
    (export / MANIFEST).write_text(json.dumps({"format": "someone-else/1", "inputs": "no-text"}))
    assert trained_inputs(export) == "all"

    sample = next(s for s in demo_store.samples(SAMPLE_NAME, "train") if s["has_image"])
    sample = {**sample, "meta": {"caption": "a crowd"}}
    pair = Pair(sample_id=sample["id"], key=sample["key"], split="train", gold=sample["label"], source="student",
                reason="wrong", chosen_id=1, chosen="a", rejected_id=2, rejected="b")
    pairs = PairSet(dataset=SAMPLE_NAME, split="train", task="masc", sources=("student",), pairs=[pair],
                    samples={sample["id"]: sample})
    rows = {inputs: preference_rows(pairs, text_only=text_only, max_pixels=56 * 56, inputs=inputs)[0]
            for inputs, text_only in (("all", False), ("no-image", False), ("no-text", True))}
    assert len(rows["all"]["images"]) == 1 and rows["no-image"]["images"] == []
    assert "a crowd" in rows["no-text"]["prompt"][0]["content"]
    assert sample["text"] not in rows["no-text"]["prompt"][0]["content"]


def test_a_student_without_an_assistant_learns_d_t_with_hard_labels(demo_store, compact_model, tmp_path):
    from mulcot.train.student import distill

    with pytest.raises(MulcotError, match="name the trained assistant"):
        DistillConfig(dataset=SAMPLE_NAME, model="m", name="s", lam=0.3)
    with pytest.raises(MulcotError, match="name the trained assistant"):
        DistillConfig(dataset=SAMPLE_NAME, model="m", name="s", lam=0.0)  # D_a needs one too
    cfg = DistillConfig(dataset=SAMPLE_NAME, model=str(compact_model()), name="alone", runs_dir=str(tmp_path / "runs"),
                        lam=0.0, include_expanded=False, **FAST)
    result = distill(demo_store, cfg)
    assert result.steps == 2 and demo_store.get_run("alone")["status"] == "done"
    assert "assistant_sha256" not in demo_store.get_run("alone")["config"]


@pytest.mark.slow
def test_the_no_assistant_row_runs_without_an_assistant(tmp_path):
    db = tmp_path / "m.db"
    result = CliRunner().invoke(app, ["run", "@tiny-cpu", "--ablation", "no-assistant", "--to", "distill",
                                      "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output[result.output.index("{"):])
    stages = [s["stage"] for s in out["stages"]]
    assert stages == [s for s in PIPELINE_STAGES[: PIPELINE_STAGES.index("distill") + 1]
                      if s not in ("train-assistant", "dpo")]
    assert out["recipe"] == "tiny-cpu-no-assistant"
    assert "ablation no-assistant" in out["stages"][stages.index("expand")]["summary"]["note"]
