"""Text-only backbones (paper, Appendix G): any HF causal LM with a chat template as assistant or student; the
image becomes its caption, or nothing. Tiny random-weight Qwen2 text model on the compact vocabulary, CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mulcot.core.inputs import teacher_items
from mulcot.errors import ModelError, MulcotError
from mulcot.models import load_model, model_family
from mulcot.models.loading import is_text_family
from mulcot.sample import SAMPLE_NAME
from mulcot.train.collator import IGNORE, TASK_CLS, TASK_REA, MultiTaskCollator
from mulcot.train.config import DistillConfig, TrainConfig

FAST = dict(batch_size=2, grad_accum=1, lr=2e-3, lora_dropout=0.0, dev_max_new_tokens=8, epochs=1,
            max_train_items=4, max_dev_samples=2)


def test_family_and_processor(tiny_text_model) -> None:
    path = tiny_text_model()
    assert model_family(path) == "qwen2" and is_text_family("qwen2") and not is_text_family("qwen2.5-vl")
    model, processor, family = load_model(path)
    assert family == "qwen2" and processor.text_only
    assert processor.answer_marker == "<|im_start|>assistant\n"
    assert processor.tokenizer.convert_ids_to_tokens(processor.end_of_turn_id) == "<|im_end|>"
    with pytest.raises(ModelError, match="text-only model and cannot read images") as err:
        processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}])
    assert "\n" not in str(err.value)


def test_no_chat_template_is_one_line(tiny_text_model) -> None:
    with pytest.raises(ModelError) as err:
        load_model(tiny_text_model(chat_template=False))
    assert "has no chat template" in str(err.value) and "\n" not in str(err.value)


def test_image_becomes_caption_or_nothing(demo_store, tiny_text_model) -> None:
    _, processor, _ = load_model(tiny_text_model())
    items = teacher_items(demo_store, SAMPLE_NAME, "train")[:2]
    assert all(i.image_path for i in items)  # the samples have images: a text backbone must not send them
    demo_store.set_caption(items[0].sample_id, "A crowd  cheers at a stadium.")
    items = teacher_items(demo_store, SAMPLE_NAME, "train")[:2]
    assert items[0].caption == "A crowd  cheers at a stadium." and items[1].caption is None
    collator = MultiTaskCollator(processor, "masc")
    batch = collator(items)
    assert "pixel_values" not in batch
    tok = processor.tokenizer
    texts = [tok.decode(ids) for ids in batch["input_ids"]]
    assert "Image (described in words): A crowd cheers at a stadium." in texts[0]
    assert "\nImage:" not in texts[1] and "Image (" not in texts[1]  # no caption: no image line at all
    for row, (item, task) in enumerate([(items[0], TASK_REA), (items[1], TASK_REA), (items[0], TASK_CLS),
                                        (items[1], TASK_CLS)]):
        target = batch["labels"][row] != IGNORE
        _, expected = collator.sequences(item, task)
        assert tok.decode(batch["input_ids"][row][target]) == expected + "<|im_end|>"


def test_train_text_assistant_records_image_input(demo_store, tiny_text_model, compact_model, tmp_path) -> None:
    from mulcot.train.assistant import train_assistant
    from mulcot.train.student import distill

    first = teacher_items(demo_store, SAMPLE_NAME, "train")[0]
    demo_store.set_caption(first.sample_id, "A man holds a trophy.")
    cfg = TrainConfig(dataset=SAMPLE_NAME, model=str(tiny_text_model()), name="text-asst",
                      runs_dir=str(tmp_path / "runs"), **FAST)
    result = train_assistant(demo_store, cfg)
    run = demo_store.get_run("text-asst")
    assert run["config"]["family"] == "qwen2"
    assert run["config"]["image_input"] == "mixed" and run["config"]["captioned"] == 1
    assert json.loads((Path(result.folder) / "config.json").read_text())["image_input"] == "mixed"
    assert (Path(result.adapter) / "adapter_config.json").is_file()

    # exported: merged HF folder without an image processor; predict's HF backend reads captions, refuses images
    from mulcot.export.steps import ExportConfig, export
    from mulcot.generation.base import Post, PredictConfig
    from mulcot.generation.hf import HFBackend

    exported = export(ExportConfig(source=result.folder, out=str(tmp_path / "export"), gguf=False))
    assert exported.family == "qwen2" and exported.mmproj_gguf is None
    assert not (Path(exported.hf_dir) / "preprocessor_config.json").exists()
    with HFBackend(exported.hf_dir, PredictConfig(label_max_tokens=4)) as backend:
        assert backend.text_only and not backend.has_vision
        assert len(backend.generate([Post(text="great $T$", aspect="game", caption="a stadium")], "label", "masc")) == 1
        with pytest.raises(ModelError, match="text-only") as err:
            backend.generate([Post(text="x", aspect="y", image=first.image_path)], "label", "masc")
        assert "\n" not in str(err.value)

    # a Qwen-VL student cannot learn from a text-only assistant's soft labels (nor the reverse)
    bad = DistillConfig(dataset=SAMPLE_NAME, model=str(compact_model()), assistant=result.folder, name="vl-student",
                        runs_dir=str(tmp_path / "runs"), **FAST)
    with pytest.raises(MulcotError) as err:
        distill(demo_store, bad)
    assert "text-only" in str(err.value) and "Qwen-VL" in str(err.value) and "\n" not in str(err.value)
    assert demo_store.get_run("vl-student") is None

    # the text assistant expands (sampled chains for the training split), and a text-only student with the same
    # tokenizer distils from D_t and those chains
    from mulcot.expand import ExpandConfig, expand

    summary = expand(demo_store, ExpandConfig(dataset=SAMPLE_NAME, assistant=result.folder, limit=2,
                                              max_new_tokens=8))
    assert summary.generated == 2
    good = DistillConfig(dataset=SAMPLE_NAME, model=str(tiny_text_model()), assistant=result.folder,
                         name="text-student", runs_dir=str(tmp_path / "runs"), **FAST)
    distilled = distill(demo_store, good)
    assert demo_store.get_run("text-student")["config"]["image_input"] == "mixed"
    assert (Path(distilled.adapter) / "adapter_config.json").is_file()


def test_text_dataset_needs_no_flag_for_a_text_model(demo_store, tiny_text_model, tmp_path) -> None:
    from mulcot.datasets import import_dataset
    from mulcot.sample import SAMPLE_DIR
    from mulcot.train.assistant import train_assistant

    import_dataset(demo_store, "twitter-tsv", SAMPLE_DIR, name="textonly", no_images=True)
    cfg = TrainConfig(dataset="textonly", model=str(tiny_text_model()), name="t", runs_dir=str(tmp_path / "runs"),
                      **FAST)
    with pytest.raises(MulcotError, match="no teacher reasoning"):  # past the images check, to the chains one
        train_assistant(demo_store, cfg)


def test_predict_cli_reads_a_caption(tiny_text_model, tmp_path) -> None:
    """`mulcot predict --caption` gives a text-only model the image in words; an image is refused in one line."""
    from typer.testing import CliRunner

    from mulcot.cli import app

    model = str(tiny_text_model())
    base = ["predict", "--backend", "hf", "--model", model, "--text", "Great game by $T$", "--aspect", "the Bulls",
            "--max-tokens", "4", "--json"]
    r = CliRunner().invoke(app, [*base, "--caption", "A crowd cheers in a stadium."])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["backend"] == "hf" and len(out["predictions"]) == 1
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    r = CliRunner().invoke(app, [*base, "--image", str(image)])
    assert r.exit_code != 0 and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(app, ["predict", "--caption", "x", "--dataset", "d"])
    assert r.exit_code != 0 and "--caption need --text" in r.output


def test_cli_refuses_a_model_without_chat_template_in_one_line(demo_store, tiny_text_model, tmp_path) -> None:
    """predict and train-assistant name the model and the missing chat template in one line; the store is left
    as it was (no run recorded) and no run folder is written."""
    from typer.testing import CliRunner

    from mulcot.cli import app
    from mulcot.sample import SAMPLE_NAME

    model = str(tiny_text_model(chat_template=False))
    r = CliRunner().invoke(app, ["predict", "--backend", "hf", "--model", model, "--text", "Great $T$",
                                 "--aspect", "game", "--max-tokens", "4"])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1 and "has no chat template" in r.output
    runs = {r["id"] for r in demo_store.list_runs()}
    db, runs_dir = str(tmp_path / "mulcot.db"), str(tmp_path / "runs")
    r = CliRunner().invoke(app, ["train-assistant", SAMPLE_NAME, "--model", model, "--name", "x", "--db", db,
                                 "--runs-dir", runs_dir])
    assert r.exit_code != 0 and "Traceback" not in r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]  # the rest: a transient bar
    assert len(errors) == 1 and "has no chat template" in errors[0]
    assert {r["id"] for r in demo_store.list_runs()} == runs
    assert not (tmp_path / "runs" / "x").exists()
