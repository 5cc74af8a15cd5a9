"""A training stage as a ``torchrun`` command: the flags that reproduce a config (the inverse of
:mod:`mulcot.cli.config_options`), and running it from a recipe when ``processes`` > 1."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from mulcot.core.settings import config_fields, default_of
from mulcot.errors import MulcotError
from mulcot.train.config import DistillConfig, PreferenceConfig, RLConfig, TrainConfig

Config = TrainConfig | PreferenceConfig | RLConfig


def config_argv(config: Config) -> list[str]:
    """The command-line flags that give ``config`` (fields left at their default are left out)."""
    argv: list[str] = []
    for f in config_fields(type(config), cli=True):
        value, default, meta = getattr(config, f.name), default_of(f), f.metadata
        if "parse" in meta and isinstance(value, tuple | list):
            value, default = list(value), list(default)
        if value == default:
            continue
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        if meta.get("invert"):
            argv.append(meta["flag"])
        elif value is None and meta.get("none_flag"):
            argv.append(meta["none_flag"][0])
        elif isinstance(value, bool):
            argv.append(flag if value else "--no-" + f.name.replace("_", "-"))
        elif isinstance(value, list):
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def launch_command(config: Config, *, db: str | Path, resume: bool = False,
                   processes: int | None = None) -> list[str]:
    """``python -m torch.distributed.run --nproc_per_node N -m mulcot train-assistant|distill|dpo|grpo …`` for
    ``config`` (N: ``processes``, else the config's own)."""
    n = processes or getattr(config, "processes", 1)
    if isinstance(config, DistillConfig):
        stage = ["distill", config.dataset, "--student", config.model, "--assistant", config.assistant]
    elif isinstance(config, PreferenceConfig):
        stage = ["dpo", config.dataset, "--model", config.model]
    elif isinstance(config, RLConfig):
        stage = ["grpo", config.dataset, "--model", config.model]
    else:
        stage = ["train-assistant", config.dataset, "--model", config.model]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "-m", "mulcot", *stage,
            "--name", config.name, *config_argv(config), *(["--resume"] if resume else []), "--db", str(db),
            "--json"]


def run_launched(config: Config, *, db: str | Path, resume: bool = False,
                 processes: int | None = None) -> dict[str, Any]:
    """Run a training stage on ``processes`` (else the config's) processes; its JSON result (the training command's
    --json)."""
    n = processes or getattr(config, "processes", 1)
    argv = launch_command(config, db=db, resume=resume, processes=n)
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise MulcotError(f"training on {n} processes failed (exit code {proc.returncode}, see the lines above); the "
                          f"command was: {shlex.join(argv)}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise MulcotError(f"training on {n} processes printed no result: {shlex.join(argv)}") from None


__all__ = ["config_argv", "launch_command", "run_launched"]
