"""The training flags ``train-assistant`` and ``distill`` share: declared once, defaults taken from TrainConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mulcot.errors import MulcotError
from mulcot.training import TrainConfig as T

Split = Annotated[str, typer.Option(help="Training split.")]
DevSplit = Annotated[str, typer.Option(help="Dev split for per-epoch evaluation.")]
NoDev = Annotated[bool, typer.Option("--no-dev", help="Skip dev evaluation (keeps the last epoch).")]
TaskWeights = Annotated[str, typer.Option(help="λ_cls,λ_rea: 0.2,0.8 (paper) or 0.5,0.5 (authors' code).")]
LoraR = Annotated[int, typer.Option(help="LoRA rank.")]
LoraAlpha = Annotated[int, typer.Option(help="LoRA alpha.")]
LoraDropout = Annotated[float, typer.Option(help="LoRA dropout.")]
LoraTargets = Annotated[
    str, typer.Option(help="language (LM projections), all (suffix match, vision MLPs too, as the authors' code) or "
                           "module names.")
]  # fmt: skip
Lr = Annotated[float, typer.Option(help="AdamW learning rate.")]
BatchSize = Annotated[int, typer.Option(help="Chains per micro-batch (each gives 2 sequences).")]
GradAccum = Annotated[int, typer.Option(help="Gradient accumulation steps.")]
Epochs = Annotated[float, typer.Option(help="Epochs at most.")]
PlateauEpochs = Annotated[int, typer.Option(help="Halve the lr after this many epochs without dev gain.")]
MinLr = Annotated[float, typer.Option(help="Floor of the lr halving.")]
MaxPixels = Annotated[int, typer.Option(help="Images are downsized to at most this many pixels.")]
TwoPass = Annotated[bool, typer.Option("--two-pass", help="One forward pass per task instead of one for both.")]
Device = Annotated[str | None, typer.Option(help="cuda, cuda:1, mps or cpu (default: best available).")]
Dtype = Annotated[str | None, typer.Option(help="bf16, fp16 or fp32 (default: bf16 on GPU, fp32 on CPU).")]
LoadIn4bit = Annotated[bool, typer.Option(help="QLoRA through bitsandbytes.")]
GradientCheckpointing = Annotated[bool, typer.Option(help="Trade compute for memory.")]
SaveSteps = Annotated[int | None, typer.Option(help="Checkpoint every N optimizer steps (default: each epoch).")]
MaxTrainItems = Annotated[int | None, typer.Option(help="Use only the first N chains.")]
MaxDevSamples = Annotated[int | None, typer.Option(help="Evaluate on the first N dev samples.")]
AllowTextOnly = Annotated[bool, typer.Option(help="Train on a dataset imported without images.")]
Seed = Annotated[int, typer.Option(help="Random seed.")]
RunsDir = Annotated[Path, typer.Option(help="Where run folders go.")]
Resume = Annotated[bool, typer.Option(help="Continue the run from its last checkpoint.")]

TASK_WEIGHTS = ",".join(str(w) for w in T.task_weights)
RUNS_DIR = Path(T.runs_dir)
SHARED = ("split", "dev_split", "no_dev", "task_weights", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "lr",
          "batch_size", "grad_accum", "epochs", "plateau_epochs", "min_lr", "max_pixels", "two_pass", "device",
          "dtype", "load_in_4bit", "gradient_checkpointing", "save_steps", "max_train_items", "max_dev_samples",
          "allow_text_only", "seed", "runs_dir")  # fmt: skip


def parse_weights(value: str) -> tuple[float, float]:
    try:
        cls, rea = (float(x) for x in value.split(","))
    except ValueError:
        raise MulcotError(f"--task-weights '{value}' is not 'CLS,REA', e.g. 0.2,0.8") from None
    return cls, rea


def training_fields(values: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig keyword arguments from a command's shared flags (pass its ``locals()``)."""
    out = {k: values[k] for k in SHARED if k not in ("no_dev", "two_pass", "task_weights", "runs_dir")}
    out["dev_split"] = None if values["no_dev"] else values["dev_split"]
    out["task_weights"] = parse_weights(values["task_weights"])
    out["single_pass"] = not values["two_pass"]
    out["runs_dir"] = str(values["runs_dir"])
    return out
