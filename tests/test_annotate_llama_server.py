"""annotate against llama-cpp-python's own OpenAI-compatible server serving a tiny GGUF (text + vision projector)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from helpers import answers, wait_until

from mulcot.annotate import AnnotateConfig, annotate
from mulcot.core.client import TeacherConfig
from mulcot.datasets import import_dataset
from mulcot.sample import SAMPLE_DIR
from mulcot.store import Store

pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_annotate_against_llama_cpp_server(tmp_path):
    from mulcot.errors import MulcotError
    from mulcot.export import ExportConfig, export
    from mulcot.models import build_tiny

    try:
        model = build_tiny(tmp_path / "teacher", "qwen2.5-vl", seed=3)
    except MulcotError as err:  # the real vocabulary comes from the llama-cpp-python sdist
        pytest.skip(f"tiny model unavailable: {err}")
    result = export(ExportConfig(source=str(model), out=str(tmp_path / "gguf"), quants=()))
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", result.text_gguf, "--clip_model_path",
         result.mmproj_gguf, "--chat_format", "qwen2.5-vl", "--port", str(port), "--n_ctx", "4096"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/v1/models"), 120, interval=0.5, process=server,
                   what="llama-cpp-python's server starting")
        with Store.open(tmp_path / "m.db") as store:
            import_dataset(store, "twitter-tsv", SAMPLE_DIR, name="s")
            cfg = AnnotateConfig(dataset="s", limit=2, max_retries=1, concurrency=2,
                                 teacher=TeacherConfig(model="tiny", base_url=f"http://127.0.0.1:{port}/v1",
                                                       max_tokens=24, timeout_s=120))
            summary = annotate(store, cfg)
            attempts = store.reasonings(dataset="s", source="teacher")
            store_samples = store.samples("s", "train")
    finally:
        server.terminate()
        server.wait(timeout=30)
    # a tiny random-weight model never writes five fields: every attempt is answered, stored and judged invalid
    assert summary.samples == 2 and summary.requests == 8 and summary.failed == 4
    assert len(attempts) == 8 and all(a["raw"] is not None and a["tokens_in"] > 0 for a in attempts)
    assert {a["stage"] for a in attempts} == {"predict", "explain"} and sum(a["final"] for a in attempts) == 4
    # the image reached the model: each predict request carries more tokens than its prompt text alone
    from mulcot.core.prompts import get_prompt
    from mulcot.models import load_tokenizer

    tok = load_tokenizer("qwen2.5-vl")
    samples = {x["id"]: x for x in store_samples}
    for a in attempts:
        if a["stage"] == "predict":
            sample = samples[a["sample_id"]]
            text_only = len(tok.encode(get_prompt("pre", "masc").render(sample["text"], sample["aspect"])))
            assert a["tokens_in"] > text_only + 16, (a["tokens_in"], text_only)
