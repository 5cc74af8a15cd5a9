"""expand, eval --model and predict --dataset through llama-cpp-python's own OpenAI-compatible server, serving the
tiny student exported to GGUF + mmproj (test_export's fixtures): greedy answers equal ``predict --gguf`` on the same
files, and a server killed mid-run leaves whole rows only and a rerun completes without duplicates."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import answers, wait_until
from test_export import converter, student  # noqa: F401  (fixtures)

from mulcot.expand import ExpandConfig, expand
from mulcot.generation import SOURCE_GGUF, SOURCE_SERVER, GGUFBackend, PredictConfig, ServerBackend
from mulcot.generation.server import ServerConfig, ServerError
from mulcot.predict import predict_dataset
from mulcot.sample import SAMPLE_NAME

pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")

PIXELS = 56 * 56
TOKENS, LABEL_TOKENS = 12, 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """``python -m llama_cpp.server`` on the GGUF and its projector with the generic mtmd chat handler (the GGUF's
    own chat template, as ``predict --gguf`` uses), as ``student``, on a free port of 127.0.0.1."""

    def __init__(self, text_gguf: str, mmproj: str):
        self.args = [sys.executable, "-m", "llama_cpp.server", "--model", text_gguf, "--clip_model_path", mmproj,
                     "--chat_format", "mtmd", "--model_alias", "student", "--n_ctx", "4096", "--n_threads", "1",
                     "--n_threads_batch", "1"]
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LlamaServer:
        self.port = _free_port()
        self.proc = subprocess.Popen([*self.args, "--port", str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_until(lambda: answers(f"{self.url}/models"), 120, interval=0.3, process=self.proc,
                   what="llama-cpp-python's server starting")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def config(self, **kw: Any) -> ServerConfig:
        return ServerConfig(url=self.url, served_model="student", **{"backoff_s": 0.2, "http_retries": 1, **kw})


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, student: Any) -> Any:  # noqa: F811
    """The student run folder, its export (f16 GGUF + mmproj) and a running server on them."""
    from mulcot.export import ExportConfig, export

    run = student("qwen2.5-vl")
    result = export(ExportConfig(source=str(run), out=str(tmp_path_factory.mktemp("served") / "out"), quants=()))
    server = LlamaServer(result.text_gguf, result.mmproj_gguf).start()
    try:
        yield run, result, server
    finally:
        server.kill()


def _answers(store: Any, split: str, source: str, stage: str, **kw: Any) -> dict[int, str]:
    rows = store.reasonings(dataset=SAMPLE_NAME, split=split, source=source, stage=stage, **kw)
    assert len(rows) == len({r["sample_id"] for r in rows})
    return {r["sample_id"]: r["raw"] for r in rows}


@pytest.mark.slow
def test_greedy_chains_through_the_server_equal_predict_gguf(demo_store: Any, served: Any, tmp_path: Path) -> None:
    from mulcot.evaluate import EvalConfig, evaluate

    run, result, server = served
    config = PredictConfig(max_tokens=TOKENS, label_max_tokens=LABEL_TOKENS, n_threads=1, max_pixels=PIXELS)
    with GGUFBackend(result.text_gguf, result.mmproj_gguf, config) as gg:
        predict_dataset(demo_store, gg, SAMPLE_NAME, "test", limit=3, prompts=("cot", "label"))
        predict_dataset(demo_store, gg, SAMPLE_NAME, "train", limit=2)
    want = {stage: _answers(demo_store, "test", SOURCE_GGUF, stage) for stage in ("eval", "label")}
    want_train = _answers(demo_store, "train", SOURCE_GGUF, "eval")
    assert len(want["eval"]) == 3 and len(want["label"]) == 3 and len(want_train) == 2

    # predict --dataset --server
    backend = ServerBackend(server.config(concurrency=2), config)
    summary = predict_dataset(demo_store, backend, SAMPLE_NAME, "test", limit=3, prompts=("cot", "label"))
    assert summary.served["answered"] == 6 and summary.served["failed"] == 0
    for stage in ("eval", "label"):
        assert _answers(demo_store, "test", SOURCE_SERVER, stage) == want[stage]
    rows = demo_store.reasonings(dataset=SAMPLE_NAME, split="test", source=SOURCE_SERVER, stage="eval")
    assert all(r["tokens_out"] == TOKENS and r["tokens_in"] > 20 for r in rows)  # the image's tokens count too

    # eval --model RUN --server: the run's chains (stage eval) and generated label answers (compared with predict's
    # generated ones), as in-process eval stores them
    evaluated = evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, model=str(run), limit=3, max_new_tokens=TOKENS,
                                                label_max_new_tokens=LABEL_TOKENS, max_pixels=PIXELS,
                                                metrics=["bleu"], server=server.config(concurrency=2),
                                                label_scoring="generate", out=str(tmp_path / "eval")))
    assert evaluated.metrics["generated"]["served"]["answered"] == 6
    assert _answers(demo_store, "test", "model", "eval", run_id=run.name) == want["eval"]
    assert _answers(demo_store, "test", "model", "label", run_id=run.name) == want["label"]

    # expand --assistant RUN --server, greedy: the P_cot chains predict --gguf wrote for the same training posts
    done = expand(demo_store, ExpandConfig(dataset=SAMPLE_NAME, assistant=str(run), limit=2, temperature=0.0,
                                           max_new_tokens=TOKENS, max_pixels=PIXELS,
                                           server=server.config()))
    assert done.generated == 2
    assert _answers(demo_store, "train", "assistant", "expand") == want_train
    record = demo_store.get_run(f"expand-{run.name}-{SAMPLE_NAME}")["config"]
    assert record["server"]["url"] == server.url and record["server"]["served_model"] == "student"
    assert len(record["adapter_sha256"]) == 64 and "api_key" not in json.dumps(record)


@pytest.mark.slow
def test_server_killed_mid_run_then_restarted(demo_store: Any, served: Any) -> None:
    _, result, server = served
    config = PredictConfig(max_tokens=TOKENS, n_threads=1, max_pixels=PIXELS)
    backend = ServerBackend(server.config(concurrency=1), config)

    def kill_after_two(event: Any) -> None:
        if event.done == 2:
            server.kill()

    with pytest.raises(ServerError) as info:
        predict_dataset(demo_store, backend, SAMPLE_NAME, "test", limit=5, progress=kill_after_two)
    assert "\n" not in str(info.value) and "stopped answering" in str(info.value)
    rows = demo_store.reasonings(dataset=SAMPLE_NAME, split="test", source=SOURCE_SERVER)
    assert len(rows) == 2 and all(r["raw"] is not None and r["tokens_out"] == TOKENS for r in rows)
    assert demo_store.get_run(f"predict-student-{SAMPLE_NAME}-test")["status"] == "failed"

    server.start()  # restarted (on another port): the same command, pointed at it, completes
    summary = predict_dataset(demo_store, ServerBackend(server.config(concurrency=2), config), SAMPLE_NAME, "test",
                              limit=5)
    assert summary.skipped_done == 2 and summary.predicted == 3 and summary.chains == 5
    rows = demo_store.reasonings(dataset=SAMPLE_NAME, split="test", source=SOURCE_SERVER)
    assert len(rows) == 5 and set(Counter(r["sample_id"] for r in rows).values()) == {1}


@pytest.mark.slow
def test_soft_labels_from_the_server_match_the_resident_assistant(demo_store: Any, served: Any,
                                                                  tmp_path: Path) -> None:
    """distill --soft-labels server on llama-cpp-python's server (the assistant as an f16 GGUF): per target position
    the same top-k ids as the resident float32 assistant, log-probs within f16's rounding; positions where a
    control token (<|im_end|>, text "") ranks in the top k are counted as inexact, not cached wrong."""
    from mulcot.core.refs import resolve_run
    from mulcot.models import load_model, load_with_adapter
    from mulcot.train.collator import MultiTaskCollator
    from mulcot.train.config import DistillConfig
    from mulcot.train.soft_labels import SoftLabelCache, assistant_top_k, build_soft_label_cache
    from mulcot.train.student import distill, distill_items

    run, _, server = served
    k = 8
    cfg = DistillConfig(dataset=SAMPLE_NAME, model=str(run.parent / "base"), name="stud-served",
                        runs_dir=str(tmp_path / "runs"), assistant=str(run), dev_split=None, soft_labels="server",
                        server=server.url, served_model="student", server_text_only=True, top_k=k,
                        max_train_items=1, epochs=1, batch_size=1, grad_accum=1, max_pixels=PIXELS,
                        lam=0.5)
    result = distill(demo_store, cfg)
    stats = json.loads((Path(result.folder) / "soft_labels" / "server.json").read_text())
    assert stats["kind"] == "llama-cpp-python" and stats["sequences"] == 2 and stats["padded_positions"] == 0
    served_cache = SoftLabelCache(Path(result.folder) / "soft_labels", demo_store.soft_label_index("stud-served"))

    base, processor, _ = load_model(run.parent / "base")
    assistant = load_with_adapter(base, run / "adapter").eval()
    collator = MultiTaskCollator(processor, "masc", max_pixels=PIXELS, text_only=True)
    items = distill_items(demo_store, cfg, resolve_run(demo_store, str(run)))[:1]
    here, _ = build_soft_label_cache(demo_store, "here", tmp_path / "here", assistant_top_k(assistant, collator, k),
                                     items)
    assert set(here.index) == set(served_cache.index) and len(here.index) == 2
    positions = same_top1 = same_set = 0
    worst = 0.0
    for key in here.index:
        ids_a, lp_a = here.get(key)
        ids_b, lp_b = served_cache.get(key)
        assert ids_a.shape == ids_b.shape
        for row in range(ids_a.shape[0]):
            positions += 1
            a = dict(zip(ids_a[row].tolist(), lp_a[row].tolist(), strict=True))
            b = dict(zip(ids_b[row].tolist(), lp_b[row].tolist(), strict=True))
            same_top1 += ids_a[row, 0] == ids_b[row, 0]
            same_set += set(a) == set(b)
            worst = max([worst] + [abs(a[i] - b[i]) for i in set(a) & set(b)])
    inexact = stats["inexact_positions"]
    print(f"positions {positions}: top-1 same {same_top1}, top-k set same {same_set}, inexact {inexact}, "
          f"max |Δ log-prob| {worst:.4f}")
    assert positions == stats["positions"]
    assert same_top1 >= positions - inexact and same_set >= 0.9 * positions - inexact
    assert worst < 0.05
