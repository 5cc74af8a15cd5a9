"""Choosing the best epoch: dev accuracy from greedy answers to the label prompt, ties broken by F1."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def selection_score(accuracy: float, f1: float) -> float:
    """Dev accuracy, ties broken by F1: accuracies of n samples differ by ≥ 1/n, so 1e-6·F1 decides only ties
    (for dev sets under a million samples)."""
    return accuracy + 1e-6 * f1


def dev_evaluator(processor: Any, task: str, items: list[Any], *, batch_size: int, max_new_tokens: int,
                  max_pixels: int, synced_gpus: bool = False) -> Callable[[Any], dict[str, float]]:
    """A function model -> dev metrics from the label prompt (greedy ``"Prediction"`` answers).

    Under a launcher each rank answers its share of the dev samples and the answers are gathered, so every rank
    computes the same metrics (the plateau schedule and the best epoch agree) in 1/N of the time."""
    from mulcot.core.reasoning import parse_reasoning
    from mulcot.generation.hf import GenerationConfig, generate
    from mulcot.metrics import classification_metrics
    from mulcot.train.distributed import gather_sharded

    gold = [it.label for it in items]
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size, max_pixels=max_pixels,
                           synced_gpus=synced_gpus)

    def evaluate(model: Any) -> dict[str, float]:
        answers = gather_sharded(items, lambda share: generate(model, processor, share, "label", task, cfg))
        preds = [parse_reasoning(a[0]).prediction or "invalid" for a in answers]
        m = classification_metrics(gold, preds)
        f1 = m["macro_f1"] if task == "masc" else m["weighted_f1"]
        return {
            "accuracy": m["accuracy"],
            "macro_f1": m["macro_f1"],
            "weighted_f1": m["weighted_f1"],
            "select": selection_score(m["accuracy"], f1),
            "invalid": preds.count("invalid") / len(preds),
        }

    return evaluate
