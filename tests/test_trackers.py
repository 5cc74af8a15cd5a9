"""`--report-to`: the Trainer's own tracker integrations, beside the run folder's log.jsonl and curves.png."""

from __future__ import annotations

import importlib.util
import json

import pytest
from typer.testing import CliRunner

from mulcot.cli import app
from mulcot.sample import SAMPLE_NAME

runner = CliRunner()


def _train(db, model, runs, *more):
    args = ["train-assistant", SAMPLE_NAME, "--model", str(model), "--db", str(db), "--runs-dir", str(runs),
            "--epochs", "1", "--batch-size", "2", "--grad-accum", "1", "--max-pixels", "3136", "--max-train-items",
            "4", "--no-dev", "--json", *more]
    return runner.invoke(app, [str(a) for a in args])


def test_tensorboard_event_files_beside_the_log(demo_store, compact_model, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = _train(demo_store.path, compact_model(), tmp_path / "runs", "--name", "tb", "--report-to", "tensorboard")
    assert r.exit_code == 0, r.output
    folder = tmp_path / "runs" / "tb"
    events = list((folder / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1, list(folder.rglob("*"))
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    losses = acc.Scalars("train/loss")
    log = [json.loads(x) for x in (folder / "log.jsonl").read_text().splitlines()]
    logged = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == len(logged) == 2  # 4 chains / batch 2, one record per step in both
    assert [round(e.value, 4) for e in losses] == [round(x, 4) for x in logged]
    assert (folder / "curves.png").is_file()
    assert demo_store.get_run("tb")["config"]["report_to"] == "tensorboard"


def test_default_is_none_and_bad_trackers_are_one_line(demo_store, tmp_path):
    from mulcot.train.config import TrainConfig

    assert TrainConfig.__dataclass_fields__["report_to"].default == "none"
    r = _train(demo_store.path, tmp_path / "m", tmp_path / "runs", "--report-to", "comet")
    assert r.exit_code == 1 and "--report-to 'comet' is not one of none, tensorboard, wandb, mlflow" in r.output
    missing = [t for t in ("wandb", "mlflow") if importlib.util.find_spec(t) is None]
    if not missing:
        pytest.skip("wandb and mlflow are both installed")
    r = _train(demo_store.path, tmp_path / "m", tmp_path / "runs", "--report-to", missing[0])
    assert r.exit_code == 1 and f"pip install {missing[0]}" in r.output and "Traceback" not in r.output
    assert demo_store.list_runs() == []
