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

from mulcot.core.chains import EXPAND, chain_row
from mulcot.core.images import DEFAULT_MAX_PIXELS
from mulcot.core.prompts import get_prompt
from mulcot.core.refs import RunRef, resolve_run
from mulcot.core.settings import ConfigError, Validated, field_
from mulcot.errors import MulcotError
from mulcot.events import Progress, emit
from mulcot.generation import Backend, Generated, Post, PredictConfig, Request, open_backend
from mulcot.generation.server import ServerConfig
from mulcot.store import Store


@dataclass
class ExpandConfig(Validated):
    """What to expand with which assistant, and how to sample (the ``expand`` command's flags; a recipe's
    [expand] sets the fields of section ``expand``)."""

    dataset: str = field_(help="Dataset whose training split the assistant expands.", cli=False)
    assistant: str = field_(help="The trained assistant: runs/NAME, an adapter folder or a run name.", cli=False)
    split: str = field_("train", "Only 'train' is accepted (other splits would leak labels).")
    n: int = field_(1, "Chains to sample per training sample.", section="expand", min=1)
    temperature: float = field_(0.7, "Sampling temperature.", section="expand", min=0)
    top_p: float = field_(1.0, "Nucleus sampling mass.", above=0, max=1)
    max_new_tokens: int = field_(512, "Token limit per chain.", section="expand", min=1)
    batch_size: int = field_(8, "Samples per generation batch.", min=1)
    max_pixels: int = field_(DEFAULT_MAX_PIXELS, "Images are downsized to at most this many pixels.", min=1)
    limit: int | None = field_(None, "Only the first N training samples.", section="expand", min=1)
    seed: int = field_(0, "Sampling seed.")
    device: str | None = field_(None, "cuda, mps or cpu (default: best available).")
    dtype: str | None = field_(None, "bf16, fp16 or fp32.")
    gguf: str | None = field_(None, "Generate with the assistant's GGUF export (an export folder or a text GGUF) "
                              "instead of transformers.")
    # generate through an OpenAI-compatible server instead of in-process (the command's server options)
    server: ServerConfig | None = field_(None, "", cli=False)

    def check(self) -> None:
        if self.split != "train":
            raise ConfigError(
                f"expand writes chains for the training split only; '{self.split}' would leak gold labels into "
                "model selection or evaluation (D_a must come from train)"
            )
        if self.server is not None and self.gguf is not None:
            raise ConfigError("--server and --gguf are two ways to generate: pick one")

    def settings(self) -> PredictConfig:
        """The decoding and input settings of the generation backend."""
        return PredictConfig(max_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                             seed=self.seed, max_pixels=self.max_pixels, batch_size=self.batch_size,
                             device=self.device, dtype=self.dtype)


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
    from mulcot.core.inputs import mask_items, sample_items

    start = time.perf_counter()
    ds = store.require_dataset(config.dataset)
    if "train" not in store.splits(config.dataset):
        raise MulcotError(f"dataset '{config.dataset}' has no train split")
    ref = resolve_run(store, config.assistant)
    cot = get_prompt("cot", ds["task"])
    items = mask_items(sample_items(store, config.dataset, "train"), ref.inputs)  # as the assistant was trained
    if config.limit is not None:
        items = items[: config.limit]
    done = store.chain_counts(config.dataset, "train", source="assistant", stage=EXPAND, run_id=ref.run_id,
                              prompt_version=cot.version)
    todo = [it for it in items if done.get(it.sample_id, 0) < config.n]
    summary = ExpandSummary(run_id=ref.run_id, skipped_done=len(items) - len(todo))
    record = {"assistant": ref.run_id, "adapter": str(ref.adapter), "base_model": ref.base_model,
              **{k: v for k, v in asdict(config).items() if k not in ("dataset", "assistant", "server")}}
    if config.server is not None:
        from mulcot.generation.server import check_server, served_identity

        check_server(config.server)
        served, summary.warnings = served_identity(config.server, ref.adapter)
        record.update(served)
        for warning in summary.warnings:
            emit(progress, "expand", "info", message=warning, warning=True)
    with store.run(f"expand-{ref.run_id}-{config.dataset}", kind="expand", dataset=config.dataset,
                   config=record) as run:
        run.metrics = summary
        if todo:
            with _open(config, ref) as backend:
                _generate(store, backend, config, ref, ds["task"], cot.version, todo, done, summary, progress)
            if summary.served and summary.served["stopped"]:
                run.status = "stopped"
        _figures(store, config.dataset, ref.run_id, summary)
        summary.wall_s = time.perf_counter() - start
    return summary


def _open(config: ExpandConfig, ref: RunRef) -> Backend:
    """The assistant as a generation backend: its server, its GGUF export, or transformers (base + adapter)."""
    if config.server is not None:
        return open_backend("server", config=config.settings(), server=config.server)
    if config.gguf is not None:
        return open_backend("gguf", config=config.settings(), gguf=config.gguf)
    return open_backend("hf", config=config.settings(), model=ref.base_model, adapter=ref.adapter)


def _generate(store: Store, backend: Backend, config: ExpandConfig, ref: RunRef, task: str, version: str,
              todo: list[Any], done: dict[int, int], summary: ExpandSummary,
              progress: Progress | None) -> None:
    """Sample the missing chains, storing each as it is generated. A sample's k-th chain is seeded
    ``seed + 1000·sample_id + k`` (the first of a batch seeds the batch in-process)."""
    requests = [
        Request(post=Post(text=it.text, aspect=it.aspect, image=None if backend.text_only else it.image_path,
                          caption=it.caption),
                prompt="cot", task=task, n=config.n - done.get(it.sample_id, 0),
                seed=config.seed + 1000 * it.sample_id + done.get(it.sample_id, 0), tag=it.sample_id,
                name=f"sample {it.sample_id} chain {done.get(it.sample_id, 0) + 1}")
        for it in todo
    ]
    total = sum(r.n for r in requests)
    touched: set[int] = set()
    numbered = dict(done)  # a sample's chains so far: the next one's attempt number (one row each)

    def store_answer(request: Request, gen: Generated) -> None:
        numbered[request.tag] = numbered.get(request.tag, 0) + 1
        store.add_reasoning(**chain_row(
            sample_id=request.tag, source="assistant", model=ref.base_model, stage=EXPAND, output=gen.text,
            run_id=ref.run_id, prompt_version=version, origin="expand", attempt=numbered[request.tag],
            tokens_in=gen.tokens_in, tokens_out=gen.tokens_out, latency_s=round(gen.latency_s, 4),
        ))
        summary.generated += 1
        touched.add(request.tag)
        summary.samples = len(touched)
        emit(progress, "expand", done=summary.generated, total=total)

    try:
        served = backend.run(requests, store_answer, stage="expand")
    finally:
        summary.samples = len(touched)
    if backend.kind == "server":
        summary.served = served.as_dict()


def _figures(store: Store, dataset: str, run_id: str, summary: ExpandSummary) -> None:
    """D_a and classification figures over every chain the run has for the training split (this invocation and
    earlier ones)."""
    from mulcot.metrics import classification_metrics

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
