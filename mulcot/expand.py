"""Stage 3, data expansion: the trained assistant writes chains for the training split; those whose Prediction equals
the gold label form D_a, and D_all = D_t ∪ D_a is what the student learns from.

Only the training split may be expanded: chains written for dev or test samples with their gold labels in view
would leak labels into model selection or evaluation. Chains are stored as they are generated (source assistant,
stage expand, run id = the assistant's run), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from mulcot.chains import EXPAND, chain_row
from mulcot.errors import MulcotError
from mulcot.events import Progress, emit
from mulcot.prompts import get_prompt
from mulcot.refs import RunRef, resolve_run
from mulcot.serving import ServerConfig
from mulcot.store import Store


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
    server: ServerConfig | None = None  # generate through an OpenAI-compatible server instead of in-process


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
    served: dict[str, Any] | None = None  # through a server: requests, failures, budget stop (ServeSummary)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def expand(store: Store, config: ExpandConfig, progress: Progress | None = None) -> ExpandSummary:
    """Generate ``n`` sampled chains per training sample with the assistant; returns the summary."""
    from mulcot.train.items import sample_items

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
    done = store.chain_counts(config.dataset, "train", source="assistant", stage=EXPAND, run_id=ref.run_id,
                              prompt_version=cot.version)  # fmt: skip
    todo = [it for it in items if done.get(it.sample_id, 0) < config.n]
    summary = ExpandSummary(run_id=ref.run_id, skipped_done=len(items) - len(todo))
    record = {"assistant": ref.run_id, "adapter": str(ref.adapter), "base_model": ref.base_model,
              **{k: v for k, v in asdict(config).items() if k not in ("dataset", "assistant", "server")}}  # fmt: skip
    if config.server is not None:
        from mulcot.serving import check_server, served_identity

        check_server(config.server)
        served, summary.warnings = served_identity(config.server, ref.adapter)
        record.update(served)
        for warning in summary.warnings:
            emit(progress, "expand", "info", message=warning, warning=True)
    with store.run(f"expand-{ref.run_id}-{config.dataset}", kind="expand", dataset=config.dataset,
                   config=record) as run:  # fmt: skip
        run.metrics = summary
        if todo and config.server is not None:
            _generate_served(store, config, ref, cot, todo, done, summary, progress)
            if summary.served and summary.served["stopped"]:
                run.status = "stopped"
        elif todo:
            _generate(store, config, ref, ds["task"], cot.version, todo, done, summary, progress)
        _figures(store, config.dataset, ref.run_id, summary)
        summary.wall_s = time.perf_counter() - start
    return summary


def _generate(store: Store, config: ExpandConfig, ref: RunRef, task: str, version: str, todo: list[Any],
              done: dict[int, int], summary: ExpandSummary, progress: Progress | None) -> None:  # fmt: skip
    """Sample the missing chains batch by batch, committing each batch."""
    from mulcot.models import load_model, load_with_adapter
    from mulcot.train.generation import GenerationConfig, generate

    base, processor, _ = load_model(ref.base_model, device=config.device, dtype=config.dtype)
    model = load_with_adapter(base, ref.adapter)
    gen = GenerationConfig(max_new_tokens=config.max_new_tokens, do_sample=True, temperature=config.temperature,
                           top_p=config.top_p, batch_size=config.batch_size, max_pixels=config.max_pixels)  # fmt: skip
    for offset in range(0, len(todo), config.batch_size):
        chunk = todo[offset : offset + config.batch_size]
        per_item = [config.n - done.get(it.sample_id, 0) for it in chunk]
        gen.num_return_sequences = max(per_item)
        gen.seed = config.seed + offset + sum(done.get(it.sample_id, 0) for it in chunk)
        answers = generate(model, processor, chunk, "cot", task, gen)
        # attempt = the chain's number among the sample's n (one row each; a second writer's copy is ignored)
        rows = [
            chain_row(sample_id=item.sample_id, source="assistant", model=ref.base_model, stage=EXPAND, output=text,
                      run_id=ref.run_id, prompt_version=version, origin="expand",
                      attempt=done.get(item.sample_id, 0) + j + 1)
            for item, texts, want in zip(chunk, answers, per_item, strict=True)
            for j, text in enumerate(texts[:want])
        ]  # fmt: skip
        store.add_reasonings(rows)
        summary.generated += len(rows)
        summary.samples += len(chunk)
        emit(progress, "expand", done=summary.samples, total=len(todo))


def _generate_served(store: Store, config: ExpandConfig, ref: RunRef, cot: Any, todo: list[Any],
                     done: dict[int, int], summary: ExpandSummary, progress: Progress | None) -> None:  # fmt: skip
    """Sample the missing chains through the server, one request per chain, storing each as it arrives."""
    from mulcot import serving
    from mulcot.train.items import render_prompt

    assert config.server is not None
    text_only = config.server.text_only
    jobs = [
        serving.Job(sample_id=it.sample_id, prompt=render_prompt(cot, it, text_only), image=it.image_path,
                    max_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
                    seed=config.seed + 1000 * it.sample_id + k, max_pixels=config.max_pixels,
                    tag=k + 1, name=f"sample {it.sample_id} chain {k + 1}")
        for it in todo
        for k in range(done.get(it.sample_id, 0), config.n)
    ]  # fmt: skip
    touched: set[int] = set()

    def store_answer(job: serving.Job, comp: Any) -> None:
        store.add_reasoning(**chain_row(
            sample_id=job.sample_id, source="assistant", model=ref.base_model, stage=EXPAND, output=comp.text.strip(),
            run_id=ref.run_id, prompt_version=cot.version, origin="expand", attempt=job.tag, tokens_in=comp.tokens_in,
            tokens_out=comp.tokens_out, latency_s=round(comp.latency_s, 4),
        ))  # fmt: skip
        summary.generated += 1
        touched.add(job.sample_id)
        summary.samples = len(touched)

    try:
        served = serving.generate(config.server, jobs, store_answer, progress=progress, stage="expand",
                                  total=len(jobs))  # fmt: skip
    finally:
        summary.samples = len(touched)
    summary.served = served.as_dict()


def _figures(store: Store, dataset: str, run_id: str, summary: ExpandSummary) -> None:
    """D_a and classification figures over every chain the run has for the training split (this invocation and
    earlier ones)."""
    from mulcot.evaluate.metrics import classification_metrics

    chains = store.reasonings(dataset=dataset, split="train", source="assistant", stage=EXPAND, run_id=run_id)
    kept_ids = {c["id"] for c in store.assistant_set(dataset, "train", run_id)}
    kept: Counter = Counter()
    rejected: Counter = Counter()
    for c in chains:
        (kept if c["id"] in kept_ids else rejected)[c["gold"]] += 1
        summary.unparsed += not c["valid"]
    summary.kept, summary.rejected = dict(kept), dict(rejected)
    if chains:
        m = classification_metrics([c["gold"] for c in chains], [c["prediction"] or "invalid" for c in chains])
        summary.accuracy, summary.weighted_f1, summary.macro_f1 = m["accuracy"], m["weighted_f1"], m["macro_f1"]
    summary.assistant_set = len(kept_ids)
