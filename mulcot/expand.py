"""Stage 3, data expansion: the trained assistant writes chains for the training split; those whose Prediction equals
the gold label form D_a, and D_all = D_t ∪ D_a is what the student learns from.

Only the training split may be expanded: chains written for dev or test samples with their gold labels in view
would leak labels into model selection or evaluation. Chains are stored as they are generated (source assistant,
stage expand, run id = the assistant's run), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from mulcot.errors import MulcotError
from mulcot.prompts import get_prompt
from mulcot.reasoning import parse_reasoning
from mulcot.runs import resolve_run
from mulcot.store import Store

Progress = Callable[[int, int], None]


@dataclass
class ExpandConfig:
    """What to expand with which assistant, and how to sample."""

    dataset: str
    assistant: str  # runs/<name>, an adapter folder, or a run name
    split: str = "train"
    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 512
    batch_size: int = 8
    max_pixels: int = 280 * 280
    limit: int | None = None
    seed: int = 0
    device: str | None = None
    dtype: str | None = None


@dataclass
class ExpandSummary:
    """Chains written now, and D_a and the assistant's train-split classification figures (paper Table 8)."""

    run_id: str
    samples: int = 0
    generated: int = 0
    skipped_done: int = 0
    kept: dict[str, int] = field(default_factory=dict)  # per gold label, all chains of the run so far
    rejected: dict[str, int] = field(default_factory=dict)
    unparsed: int = 0
    accuracy: float = 0.0
    weighted_f1: float = 0.0
    macro_f1: float = 0.0
    assistant_set: int = 0  # |D_a| (chains)
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def expand(store: Store, config: ExpandConfig, progress: Progress | None = None) -> ExpandSummary:
    """Generate ``n`` sampled chains per training sample with the assistant; returns the summary."""
    from mulcot.evaluate.metrics import classification_metrics
    from mulcot.generation import GenerationConfig, generate
    from mulcot.models import load_model, load_with_adapter
    from mulcot.sft_data import sample_items

    start = time.perf_counter()
    ds = store.require_dataset(config.dataset)
    if config.split != "train":
        raise MulcotError(
            f"expand writes chains for the training split only; '{config.split}' would leak gold labels into "
            "model selection or evaluation (D_a must come from train)"
        )
    if "train" not in store.splits(config.dataset):
        raise MulcotError(f"dataset '{config.dataset}' has no train split")
    if config.n < 1:
        raise MulcotError("--n must be at least 1")
    ref = resolve_run(store, config.assistant)
    cot = get_prompt("cot", ds["task"])
    items = sample_items(store, config.dataset, "train")
    if config.limit is not None:
        items = items[: config.limit]
    done = store.chain_counts(config.dataset, "train", source="assistant", stage="expand", run_id=ref.run_id,
                              prompt_version=cot.version)  # fmt: skip
    todo = [it for it in items if done.get(it.sample_id, 0) < config.n]
    summary = ExpandSummary(run_id=ref.run_id, skipped_done=len(items) - len(todo))
    if todo:
        base, processor, _ = load_model(ref.base_model, device=config.device, dtype=config.dtype)
        model = load_with_adapter(base, ref.adapter)
        gen = GenerationConfig(
            max_new_tokens=config.max_new_tokens,
            do_sample=True,
            temperature=config.temperature,
            top_p=config.top_p,
            batch_size=config.batch_size,
            max_pixels=config.max_pixels,
        )
        for offset in range(0, len(todo), config.batch_size):
            chunk = todo[offset : offset + config.batch_size]
            per_item = [config.n - done.get(it.sample_id, 0) for it in chunk]
            gen.num_return_sequences = max(per_item)
            gen.seed = config.seed + offset + sum(done.get(it.sample_id, 0) for it in chunk)
            answers = generate(model, processor, chunk, "cot", ds["task"], gen)
            with store.transaction():
                for item, texts, want in zip(chunk, answers, per_item, strict=True):
                    for text in texts[:want]:
                        parsed = parse_reasoning(text)
                        store.add_reasoning(
                            sample_id=item.sample_id, source="assistant", model=ref.run_id, stage="expand",
                            prompt_version=cot.version, raw=text, text=parsed.to_text(), fields=parsed.fields,
                            prediction=parsed.prediction, parse_status=parsed.status,
                            valid=parsed.valid and parsed.prediction == item.label, attempt=1, final=True,
                            run_id=ref.run_id, origin="expand",
                        )  # fmt: skip
                        summary.generated += 1
            summary.samples += len(chunk)
            if progress:
                progress(summary.samples, len(todo))
    # figures over every chain the run has for the split (this invocation and earlier ones)
    chains = store.reasonings(dataset=config.dataset, split="train", source="assistant", stage="expand",
                              run_id=ref.run_id)  # fmt: skip
    kept: Counter = Counter()
    rejected: Counter = Counter()
    for c in chains:
        good = c["parse_status"] == "full" and c["prediction"] == c["gold"]
        (kept if good else rejected)[c["gold"]] += 1
        summary.unparsed += c["parse_status"] != "full"
    summary.kept, summary.rejected = dict(kept), dict(rejected)
    if chains:
        m = classification_metrics([c["gold"] for c in chains], [c["prediction"] or "invalid" for c in chains])
        summary.accuracy, summary.weighted_f1, summary.macro_f1 = m["accuracy"], m["weighted_f1"], m["macro_f1"]
    summary.assistant_set = len(store.assistant_set(config.dataset, "train", ref.run_id))
    summary.wall_s = time.perf_counter() - start
    return summary
