"""Tiny random-weight Qwen2.5-VL / Qwen3-VL models on the real Qwen2 tokenizer, built offline.

The tokenizer is rebuilt from llama.cpp's ``models/ggml-vocab-qwen2.gguf`` (shipped in the llama-cpp-python
sdist, see :mod:`mulcot.core.llamacpp`): the real byte-level BPE vocabulary and merges plus the Qwen-VL special
tokens at their real ids. Its pre-tokenizer hash is one llama.cpp knows, so a tiny model converts to GGUF
unpatched. Parsing the GGUF takes ~20 s, so built tokenizers are cached in ``$MULCOT_CACHE/tokenizers/``.

Shapes follow what is known to work end to end (forward/backward, generate, LoRA, merge, GGUF text + mmproj):
text hidden 64, intermediate 128, 2 layers, 4 heads (head dim 16), 2 KV heads; vision depth 4 (Qwen2.5-VL:
full attention in blocks 1 and 3, evenly spaced as llama.cpp's mmproj converter needs), hidden 32, 2 heads.

Long because: the tokenizer rebuild, the two families' chat templates and configs and the processors that must agree
with them are one unit that tests and benchmarks use together.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mulcot.core.llamacpp import cache_root, qwen2_vocab_path
from mulcot.errors import ModelError
from mulcot.events import INFO, Progress, emit

FAMILIES = ("qwen2.5-vl", "qwen3-vl")

# Real output-layer sizes: Qwen2.5-VL-3B and Qwen3-VL-2B/4B use 151936 rows (Qwen2.5-VL-7B: 152064).
DEFAULT_VOCAB_SIZE = 151936
_BPE_SIZE = 151643  # ids 0..151642 are byte-level BPE tokens; added tokens start at <|endoftext|>

# Added tokens of the Qwen2.5 / Qwen2.5-VL tokenizer, in id order from 151643: (content, special).
_QWEN25_ADDED: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
# Qwen3 / Qwen3-VL add four more (151665..151668).
_QWEN3_ADDED: tuple[tuple[str, bool], ...] = _QWEN25_ADDED + (
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)

# The chat templates the real Qwen2.5-VL-*-Instruct and Qwen3-VL-*-Instruct checkpoints ship.
QWEN25_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_QWEN3_VISION_ITEMS = """\
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
"""

_QWEN3_SYSTEM_TEXT = """\
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
"""

QWEN3_VL_CHAT_TEMPLATE = (
    """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
"""
    + _QWEN3_SYSTEM_TEXT
    + """\
        {{- '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n\
You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and \
arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \
\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' }}
"""
    + _QWEN3_SYSTEM_TEXT
    + """\
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
"""
    + _QWEN3_VISION_ITEMS
    + """\
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content_item in message.content %}
                {%- if 'text' in content_item %}
                    {{- content_item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and message.content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
"""
    + _QWEN3_VISION_ITEMS
    + """\
        {%- endif %}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""
)

_FAMILY = {
    "qwen2.5-vl": {
        "added": _QWEN25_ADDED,
        "chat_template": QWEN25_VL_CHAT_TEMPLATE,
        "model_max_length": 131072,
        # preprocessor_config.json of Qwen2.5-VL-*-Instruct
        "image": {
            "patch_size": 14,
            "temporal_patch_size": 2,
            "merge_size": 2,
            "min_pixels": 3136,
            "max_pixels": 12845056,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711],
        },
    },
    "qwen3-vl": {
        "added": _QWEN3_ADDED,
        "chat_template": QWEN3_VL_CHAT_TEMPLATE,
        "model_max_length": 262144,
        # preprocessor_config.json of Qwen3-VL-*-Instruct
        "image": {
            "patch_size": 16,
            "temporal_patch_size": 2,
            "merge_size": 2,
            "min_pixels": 65536,
            "max_pixels": 16777216,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
        },
    },
}

_TOKENIZER_FORMAT = 1  # bump when the cached tokenizer folders must be rebuilt


def _say(progress: Progress | None, message: str) -> None:
    emit(progress, "models", INFO, message=message)


def _check_family(family: str) -> None:
    if family not in _FAMILY:
        raise ModelError(f"unknown tiny model family '{family}' (choose one of: {', '.join(FAMILIES)})")


# ---------------------------------------------------------------------------------------------- tokenizer


def read_qwen2_vocab(gguf_path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """The byte-level BPE tokens (ids 0..151642, in id order) and merges (``"a b"``) of a Qwen2 vocab GGUF."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))

    def strings(key: str) -> list[str]:
        field = reader.fields.get(key)
        if field is None:
            raise ModelError(f"{gguf_path} has no '{key}': not a llama.cpp vocabulary file")
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]

    if (model := reader.fields.get("tokenizer.ggml.model")) is not None:
        kind = bytes(model.parts[model.data[0]]).decode("utf-8")
        if kind != "gpt2":
            raise ModelError(f"{gguf_path} holds a '{kind}' tokenizer, not Qwen2's byte-level BPE ('gpt2')")
    tokens = strings("tokenizer.ggml.tokens")
    merges = strings("tokenizer.ggml.merges")
    types_field = reader.fields["tokenizer.ggml.token_type"]
    types = [int(types_field.parts[i][0]) for i in types_field.data]
    normal = int(gguf.TokenType.NORMAL)
    bpe = [tok for tok, kind in zip(tokens, types, strict=True) if kind == normal]
    if len(bpe) != _BPE_SIZE or bpe != tokens[:_BPE_SIZE] or tokens[_BPE_SIZE] != "<|endoftext|>":
        raise ModelError(f"{gguf_path} is not the Qwen2 vocabulary (expected {_BPE_SIZE} BPE tokens first)")
    return bpe, merges


def _add_family_tokens(tok: Any, family: str, base: int = _BPE_SIZE) -> Any:
    """Give ``tok`` the added/special tokens (at their real ids, or from ``base`` on for a compact vocabulary),
    chat template and length of ``family``."""
    from tokenizers import AddedToken

    spec = _FAMILY[family]
    vocab = tok.get_vocab()
    for content, special in spec["added"]:
        if content in vocab:
            continue
        token = AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False)
        tok.add_tokens([token], special_tokens=special)
    extra = [c for c, special in spec["added"] if special and c != "<|endoftext|>"]
    tok.add_special_tokens({"eos_token": "<|im_end|>", "extra_special_tokens": extra})
    tok.chat_template = spec["chat_template"]
    tok.model_max_length = spec["model_max_length"]
    tok.init_kwargs["model_max_length"] = spec["model_max_length"]
    for i, (content, _) in enumerate(spec["added"]):
        if tok.convert_tokens_to_ids(content) != base + i:  # pragma: no cover - a transformers change
            raise ModelError(f"internal error: tokenizer token {content} did not get id {base + i}")
    if len(tok) != base + len(spec["added"]):  # pragma: no cover
        raise ModelError(f"internal error: the {family} tokenizer has {len(tok)} tokens")
    return tok


def _build_tokenizer(bpe: list[str], merges: list[str], family: str, base: int = _BPE_SIZE) -> Any:
    """A ``Qwen2Tokenizer`` with the real vocab, merges and the family's added tokens at their real ids."""
    from transformers import Qwen2Tokenizer

    # Constructed with <|endoftext|> as every special token: Qwen2Tokenizer adds its special tokens in its own
    # order, and the added tokens must get their real ids (151643, 151644, ...) in sequence.
    tok = Qwen2Tokenizer(
        vocab={token: i for i, token in enumerate(bpe)},
        merges=[tuple(m.split(" ", 1)) for m in merges],
        unk_token=None,
        bos_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        add_prefix_space=False,
        errors="replace",
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    return _add_family_tokens(tok, family, base)


def _save_atomically(tok: Any, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        tok.save_pretrained(tmp)
        if not dest.exists():
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tokenizer_dir(family: str = "qwen2.5-vl", *, progress: Progress | None = None) -> Path:
    """A cached folder holding the real Qwen2 tokenizer for ``family`` (built from llama.cpp's vocab once).

    The Qwen2.5-VL tokenizer is parsed from the GGUF (~20 s); the Qwen3-VL one is derived from it (~2 s).
    """
    from transformers import Qwen2Tokenizer

    _check_family(family)
    vocab = qwen2_vocab_path(progress=progress)
    digest = hashlib.sha256(vocab.read_bytes()).hexdigest()[:12]
    root = cache_root() / "tokenizers"
    dest = root / f"{family}-{digest}-v{_TOKENIZER_FORMAT}"
    if (dest / "tokenizer.json").is_file():
        return dest
    if family == "qwen2.5-vl":
        _say(progress, "Building the Qwen2 tokenizer from llama.cpp's vocabulary (~20 s, once)")
        bpe, merges = read_qwen2_vocab(vocab)
        tok = _build_tokenizer(bpe, merges, family)
    else:
        base = tokenizer_dir("qwen2.5-vl", progress=progress)
        _say(progress, f"Deriving the {family} tokenizer")
        tok = Qwen2Tokenizer.from_pretrained(str(base))
        for key in ("is_local", "local_files_only"):
            tok.init_kwargs.pop(key, None)
        tok = _add_family_tokens(tok, family)
    _save_atomically(tok, dest)
    return dest


def load_tokenizer(family: str = "qwen2.5-vl", *, progress: Progress | None = None) -> Any:
    """The real Qwen2 tokenizer for ``family`` (from the cache; built on first use)."""
    from transformers import Qwen2Tokenizer

    tok = Qwen2Tokenizer.from_pretrained(str(tokenizer_dir(family, progress=progress)))
    for key in ("is_local", "local_files_only"):  # load-time details transformers would save with it
        tok.init_kwargs.pop(key, None)
    return tok


COMPACT_VOCAB = 4096
# Qwen2's pre-tokenizer split (the same regex Qwen2Tokenizer applies before byte-level BPE).
_QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def _compact_corpus() -> list[str]:
    """Text the compact vocabulary is learned from: the embedded sample's posts and chains, and the prompts."""
    from mulcot.core.prompts import PROMPT_NAMES, TASKS, get_prompt
    from mulcot.sample import SAMPLE_DIR

    corpus = [get_prompt(n, t).template for n in PROMPT_NAMES for t in TASKS]
    for path in sorted(SAMPLE_DIR.rglob("*")):
        if path.suffix in (".tsv", ".json"):
            corpus.extend(path.read_text(encoding="utf-8").splitlines())
    return corpus


def compact_tokenizer_dir(family: str = "qwen2.5-vl", *, vocab: int = COMPACT_VOCAB) -> Path:
    """A cached Qwen2-style tokenizer with a small byte-level BPE (``vocab`` tokens) learned from the embedded
    sample, plus ``family``'s special tokens right after it. Any text still encodes (byte fallback); training on
    it is ~40x cheaper in the output layer than on the real 151k vocabulary. llama.cpp's converter does not know
    its pre-tokenizer hash: use the real vocabulary for GGUF work."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    _check_family(family)
    corpus = _compact_corpus()
    digest = hashlib.sha256("\0".join(corpus).encode() + str(vocab).encode()).hexdigest()[:12]
    dest = cache_root() / "tokenizers" / f"compact-{family}-{digest}-v{_TOKENIZER_FORMAT}"
    if (dest / "tokenizer.json").is_file():
        return dest
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(corpus, trainer)
    model = json.loads(bpe.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    _save_atomically(_build_tokenizer(tokens, merges, family, base=len(tokens)), dest)
    return dest


# ------------------------------------------------------------------------------------------------------ model


# the tiny shapes per family (text and vision), beside what both families' text models share (see tiny_config)
_TINY_SHAPES: dict[str, dict[str, dict[str, Any]]] = {
    "qwen2.5-vl": {
        "text": {
            "max_position_embeddings": 128000,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
        },
        "vision": {
            "depth": 4, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "hidden_act": "silu",
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
            "fullatt_block_indexes": [1, 3], "out_hidden_size": 64, "tokens_per_second": 2,
        },
    },
    "qwen3-vl": {
        "text": {
            "head_dim": 16, "max_position_embeddings": 262144, "attention_bias": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [4, 2, 2],
                                "mrope_interleaved": True},
        },
        "vision": {
            "depth": 4, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
            "hidden_act": "gelu_pytorch_tanh", "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
            "out_hidden_size": 64, "num_position_embeddings": 64, "deepstack_visual_indexes": [0],
        },
    },
}


def tiny_config(
    family: str,
    *,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    tie_word_embeddings: bool = True,
    special_base: int = _BPE_SIZE,
) -> Any:
    """The transformers config of a tiny ``family`` model (random weights are drawn from it).

    ``special_base`` is the id of ``<|endoftext|>`` (151643 in the real vocabulary; the compact vocabulary's
    size for a compact one); the other special ids follow from it as in Qwen's tokenizer."""
    _check_family(family)
    ids = {content: special_base + i for i, (content, _) in enumerate(_FAMILY[family]["added"])}
    minimum = special_base + len(_FAMILY[family]["added"])
    if vocab_size < minimum:
        raise ModelError(f"vocab_size {vocab_size} is smaller than the tokenizer ({minimum} tokens)")
    text: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        # std 0.2, not 0.02: with tied embeddings and small weights greedy decoding just repeats the last
        # input token; this scale gives varied tokens, which parity tests (merge, GGUF, llama.cpp) need.
        "initializer_range": 0.2,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": tie_word_embeddings,
        **_TINY_SHAPES[family]["text"],
    }
    tokens = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    if family == "qwen2.5-vl":
        from transformers import Qwen2_5_VLConfig as config_class
    else:
        from transformers import Qwen3VLConfig as config_class
    return config_class(text_config=text, vision_config=dict(_TINY_SHAPES[family]["vision"]),
                        tie_word_embeddings=tie_word_embeddings, **tokens)


def _model_class(family: str) -> Any:
    if family == "qwen2.5-vl":
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration
    from transformers import Qwen3VLForConditionalGeneration

    return Qwen3VLForConditionalGeneration


def clear_model_dir(out_dir: str | os.PathLike[str], overwrite: bool) -> Path:
    """The folder a model is about to be written to: a non-empty one is refused unless ``overwrite`` and it holds a
    model (``config.json``), in which case it is emptied."""
    out = Path(out_dir).expanduser()
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ModelError(f"{out} exists and is not empty (pass overwrite=True / --force to replace it)")
        if not (out / "config.json").is_file():
            raise ModelError(f"refusing to overwrite {out}: it is not empty and holds no model (config.json)")
        shutil.rmtree(out)
    return out


def build_tiny(
    out_dir: str | os.PathLike[str],
    family: str = "qwen2.5-vl",
    seed: int = 0,
    *,
    vocab: str = "qwen2",
    vocab_size: int | None = None,
    tie_word_embeddings: bool = True,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Write a tiny random-weight ``family`` model as a complete Hugging Face folder; returns its path.

    The folder holds float32 safetensors weights, ``config.json``, ``generation_config.json`` (greedy), the
    real Qwen2 tokenizer, the PIL image processor (``preprocessor_config.json``), ``processor_config.json``
    and the real chat template. Weights are a pure function of ``seed`` (the caller's torch RNG state is left
    untouched). ``vocab_size`` sets the output-layer rows (151936 as in Qwen2.5-VL-3B / Qwen3-VL-2B; 152064 as
    in Qwen2.5-VL-7B). A non-empty ``out_dir`` is refused unless ``overwrite`` (and it holds a model).
    ``vocab="compact"`` uses :func:`compact_tokenizer_dir` instead of the real vocabulary: the same architecture
    and chat template, far cheaper to train on the CPU, but not convertible by llama.cpp.
    """
    import torch
    from transformers import GenerationConfig, Qwen2VLImageProcessorPil

    from mulcot.models.loading import quiet_progress_bars
    from mulcot.models.processor import processor_class

    _check_family(family)
    out = clear_model_dir(out_dir, overwrite)
    if vocab == "qwen2":
        tokenizer = load_tokenizer(family, progress=progress)
        base = _BPE_SIZE
    elif vocab == "compact":
        from transformers import Qwen2Tokenizer

        tokenizer = Qwen2Tokenizer.from_pretrained(str(compact_tokenizer_dir(family)))
        for key in ("is_local", "local_files_only"):
            tokenizer.init_kwargs.pop(key, None)
        base = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    else:
        raise ModelError(f"unknown vocabulary '{vocab}': use qwen2 (real) or compact")
    if vocab_size is None:
        vocab_size = DEFAULT_VOCAB_SIZE if vocab == "qwen2" else -(-len(tokenizer) // 64) * 64
    config = tiny_config(family, vocab_size=vocab_size, tie_word_embeddings=tie_word_embeddings, special_base=base)

    _say(progress, f"Drawing tiny {family} weights (seed {seed})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _model_class(family)(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=base, eos_token_id=[base + 2, base], pad_token_id=base, do_sample=False
    )

    spec = _FAMILY[family]
    image = dict(spec["image"])
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": image.pop("min_pixels"), "longest_edge": image.pop("max_pixels")}, **image
    )
    processor = processor_class(family)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=spec["chat_template"]
    )

    _say(progress, f"Saving to {out}")
    out.mkdir(parents=True, exist_ok=True)
    with quiet_progress_bars():
        model.save_pretrained(out)
    processor.save_pretrained(out)
    image_processor.save_pretrained(out)  # preprocessor_config.json too, as the real checkpoints ship it
    _stamp(out, family, seed, vocab)
    return out


def _stamp(out: Path, family: str, seed: int, vocab: str = "qwen2") -> None:
    """Record how the folder was made (read by nothing in mulcot; for people browsing the folder)."""
    note = {"built_by": "mulcot.models.tiny.build_tiny", "family": family, "seed": seed, "vocab": vocab}
    note["random_weights"] = True
    (out / "mulcot_tiny.json").write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")
