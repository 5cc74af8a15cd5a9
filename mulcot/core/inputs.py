"""Model inputs: a store sample as an item (:class:`TrainItem`), its prompt and its image line.

Every stage that shows a model a post builds it from here: training and distillation (with one of the sample's
chains), generation for expand, eval and predict (without). A text-only backbone (a
:class:`~mulcot.models.processor.TextProcessor`) gets no image: the prompt carries the sample's caption
(``meta["caption"]`` in the store) when there is one, otherwise no image line at all
(:func:`mulcot.core.prompts.image_as_text`). How items become padded tensors for training is the collator's
business (:mod:`mulcot.train.collator`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from mulcot.core.prompts import PromptTemplate, image_as_text
from mulcot.errors import MulcotError
from mulcot.store import Store


@dataclass
class TrainItem:
    """One (sample, chain) pair."""

    sample_id: int
    text: str
    aspect: str | None
    label: str
    image_path: str | None
    chain: str | None  # canonical reasoning text; None: classification only
    chain_id: int | None = None
    caption: str | None = None  # the image in words, for text-only backbones


def teacher_items(
    store: Store, dataset: str, split: str = "train", *, allow_text_only: bool = False
) -> list[TrainItem]:
    """D_t of a split as training items; refuses an empty D_t and (unless allowed) a text-only dataset."""
    ds = store.require_dataset(dataset)
    if not ds["has_images"] and not allow_text_only:
        raise MulcotError(
            f"dataset '{dataset}' was imported without images (--no-images), but the models are vision-language "
            "models: import it with its images, pass --allow-text-only, or use a text-only model"
        )
    chains = store.teacher_set(dataset, split)
    if not chains:
        raise MulcotError(
            f"no teacher reasoning (D_t) for {dataset}/{split}: run `mulcot annotate {dataset} --split {split}` "
            "first, or import chains with `mulcot data import mulcot-json`"
        )
    samples = {s["id"]: s for s in store.samples(dataset, split)}
    return [sample_item(samples[c["sample_id"]], c["text"], c["id"]) for c in chains]


def sample_items(store: Store, dataset: str, split: str) -> list[TrainItem]:
    """Every labelled sample of a split, without chains (for dev evaluation)."""
    items = [sample_item(s) for s in store.samples(dataset, split) if s["label"]]
    if not items:
        raise MulcotError(f"no labelled samples in {dataset}/{split}")
    return items


def sample_item(sample: dict[str, Any], chain: str | None = None, chain_id: int | None = None) -> TrainItem:
    """A store sample (with one of its chains, or none) as a training item."""
    meta = sample.get("meta") or {}
    return TrainItem(
        sample_id=sample["id"], text=sample["text"], aspect=sample["aspect"], label=sample["label"],
        image_path=sample["image_path"] if sample["has_image"] else None, chain=chain, chain_id=chain_id,
        caption=meta.get("caption") if isinstance(meta, dict) else None,
    )


#: What a model is shown of each post (``TrainConfig.inputs``; the paper's Table 6 ablations): everything, the text
#: alone ("w/o Img": no image and no caption) or the image alone ("w/o Txt": the aspect stands in for the text).
INPUTS = ("all", "no-image", "no-text")


def mask_items(items: list[TrainItem], inputs: str) -> list[TrainItem]:
    """``items`` as a model trained with ``inputs`` (:data:`INPUTS`) is shown them, in training and afterwards."""
    if inputs == "no-image":
        return [without_image(it) for it in items]
    if inputs == "no-text":
        return [without_text(it) for it in items]
    if inputs != "all":
        raise MulcotError(f"unknown inputs {inputs!r}: use {', '.join(INPUTS)}")
    return items


def without_image(item: TrainItem) -> TrainItem:
    """The item with no image and no caption: the text (and aspect) alone."""
    return replace(item, image_path=None, caption=None)


def without_text(item: TrainItem) -> TrainItem:
    """The item with the post's text removed: the image (or caption) and, for an aspect-level post, the aspect
    alone in the text's place (the prompt needs a sentence naming it); a whole-post item gets an empty text."""
    return replace(item, text=item.aspect or "")


def is_text_only(processor: Any) -> bool:
    """True when ``processor`` belongs to a text-only backbone (images travel as captions)."""
    return bool(getattr(processor, "text_only", False))


def render_prompt(template: PromptTemplate, item: TrainItem, text_only: bool) -> str:
    """The prompt of one item; for a text-only backbone the image line becomes the caption (or nothing)."""
    prompt = template.render(item.text, item.aspect)
    return image_as_text(prompt, item.caption) if text_only else prompt


def image_input(items: list[TrainItem], text_only: bool) -> dict[str, Any]:
    """What stood for the image in a run's prompts (recorded in the run config): ``image`` (the pixels, Qwen-VL),
    ``caption`` (every item captioned), ``none`` (no caption: text only) or ``mixed``."""
    n = len(items)
    if not text_only:
        return {"image_input": "image", "items": n, "with_image": sum(i.image_path is not None for i in items)}
    captioned = sum(bool(i.caption and i.caption.strip()) for i in items)
    kind = "none" if captioned == 0 else "caption" if captioned == n else "mixed"
    return {"image_input": kind, "items": n, "captioned": captioned}


def user_message(prompt: str, with_image: bool) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "image"}] if with_image else []
    content.append({"type": "text", "text": prompt})
    return {"role": "user", "content": content}
