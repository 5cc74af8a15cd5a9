"""``--soft-labels online``: the assistant stays resident beside the student and the full KL over the common
vocabulary prefix is computed for each batch (:func:`mulcot.train.losses.kl_full`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mulcot.core.inputs import TrainItem
from mulcot.train.soft_labels.base import SoftLabelSource


class OnlineSource(SoftLabelSource):
    """``online``: the resident assistant's full distribution at every target position, batch by batch."""

    mode = "online"
    assistant: Any = None

    def prepare(self, student_processor: Any, collator: Any, folder: Path) -> None:
        self.assistant = self.load_assistant(student_processor)

    def kl(self, items: list[TrainItem], tasks: tuple[int, ...], batch: dict[str, Any], student_logits: Any,
           mask: Any) -> Any:
        import torch

        from mulcot.train.losses import kl_full

        device = next(self.assistant.parameters()).device
        a_batch = {k: v.to(device) for k, v in batch.items()}
        with torch.no_grad():
            z_a = self.assistant(**a_batch, logits_to_keep=mask.to(device)).logits.to(student_logits.device)
        return kl_full(student_logits, z_a, self.config.tau)
