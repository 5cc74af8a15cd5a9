from __future__ import annotations

import os
from pathlib import Path

import pytest

from mulcot.store import Store

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def shared_data() -> Path:
    """The real data beside the project (../shared/data); tests using it skip when it is absent."""
    if not (SHARED_DATA / "twitter2015").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.open(tmp_path / "mulcot.db")
    yield s
    s.close()


def dump(store_or_path: Store | Path) -> list[str]:
    """Every row of every table, as SQL text (to compare a store before and after)."""
    if isinstance(store_or_path, Store):
        return list(store_or_path.db.conn.iterdump())
    with Store(store_or_path, migrate=False) as s:
        return list(s.db.conn.iterdump())


@pytest.fixture(scope="session")
def compact_model(tmp_path_factory):
    """``compact_model(family)``: a tiny random-weight model on the compact 4k vocabulary (fast to train on the
    CPU), built once per session."""
    from mulcot.models import build_tiny

    built: dict[str, Path] = {}

    def get(family: str = "qwen2.5-vl", seed: int = 0) -> Path:
        if (family, seed) not in built:
            out = tmp_path_factory.mktemp(f"compact-{family}-{seed}") / "model"
            built[(family, seed)] = build_tiny(out, family, seed=seed, vocab="compact")
        return built[(family, seed)]

    return get


@pytest.fixture
def sample_store(tmp_path) -> Store:
    """A store holding the embedded sample's posts (dataset ``t15``, no chains)."""
    from mulcot.datasets import import_dataset
    from mulcot.sample import SAMPLE_DIR

    s = Store.open(tmp_path / "mulcot.db")
    import_dataset(s, "twitter-tsv", SAMPLE_DIR, name="t15")
    yield s
    s.close()


@pytest.fixture
def demo_store(tmp_path) -> Store:
    """A store holding the embedded sample with its teacher chains (D_t: 34 train, 12 dev, 12 test)."""
    from mulcot.pipeline.demo import run_demo

    s = Store.open(tmp_path / "mulcot.db")
    run_demo(s)
    yield s
    s.close()


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory):
    """``tiny_text_model(chat_template=True)``: a tiny random-weight Qwen2 text-only causal LM (model_type
    ``qwen2``) on the compact 4k vocabulary with a ChatML chat template (or none), built once per session."""
    built: dict[bool, Path] = {}

    def get(chat_template: bool = True) -> Path:
        if chat_template not in built:
            import torch
            from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

            from mulcot.models.tiny import compact_tokenizer_dir

            out = tmp_path_factory.mktemp(f"tiny-text-{int(chat_template)}") / "model"
            tok = Qwen2Tokenizer.from_pretrained(str(compact_tokenizer_dir("qwen2.5-vl")))
            for key in ("is_local", "local_files_only"):
                tok.init_kwargs.pop(key, None)
            end, eot = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")
            config = Qwen2Config(vocab_size=-(-len(tok) // 64) * 64, hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 tie_word_embeddings=True, bos_token_id=end, eos_token_id=eot,
                                 pad_token_id=end)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = Qwen2ForCausalLM(config).eval()
            model.generation_config = GenerationConfig(bos_token_id=end, eos_token_id=eot, pad_token_id=end)
            model.save_pretrained(out)
            if chat_template:
                tok.chat_template = (
                    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
                    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
                )
            else:
                tok.chat_template = None
            tok.save_pretrained(out)
            (out / "chat_template.jinja").unlink(missing_ok=True) if not chat_template else None
            built[chat_template] = out
        return built[chat_template]

    return get
