"""Forced-choice label scoring with a transformers model: how likely is each label as the label head's answer?

For each item the label prompt P_label is rendered as generation renders it (the chat template with its generation
prompt; images for Qwen-VL, captions for text-only backbones), followed by the trained answer
(:func:`mulcot.core.reasoning.format_prediction`, ``"Prediction": "<label>"``) and the end-of-turn token: one sequence
per label, exactly the classification target the model was trained on (:class:`mulcot.core.inputs.
MultiTaskCollator` marks the same tokens, up to and including the end of turn).

The three sequences share every token up to the first one that differs (the label's first token, or a token that
straddles ``"`` and the label); a label's score is the sum of the log-probabilities of its tokens from there up to
and including the end-of-turn token (``end_of_turn=False``: up to the closing quote), each conditioned on
everything before it — the log-probability of the whole continuation after ``"Prediction": "``. Counting the end of
turn makes an answer that would go on after the label (``"positive" because …``) less likely, as training taught.
The probabilities are the softmax of the three scores (normalised over the three labels only).

Two ways of computing, equal up to float rounding: ``shared_prefix`` (the default for text-only backbones) batches
the items by prompt length and runs, per batch, the head every prompt shares (the chat template's system turn and
the instructions) once, then each item's rest of the prefix on that cache (right-padded, explicit position ids),
then only the three continuations on its cache repeated per label; otherwise (Qwen-VL, whose multimodal rotary
positions are recomputed by the model) each label's full sequence is run, right-padded as in training, and only
the needed positions' logits computed.

:func:`choice_texts`, :func:`scored_span`, :func:`normalise` and :func:`choice_from_scores` are backend-neutral
(a GGUF or server backend tokenizes the same texts and scores the same span); :func:`score_labels` is the
transformers backend.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mulcot.core.images import DEFAULT_MAX_PIXELS, load_image
from mulcot.core.inputs import TrainItem, is_text_only, render_prompt, user_message
from mulcot.core.labels import LABELS
from mulcot.core.prompts import get_prompt
from mulcot.core.reasoning import format_prediction
from mulcot.errors import ModelError
from mulcot.events import Progress, emit

_PROBE = "mulcotlabelprobe"
#: What the trained answer puts before and after the label: ``"Prediction": "`` and ``"``.
ANSWER_PREFIX, ANSWER_SUFFIX = format_prediction(_PROBE).split(_PROBE)


@dataclass(frozen=True)
class LabelChoice:
    """One item's forced-choice scores: per label (in :data:`LABELS` order) the log-probability of its whole
    continuation, its share of the three (softmax), and how many tokens were scored."""

    sample_id: int
    prediction: str  # the most probable label (ties to the first in LABELS order)
    probabilities: dict[str, float]
    log_probs: dict[str, float]
    tokens: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"sample_id": self.sample_id, "prediction": self.prediction, "probabilities": self.probabilities,
                "log_probs": self.log_probs, "tokens": self.tokens}


def end_of_turn_id(processor: Any) -> int:
    """The token that ends an assistant turn (the processor's, else ``<|im_end|>``)."""
    eot = getattr(processor, "end_of_turn_id", None)
    if eot is None:
        eot = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    if eot is None:
        raise ModelError("the tokenizer has no end-of-turn token: cannot score the label answers")
    return int(eot)


def label_prompt(processor: Any, item: TrainItem, task: str, *, text_only: bool | None = None) -> str:
    """P_label as generation renders it (chat template with the generation prompt) followed by ``"Prediction": "``
    (:data:`ANSWER_PREFIX`): the text every label's continuation is scored after."""
    text_only = is_text_only(processor) if text_only is None else text_only
    with_image = item.image_path is not None and not text_only
    messages = [user_message(render_prompt(get_prompt("label", task), item, text_only), with_image)]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + ANSWER_PREFIX


def choice_texts(processor: Any, item: TrainItem, task: str, *, text_only: bool | None = None) -> dict[str, str]:
    """Per label, the full text scored: :func:`label_prompt`, the label, the closing quote and the end-of-turn
    token (as text; tokenizers parse it back to the special token)."""
    prompt = label_prompt(processor, item, task, text_only=text_only)
    eot = processor.tokenizer.convert_ids_to_tokens(end_of_turn_id(processor))
    return {label: prompt + label + ANSWER_SUFFIX + eot for label in LABELS}


def scored_span(sequences: Sequence[Sequence[int]], end_of_turn: int, *,
                include_end_of_turn: bool = True) -> tuple[int, list[int]]:
    """Where the labels' token sequences are scored: ``start`` = the length of their common prefix (the first
    position where any differs) and, per sequence, ``end`` (exclusive) = just past its first end-of-turn token at
    or after ``start`` (just before it with ``include_end_of_turn=False``; the sequence's end when it has none).
    Raises :class:`ModelError` when a sequence has nothing to score."""
    shortest = min(len(s) for s in sequences)
    start = 0
    while start < shortest and all(s[start] == sequences[0][start] for s in sequences):
        start += 1
    ends = []
    for s in sequences:
        end = len(s)
        for j in range(start, len(s)):
            if s[j] == end_of_turn:
                end = j + 1 if include_end_of_turn else j
                break
        if end <= start or start == 0:
            raise ModelError("the label answers cannot be told apart by their tokens (nothing to score)")
        ends.append(end)
    return start, ends


def normalise(log_probs: Mapping[str, float]) -> dict[str, float]:
    """Softmax over the labels' log-probabilities (each label's share of their total probability)."""
    top = max(log_probs.values())
    weights = {k: math.exp(v - top) for k, v in log_probs.items()}
    total = sum(weights.values())
    return {k: w / total for k, w in weights.items()}


def choice_from_scores(sample_id: int, log_probs: dict[str, float], tokens: dict[str, int]) -> LabelChoice:
    """The :class:`LabelChoice` of one item from its labels' log-probabilities (any backend)."""
    probs = normalise(log_probs)
    best = max(LABELS, key=lambda lab: (probs[lab], -LABELS.index(lab)))
    return LabelChoice(sample_id=sample_id, prediction=best, probabilities=probs, log_probs=log_probs, tokens=tokens)


def score_labels(model: Any, processor: Any, items: Sequence[TrainItem], task: str, *, batch_size: int = 8,
                 max_pixels: int = DEFAULT_MAX_PIXELS, end_of_turn: bool = True, shared_prefix: bool | None = None,
                 progress: Progress | None = None) -> list[LabelChoice]:
    """Forced-choice scores of the three labels for each item (see the module doc), in the items' order.

    ``batch_size`` items go through the model at once (three sequences each); ``max_pixels`` downsizes images as
    generation does; ``end_of_turn`` counts the end-of-turn token in each label's score; ``shared_prefix`` (default:
    for text-only backbones) runs the common prefix once. Greedy and deterministic; the model is put in eval mode
    for the call and restored after."""
    import torch

    if batch_size < 1:
        raise ModelError("the batch size must be at least 1")
    text_only = is_text_only(processor)
    if shared_prefix is None:
        shared_prefix = text_only
    elif shared_prefix and not text_only:
        raise ModelError("shared-prefix scoring needs a text-only backbone (Qwen-VL recomputes its image positions)")
    tok = processor.tokenizer
    eot = end_of_turn_id(processor)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[LabelChoice] = []
    try:
        with torch.inference_mode():
            if shared_prefix:
                out = _score_all_shared(model, processor, items, task, eot, end_of_turn, device, batch_size, progress)
            for begin in range(0, len(items) if not shared_prefix else 0, batch_size):
                chunk = items[begin : begin + batch_size]
                out.extend(_score_full(model, processor, chunk, task, eot, end_of_turn, device, text_only,
                                       max_pixels))
                emit(progress, "choice", done=len(out), total=len(items))
    finally:
        tok.padding_side = "right"
        if was_training:
            model.train()
    return out


def _score_all_shared(model: Any, processor: Any, items: Sequence[TrainItem], task: str, eot: int, include_eot: bool,
                      device: Any, batch_size: int, progress: Progress | None) -> list[LabelChoice]:
    """Text-only items through :func:`_score_shared`, batched by prompt length (less padding), in their order."""
    spans = [_shared_span(processor, item, task, eot, include_eot, True) for item in items]
    order = sorted(range(len(items)), key=lambda i: len(spans[i][0]))
    scored: dict[int, LabelChoice] = {}
    for begin in range(0, len(order), batch_size):
        chunk = order[begin : begin + batch_size]
        for i, (log_probs, tokens) in zip(chunk, _score_shared(model, processor, [spans[i] for i in chunk], device),
                                          strict=True):
            scored[i] = choice_from_scores(items[i].sample_id, log_probs, tokens)
        emit(progress, "choice", done=len(scored), total=len(items))
    return [scored[i] for i in range(len(items))]


def _token_ids(processor: Any, texts: list[str], images: list[Any] | None) -> tuple[list[list[int]], dict[str, Any]]:
    """Unpadded token ids of each text (images expanded into their placeholder tokens) and the rest of the
    processor's output (pixel values, image grids)."""
    processor.tokenizer.padding_side = "right"
    batch = processor(text=texts, images=images or None, padding=True, return_tensors="pt")
    mask = batch["attention_mask"]
    ids = [row[: int(m.sum())].tolist() for row, m in zip(batch["input_ids"], mask, strict=True)]
    return ids, dict(batch)


def _score_full(model: Any, processor: Any, chunk: Sequence[TrainItem], task: str, eot: int, include_eot: bool,
                device: Any, text_only: bool, max_pixels: int) -> list[LabelChoice]:
    """Every label's whole sequence through the model (right padding, as in training)."""
    import torch

    texts, images = [], []
    for item in chunk:
        by_label = choice_texts(processor, item, task, text_only=text_only)
        texts.extend(by_label[lab] for lab in LABELS)
        if item.image_path is not None and not text_only:
            image = load_image(item.image_path, max_pixels)
            images.extend([image] * len(LABELS))
    ids, batch = _token_ids(processor, texts, images)
    spans = []
    for i in range(len(chunk)):
        rows = ids[i * len(LABELS) : (i + 1) * len(LABELS)]
        spans.append(scored_span(rows, eot, include_end_of_turn=include_eot))
    # logits only where a scored token is predicted: position j - 1 predicts token j
    needed = sorted({j - 1 for start, ends in spans for end in ends for j in range(start, end)})
    keep = torch.tensor(needed, dtype=torch.long)
    inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
    logits = model(**inputs, logits_to_keep=keep.to(device)).logits
    column = {pos: c for c, pos in enumerate(needed)}
    out = []
    for i, (item, (start, ends)) in enumerate(zip(chunk, spans, strict=True)):
        log_probs, tokens = {}, {}
        for k, (label, end) in enumerate(zip(LABELS, ends, strict=True)):
            row = i * len(LABELS) + k
            targets = ids[row][start:end]
            cols = [column[j - 1] for j in range(start, end)]
            lp = torch.log_softmax(logits[row, cols].float(), dim=-1)
            log_probs[label] = float(lp.gather(-1, torch.tensor(targets, device=lp.device)[:, None]).sum())
            tokens[label] = end - start
        out.append(choice_from_scores(item.sample_id, log_probs, tokens))
    return out


def _cache_argument(model: Any) -> str:
    """The forward argument taking a key/value cache: ``cache`` (transformers ≥ 5.25) or ``past_key_values``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _shared_span(processor: Any, item: TrainItem, task: str, eot: int, include_eot: bool,
                 text_only: bool) -> tuple[list[int], list[list[int]]]:
    """One item's common prefix (token ids) and each label's continuation."""
    by_label = choice_texts(processor, item, task, text_only=text_only)
    ids, _ = _token_ids(processor, [by_label[lab] for lab in LABELS], None)
    start, ends = scored_span(ids, eot, include_end_of_turn=include_eot)
    return ids[0][:start], [row[start:end] for row, end in zip(ids, ends, strict=True)]


def _score_shared(model: Any, processor: Any, spans: Sequence[tuple[list[int], list[list[int]]]],
                  device: Any) -> list[tuple[dict[str, float], dict[str, int]]]:
    """Per item, each label's log-probability and token count, in three passes: the items' common head once
    (batch 1), each item's rest of the prefix (right-padded, its cache the head's repeated), then the three
    continuations (that cache repeated per label). Padding slots stay masked; positions count real tokens only."""
    import torch

    n, b = len(LABELS), len(spans)
    prefixes = [p for p, _ in spans]
    head = 0
    shortest = min(len(p) for p in prefixes)
    while head < shortest - 1 and all(p[head] == prefixes[0][head] for p in prefixes):
        head += 1  # the common head, leaving every item at least one token of its own
    cache_arg = _cache_argument(model)
    cache = None
    if head:
        first = model(input_ids=torch.tensor([prefixes[0][:head]], device=device), use_cache=True, logits_to_keep=1)
        cache = first.get("cache") or first.get("past_key_values")  # transformers ≥ 5.25 names it cache
        cache.batch_repeat_interleave(b)
    rest = [p[head:] for p in prefixes]
    width = max(len(r) for r in rest)
    pad = processor.tokenizer.pad_token_id
    mid_ids = torch.full((b, width), pad, dtype=torch.long)
    mid_mask = torch.zeros((b, width), dtype=torch.long)
    for i, r in enumerate(rest):
        mid_ids[i, : len(r)], mid_mask[i, : len(r)] = torch.tensor(r), 1
    ones = torch.ones((b, head), dtype=torch.long)
    last = sorted({len(r) - 1 for r in rest})
    kwargs = {cache_arg: cache} if cache is not None else {}
    out_b = model(input_ids=mid_ids.to(device), attention_mask=torch.cat([ones, mid_mask], 1).to(device),
                  position_ids=(head + torch.arange(width)).expand(b, width).to(device), use_cache=True,
                  logits_to_keep=torch.tensor(last, device=device), **kwargs)
    column = {pos: c for c, pos in enumerate(last)}
    first_lp = torch.log_softmax(torch.stack([out_b.logits[i, column[len(r) - 1]] for i, r in enumerate(rest)])
                                 .float(), dim=-1)
    conts = [c for _, c in spans]
    scores = torch.zeros(b * n, dtype=torch.float64)
    for i, rows in enumerate(conts):
        for k, c in enumerate(rows):
            scores[i * n + k] = float(first_lp[i, c[0]])
    steps = max(len(c) for rows in conts for c in rows) - 1
    if steps > 0:
        cont_ids = torch.full((b * n, steps), pad, dtype=torch.long)
        cont_mask = torch.zeros((b * n, steps), dtype=torch.long)
        for i, rows in enumerate(conts):
            for k, c in enumerate(rows):
                if len(c) > 1:
                    cont_ids[i * n + k, : len(c) - 1], cont_mask[i * n + k, : len(c) - 1] = torch.tensor(c[:-1]), 1
        cache = out_b.get("cache") or out_b.get("past_key_values")
        cache.batch_repeat_interleave(n)
        mask = torch.cat([ones.repeat_interleave(n, 0), mid_mask.repeat_interleave(n, 0), cont_mask], 1)
        lengths = torch.tensor([head + len(r) for r in rest]).repeat_interleave(n)
        logits = model(input_ids=cont_ids.to(device), attention_mask=mask.to(device),
                       position_ids=(lengths[:, None] + torch.arange(steps)[None, :]).to(device), use_cache=True,
                       **{cache_arg: cache}).logits
        lp = torch.log_softmax(logits.float(), dim=-1)
        for i, rows in enumerate(conts):
            for k, c in enumerate(rows):
                for t in range(1, len(c)):
                    scores[i * n + k] += float(lp[i * n + k, t - 1, c[t]])
    return [({lab: float(scores[i * n + k]) for k, lab in enumerate(LABELS)},
             {lab: len(c) for lab, c in zip(LABELS, rows, strict=True)}) for i, rows in enumerate(conts)]
