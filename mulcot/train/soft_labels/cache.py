"""``--soft-labels cache`` (the default, memory-frugal) and the top-k cache it shares with ``server``.

The assistant runs once over every training sequence and its top-k log-probs and token ids per target position are
written to safetensors shards under ``runs/<student>/soft_labels`` (indexed in the store); the assistant then
leaves memory and the student trains alone. Estimator: both distributions renormalised over the assistant's k ids,
``p_a,k = softmax(log p_a[ids]/τ)``, ``p_s,k = softmax(z_s[ids]/τ)``, KL summed over those k
(:func:`mulcot.train.losses.kl_topk`); with k = vocabulary size it equals the full KL.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mulcot.core.inputs import TrainItem
from mulcot.errors import MulcotError
from mulcot.events import Progress, emit
from mulcot.store import Store
from mulcot.train.collator import TASK_CLS, TASK_REA
from mulcot.train.losses import prediction_mask
from mulcot.train.soft_labels.base import TopKSource, item_key

SHARD_ITEMS = 64
# (item, task) jobs -> (key, top-k ids, top-k log-probs) per job, in order; None for a job it could not do
Compute = Callable[[list[tuple[TrainItem, int]]], list[tuple[str, Any, Any] | None]]


class SoftLabelCache:
    """Reads cached top-k soft labels by item key (safetensors shards, opened lazily)."""

    def __init__(self, folder: Path, index: dict[str, dict[str, Any]]):
        self.folder = folder
        self.index = index
        self._open: dict[str, Any] = {}

    def get(self, key: str) -> tuple[Any, Any]:
        from safetensors import safe_open

        entry = self.index.get(key)
        if entry is None:
            raise MulcotError(f"soft label '{key}' is not in the cache: rerun distill to complete it")
        shard = entry["shard"]
        if shard not in self._open:
            self._open[shard] = safe_open(str(self.folder / shard), framework="pt")
        f = self._open[shard]
        return f.get_tensor(f"{key}.ids"), f.get_tensor(f"{key}.logprobs")


def build_soft_label_cache(store: Store, run_id: str, folder: Path, compute: Compute, items: list[TrainItem],
                           progress: Progress | None = None, source: str | None = None
                           ) -> tuple[SoftLabelCache, int]:
    """Store top-k log-probs per target position of every training sequence, computed by ``compute`` (the resident
    assistant: :func:`assistant_top_k`; a server: :class:`mulcot.train.soft_labels.server.ServerScorer`).
    Resumable: sequences already indexed from the same ``source`` (:func:`cache_source`) are skipped, those from
    another assistant or k are computed again; each shard is written whole, then indexed. Returns the cache and how
    many sequences ``compute`` gave nothing for (they stay unindexed, for a rerun).

    Under a launcher every rank computes its share of each shard; the main process gathers the shares and alone
    writes the files and the store, so the cache is the same as one process would build."""
    from mulcot.train import distributed as dist

    main = dist.is_main()
    if main:
        folder.mkdir(parents=True, exist_ok=True)
    index = dist.on_main(lambda: store.soft_label_index(run_id, source))
    todo: list[tuple[TrainItem, int]] = []
    seen = set(index)
    for item in items:
        for task in (TASK_REA, TASK_CLS):
            key = item_key(item, task)
            if key not in seen:
                seen.add(key)
                todo.append((item, task))
    done = missing = 0
    for shard_start in range(0, len(todo), SHARD_ITEMS):
        shard_jobs = todo[shard_start : shard_start + SHARD_ITEMS]
        results = dist.gather_sharded(shard_jobs, compute)
        done += len(shard_jobs)
        kept = [r for r in results if r is not None]
        missing += len(results) - len(kept)
        if main and kept:
            _write_shard(store, run_id, folder, kept, source)
        if main:
            emit(progress, "soft_labels", done=done, total=len(todo))
        dist.barrier()
    return SoftLabelCache(folder, dist.on_main(lambda: store.soft_label_index(run_id, source))), missing


def assistant_top_k(assistant: Any, collator: Any, top_k: int, batch_size: int = 4) -> Compute:
    """``compute`` for :func:`build_soft_label_cache` from the assistant in memory."""
    assistant.eval()
    return lambda jobs: _top_k(assistant, collator, jobs, top_k, batch_size)


def _top_k(assistant: Any, collator: Any, jobs: list[tuple[TrainItem, int]], top_k: int,
           batch_size: int) -> list[tuple[str, Any, Any]]:
    """(key, top-k ids, top-k log-probs) per job, in the jobs' order."""
    import torch

    device = next(assistant.parameters()).device
    out: dict[int, tuple[str, Any, Any]] = {}
    for b in range(0, len(jobs), batch_size):
        positions = range(b, min(b + batch_size, len(jobs)))
        for task in (TASK_REA, TASK_CLS):
            picked = [i for i in positions if jobs[i][1] == task]
            if not picked:
                continue
            group = [jobs[i][0] for i in picked]
            batch = collator(group, (task,))
            labels = batch.pop("labels")
            batch.pop("task_ids")
            mask = prediction_mask(labels)
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.inference_mode():
                logits = assistant(**batch, logits_to_keep=mask.to(device)).logits.float()
            top = torch.log_softmax(logits, dim=-1).topk(min(top_k, logits.size(-1)), dim=-1)
            counts = mask.sum(dim=1).tolist()
            for i, item, ids, values in zip(picked, group, top.indices.split(counts), top.values.split(counts),
                                            strict=True):
                out[i] = (item_key(item, task), ids.to(torch.int32).cpu().contiguous(),
                          values.to(torch.float32).cpu().contiguous())
    return [out[i] for i in range(len(jobs))]


def _write_shard(store: Store, run_id: str, folder: Path, results: list[tuple[str, Any, Any]],
                 source: str | None) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    entries = []
    for key, ids, logprobs in results:
        tensors[f"{key}.ids"] = ids
        tensors[f"{key}.logprobs"] = logprobs
        entries.append((key, int(ids.shape[0]), int(ids.shape[1]) if ids.dim() > 1 else 1))
    shard = f"shard-{len(list(folder.glob('shard-*.safetensors'))):05d}.safetensors"
    tmp = folder / (shard + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, folder / shard)
    store.add_soft_labels(run_id, shard, entries, source)


class CachedSource(TopKSource):
    """``cache``: the resident assistant's top-k at every target position, computed once and cached."""

    mode = "cache"

    def prepare(self, student_processor: Any, collator: Any, folder: Path) -> None:
        assistant = self.load_assistant(student_processor)
        compute = assistant_top_k(assistant, collator, self.config.top_k)
        self.cache, _ = build_soft_label_cache(self.store, self.config.name, folder / "soft_labels", compute,
                                               self.items, self.progress, self.source)
        del assistant, compute
