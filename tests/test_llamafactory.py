"""The ShareGPT export loads with LLaMA-Factory's own data pipeline.

LLaMA-Factory cannot live in the project's venv (0.9.5 imports torchaudio, which has no build for torch 2.13; 0.9.3
pins transformers ≤ 4.52), so it runs from a separate venv: ``make llamafactory`` builds ``.venv-llamafactory``, or
point ``MULCOT_LLAMAFACTORY_PYTHON`` at any Python that imports ``llamafactory``. Without one the test skips.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from mulcot.datasets import export_dataset
from mulcot.sample import SAMPLE_NAME

ROOT = Path(__file__).resolve().parent.parent
HELPER = Path(__file__).with_name("llamafactory_load.py")


def _llamafactory_python() -> str:
    python = os.environ.get("MULCOT_LLAMAFACTORY_PYTHON") or str(ROOT / ".venv-llamafactory" / "bin" / "python")
    if not Path(python).is_file():
        pytest.skip("LLaMA-Factory's venv is missing: make llamafactory (or set MULCOT_LLAMAFACTORY_PYTHON)")
    return python


def _load(python: str, folder: Path, name: str, tmp_path: Path) -> subprocess.CompletedProcess:
    from mulcot.models.tiny import compact_tokenizer_dir

    tokenizer = compact_tokenizer_dir("qwen2.5-vl") / "tokenizer.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf-cache"),
           "PYTHONPATH": "", "DISABLE_VERSION_CHECK": "1"}
    return subprocess.run([python, str(HELPER), str(folder), name, str(tokenizer)], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.mark.slow
def test_sharegpt_export_loads_in_llamafactory(demo_store, tmp_path):
    python = _llamafactory_python()
    folder = tmp_path / "lf"
    folder.mkdir()
    n = export_dataset(demo_store, SAMPLE_NAME, "sharegpt", folder / "t15_train.json", split="train")
    assert n == 70  # 34 D_t chains + 36 label examples
    done = _load(python, folder, "t15_train", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.rsplit("RESULT ", 1)[1])
    assert result["rows"] == 70 and result["images"] == 70 and result["images_exist"]
    assert 0 not in result["image_pad_per_row"]  # each <image> became the image's vision tokens
    assert result["target_tokens_per_row_min"] >= 5  # the answers are trained on

    # the check bites: a second <image> for one image is refused by LLaMA-Factory's own plugin
    records = json.loads((folder / "t15_train.json").read_text())
    records[0]["conversations"][0]["value"] = "<image>" + records[0]["conversations"][0]["value"]
    (folder / "t15_train.json").write_text(json.dumps(records))
    bad = _load(python, folder, "t15_train", tmp_path)
    assert bad.returncode != 0 and "does not match" in bad.stderr, bad.stderr[-2000:]
