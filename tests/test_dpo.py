"""mulcot dpo on a tiny Qwen-VL (compact vocabulary), CPU: the reference is the starting adapter, the loss falls and
the reward margin rises, the result is a run like any other, bad input is refused, and a killed run resumes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import wait_until
from typer.testing import CliRunner

from mulcot.cli import app
from mulcot.core.reasoning import Reasoning
from mulcot.core.refs import adapter_digest, resolve
from mulcot.errors import MulcotError
from mulcot.sample import SAMPLE_NAME
from mulcot.train.assistant import train_assistant
from mulcot.train.config import PreferenceConfig, TrainConfig
from mulcot.train.dpo import dpo

FAST = dict(batch_size=2, grad_accum=1, max_pixels=56 * 56)


@pytest.fixture
def start(demo_store, compact_model, tmp_path):
    """A tiny assistant trained for two steps, and a wrong teacher chain for the first 4 D_t samples (4 pairs)."""
    cfg = TrainConfig(dataset=SAMPLE_NAME, model=str(compact_model()), name="asst", runs_dir=str(tmp_path / "runs"),
                      epochs=1, max_train_items=4, dev_split=None, lr=2e-3, lora_dropout=0.0, **FAST)
    result = train_assistant(demo_store, cfg)
    _add_misses(demo_store, 4)
    return result


def _add_misses(store, n: int) -> list[int]:
    """A wrong teacher chain (a stage-1 miss) for the first ``n`` D_t samples: ``n`` teacher pairs."""
    flip = {"positive": "negative", "negative": "positive", "neutral": "positive"}
    seen: list[int] = []
    for c in store.teacher_set(SAMPLE_NAME, "train"):
        if c["sample_id"] in seen:
            continue
        seen.append(c["sample_id"])
        bad = flip[c["gold"]]
        text = Reasoning("The text mocks it.", "A dark image.", "None.", f"It is {bad}.", bad).to_text()
        store.add_reasoning(sample_id=c["sample_id"], source="teacher", model="t", stage="predict", raw=text,
                            text=text, prediction=bad, parse_status="full", final=True)
        if len(seen) == n:
            break
    return seen


def _cfg(tmp_path, **kw) -> PreferenceConfig:
    base = dict(dataset=SAMPLE_NAME, model=str(tmp_path / "runs" / "asst"), name="pref",
                runs_dir=str(tmp_path / "runs"), sources="teacher", **FAST)
    return PreferenceConfig(**{**base, **kw})


def _log(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "log.jsonl").read_text().splitlines() if '"loss"' in x]


def test_dpo_starts_at_the_adapter_and_learns_the_preference(demo_store, start, tmp_path):
    before = adapter_digest(start.adapter)
    result = dpo(demo_store, _cfg(tmp_path, epochs=4, lr=5e-3, beta=0.5))
    rows = _log(Path(result.folder))
    assert result.steps == 8 and [r["step"] for r in rows] == list(range(1, 9))
    # step 1 is measured before any update: policy == reference (the starting adapter, not the base model)
    assert abs(rows[0]["rewards/chosen"]) < 1e-5 and abs(rows[0]["rewards/rejected"]) < 1e-5
    assert abs(rows[0]["loss"] - 0.6931) < 1e-3
    first, last = rows[:2], rows[-2:]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    assert mean(last, "loss") < mean(first, "loss") - 0.05, rows
    assert mean(last, "rewards/margins") > mean(first, "rewards/margins") + 0.1, rows
    assert last[-1]["rewards/accuracies"] == 1.0
    assert (Path(result.folder) / "curves.png").is_file()
    # the run is recorded and resolves like any run: eval --model and export take it
    run = demo_store.get_run("pref")
    assert run["kind"] == "dpo" and run["status"] == "done" and run["metrics"]["pairs"] == 4
    assert run["config"]["start_run"] == "asst" and run["config"]["pairs"]["counts"]["teacher"]
    ref = resolve(demo_store, "pref", tmp_path / "runs")
    assert ref.kind == "run" and ref.run.base_model == resolve(demo_store, "asst", tmp_path / "runs").run.base_model
    assert ref.run.adapter == Path(result.adapter) and not (Path(result.adapter) / "ref").exists()
    assert adapter_digest(start.adapter) == before != adapter_digest(result.adapter)
    from mulcot.evaluate.select import resolve_model

    subject = resolve_model(demo_store, "pref", tmp_path / "runs")
    assert subject.adapter == str(result.adapter) and subject.run_kind == "dpo"
    assert subject.source == "assistant"  # its chains are stored as the source of the run it started from
    from mulcot.models import load_model
    from mulcot.models.loading import load_with_adapter

    base, _, _ = load_model(ref.run.base_model)
    assert list(load_with_adapter(base, ref.run.adapter).peft_config) == ["default"]


def test_dpo_refuses_bad_input(demo_store, start, tmp_path):
    with pytest.raises(MulcotError, match="--loss 'nope'"):
        dpo(demo_store, _cfg(tmp_path, loss="nope"))
    with pytest.raises(MulcotError, match="--beta"):
        dpo(demo_store, _cfg(tmp_path, beta=0))
    with pytest.raises(MulcotError, match="evaluation split"):
        dpo(demo_store, _cfg(tmp_path, split="dev"))
    with pytest.raises(MulcotError, match="no preference pairs"):
        dpo(demo_store, _cfg(tmp_path, sources="student"))
    r = CliRunner().invoke(app, ["dpo", SAMPLE_NAME, "--model", "nope", "--db", str(demo_store.path), "--from",
                                 "teacher"])
    assert r.exit_code == 1 and "no run folder" in r.output and "Traceback" not in r.output
    assert demo_store.get_run("pref") is None and demo_store.get_run("dpo-" + SAMPLE_NAME) is None


@pytest.mark.slow
def test_dpo_resumes_after_a_kill(demo_store, start, tmp_path):
    exe = str(Path(sys.executable).parent / "mulcot")
    common = ["dpo", SAMPLE_NAME, "--model", "asst", "--db", str(demo_store.path), "--runs-dir",
              str(tmp_path / "runs"), "--from", "teacher", "--epochs", "3", "--batch-size", "1", "--grad-accum", "1",
              "--max-pixels", "3136", "--save-steps", "1", "--lr", "5e-3", "--json", "--name", "cut"]
    proc = subprocess.Popen([exe, *common], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = tmp_path / "runs" / "cut"
    wait_until(lambda: (folder / "log.jsonl").exists() and len(_log(folder)) >= 4, 300, process=proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (folder / "adapter").exists() and len(_log(folder)) < 12
    # a chain added meanwhile makes a fifth pair: the resumed run keeps the four it started with
    paired = {p[0] for p in json.loads((folder / "pairs.json").read_text())}
    fifth = next(c for c in demo_store.teacher_set(SAMPLE_NAME, "train") if c["id"] not in paired
                 and c["sample_id"] not in {x["sample_id"] for x in demo_store.reasonings(dataset=SAMPLE_NAME)
                                            if x["prediction"] != x["gold"]})
    wrong = "negative" if fifth["gold"] != "negative" else "positive"
    text = Reasoning("a", "b", "c", "d", wrong).to_text()
    demo_store.add_reasoning(sample_id=fifth["sample_id"], source="teacher", model="t", stage="predict", raw=text,
                             text=text, prediction=wrong, parse_status="full", final=True)
    again = subprocess.run([exe, *common], capture_output=True, text=True)
    assert again.returncode != 0 and "--resume" in again.stderr
    resumed = subprocess.run([exe, *common, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    out = json.loads(resumed.stdout)
    assert out["steps"] == 12 and Path(out["adapter"]).is_dir()
    steps = {r["step"]: r for r in _log(folder)}  # a step redone after the kill overwrites the lost one
    assert sorted(steps) == list(range(1, 13))
    assert steps[12]["rewards/margins"] > steps[1]["rewards/margins"]
    assert demo_store.get_run("cut")["status"] == "done"


@pytest.mark.slow
def test_dpo_under_two_processes_trains_like_one(demo_store, start, tmp_path):
    """torchrun, 2 ranks × batch 1 = 1 process × batch 2: the same steps, losses and reward margins (each rank's
    metrics averaged), one run record, one log, one adapter."""
    from test_distributed import LOSS_RTOL, _run

    runs = tmp_path / "runs"
    args = ["dpo", SAMPLE_NAME, "--model", "asst", "--db", str(demo_store.path), "--runs-dir", str(runs), "--from",
            "teacher", "--epochs", "2", "--grad-accum", "1", "--max-pixels", "3136", "--lr", "5e-3", "--beta", "0.5",
            "--json"]
    one = _run(*args, "--name", "one", "--batch-size", "2", nproc=None)
    assert one.returncode == 0, one.stderr
    two = _run(*args, "--name", "two", "--batch-size", "1")
    assert two.returncode == 0, two.stderr
    assert two.stdout.count('"run"') == 1  # printed once, by the main process
    r1, r2 = json.loads(one.stdout), json.loads(two.stdout)
    assert r1["steps"] == r2["steps"] == 4 and r2["launch"]["world_size"] == 2 and r2["launch"]["backend"] == "gloo"
    l1, l2 = _log(runs / "one"), _log(runs / "two")
    assert [r["step"] for r in l2] == [1, 2, 3, 4]  # one line per step: the main process alone writes the log
    for a, b in zip(l1, l2, strict=True):
        assert abs(a["loss"] - b["loss"]) <= LOSS_RTOL * abs(a["loss"]), (l1, l2)
        assert abs(a["rewards/margins"] - b["rewards/margins"]) <= 1e-2 + LOSS_RTOL * abs(a["rewards/margins"])
    run = demo_store.get_run("two")
    assert run["status"] == "done" and run["config"]["world_size"] == 2 and run["config"]["effective_batch"] == 2
    assert sorted(r["id"] for r in demo_store.list_runs("dpo")) == ["one", "two"]
    assert sorted(p.name for p in (runs / "one").iterdir()) == sorted(p.name for p in (runs / "two").iterdir())
    pairs = [json.loads((runs / name / "pairs.json").read_text()) for name in ("one", "two")]
    assert pairs[0] == pairs[1]


def test_dpo_knobs_are_flags_and_recipe_keys(tmp_path):
    from mulcot.core.settings import config_fields
    from mulcot.pipeline import Pipeline
    from mulcot.pipeline.recipes import parse_recipe
    from mulcot.store import Store

    text = CliRunner().invoke(app, ["dpo", "--help"], env={"COLUMNS": "240"}).output
    for f in config_fields(PreferenceConfig, cli=True):
        assert (f.metadata.get("flag") or "--" + f.name.replace("_", "-")) in text, f.name
    recipe_text = ('name = "r"\n[dataset]\nname = "d"\nformat = "jsonl"\npath = "x.jsonl"\n[assistant]\nmodel = "m"\n'
                   '[student]\nmodel = "s"\n[training]\nseed = 7\n')
    plain = parse_recipe(recipe_text, "r.toml")
    off = parse_recipe(recipe_text + "[dpo]\nbeta = 0.3\n", "r.toml")
    on = parse_recipe(recipe_text + '[dpo]\nenabled = true\nbeta = 0.3\nloss = "ipo"\nsources = "teacher"\n', "r.toml")
    # a recipe without DPO keeps its hashes; enabling it reruns dpo, eval and export only
    for stage in ("distill", "eval", "export"):
        assert plain.stage_hash(stage) == off.stage_hash(stage)
    assert plain.stage_hash("distill") == on.stage_hash("distill") and plain.stage_hash("eval") != on.stage_hash("eval")
    with Store.open(tmp_path / "m.db") as store:
        pipe = Pipeline(store, on)
        cfg = pipe._dpo_config()
        assert (cfg.beta, cfg.loss, cfg.sources, cfg.seed, cfg.model) == (0.3, "ipo", "teacher", 7,
                                                                          pipe.run_name("distill"))
        assert pipe.final_student() == pipe.run_name("dpo")
        assert Pipeline(store, off).final_student() == pipe.run_name("distill")
    for bad, message in (('loss = "nope"', "'dpo.loss' is 'nope'"), ("beta = 0.0", "'dpo.beta' must be positive"),
                         ('sources = "x"', "'dpo.sources'")):
        with pytest.raises(MulcotError, match=message):
            parse_recipe(recipe_text + f"[dpo]\n{bad}\n", "r.toml")


def test_dpo_result_table_shows_rewards(capsys):
    from mulcot.cli.train import print_result

    print_result({"run": "pref", "adapter": "runs/pref/adapter", "steps": 8, "train_loss": 0.5, "wall_s": 3.0,
                  "best": {"step": 8, "epoch": 4.0, "rewards/margins": 1.25, "rewards/accuracies": 1.0}})
    out = capsys.readouterr().out
    assert "reward margin" in out and "1.2500" in out and "dev accuracy" not in out


def test_dpo_of_a_text_only_backbone(demo_store, tiny_text_model, tmp_path):
    """A text-only run: the image becomes its caption in the pair's prompt, TRL gets the tokenizer, no images."""
    from mulcot.train.dpo import preference_rows
    from mulcot.train.pairs import build_pairs

    cfg = TrainConfig(dataset=SAMPLE_NAME, model=str(tiny_text_model()), name="text-asst",
                      runs_dir=str(tmp_path / "runs"), epochs=1, max_train_items=2, dev_split=None, lr=2e-3,
                      lora_dropout=0.0, **FAST)
    train_assistant(demo_store, cfg)
    first = _add_misses(demo_store, 2)[0]
    demo_store.set_caption(first, "A man holds a trophy.")
    rows = preference_rows(build_pairs(demo_store, SAMPLE_NAME, sources="teacher"), text_only=True, max_pixels=3136)
    assert len(rows) == 2 and all("images" not in r for r in rows)
    assert "Image (described in words): A man holds a trophy." in rows[0]["prompt"][0]["content"]
    result = dpo(demo_store, _cfg(tmp_path, model="text-asst", name="text-pref", lr=5e-3))
    log = _log(Path(result.folder))
    assert result.steps == 1 and abs(log[0]["rewards/margins"]) < 1e-5
    assert demo_store.get_run("text-pref")["config"]["family"] == "qwen2"
    assert (Path(result.adapter) / "adapter_config.json").is_file()
