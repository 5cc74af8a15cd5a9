"""What a soft-label source is: the assistant's distribution at the student's target positions, for the KL term.

A source is made for one distill run (:func:`mulcot.train.soft_labels.open_source`), checks its settings before the
run is recorded (:meth:`SoftLabelSource.check_settings`, :meth:`SoftLabelSource.check_items`), is prepared once the
student and its collator exist (:meth:`SoftLabelSource.prepare`), and gives KL(p_a ‖ p_s) per target position for
each batch (:meth:`SoftLabelSource.kl`). The three: ``cache`` (:mod:`~mulcot.train.soft_labels.cache`), ``online``
(:mod:`~mulcot.train.soft_labels.online`), ``server`` (:mod:`~mulcot.train.soft_labels.server`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mulcot.core.inputs import TrainItem
from mulcot.core.refs import RunRef
from mulcot.errors import MulcotError
from mulcot.events import Progress
from mulcot.store import Store
from mulcot.train.collator import TASK_CLS
from mulcot.train.config import DistillConfig


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


def item_key(item: TrainItem, task: int) -> str:
    """Cache key of one training sequence: the classification sequence is the same for every chain of a sample."""
    return f"s{item.sample_id}/cls" if task == TASK_CLS else f"c{item.chain_id}/rea"


def cache_source(mode: str, assistant_sha256: str, top_k: int) -> str:
    """What a cached soft label was computed from: the mode (resident assistant or server), the assistant adapter's
    digest and k. A cache is reused only for the same source."""
    return f"{mode}:{assistant_sha256[:16]}:k{top_k}"


class SoftLabelSource:
    """The assistant's soft labels for one distill run."""

    mode = ""

    def __init__(self, store: Store, config: DistillConfig, ref: RunRef, items: list[TrainItem],
                 progress: Progress | None, assistant_sha256: str = ""):
        self.store, self.config, self.ref, self.items, self.progress = store, config, ref, items, progress
        # a cache is keyed by where its soft labels come from: another assistant or k computes them again
        self.source = cache_source(config.soft_labels, assistant_sha256, config.top_k)
        self.stats: dict[str, Any] | None = None  # what preparing did, recorded with the run (server scoring)

    @classmethod
    def check_settings(cls, config: DistillConfig) -> None:
        """Refuse, in one line, settings this source cannot use (checked before anything is loaded)."""
        if config.server or config.served_model:
            raise MulcotError("--server/--served-model are for --soft-labels server (the assistant's server)")

    @classmethod
    def check_items(cls, config: DistillConfig, items: list[TrainItem]) -> None:
        """Refuse, in one line, training items this source cannot score (every rank, before the run is recorded)."""

    def prepare(self, student_processor: Any, collator: Any, folder: Path) -> None:
        """Get ready once the student's processor and collator exist (``folder``: the run folder)."""
        raise NotImplementedError

    def kl(self, items: list[TrainItem], tasks: tuple[int, ...], batch: dict[str, Any], student_logits: Any,
           mask: Any) -> Any:
        """KL(p_a ‖ p_s) per target position ([N], the rows of ``student_logits`` = the True positions of ``mask``)."""
        raise NotImplementedError

    def load_assistant(self, student_processor: Any) -> Any:
        """The assistant (base + adapter) in memory, in eval mode, its tokenizer checked against the student's."""
        from mulcot.models import load_model, load_with_adapter
        from mulcot.train.loop import train_device

        base, processor, _ = load_model(self.ref.base_model, device=train_device(self.config), dtype=self.config.dtype)
        check_tokenizers(processor.tokenizer, student_processor.tokenizer, self.ref.base_model, self.config.model)
        assistant = load_with_adapter(base, self.ref.adapter)
        assistant.eval()
        return assistant


class TopKSource(SoftLabelSource):
    """A source whose soft labels are a cached top-k per target position (:class:`~.cache.SoftLabelCache`)."""

    cache: Any = None

    def kl(self, items: list[TrainItem], tasks: tuple[int, ...], batch: dict[str, Any], student_logits: Any,
           mask: Any) -> Any:
        import torch

        from mulcot.train.losses import kl_topk
        ids, logprobs = [], []
        counts = mask.sum(dim=1).tolist()
        row = 0
        for task in tasks:
            for item in items:
                i, lp = self.cache.get(item_key(item, task))
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
