"""Prompt templates, versioned.

Teacher prompts (stage 1) are built from a basic template T_b — role and task, sentiment definitions, the post, the
response format — plus an instruction part:

- ``pre`` (P_pre): label-free, asks for the five fields with a predicted label;
- ``exp`` (P_exp): gives the gold label and asks why the post (or aspect) carries it.

Training/inference prompts for the assistant and the student:

- ``cot`` (P_cot): task + post + five-field format, no definitions; target = the reasoning text;
- ``label`` (P_label): task + post + ``Prediction`` format; target = ``"Prediction": <label>``.

The teacher's caption prompt (:func:`caption_prompt`, ``annotate --captions``) asks for one sentence about the image
alone: what a text-only backbone reads in place of the image.

Each has an MSA (coarse, whole post) and a MASC (aspect) variant. A template's ``version`` is a short hash of its
wording; it is stored with every output, so changing a word here changes the version and never mixes chains made
from different prompts.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

from mulcot.core.labels import LABELS
from mulcot.errors import MulcotError

Task = Literal["msa", "masc"]
PromptName = Literal["pre", "exp", "cot", "label"]
TASKS: tuple[str, ...] = ("msa", "masc")
PROMPT_NAMES: tuple[str, ...] = ("pre", "exp", "cot", "label")

_ROLE = {
    "msa": (
        "You are an expert in multimodal sentiment analysis. You read a social-media post made of a text and an "
        "image, and you judge the sentiment that the poster expresses in the post as a whole."
    ),
    "masc": (
        "You are an expert in aspect-based multimodal sentiment analysis. You read a social-media post made of a "
        "text and an image, and you judge the sentiment that the poster expresses toward one target aspect named "
        "in the text."
    ),
}

_DEFINITIONS = {
    "msa": (
        "Sentiment definitions:\n"
        "- positive: the post as a whole expresses approval, joy, praise, hope, gratitude or another favourable "
        "attitude.\n"
        "- neutral: the post states facts, news or questions, or its favourable and unfavourable cues balance out, "
        "so that no clear attitude is expressed.\n"
        "- negative: the post as a whole expresses disapproval, anger, sadness, fear, mockery or another "
        "unfavourable attitude."
    ),
    "masc": (
        "Sentiment definitions (toward the target aspect only):\n"
        "- positive: the poster speaks of the aspect with approval, praise, affection, support or excitement.\n"
        "- neutral: the aspect is only mentioned, reported on or described, with no clear attitude toward it.\n"
        "- negative: the poster speaks of the aspect with criticism, anger, mockery, sadness or disappointment."
    ),
}

_ASPECT_RULE = (
    "Only the sentiment toward the target aspect counts: the mood of the rest of the post, or sentiment toward "
    "other people or things in it, does not decide the answer."
)

_FORMAT = (
    "Answer with exactly these five fields, in this order, each as a quoted key and a quoted value on its own "
    "line, separated by blank lines:\n"
    '"Text_analysis": "<what the text says about the {object} and the sentiment it carries>"\n\n'
    '"Image_analysis": "<what the image shows and the sentiment it carries about the {object}>"\n\n'
    '"Conflict_resolution": "<where text and image agree or disagree, and which cue should decide>"\n\n'
    '"Final_conclusion": "<the overall sentiment, combining both modalities>"\n\n'
    '"Prediction": "<one of: positive, neutral, negative>"'
)

_PLACEHOLDER = re.compile(r"\{(text|aspect|label)\}")
_LABEL_FORMAT = 'Answer with one line only: "Prediction": "<one of: positive, neutral, negative>"'


_IMAGE_LINE = "\nImage: the attached image."


def _post(task: str) -> str:
    if task == "masc":
        return "Text: {text}\nTarget aspect: {aspect}" + _IMAGE_LINE
    return "Text: {text}" + _IMAGE_LINE


def image_as_text(prompt: str, caption: str | None) -> str:
    """A rendered prompt for a text-only backbone (paper, Appendix G): the attached image becomes its caption
    (``Image (described in words): ...``), or, without one, the image line is dropped."""
    line = f"\nImage (described in words): {' '.join(caption.split())}" if caption and caption.strip() else ""
    return prompt.replace(_IMAGE_LINE, line, 1)


def _object(task: str) -> str:
    return "target aspect" if task == "masc" else "post"


def _build(name: str, task: str) -> str:
    obj = _object(task)
    fmt = _FORMAT.format(object=obj)
    rule = f"\n\n{_ASPECT_RULE}" if task == "masc" else ""
    post = _post(task)
    if name == "pre":
        ask = (
            f"Analyse the {obj}'s sentiment step by step: the text, then the image, then resolve any conflict "
            "between them, conclude, and predict the label."
        )
        return f"{_ROLE[task]}\n\n{_DEFINITIONS[task]}{rule}\n\n{post}\n\n{ask}\n\n{fmt}"
    if name == "exp":
        ask = (
            "The correct sentiment label of the {target} is: {label}.\n"
            "Explain step by step why the {target} carries this sentiment: analyse the text, then the image, "
            "resolve any conflict between them, and conclude. Your Prediction must be {label}."
        ).replace("{target}", "target aspect" if task == "masc" else "post")
        return f"{_ROLE[task]}\n\n{_DEFINITIONS[task]}{rule}\n\n{post}\n\n{ask}\n\n{fmt}"
    if name == "cot":
        aspect = " toward the target aspect" if task == "masc" else ""
        return f"Judge the sentiment of this multimodal post{aspect} and explain your reasoning.\n\n{post}\n\n{fmt}"
    if name == "label":
        aspect = " toward the target aspect" if task == "masc" else ""
        return f"Classify the sentiment of this multimodal post{aspect}.\n\n{post}\n\n{_LABEL_FORMAT}"
    raise MulcotError(f"unknown prompt '{name}': use one of {', '.join(PROMPT_NAMES)}")


@dataclass(frozen=True)
class PromptTemplate:
    """One prompt's wording for one task; ``render`` fills in the post."""

    name: str
    task: str
    template: str

    @property
    def version(self) -> str:
        """Short stable hash of the wording (12 hex digits)."""
        digest = hashlib.sha256(f"{self.name}\0{self.task}\0{self.template}".encode()).hexdigest()
        return digest[:12]

    def render(self, text: str, aspect: str | None = None, label: str | None = None) -> str:
        """The prompt text for one post (the image travels separately, as a chat content part)."""
        if self.task == "masc" and not aspect:
            raise MulcotError("an aspect-level (MASC) prompt needs the sample's aspect")
        if self.name == "exp" and label not in LABELS:
            raise MulcotError(f"the explain prompt needs a gold label ({', '.join(LABELS)}), got {label!r}")
        # One pass over the template's own placeholders: post texts may contain braces or "{label}".
        values = {"text": text, "aspect": aspect or "", "label": label or ""}
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.template)


def get_prompt(name: str, task: str) -> PromptTemplate:
    """The template ``name`` (pre, exp, cot, label) for ``task`` (msa, masc)."""
    if task not in TASKS:
        raise MulcotError(f"unknown task '{task}': use msa (whole post) or masc (aspect)")
    return PromptTemplate(name=name, task=task, template=_build(name, task))


CAPTION_TEMPLATE = (
    "Describe this image in one factual sentence of at most 30 words: what and who is shown, and any text "
    "written in it. Do not guess the feelings or opinions of whoever posted it. Answer with the sentence only."
)


def caption_prompt() -> PromptTemplate:
    """The teacher's caption prompt (``annotate --captions``): one sentence about the attached image alone, without
    the post's text (so the caption carries what the image shows, not the post's sentiment). Versioned by hash like
    every prompt."""
    return PromptTemplate(name="caption", task="image", template=CAPTION_TEMPLATE)


def prompt_versions() -> dict[str, str]:
    """Every template's version, keyed ``name/task``."""
    return {f"{n}/{t}": get_prompt(n, t).version for n in PROMPT_NAMES for t in TASKS}
