"""mulcot grpo: the rewards' exact values, and on a tiny text model (CPU) — 8 steps from a trained adapter whose KL
starts at 0 against that adapter and then grows, the run is a run like any other, bad input is refused in one line
with the store unchanged, and a SIGKILLed run resumes with each step logged once."""

from __future__ import annotations

import json
import shutil
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
from mulcot.train import rewards
from mulcot.train.config import RLConfig

GOOD = Reasoning("The text praises the team.", "A smiling crowd.", "Both agree.", "It is positive.",
                 "positive").to_text()
WRONG = Reasoning("The text mocks it.", "A dark image.", "None.", "It is negative.", "negative").to_text()
MALFORMED = '"Text_analysis": "It praises the team."\n\n"Prediction": "positive"'  # 2 of the 5 fields
CHAT = [{"role": "assistant", "content": GOOD}]  # a conversational completion, as TRL passes it


def test_rewards_exact_values():
    # label correct: the chain's Prediction against gold
    assert rewards.label_correct([GOOD, WRONG, MALFORMED, "", CHAT], gold=["positive"] * 5) == [1.0, 0.0, 1.0, 0.0,
                                                                                                 1.0]
    # the five fields parse: 1 when all do, else the share found (malformed: Text_analysis and Prediction)
    assert rewards.fields_parse([GOOD, WRONG, MALFORMED, "", "no fields at all"]) == [1.0, 1.0, 0.4, 0.0, 0.0]
    # agreement with the label head: a good chain whose Prediction the label head contradicts is inconsistent
    assert rewards.agrees_with_label_head([GOOD, GOOD, WRONG, ""], label_head=["positive", "neutral", "negative",
                                                                               "neutral"]) == [1.0, 0.0, 1.0, 0.0]
    # the weighted sum the trainer takes (default weights 1, 0.5, 0.5)
    assert rewards.total(GOOD, "positive", "positive") == 2.0
    assert rewards.total(GOOD, "positive", "negative") == 1.5  # inconsistent with its label head
    assert rewards.total(WRONG, "positive", "negative") == 1.0  # wrong label, well-formed, consistent
    assert rewards.total(MALFORMED, "positive", "positive") == pytest.approx(1.7)
    assert rewards.total(MALFORMED, "positive", "positive", weights=(0, 1, 0)) == pytest.approx(0.4)
    assert rewards.REWARDS == tuple(rewards.FUNCTIONS)


@pytest.fixture(scope="module")
def started(tmp_path_factory, tiny_text_model):
    """A store with the embedded sample and a tiny text assistant trained hard on 8 chains, on a copy of the tiny
    text model whose embeddings are scaled up (a random model's near-uniform logits never sample a label word, so
    every reward would be 0 and GRPO would have nothing to learn from)."""
    import torch
    from transformers import AutoModelForCausalLM

    from mulcot.pipeline.demo import run_demo
    from mulcot.store import Store
    from mulcot.train.assistant import train_assistant
    from mulcot.train.config import TrainConfig

    root = tmp_path_factory.mktemp("grpo")
    source, sharp = tiny_text_model(), root / "sharp"
    shutil.copytree(source, sharp)
    model = AutoModelForCausalLM.from_pretrained(source)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(25.0)
    model.save_pretrained(sharp)
    store = Store.open(root / "mulcot.db")
    run_demo(store)
    train_assistant(store, TrainConfig(dataset=SAMPLE_NAME, model=str(sharp), name="asst", runs_dir=str(root / "runs"),
                                       epochs=40, max_train_items=8, dev_split=None, lr=2e-2, lora_dropout=0.0,
                                       batch_size=4, grad_accum=1))
    yield store, root
    store.close()


def _cfg(root: Path, **kw) -> RLConfig:
    base = dict(dataset=SAMPLE_NAME, model="asst", name="rl", runs_dir=str(root / "runs"), steps=8, group_size=4,
                max_new_tokens=64, max_prompts=8, lr=5e-3, temperature=0.7)
    return RLConfig(**{**base, **kw})


def _log(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "log.jsonl").read_text().splitlines() if '"loss"' in x]


def test_grpo_starts_at_the_adapter_and_moves_away(started):
    from mulcot.train.grpo import grpo

    store, root = started
    before = adapter_digest(root / "runs" / "asst" / "adapter")
    result = grpo(store, _cfg(root))
    rows = _log(Path(result.folder))
    assert result.steps == 8 and [r["step"] for r in rows] == list(range(1, 9))
    # step 1 is measured before any update: the policy is its reference, the starting adapter (against the base
    # model the trained adapter would be far off); once a group's rewards differ the policy moves and the KL grows
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert max(r["kl"] for r in rows) > 1e-3, rows
    assert any(r["reward_std"] > 0 for r in rows)
    for name in rewards.REWARDS:
        assert all(f"rewards/{name}/mean" in r for r in rows)
    assert (Path(result.folder) / "curves.png").is_file()
    heads = json.loads((Path(result.folder) / "prompts.json").read_text())
    assert len(heads) == 8 and set(heads.values()) <= {"positive", "neutral", "negative"}
    run = store.get_run("rl")
    assert run["kind"] == "grpo" and run["status"] == "done" and run["metrics"]["prompts"] == 8
    assert run["config"]["start_run"] == "asst" and run["config"]["rewards"] == list(rewards.REWARDS)
    ref = resolve(store, "rl", root / "runs")
    assert ref.kind == "run" and ref.run.adapter == Path(result.adapter) and not (Path(result.adapter) / "ref").exists()
    assert adapter_digest(root / "runs" / "asst" / "adapter") == before != adapter_digest(result.adapter)
    from mulcot.evaluate.select import resolve_model
    from mulcot.models import load_model
    from mulcot.models.loading import load_with_adapter

    subject = resolve_model(store, "rl", root / "runs")
    assert subject.adapter == str(result.adapter) and subject.run_kind == "grpo"
    base, _, _ = load_model(ref.run.base_model)
    assert list(load_with_adapter(base, ref.run.adapter).peft_config) == ["default"]
    out = CliRunner().invoke(app, ["predict", "--backend", "hf", "--model", "rl", "--text", "Great game by Arsenal !",
                                   "--aspect", "Arsenal", "--max-tokens", "8", "--db", str(store.path), "--json"])
    assert out.exit_code == 0, out.output


def test_grpo_refuses_bad_input(started, tmp_path):
    from mulcot.datasets import import_dataset
    from mulcot.train.grpo import grpo

    store, root = started
    runs_before = sorted(r["id"] for r in store.list_runs())
    with pytest.raises(MulcotError, match="--group-size must be at least 2, got 1"):
        _cfg(root, group_size=1)
    r = CliRunner().invoke(app, ["grpo", SAMPLE_NAME, "--model", "asst", "--group-size", "1", "--db",
                                 str(store.path), "--runs-dir", str(root / "runs")])
    assert r.exit_code != 0 and "--group-size must be at least 2" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    # a dataset without gold labels
    posts = tmp_path / "posts.jsonl"
    posts.write_text("".join(json.dumps({"text": f"post {i} about $T$", "aspect": "X"}) + "\n" for i in range(3)))
    import_dataset(store, "jsonl", posts, name="unlabelled", split="train", no_images=True)
    with pytest.raises(MulcotError, match="no gold labels") as err:
        grpo(store, _cfg(root, dataset="unlabelled", name="x1"))
    assert "\n" not in str(err.value)
    with pytest.raises(MulcotError, match="evaluation split"):
        grpo(store, _cfg(root, split="test", name="x2"))
    # a start that is no mulcot run, and a run whose base is of a family mulcot does not train
    with pytest.raises(MulcotError, match="no run folder"):
        grpo(store, _cfg(root, model="nope", name="x3"))
    alien = tmp_path / "alien"
    (alien / "base").mkdir(parents=True)
    (alien / "base" / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    template = "{{ messages }}{% if add_generation_prompt %}<|im_start|>assistant{% endif %}"
    (alien / "base" / "chat_template.jinja").write_text(template)
    shutil.copytree(root / "runs" / "asst" / "adapter", alien / "adapter")
    config = json.loads((alien / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(alien / "base")
    (alien / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    (alien / "adapter" / "mulcot.json").write_text(json.dumps({"run": "alien", "base": str(alien / "base")}))
    r = CliRunner().invoke(app, ["grpo", SAMPLE_NAME, "--model", str(alien), "--name", "x4", "--db", str(store.path),
                                 "--runs-dir", str(root / "runs")])
    assert r.exit_code != 0 and "bert" in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    assert sorted(x["id"] for x in store.list_runs()) == runs_before
    assert not any((root / "runs" / n).exists() for n in ("x1", "x2", "x3", "x4"))


@pytest.mark.slow
def test_grpo_resumes_after_a_kill(started):
    store, root = started
    exe = str(Path(sys.executable).parent / "mulcot")
    common = ["grpo", SAMPLE_NAME, "--model", "asst", "--db", str(store.path), "--runs-dir", str(root / "runs"),
              "--steps", "8", "--group-size", "4", "--max-new-tokens", "64", "--max-prompts", "8", "--lr", "5e-3",
              "--temperature", "0.7", "--save-steps", "2", "--json", "--name", "cut"]
    proc = subprocess.Popen([exe, *common], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = root / "runs" / "cut"
    wait_until(lambda: (folder / "log.jsonl").exists() and len(_log(folder)) >= 3, 300, process=proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (folder / "adapter").exists() and len(_log(folder)) < 8
    again = subprocess.run([exe, *common], capture_output=True, text=True)
    assert again.returncode != 0 and "--resume" in again.stderr
    changed = subprocess.run([exe, *common, "--resume", "--beta", "0.5"], capture_output=True, text=True)
    assert changed.returncode != 0 and "--beta 0.5 (was 0.04)" in changed.stderr
    resumed = subprocess.run([exe, *common, "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    out = json.loads(resumed.stdout)
    assert out["steps"] == 8 and Path(out["adapter"]).is_dir()
    assert [r["step"] for r in _log(folder)] == list(range(1, 9))  # each step logged once
    assert store.get_run("cut")["status"] == "done"


def test_grpo_knobs_are_flags_and_recipe_keys(tmp_path):
    from mulcot.core.settings import config_fields
    from mulcot.pipeline import Pipeline
    from mulcot.pipeline.recipes import parse_recipe
    from mulcot.store import Store

    text = CliRunner().invoke(app, ["grpo", "--help"], env={"COLUMNS": "240"}).output
    for f in config_fields(RLConfig, cli=True):
        assert (f.metadata.get("flag") or "--" + f.name.replace("_", "-")) in text, f.name
    assert RLConfig(dataset="d", model="m", name="n", reward_weights="1,0,2").reward_weights == (1.0, 0.0, 2.0)
    with pytest.raises(MulcotError, match="--reward-weights"):
        RLConfig(dataset="d", model="m", name="n", reward_weights="1,2")
    recipe_text = ('name = "r"\n[dataset]\nname = "d"\nformat = "jsonl"\npath = "x.jsonl"\n[assistant]\nmodel = "m"\n'
                   '[student]\nmodel = "s"\n[training]\nseed = 7\n')
    plain = parse_recipe(recipe_text, "r.toml")
    off = parse_recipe(recipe_text + "[grpo]\nbeta = 0.3\n", "r.toml")
    on = parse_recipe(recipe_text + "[grpo]\nenabled = true\nbeta = 0.3\ngroup_size = 6\nreward_weights = [1, 0, 1]\n",
                      "r.toml")
    both = parse_recipe(recipe_text + "[dpo]\nenabled = true\n[grpo]\nenabled = true\n", "r.toml")
    # a recipe without GRPO keeps its hashes; enabling it reruns grpo, eval and export only
    for stage in ("distill", "dpo", "eval", "export"):
        assert plain.stage_hash(stage) == off.stage_hash(stage)
    assert plain.stage_hash("distill") == on.stage_hash("distill") and plain.stage_hash("eval") != on.stage_hash("eval")
    with Store.open(tmp_path / "m.db") as store:
        pipe = Pipeline(store, on)
        cfg = pipe._tuning_config("grpo")
        assert (cfg.beta, cfg.group_size, cfg.reward_weights, cfg.seed, cfg.model) == (
            0.3, 6, (1.0, 0.0, 1.0), 7, pipe.run_name("distill"))
        assert pipe.final_student() == pipe.run_name("grpo")
        assert Pipeline(store, off).final_student() == pipe.run_name("distill")
        after_dpo = Pipeline(store, both)
        assert after_dpo._tuning_config("grpo").model == after_dpo.run_name("dpo")
        assert after_dpo.final_student() == after_dpo.run_name("grpo")
    for bad, message in (("group_size = 1", "'grpo.group_size' must be at least 2"),
                         ("temperature = 0.0", "'grpo.temperature' must be positive"),
                         ("beta = -1.0", "'grpo.beta' must be at least 0")):
        with pytest.raises(MulcotError, match=message):
            parse_recipe(recipe_text + f"[grpo]\n{bad}\n", "r.toml")


def test_grpo_launches_under_torchrun_as_its_own_command():
    from mulcot.train.launch import launch_command

    cfg = RLConfig(dataset="d", model="m", name="n", group_size=6)
    argv = launch_command(cfg, db="x.db", processes=2)
    assert argv[argv.index("mulcot") + 1 : argv.index("mulcot") + 4] == ["grpo", "d", "--model"]
    assert "--group-size" in argv and argv[argv.index("--group-size") + 1] == "6"


def test_distill_on_policy_is_refused_in_one_line_with_the_reason(tmp_path):
    db = tmp_path / "m.db"
    r = CliRunner().invoke(app, ["distill", SAMPLE_NAME, "--assistant", "a", "--student", "s", "--on-policy", "--db",
                                 str(db)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    line = r.output.strip()
    assert len(line.splitlines()) == 1 and "--on-policy is not available" in line and "mulcot grpo" in line
    assert not db.exists()  # refused before the store is opened


@pytest.mark.slow
def test_grpo_under_two_processes_is_one_run(started):
    """torchrun, 2 ranks (gloo): each rank samples its own groups; one run record, one log line per step, one
    adapter, the label heads scored once (by the main process)."""
    from test_distributed import _run

    store, root = started
    r = _run("grpo", SAMPLE_NAME, "--model", "asst", "--db", str(store.path), "--runs-dir", str(root / "runs"),
             "--steps", "2", "--group-size", "2", "--max-new-tokens", "16", "--max-prompts", "4", "--name", "two",
             "--json")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count('"run"') == 1  # printed once, by the main process
    out = json.loads(r.stdout)
    assert out["steps"] == 2 and out["launch"]["world_size"] == 2 and out["launch"]["backend"] == "gloo"
    assert [x["step"] for x in _log(root / "runs" / "two")] == [1, 2]
    run = store.get_run("two")
    assert run["status"] == "done" and run["config"]["world_size"] == 2 and run["config"]["prompts_per_step"] == 2
    assert (root / "runs" / "two" / "adapter" / "adapter_config.json").is_file()


def test_grpo_result_table_shows_rewards(capsys):
    from mulcot.cli.train import print_result

    print_result({"run": "rl", "adapter": "runs/rl/adapter", "steps": 8, "train_loss": 0.01, "wall_s": 3.0,
                  "best": {"step": 8, "epoch": 1.0, "reward": 1.25, "kl": 0.5, "rewards/label_correct/mean": 0.75,
                           "rewards/fields_parse/mean": 0.5}})
    out = capsys.readouterr().out
    assert "reward (weighted sum)" in out and "1.2500" in out and "label_correct 0.750" in out
    assert "KL to the start" in out and "dev accuracy" not in out
