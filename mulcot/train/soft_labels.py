"""The assistant's soft labels for the student's KL term, in two modes.

- ``cache`` (default, memory-frugal): the assistant runs once over every training sequence and its top-k
  log-probs and token ids per target position are written to safetensors shards under ``runs/<student>/soft_labels``
  (indexed in the store); the assistant then leaves memory and the student trains alone. Estimator: both
  distributions renormalised over the assistant's k ids, ``p_a,k = softmax(log p_a[ids]/τ)``,
  ``p_s,k = softmax(z_s[ids]/τ)``, KL summed over those k (:func:`mulcot.train.losses.kl_topk`); with k = vocabulary
  size it equals the full KL.
- ``online``: the assistant stays resident and the full KL over the common vocabulary prefix is computed per batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mulcot.errors import MulcotError
from mulcot.events import Progress, emit
from mulcot.refs import RunRef
from mulcot.store import Store
from mulcot.train.config import DistillConfig
from mulcot.train.items import TASK_CLS, TASK_REA, TrainItem
from mulcot.train.losses import prediction_mask

SHARD_ITEMS = 64
# (item, task) jobs -> (key, top-k ids, top-k log-probs) per job, in order; None for a job it could not do
Compute = Callable[[list[tuple[TrainItem, int]]], list[tuple[str, Any, Any] | None]]


def item_key(item: TrainItem, task: int) -> str:
    """Cache key of one training sequence: the classification sequence is the same for every chain of a sample."""
    return f"s{item.sample_id}/cls" if task == TASK_CLS else f"c{item.chain_id}/rea"


def check_tokenizers(assistant_tok: Any, student_tok: Any, assistant: str, student: str) -> None:
    """Refuse a pair whose tokenizers differ: soft labels are only comparable token for token."""
    a, s = assistant_tok.get_vocab(), student_tok.get_vocab()
    if a != s:
        only_a = len(set(a) - set(s))
        only_s = len(set(s) - set(a))
        moved = sum(1 for t in set(a) & set(s) if a[t] != s[t])
        raise MulcotError(
            f"the assistant ({assistant}) and the student ({student}) do not share a tokenizer ({only_a} tokens only "
            f"in the assistant's, {only_s} only in the student's, {moved} with other ids): distillation needs one "
            "vocabulary, e.g. Qwen2.5-VL-7B → 3B or Qwen3-VL-8B → 2B"
        )


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


def cache_source(mode: str, assistant_sha256: str, top_k: int) -> str:
    """What a cached soft label was computed from: the mode (resident assistant or server), the assistant adapter's
    digest and k. A cache is reused only for the same source."""
    return f"{mode}:{assistant_sha256[:16]}:k{top_k}"


def build_soft_label_cache(store: Store, run_id: str, folder: Path, compute: Compute, items: list[TrainItem],
                           progress: Progress | None = None, source: str | None = None
                           ) -> tuple[SoftLabelCache, int]:  # fmt: skip
    """Store top-k log-probs per target position of every training sequence, computed by ``compute`` (the resident
    assistant: :func:`assistant_top_k`; a server: :class:`mulcot.train.server_soft_labels.ServerScorer`).
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
           batch_size: int) -> list[tuple[str, Any, Any]]:  # fmt: skip
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
                                            strict=True):  # fmt: skip
                out[i] = (item_key(item, task), ids.to(torch.int32).cpu().contiguous(),
                          values.to(torch.float32).cpu().contiguous())  # fmt: skip
    return [out[i] for i in range(len(jobs))]


def _write_shard(store: Store, run_id: str, folder: Path, results: list[tuple[str, Any, Any]],
                 source: str | None) -> None:  # fmt: skip
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


class SoftLabels:
    """Plugs the soft term into the Trainer: prepares the cache (or loads the assistant) once the student and its
    collator exist, then returns per-position KL for each batch."""

    def __init__(self, store: Store, config: DistillConfig, ref: RunRef, items: list[TrainItem],
                 progress: Progress | None, assistant_sha256: str = ""):  # fmt: skip
        self.store, self.config, self.ref, self.items, self.progress = store, config, ref, items, progress
        # the cache is keyed by where its soft labels come from: another assistant or k computes them again
        self.source = cache_source(config.soft_labels, assistant_sha256, config.top_k)
        self.cache: SoftLabelCache | None = None
        self.assistant: Any = None
        self.server_stats: dict[str, Any] | None = None

    def prepare(self, student_processor: Any, collator: Any, folder: Path) -> None:
        from mulcot.models import load_model, load_with_adapter
        from mulcot.train.loop import train_device

        if self.config.soft_labels == "server":
            self._prepare_server(student_processor, collator, folder)
            return
        base, processor, _ = load_model(self.ref.base_model, device=train_device(self.config), dtype=self.config.dtype)
        check_tokenizers(processor.tokenizer, student_processor.tokenizer, self.ref.base_model, self.config.model)
        assistant = load_with_adapter(base, self.ref.adapter)
        assistant.eval()
        if self.config.soft_labels == "online":
            self.assistant = assistant
            return
        compute = assistant_top_k(assistant, collator, self.config.top_k)
        self.cache, _ = build_soft_label_cache(self.store, self.config.name, folder / "soft_labels", compute,
                                               self.items, self.progress, self.source)  # fmt: skip
        del assistant, base, compute

    def _prepare_server(self, student_processor: Any, collator: Any, folder: Path) -> None:
        """The cache from the assistant's server: the assistant's tokenizer is read (not its weights) to check it
        is the student's; sequences are rendered as text when the server reads no images."""
        from mulcot.models.loading import model_family
        from mulcot.models.processor import load_processor
        from mulcot.train import distributed as dist
        from mulcot.train.items import MultiTaskCollator
        from mulcot.train.server_soft_labels import ServerScorer

        try:
            processor = load_processor(self.ref.base_model, model_family(self.ref.base_model))
        except (OSError, ValueError) as err:
            raise MulcotError(f"cannot read the assistant's tokenizer ({self.ref.base_model}): {err}") from None
        check_tokenizers(processor.tokenizer, student_processor.tokenizer, self.ref.base_model, self.config.model)
        server = self.config.server_config()
        text_collator = MultiTaskCollator(student_processor, collator.task, max_pixels=collator.max_pixels,
                                          text_only=True)  # fmt: skip
        scorer = ServerScorer(server, text_collator, student_processor.tokenizer, self.config.top_k, self.progress)
        self.cache, missing = build_soft_label_cache(self.store, self.config.name, folder / "soft_labels", scorer,
                                                     self.items, self.progress, self.source)  # fmt: skip
        if dist.is_main():
            scorer.write_stats(folder / "soft_labels")
        self.server_stats = scorer.stats.as_dict()
        scorer.check(missing)

    def kl(self, items: list[TrainItem], tasks: tuple[int, ...], batch: dict[str, Any], student_logits: Any,
           mask: Any) -> Any:  # fmt: skip
        """KL(p_a ‖ p_s) per target position ([N], the rows of ``student_logits`` = the True positions of ``mask``)."""
        import torch

        from mulcot.train.losses import kl_full, kl_topk

        if self.assistant is not None:
            device = next(self.assistant.parameters()).device
            a_batch = {k: v.to(device) for k, v in batch.items()}
            with torch.no_grad():
                z_a = self.assistant(**a_batch, logits_to_keep=mask.to(device)).logits.to(student_logits.device)
            return kl_full(student_logits, z_a, self.config.tau)
        ids, logprobs = [], []
        counts = mask.sum(dim=1).tolist()
        row = 0
        for task in tasks:
            for item in items:
                i, lp = self.cache.get(item_key(item, task))  # type: ignore[union-attr]
                if i.shape[0] != counts[row]:
                    raise MulcotError(
                        f"cached soft labels for {item_key(item, task)} cover {i.shape[0]} positions but the "
                        f"student sees {counts[row]}: the tokenizers or prompts changed since the cache was built"
                    )
                ids.append(i)
                logprobs.append(lp)
                row += 1
        device = student_logits.device
        return kl_topk(student_logits, torch.cat(ids).to(device), torch.cat(logprobs).to(device), self.config.tau)
