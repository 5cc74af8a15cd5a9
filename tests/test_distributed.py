"""Training under torchrun: 2 processes with gloo on the CPU, tiny models (see FINDINGS, "Distributed training").

``accelerate launch --cpu`` starts a single process here, so the tests launch ``torchrun --nproc_per_node 2`` and
check the world size the run recorded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import loss_lines, wait_until

from mulcot.sample import SAMPLE_NAME
from mulcot.train import distributed as dist

BIN = Path(sys.executable).parent
COMMON = ["--max-pixels", "3136", "--lora-dropout", "0", "--lr", "5e-3", "--grad-accum", "2", "--json"]
# one process at batch 2 averages the loss over the tokens of both chains, two processes at batch 1 average the
# two per-chain means: the same gradient direction, a slightly different loss value
LOSS_RTOL = 2e-2


def test_shards_cover_every_item_once_and_come_back_in_order(monkeypatch):
    items = list(range(7))
    for world in (1, 2, 3, 4, 8):
        parts = []
        for r in range(world):
            monkeypatch.setenv("WORLD_SIZE", str(world))
            monkeypatch.setenv("RANK", str(r))
            mine, real = dist.shard(items)
            assert len(mine) == -(-len(items) // world)  # every rank the same count (sharded models need it)
            parts.append(mine[:real])
        assert sorted(x for p in parts for x in p) == items
        assert dist.unshard(parts, len(items)) == items


def test_single_process_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert dist.world_size() == 1 and dist.is_main() and not dist.is_distributed()
    assert dist.gather_sharded([1, 2, 3], lambda xs: [x * 10 for x in xs]) == [10, 20, 30]
    assert dist.on_main(lambda: 5) == 5 and dist.gather("x") == ["x"]


def _torchrun(*args: str, nproc: int = 2, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", str(nproc), "--master_port", str(_free_port()), "-m",
           "mulcot", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*args: str, nproc: int | None = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    if nproc is None:
        cmd = [sys.executable, "-m", "mulcot", *args]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    proc = _torchrun(*args, nproc=nproc)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _losses(folder: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (folder / "log.jsonl").read_text().splitlines() if '"loss"' in x]


@pytest.mark.slow
def test_a_refusal_is_one_line_from_two_ranks(tmp_path):
    r = _run("train-assistant", "nope", "--model", str(tmp_path / "m"), "--db", str(tmp_path / "x.db"))
    assert r.returncode != 0
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "no dataset named 'nope'" in lines[0] and "rank" not in lines[0], r.stderr


@pytest.mark.slow
def test_two_processes_train_like_one_and_write_once(demo_store, compact_model, tmp_path):
    """2 ranks × batch 1 = 1 process × batch 2 (same accumulation): the same steps, losses within LOSS_RTOL, the
    same dev accuracies and best epoch; one run record, one adapter, one log; then distil under 2 processes and
    get the same cached soft labels as one process."""
    model, db, runs = str(compact_model()), str(demo_store.path), str(tmp_path / "runs")
    base = ["train-assistant", SAMPLE_NAME, "--model", model, "--db", db, "--runs-dir", runs, "--epochs", "2",
            "--max-train-items", "8", "--max-dev-samples", "4", *COMMON]
    one = _run(*base, "--name", "one", "--batch-size", "2", nproc=None)
    assert one.returncode == 0, one.stderr
    two = _run(*base, "--name", "two", "--batch-size", "1")
    assert two.returncode == 0, two.stderr
    assert two.stdout.count('"run"') == 1  # the result is printed once, by the main process
    r1, r2 = json.loads(one.stdout), json.loads(two.stdout)
    assert r1["steps"] == r2["steps"] == 4
    l1, l2 = _losses(Path(runs) / "one"), _losses(Path(runs) / "two")
    assert len(l1) == len(l2) == 4  # one log line per step: only the main process writes the log
    assert all(abs(a - b) <= LOSS_RTOL * abs(a) for a, b in zip(l1, l2, strict=True)), (l1, l2)
    assert r1["best"]["epoch"] == r2["best"]["epoch"]
    run = demo_store.get_run("two")
    assert run["status"] == "done" and run["metrics"]["world_size"] == 2 and run["config"]["world_size"] == 2
    assert run["config"]["effective_batch"] == 4
    assert sorted(r["id"] for r in demo_store.list_runs("train-assistant")) == ["one", "two"]  # one record each
    files = {name: sorted(p.name for p in (Path(runs) / name).iterdir()) for name in ("one", "two")}
    assert files["one"] == files["two"]
    assert not list(Path(runs).glob("*/*.tmp"))
    assert r2["launch"] == {"world_size": 2, "backend": "gloo", "fsdp": False, "deepspeed": False}

    # the student: soft labels cached by 2 ranks equal those cached by 1
    student = ["distill", SAMPLE_NAME, "--assistant", "one", "--student", model, "--db", db, "--runs-dir", runs,
               "--epochs", "1", "--max-train-items", "6", "--no-dev", "--top-k", "4", *COMMON]
    s1 = _run(*student, "--name", "s1", "--batch-size", "2", nproc=None)
    assert s1.returncode == 0, s1.stderr
    s2 = _run(*student, "--name", "s2", "--batch-size", "1")
    assert s2.returncode == 0, s2.stderr
    from mulcot.store import Store

    with Store.open(demo_store.path) as s:
        i1, i2 = s.soft_label_index("s1"), s.soft_label_index("s2")
        assert s.get_run("s2")["metrics"]["world_size"] == 2
    assert set(i1) == set(i2) and len(i1) > 0
    from mulcot.train.soft_labels import SoftLabelCache

    c1 = SoftLabelCache(Path(runs) / "s1" / "soft_labels", i1)
    c2 = SoftLabelCache(Path(runs) / "s2" / "soft_labels", i2)
    for key in i1:
        (a_ids, a_lp), (b_ids, b_lp) = c1.get(key), c2.get(key)
        assert a_ids.equal(b_ids) and (a_lp - b_lp).abs().max() < 1e-4, key
    l1, l2 = _losses(Path(runs) / "s1"), _losses(Path(runs) / "s2")
    assert all(abs(a - b) <= LOSS_RTOL * abs(a) for a, b in zip(l1, l2, strict=True)), (l1, l2)


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of the worker with ``RANK=rank`` among the launcher's children."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != launcher:
                continue
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


@pytest.mark.slow
def test_a_killed_rank_is_resumed(demo_store, compact_model, tmp_path):
    model, db, runs = str(compact_model()), str(demo_store.path), tmp_path / "runs"
    args = ["train-assistant", SAMPLE_NAME, "--model", model, "--db", db, "--runs-dir", str(runs), "--epochs", "2",
            "--max-train-items", "12", "--no-dev", "--batch-size", "1", "--save-steps", "1", "--name", "k",
            *COMMON]
    proc = _torchrun(*args)
    log = runs / "k" / "log.jsonl"
    wait_until(lambda: loss_lines(log) >= 3, 300, process=proc)
    victim = _rank_pid(proc.pid, 1)
    assert victim is not None, "rank 1 not found"
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert not (runs / "k" / "adapter").exists()
    # rank 0 is stopped by the launcher (interrupted) or sees its peer's socket close first (failed)
    assert demo_store.get_run("k")["status"] in ("interrupted", "failed")
    resumed = _run(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    out = json.loads(resumed.stdout)
    assert out["steps"] == 6  # 12 chains / (2 ranks × batch 1 × accumulation 2) × 2 epochs
    steps = [json.loads(x)["step"] for x in log.read_text().splitlines() if '"loss"' in x]
    assert sorted(set(steps)) == list(range(1, 7))
    run = demo_store.get_run("k")
    assert run["status"] == "done" and run["metrics"]["world_size"] == 2
    assert len(demo_store.list_runs("train-assistant")) == 1
    assert (runs / "k" / "adapter" / "adapter_model.safetensors").is_file()


def test_launch_command_reproduces_the_config(monkeypatch, tmp_path):
    """A recipe's training stage on N processes: the flags config_argv writes parse back to the same config."""
    from typer.testing import CliRunner

    from mulcot.cli import app
    from mulcot.train.config import DistillConfig, PreferenceConfig, TrainConfig
    from mulcot.train.launch import config_argv, launch_command

    seen = []
    monkeypatch.setattr("mulcot.cli.train.train", lambda run, config, **kw: seen.append(config))
    monkeypatch.setattr("mulcot.cli.distill.train", lambda run, config, **kw: seen.append(config))
    configs: list = [
        TrainConfig(dataset="d", model="m", name="a", task_weights=(0.5, 0.5), dev_split=None, single_pass=False,
                    lora_r=8, gradient_checkpointing=True, deepspeed="ds.json", epochs=3.0, processes=4),
        DistillConfig(dataset="d", model="s", name="b", assistant="a", lam=0.5, include_expanded=False,
                      soft_labels="server", server="http://h:8000/v1", served_model="asst", server_text_only=True,
                      fsdp="full_shard auto_wrap", max_train_items=10),
        PreferenceConfig(dataset="d", model="s", name="c", sources="teacher,ratings", beta=0.3, loss="ipo",
                         max_pairs=5, gradient_checkpointing=True),
    ]
    for cfg in configs:
        n = getattr(cfg, "processes", 3)
        argv = launch_command(cfg, db=tmp_path / "x.db", processes=n)
        assert argv[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node", str(n)]
        cli = argv[argv.index("mulcot") + 1 :]
        r = CliRunner().invoke(app, cli)
        assert r.exit_code == 0, r.output
        got = seen.pop()
        if isinstance(cfg, PreferenceConfig):
            assert got == cfg
        else:
            assert {**got.public(), "processes": cfg.processes} == cfg.public()
    assert config_argv(TrainConfig(dataset="d", model="m", name="a")) == []


def test_launch_options_are_checked_in_one_line(monkeypatch, tmp_path):
    from mulcot.errors import MulcotError
    from mulcot.train.config import TrainConfig
    from mulcot.train.loop import check_distributed, sharded

    def cfg(**kw):
        return TrainConfig(dataset="d", model="m", name="a", **kw)

    examples = Path(__file__).parents[1] / "examples"
    with pytest.raises(MulcotError, match="shard a model across GPUs.*plain DDP runs on CPUs"):
        check_distributed(cfg(fsdp="true", fsdp_config=str(examples / "fsdp" / "fsdp_config.json")), "cpu")
    with pytest.raises(MulcotError, match="--fsdp-config nope.json: no such file"):
        check_distributed(cfg(fsdp="true", fsdp_config="nope.json"), "cuda:0")
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(MulcotError, match="pip install deepspeed"):
            check_distributed(cfg(deepspeed=str(examples / "deepspeed" / "ds_z2_config.json")), "cuda:0")
    bad = tmp_path / "bad.json"
    bad.write_text("{stage: 2")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())  # as if DeepSpeed were installed
    with pytest.raises(MulcotError, match="bad.json: not valid JSON"):
        check_distributed(cfg(deepspeed=str(bad)), "cuda:0")
    z3 = str(examples / "deepspeed" / "ds_z3_offload_config.json")
    z2 = str(examples / "deepspeed" / "ds_z2_config.json")
    with pytest.raises(MulcotError, match="pick one"):
        check_distributed(cfg(deepspeed=z2, fsdp="true"), "cuda:0")
    check_distributed(cfg(deepspeed=z2), "cuda:0")
    assert sharded(cfg(deepspeed=z3)) and not sharded(cfg(deepspeed=z2)) and sharded(cfg(fsdp="true"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(MulcotError, match="--two-pass"):
        check_distributed(cfg(single_pass=False), "cpu")


def test_zero3_is_refused_for_posts_without_images(tmp_path):
    from types import SimpleNamespace

    from mulcot.errors import MulcotError
    from mulcot.train.config import TrainConfig
    from mulcot.train.loop import check_zero3_images

    examples = Path(__file__).parents[1] / "examples" / "deepspeed"
    items = [SimpleNamespace(image_path="a.jpg"), SimpleNamespace(image_path=None)]
    z3 = TrainConfig(dataset="d", model="m", name="a", deepspeed=str(examples / "ds_z3_offload_config.json"))
    with pytest.raises(MulcotError, match="1 of the 2 training and dev posts have no image.*ZeRO-2"):
        check_zero3_images(z3, items, text_only=False)
    check_zero3_images(z3, items, text_only=True)  # a text-only backbone never calls a vision tower
    check_zero3_images(z3, items[:1], text_only=False)
    z2 = TrainConfig(dataset="d", model="m", name="a", deepspeed=str(examples / "ds_z2_config.json"))
    check_zero3_images(z2, items, text_only=False)


@pytest.mark.slow
def test_a_recipe_trains_on_two_processes(tmp_path):
    """``processes = 2`` in [training]: `mulcot run` launches train-assistant through torchrun with the recipe's
    settings, and the pipeline goes on from the run that launch recorded."""
    from mulcot.store import Store

    root = Path(__file__).parents[1]
    recipe = (root / "recipes" / "tiny-cpu.toml").read_text().replace("[training]\n", "[training]\nprocesses = 2\n")
    (tmp_path / "two.toml").write_text(recipe.replace('name = "tiny-cpu"', 'name = "two"'))
    db = tmp_path / "m.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    r = subprocess.run([str(BIN / "mulcot"), "run", "two.toml", "--db", str(db), "--to", "train-assistant"],
                       cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "launching 2 processes" in r.stderr and "--nproc_per_node 2" in r.stderr
    with Store.open(db) as s:
        runs = s.list_runs("train-assistant")
        assert len(runs) == 1 and runs[0]["status"] == "done"
        assert runs[0]["metrics"]["world_size"] == 2 and runs[0]["config"]["lr"] == 1e-3
        assert runs[0]["config"]["batch_size"] == 4 and runs[0]["config"]["max_dev_samples"] == 6
    assert (Path(runs[0]["output_dir"]) if Path(runs[0]["output_dir"]).is_absolute() else
            tmp_path / runs[0]["output_dir"]).joinpath("adapter", "adapter_config.json").is_file()
