"""Model loading, image-only processors, the tiny-model factory and the llama.cpp converter locator.

Everything runs offline on CPU. The tiny models need the real Qwen2 vocabulary from the llama-cpp-python
sdist, downloaded once with pip into the mulcot cache; when that is impossible the model tests skip.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from mulcot.core import llamacpp
from mulcot.errors import ModelError, MulcotError, NotFoundError

FAMILIES = ("qwen2.5-vl", "qwen3-vl")
MODEL_TYPES = {"qwen2.5-vl": "qwen2_5_vl", "qwen3-vl": "qwen3_vl"}


# ------------------------------------------------------------------------------------------------ fixtures
# (candidates for tests/conftest.py: qwen2_vocab, tiny_model_dir, tiny_loaded, small_image)


@pytest.fixture(scope="session")
def qwen2_vocab() -> Path:
    """llama.cpp's Qwen2 vocabulary GGUF (pip-downloads the llama-cpp-python sdist once), else skip."""
    try:
        return llamacpp.qwen2_vocab_path()
    except MulcotError as err:
        pytest.skip(f"the real Qwen2 vocabulary is unavailable (pip/network?): {err}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, qwen2_vocab: Path) -> Callable[[str], Path]:
    """``tiny_model_dir(family)``: a tiny random-weight model folder (seed 0), built once per session."""
    from mulcot.models import build_tiny

    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny(tmp_path_factory.mktemp(f"tiny-{family}") / "model", family, seed=0)
        return built[family]

    return get


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir: Callable[[str], Path]) -> Callable[[str], tuple[Any, Any, str]]:
    """``tiny_loaded(family)``: ``load_model`` of the session's tiny model: (model, processor, family)."""
    from mulcot.models import load_model

    loaded: dict[str, tuple[Any, Any, str]] = {}

    def get(family: str) -> tuple[Any, Any, str]:
        if family not in loaded:
            loaded[family] = load_model(tiny_model_dir(family))
        return loaded[family]

    return get


@pytest.fixture
def small_image() -> Image.Image:
    """A 64x48 RGB image with some structure."""
    img = Image.new("RGB", (64, 48))
    img.putdata([((x * 4) % 256, (y * 5) % 256, (x * y) % 256) for y in range(48) for x in range(64)])
    return img


def _image_prompt(processor: Any, text: str = "How does the author feel about the weather?") -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


# ----------------------------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_has_the_real_qwen2_ids(family: str, qwen2_vocab: Path) -> None:
    from mulcot.models import load_tokenizer

    tok = load_tokenizer(family)
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    assert ids == {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
    assert tok.encode("<|im_start|>") == [151644]
    assert tok.encode("<|image_pad|>") == [151655]
    assert tok.encode("<|vision_start|><|vision_end|>") == [151652, 151653]
    assert tok.encode("Hello world") == [9707, 1879]  # the real Qwen2 BPE
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.bos_token is None
    assert len(tok) == (151669 if family == "qwen3-vl" else 151665)
    if family == "qwen3-vl":
        assert tok.encode("<think>") == [151667]
    text = "Café 你好 🦙 — 'quoted'\n\ttabs"
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode([151644, 9707], skip_special_tokens=True) == "Hello"


# ---------------------------------------------------------------------------------------------- tiny folder


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_folder_is_a_complete_hf_model(family: str, tiny_model_dir: Callable[[str], Path]) -> None:
    from mulcot.models import model_family
    from mulcot.models.tiny import QWEN3_VL_CHAT_TEMPLATE, QWEN25_VL_CHAT_TEMPLATE

    path = tiny_model_dir(family)
    for name in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "processor_config.json",
        "preprocessor_config.json",
    ):
        assert (path / name).is_file(), name
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == MODEL_TYPES[family]
    assert config["text_config"]["vocab_size"] == 151936
    assert config["image_token_id"] == 151655
    template = QWEN25_VL_CHAT_TEMPLATE if family == "qwen2.5-vl" else QWEN3_VL_CHAT_TEMPLATE
    assert (path / "chat_template.jinja").read_text() == template
    processor_config = json.loads((path / "processor_config.json").read_text())
    assert processor_config["processor_class"] == (
        "Qwen2_5_VLProcessor" if family == "qwen2.5-vl" else "Qwen3VLProcessor"
    )
    assert "video_processor" not in processor_config
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
    assert tokenizer_config["processor_class"] == processor_config["processor_class"]
    assert "is_local" not in tokenizer_config and "local_files_only" not in tokenizer_config
    generation = json.loads((path / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [151645, 151643] and generation["do_sample"] is False
    assert model_family(path) == family


def test_real_chat_templates() -> None:
    """The embedded templates are byte-identical to the ones the real checkpoints ship."""
    import hashlib

    from mulcot.models.tiny import QWEN3_VL_CHAT_TEMPLATE, QWEN25_VL_CHAT_TEMPLATE

    # Qwen3-VL-8B-Instruct's template (5292 bytes), as embedded in its official GGUF
    digest = hashlib.sha256(QWEN3_VL_CHAT_TEMPLATE.encode()).hexdigest()
    assert digest == "3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4"
    assert hashlib.sha256(QWEN25_VL_CHAT_TEMPLATE.encode()).hexdigest() == (
        "a0bc6f6fc7a29a80017a433e8f03a1cc1236e838a944a2d034295a60c4f2fddb"
    )


def test_tiny_weights_are_a_function_of_the_seed(
    tmp_path: Path, tiny_model_dir: Callable[[str], Path]
) -> None:
    from safetensors.torch import load_file

    from mulcot.models import build_tiny

    torch.manual_seed(1234)
    expected_next = torch.rand(3)
    torch.manual_seed(1234)
    again = load_file(build_tiny(tmp_path / "again", "qwen2.5-vl", seed=0) / "model.safetensors")
    assert torch.equal(torch.rand(3), expected_next), "build_tiny must not disturb the caller's RNG"
    first = load_file(tiny_model_dir("qwen2.5-vl") / "model.safetensors")
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    other = load_file(build_tiny(tmp_path / "other", "qwen2.5-vl", seed=1) / "model.safetensors")
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_build_tiny_refuses_to_clobber(tmp_path: Path, tiny_model_dir: Callable[[str], Path]) -> None:
    from mulcot.models import build_tiny

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ModelError, match="not empty"):
        build_tiny(tmp_path, "qwen2.5-vl")
    with pytest.raises(ModelError, match="holds no model"):
        build_tiny(tmp_path, "qwen2.5-vl", overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(ModelError, match="qwen2.5-vl"):
        build_tiny(tmp_path / "x", "llava")


# ------------------------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("family", FAMILIES)
def test_load_model_detects_family_and_runs_image_and_text(
    family: str, tiny_loaded: Callable[[str], tuple[Any, Any, str]], small_image: Image.Image
) -> None:
    from mulcot.models import processor_class

    model, processor, got_family = tiny_loaded(family)
    assert got_family == family
    assert type(model).__name__ == (
        "Qwen2_5_VLForConditionalGeneration" if family == "qwen2.5-vl" else "Qwen3VLForConditionalGeneration"
    )
    assert isinstance(processor, processor_class(family))
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert model.dtype == torch.float32 and model.device.type == "cpu" and not model.training

    inputs = processor(images=[small_image], text=[_image_prompt(processor)], return_tensors="pt")
    n_image_tokens = int((inputs["input_ids"] == 151655).sum())
    assert n_image_tokens == int(inputs["image_grid_thw"].prod()) // 4 > 0
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], 151936)
    assert torch.isfinite(logits).all()

    out = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :]
    assert new.shape == (5,)
    again = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert torch.equal(out, again)


@pytest.mark.parametrize("family", FAMILIES)
def test_processor_round_trip(
    family: str, tmp_path: Path, tiny_loaded: Callable[[str], tuple[Any, Any, str]], small_image: Image.Image
) -> None:
    from mulcot.models import load_processor, processor_class

    _, processor, _ = tiny_loaded(family)
    processor.save_pretrained(tmp_path)
    assert not (tmp_path / "video_preprocessor_config.json").exists()
    reloaded = load_processor(tmp_path, family)
    assert type(reloaded) is processor_class(family)
    assert reloaded.chat_template == processor.chat_template
    assert len(reloaded.tokenizer) == len(processor.tokenizer)
    assert reloaded.image_processor.to_dict() == processor.image_processor.to_dict()
    prompt = _image_prompt(processor)
    a = processor(images=[small_image], text=[prompt], return_tensors="pt")
    b = reloaded(images=[small_image], text=[prompt], return_tensors="pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ModelError, match="video"):
        reloaded(text=[prompt], videos=[[small_image]])


def test_unsupported_model_type_is_refused(tmp_path: Path) -> None:
    from mulcot.models import load_model, model_family

    # a vision encoder is neither a Qwen-VL model nor a causal LM (text-only causal LMs are backbones now)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ModelError) as err:
        model_family(tmp_path)
    message = str(err.value)
    assert "'vit'" in message and "qwen2_5_vl" in message and "qwen3_vl" in message and "causal LM" in message
    assert "\n" not in message
    with pytest.raises(ModelError, match="'vit'"):
        load_model(tmp_path)


def test_missing_or_empty_folder_is_refused(tmp_path: Path) -> None:
    from mulcot.models import load_model, model_family

    with pytest.raises(NotFoundError, match="not found"):
        load_model(tmp_path / "nope")
    with pytest.raises(NotFoundError, match="not found"):
        model_family("./no/such/model")
    with pytest.raises(ModelError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelError, match="is a file"):
        model_family(tmp_path / "model.gguf")


def test_unknown_hub_id_offline_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from mulcot.models import model_family

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NotFoundError) as err:
        model_family("mulcot-tests/definitely-not-a-model")
    assert "HF_HUB_OFFLINE" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(NotFoundError, match="not a valid"):
        model_family("bad id with spaces")


def test_device_and_dtype_defaults() -> None:
    from mulcot.models import check_device, default_device, resolve_dtype

    assert default_device() in ("cuda", "mps", "cpu")
    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype(torch.float16, "cpu") == torch.float16
    with pytest.raises(ModelError, match="unknown dtype"):
        resolve_dtype("int3", "cpu")
    assert check_device("cpu") == "cpu"
    with pytest.raises(ModelError, match="unknown device"):
        check_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA"):
            check_device("cuda")


def test_4bit_needs_bitsandbytes(tiny_model_dir: Callable[[str], Path]) -> None:
    import importlib.util

    from mulcot.models import load_model

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed")
    with pytest.raises(ModelError, match="bitsandbytes"):
        load_model(tiny_model_dir("qwen2.5-vl"), load_in_4bit=True)


def test_load_with_adapter(tmp_path: Path, tiny_model_dir: Callable[[str], Path]) -> None:
    from peft import LoraConfig, get_peft_model

    from mulcot.models import adapter_base_model, load_model, load_with_adapter

    path = tiny_model_dir("qwen2.5-vl")
    base, _, _ = load_model(path)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    lora.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[151644, 9707, 1879, 151645]])
    with torch.no_grad():
        expected = lora(input_ids=ids).logits

    fresh, _, _ = load_model(path)
    with torch.no_grad():
        plain = fresh(input_ids=ids).logits
    adapted = load_with_adapter(fresh, tmp_path / "adapter")
    with torch.no_grad():
        got = adapted(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)
    assert adapter_base_model(tmp_path / "adapter") == str(path)
    with pytest.raises(NotFoundError):
        load_with_adapter(fresh, tmp_path / "missing")
    with pytest.raises(ModelError, match="adapter_config.json"):
        load_with_adapter(fresh, tmp_path)


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_tiny(tmp_path: Path, qwen2_vocab: Path) -> None:
    from typer.testing import CliRunner

    from mulcot.cli.models import app

    out = tmp_path / "cli-tiny"
    result = CliRunner().invoke(app, ["tiny", str(out), "--family", "qwen3-vl", "--seed", "3", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["family"] == "qwen3-vl" and data["seed"] == 3 and Path(data["path"]) == out
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen3_vl"
    again = CliRunner().invoke(app, ["tiny", str(out), "--family", "qwen3-vl"])
    assert isinstance(again.exception, ModelError)
    bad = CliRunner().invoke(app, ["tiny", str(tmp_path / "y"), "--family", "llava"])
    assert bad.exit_code != 0


# --------------------------------------------------------------------------------------- llama.cpp locator


def _fake_sdist(path: Path, version: str = "9.9.9") -> Path:
    """A minimal llama-cpp-python sdist: the converter's files plus things that must not be extracted."""
    top = f"llama_cpp_python-{version}"
    files = {
        f"{top}/vendor/llama.cpp/convert_hf_to_gguf.py": b"print('converter')\n",
        f"{top}/vendor/llama.cpp/convert_lora_to_gguf.py": b"print('lora')\n",
        f"{top}/vendor/llama.cpp/conversion/__init__.py": b"",
        f"{top}/vendor/llama.cpp/gguf-py/gguf/__init__.py": b"",
        f"{top}/vendor/llama.cpp/models/ggml-vocab-qwen2.gguf": b"GGUF",
        f"{top}/vendor/llama.cpp/models/ggml-vocab-llama-bpe.gguf": b"GGUF",
        f"{top}/vendor/llama.cpp/src/llama.cpp": b"// big C++",
        f"{top}/llama_cpp/__init__.py": b"",
    }
    archive = path / f"llama_cpp_python-{version}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def test_converter_is_extracted_from_an_sdist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MULCOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MULCOT_LLAMA_CPP_DIR", raising=False)
    archive = _fake_sdist(tmp_path)
    calls: list[list[str]] = []

    def fake_pip(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / archive.name).write_bytes(archive.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(llamacpp.subprocess, "run", fake_pip)
    messages: list[str] = []
    root = llamacpp.converter_dir(version="9.9.9", progress=messages.append)
    assert root == tmp_path / "cache" / "llama.cpp" / "9.9.9"
    assert calls and calls[0][:3] == [sys.executable, "-m", "pip"] and "llama-cpp-python==9.9.9" in calls[0]
    extracted = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert extracted == [
        ".mulcot-complete",
        "conversion/__init__.py",
        "convert_hf_to_gguf.py",
        "convert_lora_to_gguf.py",
        "gguf-py/gguf/__init__.py",
        "models/ggml-vocab-qwen2.gguf",
    ]
    assert messages
    # cached: no second download
    assert llamacpp.converter_dir(version="9.9.9") == root and len(calls) == 1
    assert llamacpp.converter_script("convert_lora_to_gguf.py", root) == root / "convert_lora_to_gguf.py"
    # an sdist archive or an extracted tree can be given directly
    assert (llamacpp.converter_dir(archive) / "convert_hf_to_gguf.py").is_file()
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "tree", filter="data")
    tree = tmp_path / "tree" / "llama_cpp_python-9.9.9"
    assert llamacpp.converter_dir(tree) == tree / "vendor" / "llama.cpp"
    monkeypatch.setenv("MULCOT_LLAMA_CPP_DIR", str(tree / "vendor" / "llama.cpp"))
    assert llamacpp.qwen2_vocab_path() == tree / "vendor" / "llama.cpp" / "models" / "ggml-vocab-qwen2.gguf"


def test_converter_errors_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MULCOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MULCOT_LLAMA_CPP_DIR", raising=False)

    def no_network(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(
            cmd, 1, "", "ERROR: Could not find a version (network unreachable)\n"
        )

    monkeypatch.setattr(llamacpp.subprocess, "run", no_network)
    with pytest.raises(ModelError) as err:
        llamacpp.converter_dir(version="9.9.9")
    assert "network unreachable" in str(err.value) and "MULCOT_LLAMA_CPP_DIR" in str(err.value)
    assert not (tmp_path / "cache" / "llama.cpp" / "9.9.9").exists()
    with pytest.raises(NotFoundError):
        llamacpp.converter_dir(tmp_path / "missing")
    with pytest.raises(ModelError, match="convert_hf_to_gguf.py"):
        llamacpp.converter_dir(tmp_path)
    monkeypatch.setattr(llamacpp, "installed_version", lambda: None)
    with pytest.raises(ModelError, match="not installed"):
        llamacpp.converter_dir()


@pytest.mark.slow
def test_tiny_model_passes_llama_cpp_converter(tmp_path: Path, tiny_model_dir: Callable[[str], Path]) -> None:
    """The real converter accepts the tiny folder unpatched (known pre-tokenizer hash) for text and mmproj."""
    import gguf

    try:
        script = llamacpp.converter_script()
    except MulcotError as err:
        pytest.skip(f"llama.cpp converter unavailable: {err}")
    model = tiny_model_dir("qwen2.5-vl")
    for extra, name in (([], "text.gguf"), (["--mmproj"], "mmproj.gguf")):
        out = tmp_path / name
        cmd = [sys.executable, str(script), str(model), "--outfile", str(out), "--outtype", "f32", *extra]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
    text = gguf.GGUFReader(tmp_path / "text.gguf")
    assert text.fields["general.architecture"].contents() == "qwen2vl"
    assert text.fields["tokenizer.ggml.pre"].contents() == "qwen2"
    mmproj = gguf.GGUFReader(tmp_path / "mmproj.gguf")
    assert mmproj.fields["clip.projector_type"].contents() == "qwen2.5vl_merger"
