"""Training items collated into model inputs for the multi-task objective.

Every item is one (sample, reasoning chain) pair; the collator turns it into two sequences over the same image and
text (DESIGN.md §1, stage 2):

- reasoning task: P_cot → the reasoning text (canonical five-field form);
- classification task: P_label → ``"Prediction": <label>``.

Labels are the input ids with everything but the assistant's answer (and its end-of-turn token) set to -100, so
cross-entropy only counts target tokens; ``task_ids`` says which task each sequence belongs to.
"""

from __future__ import annotations

from typing import Any

from mulcot.core.images import DEFAULT_MAX_PIXELS, load_image
from mulcot.core.inputs import TrainItem, is_text_only, render_prompt, user_message
from mulcot.core.prompts import get_prompt
from mulcot.core.reasoning import format_prediction
from mulcot.errors import MulcotError

IGNORE = -100
TASK_CLS, TASK_REA = 0, 1


class MultiTaskCollator:
    """Turns :class:`TrainItem` lists into padded model inputs with ``labels`` and ``task_ids``."""

    def __init__(self, processor: Any, task: str, *, tasks: tuple[int, ...] = (TASK_REA, TASK_CLS),
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_length: int | None = None,
                 text_only: bool | None = None):
        """``text_only`` (default: whether the processor is a text-only backbone's) renders every item without its
        image, captions standing in, as a text-only backbone sees it (soft labels from a text-only server)."""
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.task = task
        self.prompts = {TASK_REA: get_prompt("cot", task), TASK_CLS: get_prompt("label", task)}
        self.tasks = tasks
        self.max_pixels = max_pixels
        self.max_length = max_length
        self.text_only = is_text_only(processor) if text_only is None else text_only
        marker = getattr(processor, "answer_marker", "<|im_start|>assistant\n")
        self.answer_marker = self.tokenizer.encode(marker, add_special_tokens=False)
        self.end_of_turn = getattr(processor, "end_of_turn_id", None)
        if self.end_of_turn is None:
            self.end_of_turn = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if self.tokenizer.pad_token_id is None:
            raise MulcotError("the tokenizer has no pad token")

    def sequences(self, item: TrainItem, task_id: int) -> tuple[list[dict[str, Any]], str]:
        """Chat messages (user prompt + assistant target) for one task of one item."""
        prompt = render_prompt(self.prompts[task_id], item, self.text_only)
        if task_id == TASK_REA:
            if item.chain is None:
                raise MulcotError(f"sample {item.sample_id} has no reasoning chain for the reasoning task")
            target = item.chain
        else:
            target = format_prediction(item.label)
        return [user_message(prompt, item.image_path is not None and not self.text_only),
                {"role": "assistant", "content": [{"type": "text", "text": target}]}], target

    def text(self, item: TrainItem, task_id: int) -> str:
        """One task's sequence of one item as the chat template renders it (what gets tokenized)."""
        messages, _ = self.sequences(item, task_id)
        return self.processor.apply_chat_template(messages, tokenize=False)

    def _mask(self, ids: list[int]) -> list[int]:
        """Labels for one sequence: only the answer after the last ``<|im_start|>assistant\\n`` and its
        ``<|im_end|>`` are targets."""
        m = self.answer_marker
        start = None
        for i in range(len(ids) - len(m), -1, -1):
            if ids[i : i + len(m)] == m:
                start = i + len(m)
                break
        if start is None:
            raise MulcotError("the chat template did not produce an assistant turn (unsupported template)")
        labels = [IGNORE] * len(ids)
        for j in range(start, len(ids)):
            labels[j] = ids[j]
            if ids[j] == self.end_of_turn:
                break
        return labels

    def __call__(self, items: list[TrainItem], tasks: tuple[int, ...] | None = None, *,
                 packed: bool = False) -> dict[str, Any]:
        """Tokenized sequences, task by task (reasoning first) and item by item: right-padded rows with ``labels``
        and ``task_ids`` [rows]; ``packed``: one row without padding (:func:`mulcot.train.packing.pack`)."""
        import torch

        texts, images, task_ids = [], [], []
        for task_id in tasks or self.tasks:
            for item in items:
                texts.append(self.text(item, task_id))
                if item.image_path is not None and not self.text_only:
                    images.append(load_image(item.image_path, self.max_pixels))
                task_ids.append(task_id)
        self.tokenizer.padding_side = "right"
        batch = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        labels = torch.full_like(batch["input_ids"], IGNORE)
        for row, mask in enumerate(batch["attention_mask"]):
            n = int(mask.sum())
            labels[row, :n] = torch.tensor(self._mask(batch["input_ids"][row, :n].tolist()))
        batch["labels"] = labels
        batch["task_ids"] = torch.tensor(task_ids)
        if self.max_length is not None and batch["input_ids"].shape[1] > self.max_length:
            raise MulcotError(
                f"a sequence of {batch['input_ids'].shape[1]} tokens exceeds --max-length {self.max_length}: "
                "lower --max-pixels or raise --max-length"
            )
        if packed:
            from mulcot.train.packing import pack

            return pack(dict(batch))
        return dict(batch)
