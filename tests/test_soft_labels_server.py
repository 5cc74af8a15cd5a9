"""``distill --soft-labels server`` against a scripted server that speaks vLLM's completions dialect (``echo``,
``logprobs=k``, ``return_tokens_as_token_ids``), backed by the tiny assistant itself: the cache equals the one the
resident assistant builds, a server dying mid-cache resumes, and servers that cannot give faithful soft labels are
refused in one line. vLLM itself cannot run here (no GPU); llama-cpp-python's real server is exercised in
test_serving_llama_server.py."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import dump
from test_distill import FAST, assistant  # noqa: F401  (fixture)
from typer.testing import CliRunner

from mulcot.annotate.chat_server import BackgroundServer
from mulcot.cli import app
from mulcot.core.refs import resolve_run
from mulcot.errors import MulcotError
from mulcot.models import load_model, load_with_adapter
from mulcot.sample import SAMPLE_NAME
from mulcot.train.collator import MultiTaskCollator
from mulcot.train.config import DistillConfig
from mulcot.train.soft_labels import SoftLabelCache, assistant_top_k, build_soft_label_cache
from mulcot.train.student import distill, distill_items

K = 8


class ScoringModel:
    """What vLLM's ``/v1/completions`` answers to ``echo`` + ``logprobs`` over a token-id prompt, from ``model``:
    entry j holds the top-k of the distribution predicting token j (and token j itself), keyed ``token_id:N``."""

    def __init__(self, model: Any, name: str = "asst", owner: str = "vllm"):
        self.model, self.name, self.owner = model, name, owner
        self.lock = threading.Lock()
        self.bodies: list[dict[str, Any]] = []
        self.answer_first = None  # int: answer this many requests, then drop every connection (a dead server)
        self.keys_as_text = False  # a server that ignores return_tokens_as_token_ids
        self.shift_ids = False  # a server that tokenizes otherwise
        self.max_logprobs = 20

    def __call__(self, body: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        with self.lock:
            self.bodies.append(body)
            if self.answer_first is not None and len(self.bodies) > self.answer_first:
                return 0, None
        k = int(body["logprobs"])
        if k > self.max_logprobs:
            return 400, {"error": {"message": f"Requested sample logprobs of {k}, which is greater than max "
                                              f"allowed: {self.max_logprobs}", "type": "BadRequestError"}}
        ids = list(body["prompt"])
        with self.lock, torch.no_grad():
            logprobs = torch.log_softmax(self.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        top = logprobs.topk(k, dim=-1)
        echoed = [i + 1 if self.shift_ids else i for i in ids]

        def key(i: int) -> str:
            return f"t{i}" if self.keys_as_text else f"token_id:{i}"

        tops: list[dict[str, float] | None] = [None]
        for j in range(1, len(ids)):
            entry = {key(int(i)): float(v) for i, v in zip(top.indices[j - 1], top.values[j - 1], strict=True)}
            entry[key(echoed[j])] = float(logprobs[j - 1, ids[j]])
            tops.append(entry)
        nxt = int(top.indices[-1, 0])
        tokens = [key(i) for i in echoed] + [key(nxt)]
        tops.append({key(nxt): float(top.values[-1, 0])})
        return 200, {
            "id": f"cmpl-{len(self.bodies)}", "object": "text_completion", "model": self.name,
            "choices": [{"index": 0, "text": "x", "finish_reason": "length",
                         "logprobs": {"tokens": tokens, "top_logprobs": tops, "text_offset": [0] * len(tokens),
                                      "token_logprobs": [None] + [0.0] * (len(tokens) - 1)}}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1},
        }


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
        scorer = self.server.scorer
        self._send(200, {"object": "list", "data": [{"id": scorer.name, "object": "model", "owned_by": scorer.owner}]})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        status, payload = self.server.scorer(body)
        if payload is None:
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self._send(status, payload)


class ScoringServer(BackgroundServer):
    def __init__(self, scorer: ScoringModel):
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.scorer = scorer  # type: ignore[attr-defined]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"


@pytest.fixture
def served_assistant(assistant):  # noqa: F811
    """The trained tiny assistant (base + adapter) behind a scripted vLLM-dialect server."""
    base, _, _ = load_model(_base(assistant))
    model = load_with_adapter(base, Path(assistant.folder) / "adapter").eval()
    scorer = ScoringModel(model)
    with ScoringServer(scorer) as server:
        yield assistant, scorer, server, model


def _base(assistant: Any) -> str:  # noqa: F811
    return resolve_run(None, assistant.folder).base_model


def _cfg(assistant: Any, url: str, tmp_path: Path, **kw: Any) -> DistillConfig:  # noqa: F811
    base = dict(dataset=SAMPLE_NAME, model=_base(assistant), name="stud", runs_dir=str(tmp_path / "runs"),
                assistant=assistant.folder, dev_split=None, soft_labels="server", server=url, served_model="asst",
                server_text_only=True, top_k=K, max_train_items=3, epochs=1, server_concurrency=2, lam=0.5,
                **FAST)
    return DistillConfig(**{**base, **kw})


def test_the_server_cache_equals_the_resident_assistants(demo_store, served_assistant, tmp_path):
    asst, scorer, server, model = served_assistant
    result = distill(demo_store, _cfg(asst, server.url, tmp_path))
    run = demo_store.get_run("stud")
    assert run["status"] == "done" and run["config"]["soft_labels"] == "server"
    assert run["config"]["server"] == server.url and run["config"]["served_model"] == "asst"
    # one request per sequence (3 items × 2 tasks), token ids, ids as keys, k log-probs
    assert len(scorer.bodies) == 6
    assert all(isinstance(b["prompt"], list) and b["echo"] and b["logprobs"] == K and b["max_tokens"] == 1
               and b["return_tokens_as_token_ids"] is True for b in scorer.bodies)
    stats = json.loads((Path(result.folder) / "soft_labels" / "server.json").read_text())
    assert stats["kind"] == "vllm" and stats["sequences"] == 6 and stats["inexact_positions"] == 0
    assert stats["padded_positions"] == 0 and stats["positions"] > 6
    assert demo_store.get_run("stud")["metrics"]["soft_labels_server"] == stats
    log = [json.loads(x) for x in (Path(result.folder) / "log.jsonl").read_text().splitlines()]
    assert any(r.get("kl_rea", 0) > 0 for r in log)

    # the resident assistant, on the same (text-only) sequences, caches the same top-k
    _, processor, _ = load_model(_base(asst))
    collator = MultiTaskCollator(processor, "masc", max_pixels=56 * 56, text_only=True)
    ref = resolve_run(demo_store, asst.folder)
    items = distill_items(demo_store, _cfg(asst, server.url, tmp_path), ref)[:3]
    here, missing = build_soft_label_cache(demo_store, "here", tmp_path / "here", assistant_top_k(model, collator, K),
                                           items)
    served = SoftLabelCache(Path(result.folder) / "soft_labels", demo_store.soft_label_index("stud"))
    assert missing == 0 and set(here.index) == set(served.index) and len(here.index) == 6
    for key in here.index:
        ids_a, lp_a = here.get(key)
        ids_b, lp_b = served.get(key)
        assert torch.equal(ids_a, ids_b), key
        assert torch.allclose(lp_a, lp_b, atol=1e-4), key


def test_a_server_dying_mid_cache_keeps_what_was_scored_and_resume_finishes(demo_store, served_assistant, tmp_path):
    asst, scorer, server, _ = served_assistant
    scorer.answer_first = 2
    cfg = _cfg(asst, server.url, tmp_path, server_concurrency=1)
    with pytest.raises(MulcotError) as info:
        distill(demo_store, cfg)
    message = str(info.value)
    assert "\n" not in message and "4 training sequences have no soft labels" in message
    assert "stopped answering" in message and "--resume" in message
    assert len(demo_store.soft_label_index("stud")) == 2 and demo_store.get_run("stud")["status"] == "failed"

    scorer.answer_first, scorer.bodies = None, []
    result = distill(demo_store, cfg, resume=True)
    assert len(scorer.bodies) == 4  # only what was missing
    assert len(demo_store.soft_label_index("stud")) == 6 and demo_store.get_run("stud")["status"] == "done"
    assert (Path(result.folder) / "adapter" / "adapter_config.json").is_file()


@pytest.mark.parametrize(("fault", "message"), [
    ("owner", "llamacpp) cannot give prompt log-probs"),
    ("model", "does not serve 'asst'"),
    ("text_keys", "keyed its log-probs by text"),
    ("shift", "tokenized the sequence otherwise"),
    ("max_logprobs", "--max-logprobs"),
])
def test_servers_that_cannot_give_faithful_soft_labels_are_refused_in_one_line(demo_store, served_assistant,
                                                                                 tmp_path, fault, message):
    asst, scorer, server, _ = served_assistant
    before_runs = {r["id"] for r in demo_store.list_runs()}
    if fault == "owner":
        scorer.owner = "llamacpp"
    elif fault == "model":
        scorer.name = "other"
    elif fault == "text_keys":
        scorer.keys_as_text = True
    elif fault == "shift":
        scorer.shift_ids = True
    else:
        scorer.max_logprobs = 4
    with pytest.raises(MulcotError) as info:
        distill(demo_store, _cfg(asst, server.url, tmp_path))
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert demo_store.soft_label_index("stud") == {}
    if fault in ("owner", "model"):  # found before the run is recorded
        assert {r["id"] for r in demo_store.list_runs()} == before_runs


def test_server_settings_are_checked_before_anything_is_written(demo_store, assistant, tmp_path):  # noqa: F811
    before = dump(demo_store)
    for kw, message in (({"served_model": ""}, "needs --server URL and --served-model"),
                        ({"server": "http://u:sk-secret@127.0.0.1:9/v1"}, "must not carry credentials"),
                        ({"soft_labels": "cache"}, "are for --soft-labels server"),
                        ({"server": "127.0.0.1:9"}, "must be an http"),
                        ({"server_text_only": False}, "pass --server-text-only")):
        with pytest.raises(MulcotError, match=message):
            distill(demo_store, _cfg(assistant, "http://127.0.0.1:9/v1", tmp_path, **kw))
    assert dump(demo_store) == before
    r = CliRunner().invoke(app, ["distill", SAMPLE_NAME, "--assistant", assistant.folder, "--student",
                                 _base(assistant), "--soft-labels", "server", "--server", "http://127.0.0.1:9/v1",
                                 "--served-model", "asst", "--server-text-only", "--db", demo_store.path])
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert r.exit_code == 1 and len(errors) == 1 and "cannot reach the server" in errors[0], r.output
    assert "Traceback" not in r.output
    assert dump(demo_store) == before


@pytest.mark.slow
def test_two_processes_cache_what_one_does(demo_store, served_assistant, tmp_path):
    """Under torchrun each rank scores its share through the server; the main process writes one cache, the same
    as a single process's."""
    from test_distributed import _run

    asst, scorer, server, _ = served_assistant
    args = ["distill", SAMPLE_NAME, "--assistant", asst.folder, "--student", _base(asst), "--db", str(demo_store.path),
            "--runs-dir", str(tmp_path / "runs"), "--epochs", "1", "--max-train-items", "4", "--no-dev",
            "--top-k", str(K), "--soft-labels", "server", "--server", server.url, "--served-model", "asst",
            "--server-text-only", "--max-pixels", str(56 * 56), "--json"]
    one = _run(*args, "--name", "one", "--batch-size", "2", nproc=None)
    assert one.returncode == 0, one.stderr
    two = _run(*args, "--name", "two", "--batch-size", "1")
    assert two.returncode == 0, two.stderr
    assert len(scorer.bodies) == 16  # 4 items × 2 tasks, once per run
    from mulcot.store import Store

    with Store.open(demo_store.path) as s:
        i1, i2 = s.soft_label_index("one"), s.soft_label_index("two")
        assert s.get_run("two")["metrics"]["world_size"] == 2
    assert set(i1) == set(i2) and len(i1) == 8
    c1 = SoftLabelCache(tmp_path / "runs" / "one" / "soft_labels", i1)
    c2 = SoftLabelCache(tmp_path / "runs" / "two" / "soft_labels", i2)
    for key in i1:
        (a_ids, a_lp), (b_ids, b_lp) = c1.get(key), c2.get(key)
        assert torch.equal(a_ids, b_ids) and torch.allclose(a_lp, b_lp, atol=1e-5), key


def test_llama_cpp_python_pairing_when_the_prompt_starts_with_bos():
    """llama-cpp-python's echo (0.3.x, read in its source and seen on SmolLM2, whose BOS is <|im_start|>): a leading
    BOS is left out and shifts the pairing, every other BOS token is left out, entry r is the distribution after
    the r-th kept prompt token; text keys map back through the tokenizer's pieces."""
    from types import SimpleNamespace

    from mulcot.train.soft_labels.server import LLAMA_CPP_PYTHON, ScoreStats, Sequence, top_k_rows

    texts = {5: "a", 6: "b", 7: "c", 8: "d"}
    pieces = SimpleNamespace(bos=1, piece={1: "", 2: "", **texts}, id_of={v: k for k, v in texts.items()}.get)
    seq = Sequence(key="k", text="", ids=[1, 5, 1, 6, 7, 2], positions=[3, 4])  # p predicts ids[p + 1]

    def after(i: int) -> dict[str, float]:  # the distribution after prompt token i, as text keys
        return {"a": -1.0 - i, "b": -2.0 - i, "c": -3.0 - i, "": -0.5}

    # all_tokens = ids[1:] + [generated]; the BOS at index 1 of all_tokens is dropped with its row
    answer = {"tokens": ["a", "b", "c", "", "d"], "top_logprobs": [None, after(2), after(3), after(4), after(5)]}
    ids, lps = top_k_rows(LLAMA_CPP_PYTHON, answer, seq, 2, pieces, 6, stats := ScoreStats())
    assert ids.tolist() == [[5, 6], [5, 6]] and lps.tolist() == [[-4.0, -5.0], [-5.0, -6.0]]
    assert stats.inexact_positions == 2  # "" (a control token) ranked first and cannot be mapped
    # the same prompt without the leading BOS: no shift
    seq = Sequence(key="k", text="", ids=[5, 1, 6, 7, 2], positions=[2, 3])
    answer = {"tokens": ["a", "b", "c", "", "d"], "top_logprobs": [None, after(2), after(3), after(4), after(5)]}
    ids, lps = top_k_rows(LLAMA_CPP_PYTHON, answer, seq, 2, pieces, 5, ScoreStats())
    assert lps.tolist() == [[-3.0, -4.0], [-4.0, -5.0]]
