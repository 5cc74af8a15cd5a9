"""The one generation interface every stage asks a model through (expand, eval, predict).

A backend (:class:`Backend`) answers posts (:class:`Post`) with one prompt template of a task (``cot``: the
five-field reasoning; ``label``: the label only), decoded as :class:`PredictConfig` says. Two ways to ask:

- :meth:`Backend.generate`: a list of posts, one answer each, in order (one post in the terminal, a test);
- :meth:`Backend.run`: many :class:`Request` objects (each may want ``n`` sampled answers), every answer handed to
  ``on_answer`` as soon as it exists, so the caller stores it at once and an interrupted job resumes. In-process
  backends batch the requests; the server backend keeps ``concurrency`` of them in flight.

A third way asks no text at all: :meth:`Backend.score_labels` scores the label prompt's three possible answers by
forced choice (:mod:`~mulcot.generation.choice`): per post, the log-probability of each label's whole continuation
after ``"Prediction": "`` (the label, the closing quote and the end-of-turn token), normalised over the three, as
:class:`~mulcot.generation.choice.LabelChoice` objects. A backend that cannot (no prompt log-probs) says why in one
line from :meth:`Backend.cannot_score_labels`, asked before anything is stored; its :meth:`~Backend.score_labels`
raises :class:`LabelScoringError` with the same line.

Backends: ``hf`` (transformers in-process, :mod:`~mulcot.generation.hf`), ``gguf`` (llama.cpp,
:mod:`~mulcot.generation.gguf`), ``server`` (an OpenAI-compatible server, :mod:`~mulcot.generation.server`). Adding
one is one module with a :class:`Backend` subclass and one line in :data:`mulcot.generation.BACKENDS`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from mulcot.core.client import Usage
from mulcot.core.images import DEFAULT_MAX_PIXELS
from mulcot.core.settings import Validated, field_
from mulcot.errors import ModelError
from mulcot.events import Progress, emit

if TYPE_CHECKING:
    from mulcot.generation.choice import LabelChoice

SOURCE_GGUF = "student-gguf"
SOURCE_HF = "student-hf"
SOURCE_SERVER = "student-server"


@dataclass
class PredictConfig(Validated):
    """Decoding and input settings, the same for every backend (fields a backend has no use for are ignored); the
    ``predict`` command's flags are derived from them."""

    max_tokens: int = field_(512, "Most tokens to generate.", min=1)
    label_max_tokens: int = field_(32, "Most tokens for the label prompt's answer.", min=1)
    temperature: float = field_(0.0, "0 is greedy decoding.", min=0)
    top_p: float = field_(1.0, "Nucleus sampling (temperature > 0).", above=0, max=1)
    seed: int = field_(0, "Sampling seed.")
    n_threads: int | None = field_(None, "llama.cpp threads (default: half the logical cores, as llama-cpp-python).",
                                   min=1)
    ctx: int = field_(4096, "llama.cpp context length (tokens).", min=1)
    # read the GGUF into memory (False) or map it (True). Reading is the default: llama.cpp repacks Q4_K / Q8_0
    # weights for the CPU, and a mapped file then stays resident beside the repacked copy (+27% peak RSS measured)
    mmap: bool = field_(False, "Map the GGUF instead of reading it (quantized GGUFs then use more RAM).")
    max_pixels: int = field_(DEFAULT_MAX_PIXELS, "Downsize images to at most this many pixels.", min=1)
    image_max_side: int | None = field_(None, "... and to at most this long a side.", min=1)
    batch_size: int = field_(4, "hf backend batch size.", min=1)
    device: str | None = field_(None, "hf backend device (default: best available).")
    dtype: str | None = field_(None, "hf backend dtype (bf16, fp16, fp32).")
    load_in_4bit: bool = field_(False, "hf backend: 4-bit weights (bitsandbytes).", cli=False)
    ignore_eos: bool = field_(False, "Generate exactly max_tokens tokens (benchmarks).", cli=False)

    def max_tokens_for(self, prompt: str) -> int:
        """The token limit of one prompt's answer (the label prompt's is short)."""
        return self.label_max_tokens if prompt == "label" else self.max_tokens


@dataclass
class Generated:
    """One raw generation."""

    text: str
    token_ids: list[int] | None
    tokens_in: int | None
    tokens_out: int
    latency_s: float
    first_token_s: float | None = None
    finish_reason: str | None = None
    http_retries: int = 0


@dataclass
class Post:
    """A post to predict: text, optional aspect (MASC), optional image (a path) and optional caption (the image in
    words, what a text-only backbone reads instead)."""

    text: str
    aspect: str | None = None
    image: str | os.PathLike[str] | None = None
    caption: str | None = None


@dataclass
class Request:
    """What a job asks about one post: ``n`` answers to one prompt template (``cot`` or ``label``) of ``task``.
    ``seed`` (sampling) is the first answer's; answer ``k`` uses ``seed + k`` where a backend seeds per answer.
    ``tag`` is the caller's (which sample, which prompt); ``name`` is how a failure names it."""

    post: Post
    prompt: str
    task: str
    n: int = 1
    seed: int | None = None
    tag: Any = None
    name: str = ""


@dataclass
class RunSummary(Usage):
    """What one :meth:`Backend.run` did (a server adds HTTP retries, failures and a budget stop)."""

    requests: int = 0
    answered: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    http_retries: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    stopped: str | None = None  # "requests" | "time": a budget stopped it early
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def count(self, gen: Generated) -> None:
        self.answered += 1
        self.count_answer(gen)


OnAnswer = Callable[[Request, Generated], None]


class LabelScoringError(ModelError):
    """A backend cannot score label answers by forced choice (no prompt log-probabilities, or not for this input)."""


class Backend:
    """A model that answers posts. Subclasses set ``kind``, ``source`` (the chain source of its answers), ``name``,
    ``text_only`` and ``config``, and implement :meth:`generate`; :meth:`run` batches requests through it."""

    kind: str = ""
    source: str = ""
    name: str = ""
    text_only: bool = False
    inputs: str = "all"  # what the model was trained to see (TrainConfig.inputs); see :meth:`shown`
    config: PredictConfig

    @classmethod
    def open(cls, *, config: PredictConfig, store: Any = None, **args: Any) -> Backend:
        """The backend from :func:`mulcot.generation.open_backend`'s keyword arguments (those it does not use are
        None); refuses missing ones in one line naming the flag."""
        raise NotImplementedError

    @property
    def has_vision(self) -> bool:
        return not self.text_only

    def shown(self, post: Post) -> Post:
        """``post`` as this model was trained to see posts (``inputs``, as :func:`mulcot.core.inputs.mask_items`
        shows training items): without its image and caption (``no-image``), or with the aspect in place of its
        text (``no-text``)."""
        if self.inputs == "no-image":
            return replace(post, image=None, caption=None)
        if self.inputs == "no-text":
            return replace(post, text=post.aspect or "")
        return post

    def generate(self, posts: Sequence[Post], prompt: str, task: str) -> list[Generated]:
        """One answer per post with the ``prompt`` template (``cot`` or ``label``) of ``task``, in order."""
        raise NotImplementedError

    def sample(self, posts: Sequence[Post], prompt: str, task: str, n: int, seed: int | None) -> list[list[Generated]]:
        """``n`` answers per post (sampled when the config's temperature is above 0); by default ``n`` calls of
        :meth:`generate`, the k-th seeded ``seed + k``."""
        out: list[list[Generated]] = [[] for _ in posts]
        base = self.config.seed
        try:
            for k in range(n):
                self.config.seed = (base if seed is None else seed) + k
                for answers, gen in zip(out, self.generate(posts, prompt, task), strict=True):
                    answers.append(gen)
        finally:
            self.config.seed = base
        return out

    def batch_size(self) -> int:
        """How many posts :meth:`run` hands to one :meth:`generate` call."""
        return 1

    def cannot_score_labels(self, posts: Sequence[Post] = ()) -> str | None:
        """Why this backend cannot score ``posts``' label answers by forced choice (one line naming what to do), or
        None when it can; asked before anything is generated or stored. By default: it cannot."""
        return (f"the {self.kind or type(self).__name__} backend cannot score label answers by forced choice (it gives "
                "no log-probabilities): pass --label-scoring generate")

    def score_labels(self, posts: Sequence[Post], task: str) -> list[LabelChoice]:
        """Forced-choice scores of the label prompt (P_label of ``task``) for each post, in order
        (``LabelChoice.sample_id`` is the post's index): the log-probability of each label's whole answer, its share
        of the three, the most probable label. Raises :class:`LabelScoringError` where the backend cannot."""
        raise LabelScoringError(self.cannot_score_labels(posts) or f"{self.kind}: forced choice is not implemented")

    def run(self, requests: Iterable[Request], on_answer: OnAnswer, *, progress: Progress | None = None,
            stage: str = "generate", total: int | None = None, message: str = "",
            stop: Callable[[], bool] | None = None) -> RunSummary:
        """Answer every request, calling ``on_answer(request, answer)`` for each answer as it exists (on this
        thread: store it there). Consecutive requests with the same prompt and task share a batch."""
        summary = RunSummary()
        start = time.perf_counter()
        pending = iter(requests)  # taken lazily: a caller may claim each request as it is taken
        step = max(1, self.batch_size())
        head = next(pending, None)
        while head is not None:
            if stop is not None and stop():
                break
            chunk, head = [head], None
            for request in pending:
                if (request.prompt, request.task) != (chunk[0].prompt, chunk[0].task):
                    head = request
                    break
                chunk.append(request)
                if len(chunk) == step:
                    break
            first = chunk[0]
            summary.requests += len(chunk)
            n = max(r.n for r in chunk)
            if n == 1:
                answers = [[g] for g in self.generate([r.post for r in chunk], first.prompt, first.task)]
            else:
                answers = self.sample([r.post for r in chunk], first.prompt, first.task, n, first.seed)
            for request, gens in zip(chunk, answers, strict=True):
                for gen in gens[: request.n]:
                    on_answer(request, gen)
                    summary.count(gen)
            emit(progress, stage, done=summary.requests, total=total, message=message)
            if head is None:
                head = next(pending, None)
        summary.wall_s = round(time.perf_counter() - start, 3)
        return summary

    def close(self) -> None:
        """Free the model."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
