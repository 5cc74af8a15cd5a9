"""Stages 2 and 4: training the assistant (multi-task LoRA) and distilling the student.

- :mod:`~mulcot.train.config` — ``TrainConfig`` / ``DistillConfig``: every knob declared once (importable without
  torch; the CLI flags and recipe sections are derived from it);
- :mod:`~mulcot.train.items` — training items and their collation into the two task sequences;
- :mod:`~mulcot.train.packing` — padding-free batches for text-only backbones (attention within each sequence);
- :mod:`~mulcot.train.losses` — the objectives (CE at target tokens, KL at target positions);
- :mod:`~mulcot.train.generation` — greedy or sampled generation from P_cot / P_label;
- :mod:`~mulcot.train.assistant` — ``MultiTaskTrainer`` and ``train_assistant``;
- :mod:`~mulcot.train.student` — ``DistillTrainer(MultiTaskTrainer)`` and ``distill``;
- :mod:`~mulcot.train.soft_labels` — the assistant's top-k cache or the resident assistant;
- :mod:`~mulcot.train.dpo` — ``dpo``, preference optimisation of a trained run through TRL's ``DPOTrainer``
  (import it from there: the module has the same name);
- :mod:`~mulcot.train.rewards` and :mod:`~mulcot.train.grpo` — the GRPO rewards (pure functions) and ``grpo``,
  reinforcement learning of a trained run on its own sampled chains through TRL's ``GRPOTrainer``;
- :mod:`~mulcot.train.loop` — the run both stages share (record, LoRA, ``TrainingArguments``, best adapter);
- :mod:`~mulcot.train.schedule` — the learning rate: linear warm-up, then halving on a dev plateau;
- :mod:`~mulcot.train.lora_dropout` — LoRA dropout that keeps a one-byte mask for the backward pass;
- :mod:`~mulcot.train.selection`, :mod:`~mulcot.train.callbacks`, :mod:`~mulcot.train.checkpoints`.

The heavy names load on first use, so ``import mulcot.train`` does not import torch.
"""

from __future__ import annotations

from typing import Any

from mulcot.train.config import DistillConfig, PreferenceConfig, RLConfig, TrainConfig

_LAZY = {
    "train_assistant": "mulcot.train.assistant",
    "MultiTaskTrainer": "mulcot.train.assistant",
    "distill": "mulcot.train.student",
    "DistillTrainer": "mulcot.train.student",
    "TrainResult": "mulcot.train.loop",
}

__all__ = ["DistillConfig", "PreferenceConfig", "RLConfig", "TrainConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
