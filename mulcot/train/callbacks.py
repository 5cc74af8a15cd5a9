"""What the Trainer reports while it trains: a per-step JSONL log, the best epoch (kept as it is found), progress
events, and the loss/accuracy curves drawn from the log."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from mulcot.events import Progress, emit


class RunCallback(TrainerCallback):
    """Per-step JSONL log, best-epoch tracking and progress events (the log and the events from the main process
    only: under a launcher the other ranks get no ``progress``)."""

    def __init__(self, folder: Path, progress: Progress | None, save_best: Callable[[dict], None],
                 best: dict[str, Any] | None):
        self.folder = folder
        self.progress = progress
        self.save_best = save_best
        self.best = best
        self.started = time.perf_counter()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            trim_log(self.folder / "log.jsonl", state.global_step)
        emit(self.progress, "train", "begin", done=state.global_step, total=state.max_steps)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero:  # one log, written by the main process
            return
        record = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), **(logs or {}),
                  "elapsed_s": round(time.perf_counter() - self.started, 3)}
        with (self.folder / "log.jsonl").open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        emit(self.progress, "train", "log", done=state.global_step, total=state.max_steps, **record)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        emit(self.progress, "train", "step", done=state.global_step, total=state.max_steps,
             elapsed=time.perf_counter() - self.started)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None,
                    model: Any = None, **kwargs: Any) -> None:
        metrics = metrics or {}
        score = metrics.get("eval_select")
        if score is None:
            return
        # every rank sees the same gathered dev metrics, so every rank takes the same decision (and joins the save)
        if self.best is None or score > self.best["eval_select"]:
            self.best = {**metrics, "epoch": round(state.epoch or 0, 4), "step": state.global_step}
            self.save_best(self.best)
        emit(self.progress, "train", "eval", epoch=state.epoch, metrics=metrics, best=self.best)


def trim_log(log: Path, step: int) -> None:
    """Drop the lines of steps after ``step`` from a run's log: a run resumed from its checkpoint at ``step`` redoes
    the steps a kill cut off after it (logged, never saved), and each step should be logged once."""
    if not log.is_file():
        return
    lines = log.read_text().splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
    if len(kept) != len(lines):
        tmp = log.with_name(log.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(log)


def route_trackers(trainer: Any, folder: Path) -> None:
    """Point the Trainer's own TensorBoard integration (added by ``report_to``) at ``folder/tensorboard`` rather
    than under the checkpoints, unless ``TENSORBOARD_LOGGING_DIR`` says where; other trackers keep their own
    settings (``WANDB_PROJECT``, ``MLFLOW_TRACKING_URI``, ...) and are named after the run."""
    from transformers.integrations import TensorBoardCallback

    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback) and cb.logging_dir is None:
            cb.logging_dir = str(folder / "tensorboard")


def plot_curves(folder: Path) -> Path | None:
    """Loss per step and dev accuracy per epoch (a DPO run: chosen/rejected rewards and their margin per step; a GRPO
    run: each reward component, the total reward and the KL per step) as ``curves.png``."""
    log = folder / "log.jsonl"
    if not log.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    dev = [r for r in rows if "eval_accuracy" in r]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    if train:
        a.plot([r["step"] for r in train], [r["loss"] for r in train], label="loss")
        for key in ("ce_cls", "ce_rea"):
            if any(key in r for r in train):
                a.plot([r["step"] for r in train if key in r], [r[key] for r in train if key in r], label=key)
    a.set_xlabel("step")
    a.set_title("training loss")
    a.legend()
    rewards = [r for r in train if "rewards/margins" in r]  # a DPO run: its implicit rewards per step
    components = sorted({k for r in train for k in r if k.startswith("rewards/") and k.endswith("/mean")})
    if components:  # a GRPO run: each reward component's mean per step, their weighted sum, and the KL
        for key in ("reward", *components):
            b.plot([r["step"] for r in train if r.get(key) is not None],
                   [r[key] for r in train if r.get(key) is not None], label=key.split("/")[1] if "/" in key else key)
        if any(r.get("kl") is not None for r in train):
            a.plot([r["step"] for r in train if r.get("kl") is not None],
                   [r["kl"] for r in train if r.get("kl") is not None], label="kl")
            a.legend()
        b.legend()
        b.set_xlabel("step")
        b.set_title("GRPO rewards (mean over the completions)")
    elif rewards:
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
            b.plot([r["step"] for r in rewards], [r[key] for r in rewards], label=key.split("/")[1])
        b.axhline(0.0, color="grey", linewidth=0.5)
        b.legend()
        b.set_xlabel("step")
        b.set_title("DPO rewards (β·log π/π_ref)")
    else:
        if dev:
            b.plot([r["epoch"] for r in dev], [r["eval_accuracy"] for r in dev], marker="o", label="accuracy")
            b.plot([r["epoch"] for r in dev], [r["eval_macro_f1"] for r in dev], marker="x", label="macro-F1")
            b.legend()
        b.set_xlabel("epoch")
        b.set_title("dev")
    fig.tight_layout()
    out = folder / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
