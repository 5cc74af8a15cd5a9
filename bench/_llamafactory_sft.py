"""LLaMA-Factory SFT with a clock: run by the Python of LLaMA-Factory's own venv (see bench/train_speed.py and
``make llamafactory``); no mulcot import here.

    python bench/_llamafactory_sft.py CONFIG.json

CONFIG.json holds LLaMA-Factory's training arguments (what ``llamafactory-cli train`` reads from YAML). Training runs
through ``llamafactory.train.tuner.run_exp``, as the CLI does; a callback records when each optimizer step ends and the
logged losses, and the SFT data collator is wrapped to record each batch's sequences (tokens and target tokens per
sequence, padded width). Prints one line ``RESULT {...}`` at the end.
"""

import json
import sys
import time

import torch
from llamafactory.data import collator as lf_collator
from llamafactory.train.tuner import run_exp
from transformers import TrainerCallback

batches: list[dict] = []
_call = lf_collator.SFTDataCollatorWith4DAttentionMask.__call__


def _recording_call(self, features):
    out = _call(self, features)
    seqs = [[len(f["input_ids"]), sum(1 for x in f["labels"] if x != -100)] for f in features]
    batches.append({"seqs": seqs, "padded": int(out["input_ids"].numel())})
    return out


lf_collator.SFTDataCollatorWith4DAttentionMask.__call__ = _recording_call


class Clock(TrainerCallback):
    def __init__(self):
        self.begin = None
        self.step_ends: list[float] = []
        self.losses: list[float] = []
        self.info: dict = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.begin = time.perf_counter()
        params = list(model.parameters())
        self.info = {"dtype": str(params[0].dtype), "threads": torch.get_num_threads(),
                     "trainable": sum(p.numel() for p in params if p.requires_grad),
                     "gradient_checkpointing": bool(getattr(model, "is_gradient_checkpointing", False)),
                     "attn_implementation": getattr(getattr(model, "config", None), "_attn_implementation", None)}

    def on_step_end(self, args, state, control, **kwargs):
        self.step_ends.append(time.perf_counter() - self.begin)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


config = json.loads(open(sys.argv[1]).read())
clock = Clock()
run_exp(args=config, callbacks=[clock])
print("RESULT " + json.dumps({"step_ends": clock.step_ends, "losses": clock.losses, "batches": batches,
                              **clock.info}))
