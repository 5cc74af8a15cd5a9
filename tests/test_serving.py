"""Generation through an OpenAI-compatible server (mulcot.generation.server) for expand, eval --model and predict
--dataset, against mulcot's scripted chat server on 127.0.0.1 (faults: 429, 500, garbage bodies, a server that
goes away).
The same paths against llama-cpp-python's own server on a real GGUF are in test_serving_llama_server.py."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import dump
from typer.testing import CliRunner

from mulcot.annotate.chat_server import ChatServer, Reply, has_image, post_of, prompt_text
from mulcot.cli import app
from mulcot.core.prompts import get_prompt
from mulcot.core.reasoning import Reasoning
from mulcot.errors import MulcotError
from mulcot.expand import ExpandConfig, expand
from mulcot.generation import SOURCE_SERVER, PredictConfig, ServerBackend
from mulcot.generation.server import ServerConfig, ServerError, public_url
from mulcot.predict import predict_dataset
from mulcot.sample import SAMPLE_NAME


def chain(label: str) -> str:
    return Reasoning("The text.", "The image.", "No conflict.", f"Overall {label}.", label).to_text()


class Gold:
    """A responder that answers every post with its gold label (five fields, or the label line for P_label),
    after the faults scripted for a post's text: a list of Replies used up one per request."""

    def __init__(self, store: Any, faults: dict[str, list[Reply]] | None = None):
        self.gold = {s["text"]: s["label"] for s in store.samples(SAMPLE_NAME)}
        self.faults = faults or {}
        self.lock = threading.Lock()
        self.bodies: list[dict[str, Any]] = []
        self.dead = False  # drop every connection (a stopped server's kept-alive ones too)

    def __call__(self, body: dict[str, Any]) -> Reply:
        if self.dead:
            return Reply(drop=True)
        text, _ = post_of(body)
        with self.lock:
            self.bodies.append(body)
            queue = self.faults.get(text)
            if queue:
                return queue.pop(0)
        label = self.gold.get(text, "neutral")
        if "Prediction" in prompt_text(body) and "Text_analysis" not in prompt_text(body):
            return Reply(text=f'"Prediction": {label}')
        return Reply(text=chain(label))


def _server_config(server: ChatServer, **kw: Any) -> ServerConfig:
    settings = {"served_model": server._server.model, "backoff_s": 0.01, "http_retries": 2, **kw}
    return ServerConfig(url=server.base_url, **settings)


def _run(*args: Any, code: int = 0) -> Any:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


def test_public_url_drops_credentials():
    assert public_url("http://user:sk-secret@10.0.0.2:8000/v1?key=sk-x") == "http://10.0.0.2:8000/v1"


def test_a_server_without_the_model_or_no_server_is_refused_in_one_line(demo_store):
    before = dump(demo_store)
    with ChatServer(Gold(demo_store), model="student") as server:
        r = _run("predict", "--dataset", SAMPLE_NAME, "--server", server.base_url, "--served-model", "other",
                 "--db", demo_store.path, code=1)
        assert r.output.strip().count("\n") == 0, r.output
        assert "does not serve 'other' (it serves: student)" in r.output
        url = server.base_url
    r = _run("eval", "run", SAMPLE_NAME, "--model", "/nowhere", "--server", url, "--served-model", "student",
             "--db", demo_store.path, code=1)
    assert r.output.strip().count("\n") == 0 and "cannot reach the server" in r.output, r.output
    _run("predict", "--dataset", SAMPLE_NAME, "--server", url, "--db", demo_store.path, code=1)
    assert dump(demo_store) == before


def test_predict_through_a_faulty_server_retries_marks_failures_and_resumes(demo_store):
    samples = demo_store.samples(SAMPLE_NAME, "test")[:4]
    t = [s["text"] for s in samples]
    faults = {
        t[0]: [Reply(status=429, headers={"Retry-After": "0"}), Reply(status=500)],  # retried, then answered
        t[1]: [Reply(raw=b"<html>502 bad gateway</html>")],  # a body that is no completion: retried
        t[2]: [Reply(status=500)] * 6,  # fails for good: both prompts, reason kept, nothing stored
        t[3]: [Reply(drop=True)],  # a dropped connection: retried
    }
    gold = Gold(demo_store, faults)
    with ChatServer(gold) as server:
        backend = ServerBackend(_server_config(server, concurrency=3), PredictConfig(max_tokens=64))
        summary = predict_dataset(demo_store, backend, SAMPLE_NAME, "test", limit=4, prompts=("cot", "label"))
        served = summary.served
        assert served["answered"] == 6 and served["failed"] == 2 and served["http_retries"] >= 4
        assert all("HTTP 500; gave up after 3 tries" in f for f in served["failures"]), served["failures"]
        assert {f.split(" (")[0] for f in served["failures"]} == {f"sample {samples[2]['key']}"}
        rows = demo_store.reasonings(dataset=SAMPLE_NAME, split="test", source=SOURCE_SERVER)
        assert len(rows) == 6 and all(r["raw"] is not None and r["error"] is None for r in rows)
        assert {r["sample_id"] for r in rows} == {s["id"] for s in samples} - {samples[2]["id"]}
        # stored exactly as the GGUF backend stores its chains: stage, prompt version, parsed label, run
        cot = [r for r in rows if r["stage"] == "eval"]
        assert all(r["valid"] and r["prediction"] == r["gold"] for r in cot)
        assert {r["prompt_version"] for r in cot} == {get_prompt("cot", "masc").version}
        assert {r["model"] for r in rows} == {"local"} and {r["run_id"] for r in rows} == {summary.run_id}
        run = demo_store.get_run(summary.run_id)
        assert run["config"]["server"]["url"] == server.base_url and run["config"]["backend"] == "server"
        assert run["metrics"]["served"]["failed"] == 2
        # the image travelled as a PNG data URL, before the prompt text, in one user message
        asked = [b for b in gold.bodies if has_image(b)]
        assert asked and asked[0]["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png")
        assert asked[0]["temperature"] == 0 and asked[0]["top_k"] == 1 and asked[0]["repeat_penalty"] == 1.0
        # the rerun asks only for what is missing
        again = predict_dataset(demo_store, backend, SAMPLE_NAME, "test", limit=4, prompts=("cot", "label"))
        assert again.served["answered"] == 2 and again.skipped_done == 3 and again.chains == 4
    rows = demo_store.reasonings(dataset=SAMPLE_NAME, split="test", source=SOURCE_SERVER)
    assert len(rows) == 8 and set(Counter((r["sample_id"], r["stage"]) for r in rows).values()) == {1}


def test_a_server_that_dies_mid_run_is_one_line_and_a_rerun_completes(demo_store):
    gold = Gold(demo_store)
    server = ChatServer(gold).start()
    port = int(server.base_url.rsplit(":", 1)[1].split("/")[0])
    answered: list[int] = []

    def progress(event: Any) -> None:
        answered.append(event.done)
        if event.done == 3:
            server.stop()
            gold.dead = True

    cfg = _server_config(server, concurrency=1, http_retries=1)
    backend = ServerBackend(cfg, PredictConfig(max_tokens=64))
    with pytest.raises(ServerError) as info:
        predict_dataset(demo_store, backend, SAMPLE_NAME, "test", limit=6, progress=progress)
    message = str(info.value)
    assert "\n" not in message and "stopped answering" in message and "rerun the same command" in message
    rows = demo_store.reasonings(dataset=SAMPLE_NAME, split="test", source=SOURCE_SERVER)
    assert len(rows) == 3 and all(r["raw"] is not None and r["valid"] for r in rows)
    run = demo_store.get_run(f"predict-local-{SAMPLE_NAME}-test")
    assert run["status"] == "failed" and "stopped answering" in run["error"]
    gold.dead = False
    with ChatServer(gold, port=port):  # back on the same port: the same command completes, no duplicates
        summary = predict_dataset(demo_store, backend, SAMPLE_NAME, "test", limit=6)
    assert summary.skipped_done == 3 and summary.predicted == 3
    rows = demo_store.reasonings(dataset=SAMPLE_NAME, split="test", source=SOURCE_SERVER)
    assert len(rows) == 6 == len({r["sample_id"] for r in rows})
    assert demo_store.get_run(summary.run_id)["status"] == "done"


def _adapter(base: Path, runs: Path, name: str, targets: Any) -> Path:
    """A LoRA adapter on ``base`` saved as a run folder (no training: serving never loads it)."""
    from peft import LoraConfig, get_peft_model

    from mulcot.models import load_model

    model, processor, _ = load_model(base)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=targets))
    adapter = runs / name / "adapter"
    peft_model.save_pretrained(adapter)
    (adapter / "mulcot.json").write_text(json.dumps({"run": name, "base": str(base)}))
    return runs / name


def test_expand_and_eval_through_a_server_store_what_in_process_stores(demo_store, compact_model, tmp_path):
    from mulcot.train.config import LANGUAGE_ONLY

    runs = tmp_path / "runs"
    asst = _adapter(compact_model(), runs, "asst", LANGUAGE_ONLY)
    gold = Gold(demo_store)
    train = demo_store.samples(SAMPLE_NAME, "train")[:3]
    wrong = {"positive": "negative", "neutral": "positive", "negative": "neutral"}[train[0]["label"]]
    gold.faults[train[0]["text"]] = [Reply(text=chain(wrong))]  # its first chain is rejected from D_a
    with ChatServer(gold, model="asst") as server:
        cfg = ExpandConfig(dataset=SAMPLE_NAME, assistant=str(asst), n=2, limit=3, max_new_tokens=64,
                           server=_server_config(server, concurrency=2))
        summary = expand(demo_store, cfg)
        assert summary.generated == 6 and summary.samples == 3 and summary.served["answered"] == 6
        assert summary.assistant_set == 5 and sum(summary.rejected.values()) == 1 and not summary.warnings
        rows = demo_store.reasonings(dataset=SAMPLE_NAME, split="train", source="assistant", stage="expand")
        assert len(rows) == 6 and {r["run_id"] for r in rows} == {"asst"}
        assert {r["model"] for r in rows} == {str(compact_model())} and {r["origin"] for r in rows} == {"expand"}
        assert {r["prompt_version"] for r in rows} == {get_prompt("cot", "masc").version}
        sampled = [b for b in gold.bodies if "Text_analysis" in prompt_text(b)]
        assert {b["temperature"] for b in sampled} == {0.7} and len({b["seed"] for b in sampled}) == 6
        from mulcot.core.refs import adapter_digest

        run = demo_store.get_run(f"expand-asst-{SAMPLE_NAME}")
        assert run["config"]["server"]["served_model"] == "asst"
        assert run["config"]["adapter_sha256"] == adapter_digest(asst / "adapter")
        # resume: n=3 asks for one more chain per sample, nothing else
        more = expand(demo_store, ExpandConfig(**{**cfg.__dict__, "n": 3}))
        assert more.generated == 3 and more.served["requests"] == 3

        # eval --model through the server: chains (stage eval) and generated label answers (stage label; the
        # scripted server has no completions endpoint, so no forced choice), adapter-hashed
        args = ("eval", "run", SAMPLE_NAME, "--split", "test", "--model", asst, "--limit", 3, "--max-new-tokens", 32,
                "--metrics", "bleu", "--server", server.base_url, "--served-model", "asst", "--runs-dir", runs,
                "--label-scoring", "generate", "--db", demo_store.path, "--json")
        data = json.loads(_run(*args).stdout)
        m = data["metrics"]
        assert m["generated"]["chains_generated"] == 3 and m["generated"]["served"]["answered"] == 6
        assert m["label"]["accuracy"] == 1.0 and m["chain"]["accuracy"] == 1.0 and m["consistency"] == 1.0
        chains = demo_store.reasonings(dataset=SAMPLE_NAME, split="test", run_id="asst", stage="eval")
        assert len(chains) == 3 and all(c["origin"].endswith("@" + adapter_digest(asst / "adapter")[:12])
                                        for c in chains)
        again = json.loads(_run(*args).stdout)
        assert again["metrics"]["generated"]["chains_reused"] == 3 and "served" not in again["metrics"]["generated"]

    # an adapter with vision-tower LoRA weights: served by vLLM they would be dropped, so the user is warned
    vis = _adapter(compact_model(), runs, "vis", ["q_proj", "qkv"])
    with ChatServer(Gold(demo_store), model="vis") as server:
        warned = expand(demo_store, ExpandConfig(dataset=SAMPLE_NAME, assistant=str(vis), limit=1, max_new_tokens=16,
                                                 server=_server_config(server)))
    assert len(warned.warnings) == 1 and "vision tower" in warned.warnings[0]


def test_budget_stops_and_settings_are_checked(demo_store):
    with ChatServer(Gold(demo_store)) as server:
        backend = ServerBackend(_server_config(server, concurrency=1, max_requests=2), PredictConfig(max_tokens=32))
        summary = predict_dataset(demo_store, backend, SAMPLE_NAME, "test", limit=5)
        assert summary.served["stopped"] == "requests" and summary.predicted == 2
        assert demo_store.get_run(summary.run_id)["status"] == "stopped"
        with pytest.raises(MulcotError, match="concurrency"):
            ServerBackend(_server_config(server, concurrency=0))
        # the CLI goes on from there (and says how to score it)
        r = _run("predict", "--dataset", SAMPLE_NAME, "--limit", 3, "--label", "--server", server.base_url,
                 "--served-model", "local", "--concurrency", 2, "--db", demo_store.path, "--json")
        out = json.loads(r.stdout)
        assert out["source"] == SOURCE_SERVER and out["predicted"] == 1 and out["extra_prompts"] == {"label": 3}
        assert out["chains"] == 3 and out["accuracy"] == 1.0 and out["served"]["answered"] == 4
        r = _run("predict", "--dataset", SAMPLE_NAME, "--server", server.base_url, "--served-model", "local",
                 "--gguf", "x.gguf", "--db", demo_store.path, code=1)
        assert "leave out --gguf" in r.output
