"""Recipes, `mulcot run` and `mulcot demo`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import loss_lines, wait_until
from typer.testing import CliRunner

from mulcot.cli import app
from mulcot.pipeline.recipes import RecipeError, bundled_recipe, load_recipe, parse_recipe
from mulcot.store import Store

ROOT = Path(__file__).resolve().parent.parent
EXE = str(Path(sys.executable).parent / "mulcot")
MINIMAL = """
name = "x"
[dataset]
name = "d"
format = "jsonl"
path = "data"
[assistant]
model = "Qwen/Qwen2.5-VL-7B-Instruct"
[student]
model = "Qwen/Qwen2.5-VL-3B-Instruct"
"""


def test_every_recipe_validates():
    files = sorted((ROOT / "recipes").glob("*.toml"))
    assert len(files) == 18  # 4 datasets x 4 architectures + tiny-cpu + smollm2-cpu
    names = {load_recipe(f).name for f in files}
    assert len(names) == 18
    tiny = load_recipe("@tiny-cpu")
    assert tiny.teacher.replay == "@sample" and tiny.assistant.model.startswith("@tiny:")
    assert (ROOT / "recipes" / "tiny-cpu.toml").resolve() == bundled_recipe("tiny-cpu").resolve()
    assert (ROOT / "recipes" / "smollm2-cpu.toml").resolve() == bundled_recipe("smollm2-cpu").resolve()
    paper = load_recipe(ROOT / "recipes" / "twitter2015-gpt4omini-qwen2.5vl.toml")
    assert (paper.teacher.model, paper.assistant.model, paper.student.model) == (
        "gpt-4o-mini", "Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct")
    assert paper.training.task_weights == [0.2, 0.8] and paper.student.lam == 0.3


@pytest.mark.parametrize(
    "change, message",
    [
        ('\n[teacher]\nmodle = "gpt-4o"', "unknown key 'teacher.modle' (did you mean 'model'?)"),
        ('\n[training]\nbatch_size = "two"', "'training.batch_size' must be a int, got 'two'"),
        ('\n[student]\nsoft_labels = "disk"', None),
        ('\n[eval]\nmetrics = ["bleu", "cider"]', "'eval.metrics' has 'cider'; allowed: sim, meteor"),
        ('\n[eval]\nlabel_scoring = "vote"', "'eval.label_scoring' is 'vote'; allowed: choice, generate"),
        ('\n[training]\ntask_weights = [1.0]', "'training.task_weights' must be two non-negative numbers"),
        ('\n[export]\nquant = ["q3"]', "'export.quant' has 'q3'"),
        ("\nextra = 1", "unknown key 'student.extra' (known: lam"),
        ("\n[dataset\n", "not valid TOML"),
    ],
)
def test_broken_recipes_name_the_key(change, message):
    if message is None:  # a second [student] table is itself a TOML error; set the value inline instead
        text, message = MINIMAL.replace('model = "Qwen/Qwen2.5-VL-3B-Instruct"',
                                        'model = "Qwen/Qwen2.5-VL-3B-Instruct"\nsoft_labels = "disk"'), (
            "'student.soft_labels' is 'disk'; allowed: cache, online")
    else:
        text = MINIMAL + change
    with pytest.raises(RecipeError) as err:
        parse_recipe(text, "r.toml")
    assert str(err.value).startswith("r.toml: ") and message in str(err.value)


def test_missing_keys_and_cli_error(tmp_path):
    with pytest.raises(RecipeError, match="missing key 'dataset.format'"):
        parse_recipe(MINIMAL.replace('format = "jsonl"\n', ""), "r.toml")
    with pytest.raises(RecipeError, match="missing key 'student'"):
        parse_recipe(MINIMAL.split("[student]")[0], "r.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL + '\n[teacher]\nconcurrency = 0\n')
    result = CliRunner().invoke(app, ["run", str(bad), "--db", str(tmp_path / "m.db")])
    assert result.exit_code == 2 and "'teacher.concurrency' must be at least 1" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(app, ["run", str(tmp_path / "none.toml"), "--db", str(tmp_path / "m.db")])
    assert result.exit_code == 2 and "recipe file not found" in result.output


def test_stage_hashes_follow_what_each_stage_depends_on():
    base = parse_recipe(MINIMAL, "r.toml")
    changed = parse_recipe(MINIMAL + '\n[eval]\nmetrics = ["bleu"]', "r.toml")
    for stage in ("import", "annotate", "train-assistant", "expand", "distill"):
        assert base.stage_hash(stage) == changed.stage_hash(stage)
    assert base.stage_hash("eval") != changed.stage_hash("eval")
    assert base.stage_hash("export") != changed.stage_hash("export")
    lam = parse_recipe(MINIMAL.replace('3B-Instruct"', '3B-Instruct"\nlam = 0.5'), "r.toml")
    assert lam.stage_hash("train-assistant") == base.stage_hash("train-assistant")
    assert lam.stage_hash("distill") != base.stage_hash("distill")


def _ledger(db: Path) -> dict[str, dict]:
    with Store.open(db) as s:
        return {r["id"].split(":", 1)[1]: r for r in s.list_runs("pipeline")}


@pytest.mark.slow
def test_run_tiny_cpu_killed_mid_stage_then_rerun(tmp_path):
    """`mulcot run recipes/tiny-cpu.toml`, SIGKILLed during training, then run again: it finishes without redoing
    the stages that were done."""
    db = tmp_path / "m.db"
    cmd = [EXE, "run", str(ROOT / "recipes" / "tiny-cpu.toml"), "--db", str(db)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    logs = (tmp_path / "runs").glob
    wait_until(lambda: any(loss_lines(log) >= 2 for log in logs("tiny-cpu-train-assistant-*/log.jsonl")), 600,
               interval=0.2, process=proc, what="two training steps before the interruption")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _ledger(db)
    assert before["import"]["status"] == "done" and before["annotate"]["status"] == "done"
    assert before["train-assistant"]["status"] == "running"
    with Store.open(db) as s:
        chains_before = len(s.reasonings(dataset="twitter2015-sample", source="teacher"))
    rerun = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = _ledger(db)
    assert all(after[s]["status"] == "done" for s in after) and len(after) == 7
    for stage in ("import", "annotate"):
        assert after[stage]["finished_at"] == before[stage]["finished_at"]
    assert "import: already done" in rerun.stderr and "annotate: already done" in rerun.stderr
    with Store.open(db) as s:
        assert len(s.reasonings(dataset="twitter2015-sample", source="teacher")) == chains_before
    assert "files produced" in rerun.stdout and "GGUF q8_0" in rerun.stdout
    # a third run has nothing left to do
    third = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert third.returncode == 0 and third.stderr.count("already done") == 7


@pytest.mark.slow
def test_demo_finishes(tmp_path):
    start = time.time()
    result = subprocess.run([EXE, "demo"], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "Teacher: REPLAYED" in out and "meaningless text" in out
    assert "Offline prediction with the exported GGUF (llama.cpp)" in out
    assert "mulcot tui --db mulcot-demo.db" in out
    assert (tmp_path / "mulcot-demo.db").is_file() and list((tmp_path / "mulcot-demo-runs").glob("*-export-*/*.gguf"))
    with Store.open(tmp_path / "mulcot-demo.db") as s:
        ledger = {r["id"]: r["status"] for r in s.list_runs("pipeline")}
        assert set(ledger.values()) == {"done"} and len(ledger) == 7
        assert s.reasonings(dataset="twitter2015-sample", source="student", stage="eval")
    print(f"demo wall time {time.time() - start:.0f} s")
