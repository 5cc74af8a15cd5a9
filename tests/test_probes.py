"""Modality probes (`mulcot eval --probe`, mulcot.evaluate.probes): the same posts with one input changed, the label
head asked again, compared post by post; a model that cannot see the image shows no image-probe change."""

from __future__ import annotations

import shutil

import pytest
from conftest import dump
from typer.testing import CliRunner

from mulcot.core.inputs import TrainItem, sample_items
from mulcot.evaluate import EvalConfig, evaluate
from mulcot.evaluate.probes import PROBES, parse_probes, perturb, swap_donors
from mulcot.evaluate.select import choose_group, select_chains
from mulcot.store.reasonings import PROBE

runner = CliRunner()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MULCOT_CACHE", str(tmp_path / "cache"))


def _run(*args, code: int = 0):
    from mulcot.cli import app

    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


def _items(n: int, *, same_image_pairs: bool = False) -> list[TrainItem]:
    return [TrainItem(sample_id=i, text=f"post {i} about the Bulls", aspect="the Bulls", label="neutral",
                      image_path=f"img{i // 2 if same_image_pairs else i}.jpg", chain=None, caption=f"caption {i}")
            for i in range(n)]


# ------------------------------------------------------------------------------------------------ pure parts


def test_the_swap_never_gives_a_post_its_own_image_and_is_fixed():
    items = _items(9, same_image_pairs=True)  # posts 0/1, 2/3, … share an image (one tweet, several aspects)
    donors = swap_donors(items)
    assert donors == swap_donors(items)  # fixed
    for i, d in enumerate(donors):
        assert d is not None and items[d].image_path != items[i].image_path
    swapped = perturb(items, "image-swap")
    assert all(a.image_path != b.image_path and a.text == b.text for a, b in zip(items, swapped, strict=True))
    # a post without image or caption is left as it is; with one image in all, nothing can be swapped
    lonely = [TrainItem(0, "t", "a", "neutral", None, None), *_items(1)]
    assert swap_donors(lonely) == [None, None]


def test_text_drop_keeps_the_aspect_and_the_image():
    dropped = perturb(_items(2), "text-drop")
    assert [(d.text, d.image_path, d.caption) for d in dropped] == [
        ("the Bulls", "img0.jpg", "caption 0"), ("the Bulls", "img1.jpg", "caption 1")]


def test_probe_names_are_checked_in_one_line():
    assert parse_probes("all") == list(PROBES)
    assert parse_probes("image-swap, text-drop,image-swap") == ["image-swap", "text-drop"]
    with pytest.raises(Exception, match="unknown probe 'image-flip'"):
        parse_probes("image-flip")
    with pytest.raises(Exception, match="--probe changes what a model is shown"):
        EvalConfig(dataset="d", source="teacher", probes=["text-drop"])


def test_probe_answers_are_never_taken_for_chains():
    rows = [{"id": 1, "sample_id": 5, "stage": PROBE, "final": 1, "source": "student", "model": "m", "run_id": "r"}]
    assert select_chains(rows) == {} and choose_group(rows) == (None, [])


# ------------------------------------------------------------------------------------------------ models


@pytest.fixture(scope="module")
def blind_vl(compact_model, tmp_path_factory):
    """The compact Qwen2.5-VL model and a copy whose vision merger writes zeros: it cannot see any image."""
    import torch
    from transformers import AutoModelForImageTextToText

    seeing = compact_model("qwen2.5-vl")
    blind = tmp_path_factory.mktemp("blind") / "model"
    shutil.copytree(seeing, blind)
    model = AutoModelForImageTextToText.from_pretrained(str(blind))
    last = model.model.visual.merger.mlp[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    model.save_pretrained(str(blind))
    return seeing, blind


def _probe_eval(store, model, tmp_path, probes="all", **more):
    return evaluate(store, EvalConfig(dataset="t15", model=str(model), limit=6, max_chains=0, max_pixels=3136,
                                      majority_from="none", runs_dir=str(tmp_path / "runs"), write_files=False,
                                      probes=parse_probes(probes), **more))


def test_an_image_blind_model_shows_no_image_probe_change_and_a_seeing_one_does(sample_store, blind_vl, tmp_path):
    seeing, blind = blind_vl
    looked = _probe_eval(sample_store, seeing, tmp_path, "image-blank,text-drop")
    probes = {p["name"]: p for p in looked.probes}
    assert set(probes) == {"image-blank", "text-drop"}
    for p in probes.values():
        assert p["n"] == looked.n == 6 and p["inputs_changed"] == 6 and p["answers_generated"] == 6
        assert p["probability_shift"] > 1e-4  # random weights: the answers' probabilities move
        assert p["comparison"]["n"] == 6 and 0 <= p["changed"] <= 1
    cut = {p["name"]: p for p in _probe_eval(sample_store, blind, tmp_path, "image-blank,text-drop").probes}
    assert cut["image-blank"]["probability_shift"] < 1e-6 and cut["image-blank"]["changed"] == 0
    assert cut["image-blank"]["comparison"]["bootstrap"]["accuracy"]["diff"] == 0
    assert cut["text-drop"]["probability_shift"] > 1e-4  # it still reads the text


def test_probes_are_stored_resumed_and_compared(sample_store, compact_model, tmp_path):
    model = compact_model("qwen2.5-vl")
    first = _probe_eval(sample_store, model, tmp_path)
    assert [p["name"] for p in first.probes] == list(PROBES)
    stored = sample_store.reasonings(dataset="t15", stage=PROBE)
    assert len(stored) == 3 * 6 and {r["origin"].split(":")[1] for r in stored} == set(PROBES)
    # the same posts (paired structure): every probe result has the intact result's samples digest
    results = {r["id"]: r for r in sample_store.eval_results("t15")}
    for p in first.probes:
        row = results[p["id"]]
        assert row["config"]["probe"] == p["name"] and row["n"] == first.n
        assert row["config"]["samples_sha256"] == first.config["samples_sha256"]
        assert [q["sample_id"] for q in sample_store.eval_posts(p["id"])] == \
            [q["sample_id"] for q in sample_store.eval_posts(first.id)]
    # again: nothing asked twice, the same numbers
    again = _probe_eval(sample_store, model, tmp_path)
    assert len(sample_store.reasonings(dataset="t15", stage=PROBE)) == 3 * 6
    assert [p["answers_generated"] for p in again.probes] == [0, 0, 0]
    assert [p["changed"] for p in again.probes] == [p["changed"] for p in first.probes]
    # eval list names them; compare takes NAME@PROBE, and a plain name still means the intact result
    db = sample_store.path
    listed = _run("eval", "list", "--db", db).output
    assert "[probe image-swap]" in listed
    out = _run("eval", "compare", str(model), f"{model}@image-swap", "--db", db, "--json").output
    import json

    rows = json.loads(out)
    assert rows[0]["id"] == again.id and rows[1]["config"]["probe"] == "image-swap"
    assert rows[1]["paired"]["n"] == 6


def test_a_text_only_backbone_has_its_caption_blanked_and_swapped(sample_store, tiny_text_model, tmp_path):
    model = tiny_text_model()
    bare = _probe_eval(sample_store, model, tmp_path, "image-blank,image-swap", split="dev")
    assert all(p["inputs_changed"] == 0 and p["probability_shift"] < 1e-6 for p in bare.probes)  # no caption: blind
    for n, it in enumerate(sample_items(sample_store, "t15", "test")):
        sample_store.set_caption(it.sample_id, f"a photo of {n} people holding signs")
    captioned = _probe_eval(sample_store, model, tmp_path, "image-blank,image-swap")
    for p in captioned.probes:
        assert p["inputs_changed"] == 6 and p["probability_shift"] > 1e-4
    # a caption changed: the swap's answers are asked again (the input differs), the blank's are not (same input)
    split = sample_items(sample_store, "t15", "test")
    donor = split[swap_donors(split)[0]]  # whose caption the first post is shown under image-swap
    sample_store.set_caption(donor.sample_id, "a cat")
    again = {p["name"]: p for p in _probe_eval(sample_store, model, tmp_path, "image-blank,image-swap").probes}
    assert again["image-blank"]["answers_generated"] == 0 and 1 <= again["image-swap"]["answers_generated"] <= 2


def test_cli_probe_table_and_bad_input(sample_store, tiny_text_model, tmp_path):
    model = tiny_text_model()
    db = sample_store.path
    common = ["eval", "t15", "--model", model, "--limit", "4", "--max-chains", "0", "--db", db,
              "--runs-dir", tmp_path / "runs", "--majority-from", "none"]
    before = dump(db)
    bad = _run(*common, "--probe", "image-flip", code=2 if False else 1)
    assert "unknown probe 'image-flip'" in bad.output and len(bad.output.strip().splitlines()) == 1
    assert dump(db) == before
    out = _run(*common, "--probe", "text-drop").output
    assert "modality probes" in out and "text-drop" in out and "ΔAcc" in out


def test_an_api_model_is_probed_through_its_endpoint(demo_store, tmp_path):
    """The teacher's question (does its labelling depend on the image?) through an OpenAI-compatible endpoint: a
    scripted server whose answer follows the image it is sent changes its answers when the images are swapped."""
    import hashlib

    from mulcot.annotate.chat_server import ChatServer, Reply, prompt_text
    from mulcot.core.labels import LABELS
    from mulcot.generation.server import ServerConfig

    seen: list[bool] = []

    def by_image(body):
        content = body["messages"][-1]["content"]
        urls = [p["image_url"]["url"] for p in content if isinstance(p, dict) and p.get("type") == "image_url"]
        seen.append(bool(urls))
        assert "Prediction" in prompt_text(body)
        label = LABELS[int(hashlib.sha256(urls[0].encode()).hexdigest(), 16) % 3] if urls else "neutral"
        return Reply(text=f'"Prediction": "{label}"')

    with ChatServer(by_image, model="gpt-4o-mini") as server:
        cfg = EvalConfig(dataset="twitter2015-sample", split="test", model="gpt-4o-mini", label_scoring="generate",
                         max_chains=0, limit=8, majority_from="none", write_files=False,
                         runs_dir=str(tmp_path / "runs"), probes=["image-swap", "text-drop"],
                         server=ServerConfig(url=server.base_url, served_model="gpt-4o-mini", backoff_s=0.01))
        result = evaluate(demo_store, cfg)
    probes = {p["name"]: p for p in result.probes}
    assert all(seen) and len(seen) == 3 * 8  # intact, swap, text-drop: each post sent with an image
    assert probes["image-swap"]["changed"] > 0 and probes["image-swap"]["probability_shift"] is None
    assert probes["text-drop"]["changed"] == 0  # this "model" reads only the image


def test_a_probe_is_a_row_of_the_recipe_table_with_its_difference():
    from mulcot.cli.run import _interval_lines
    from mulcot.evaluate.probes import recipe_row

    probe = {"name": "image-swap", "accuracy": 0.6, "macro_f1": 0.5, "changed": 0.25, "n": 40,
             "comparison": {"bootstrap": {"accuracy": {"diff": -0.05, "low": -0.1, "high": 0.0}},
                            "mcnemar": {"p_value": 0.12}}}
    row = recipe_row("student", probe, {"f1_reported": "macro_f1"})
    assert (row["subject"], row["accuracy"], row["f1"]) == ("student@image-swap", 0.6, 0.5)
    (line,) = _interval_lines([row])[:1]
    assert line.startswith("student@image-swap: − student -5.0 [-10.0, +0.0], answers changed on 25.0%")
