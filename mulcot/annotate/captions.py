"""Image captions by the teacher (``mulcot annotate DATASET --captions``): one sentence per image, what a text-only
backbone reads in place of the image (the paper's Appendix G).

Every distinct image of the chosen splits (every split by default) is sent once to the teacher with the caption
prompt (:func:`mulcot.core.prompts.caption_prompt`, versioned by hash); the answer, cleaned to one line, is stored
on every sample showing that image through :meth:`Store.set_caption`, with its provenance (teacher model, prompt
version, tokens, cost, latency, run). The job is resumable: a sample that already has a caption is never asked about
again, and an image one of whose samples already has a caption lends it to the others without a request. A budget stops
the job before a request could exceed it. The run is recorded (kind ``captions``) with its summary.

A teacher that cannot see images (the endpoint refuses the image part) stops the job with one line saying so; so does
any failure of the job's first request (a wrong model name or endpoint would fail every request the same way). Later
failures are counted and listed, and the job goes on.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from mulcot.core.client import Budget, BudgetReached, Teacher, TeacherConfig, TeacherError, Usage, model_slug
from mulcot.core.images import jpeg_data_url
from mulcot.core.prompts import caption_prompt
from mulcot.core.refs import check_name
from mulcot.core.settings import Validated, field_
from mulcot.errors import MulcotError
from mulcot.events import Progress, emit
from mulcot.store import Store

MAX_CAPTION_CHARS = 400
# what endpoints say when a model has no vision input (OpenAI, vLLM, llama.cpp server, Ollama)
_NO_VISION = re.compile(r"image|vision|multimodal|multi-modal|mmproj", re.IGNORECASE)


class TeacherCannotSeeImages(MulcotError):
    """The teacher endpoint refused an image: captions need a vision-language teacher."""


@dataclass
class CaptionConfig(Validated):
    """What to caption and how (validated on construction)."""

    dataset: str
    teacher: TeacherConfig
    splits: tuple[str, ...] | None = None  # None: every split
    concurrency: int = field_(8, "Requests in flight at most.", min=1)
    budget_usd: float | None = field_(None, "Stop before the cost would exceed this.", min=0)
    limit: int | None = field_(None, "Only the first N images still to caption.", min=1)
    run_id: str | None = None


@dataclass
class CaptionSummary(Usage):
    """What a caption run did (this invocation) and where the dataset stands."""

    run_id: str
    images: int = 0  # distinct images in the chosen splits
    captioned: int = 0  # images captioned by a request now
    reused: int = 0  # samples that took the caption of another sample with the same image
    skipped_done: int = 0  # images whose samples all had a caption already
    failed: int = 0
    requests: int = 0
    http_retries: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    cost_known: bool = True
    wall_s: float = 0.0
    stopped: str | None = None  # "budget" when the budget stopped it early
    samples_captioned: int = 0  # samples of the chosen splits with a caption after the run
    samples_with_image: int = 0
    failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def clean_caption(text: str) -> str:
    """The teacher's answer as one caption line: its first non-empty line, whitespace collapsed, an enclosing pair
    of quotes and a leading ``Caption:`` removed, at most :data:`MAX_CAPTION_CHARS` characters."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    line = " ".join(line.split())
    line = re.sub(r"^(caption|description)\s*:\s*", "", line, flags=re.IGNORECASE)
    if len(line) >= 2 and line[0] == line[-1] and line[0] in "\"'":
        line = line[1:-1].strip()
    return line[:MAX_CAPTION_CHARS].rstrip()


class Captioner:
    """One caption job against one store and one teacher."""

    def __init__(self, store: Store, config: CaptionConfig, teacher: Teacher | None = None,
                 progress: Progress | None = None):
        if config.concurrency < 1:
            raise MulcotError("--concurrency must be at least 1")
        ds = store.require_dataset(config.dataset)
        if not ds["has_images"]:
            raise MulcotError(f"dataset '{config.dataset}' was imported without images (--no-images): there is "
                              "nothing to caption; import it with its images first")
        available = store.splits(config.dataset)
        for split in config.splits or ():
            if split not in available:
                raise MulcotError(f"dataset '{config.dataset}' has no split '{split}' (splits: {', '.join(available)})")
        self.store = store
        self.config = config
        self.splits = tuple(config.splits or available)
        self.prompt = caption_prompt()
        self.teacher = teacher or Teacher(config.teacher)
        self.progress = progress
        if config.run_id is not None:
            check_name(config.run_id, "run id", "--run")
        self.run_id = config.run_id or f"captions-{config.dataset}-{model_slug(config.teacher.model)}"
        self.summary = CaptionSummary(run_id=self.run_id, cost_known=self.teacher.price is not None)
        self.budget = Budget(config.budget_usd)
        self._stop = False
        self._done = 0
        self._total = 0

    # -- the plan ----------------------------------------------------------------------------------------------

    def plan(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """(image path, its samples without a caption) for every image still to caption; samples that can take a
        caption from a sibling with the same image get it here, without a request."""
        by_image: dict[str, list[dict[str, Any]]] = {}
        for split in self.splits:
            for s in self.store.samples(self.config.dataset, split):
                if s["has_image"] and s["image_path"]:
                    by_image.setdefault(s["image_sha256"] or s["image_path"], []).append(s)
        self.summary.images = len(by_image)
        todo = []
        for group in by_image.values():
            missing = [s for s in group if not (s["meta"] or {}).get("caption")]
            have = [s for s in group if (s["meta"] or {}).get("caption")]
            if not missing:
                self.summary.skipped_done += 1
            elif have:  # a re-import or a new aspect of a captioned image: reuse, no request
                meta = have[0]["meta"]
                for s in missing:
                    self.store.set_caption(s["id"], meta["caption"], source=meta.get("caption_source"))
                self.summary.reused += len(missing)
            else:
                todo.append((group[0]["image_path"], missing))
        return todo[: self.config.limit] if self.config.limit is not None else todo

    # -- one image ---------------------------------------------------------------------------------------------

    async def _caption(self, path: str, samples: list[dict[str, Any]], first: bool = False) -> None:
        """Caption one image and store it on its samples. The job's ``first`` request failing stops the job: the
        teacher or the endpoint is wrong (every request would fail the same way)."""
        try:
            reserved = self.budget.reserve(self.teacher.estimate(self.prompt.template))
        except BudgetReached:
            self._stop = True
            self.summary.stopped = "budget"
            return
        keys = ", ".join(s["key"] for s in samples[:3]) + (" …" if len(samples) > 3 else "")
        try:
            url = await asyncio.to_thread(jpeg_data_url, path, self.config.teacher.image_max_side)
        except OSError as exc:
            self.budget.settle(reserved, None)
            self._fail(f"image {path} (samples {keys}): cannot be read: {exc}")
            return
        try:
            comp = await self.teacher.complete(self.prompt.template, url)
        except TeacherError as exc:
            self.budget.settle(reserved, None)
            self.summary.requests += 1
            kept = f"{s.captioned} captions stored before" if (s := self.summary).captioned else "nothing stored"
            if str(exc).startswith("the teacher endpoint refused") and _NO_VISION.search(str(exc)):
                self._stop = True
                raise TeacherCannotSeeImages(
                    f"teacher '{self.config.teacher.model}' cannot see images ({exc}): captions need a "
                    f"vision-language teacher ({kept})"
                ) from None
            if first:
                self._stop = True
                raise MulcotError(f"the first caption request failed ({exc}): check --teacher and --base-url; a "
                                  f"teacher must see images to caption them ({kept})") from None
            self._fail(f"image {path} (samples {keys}): {exc}")
            return
        self.budget.settle(reserved, comp.cost_usd)
        s = self.summary
        s.requests += 1
        s.count_answer(comp)
        caption = clean_caption(comp.text)
        if not caption:
            self._fail(f"image {path} (samples {keys}): the teacher answered with no caption")
            return
        source = {"model": self.config.teacher.model, "prompt_version": self.prompt.version, "run": self.run_id,
                  "tokens_in": comp.tokens_in, "tokens_out": comp.tokens_out, "cost_usd": comp.cost_usd,
                  "latency_s": round(comp.latency_s, 4)}
        for sample in samples:
            self.store.set_caption(sample["id"], caption, source=source)
        s.captioned += 1
        self._done += 1
        self._report()

    def _fail(self, message: str) -> None:
        self.summary.failed += 1
        self.summary.failures.append(message)
        self._done += 1
        self._report()

    def _report(self) -> None:
        emit(self.progress, "captions", done=self._done, total=self._total, summary=self.summary)

    # -- the job -----------------------------------------------------------------------------------------------

    async def run_async(self) -> CaptionSummary:
        start = time.perf_counter()
        cfg = self.config
        config = {"captions": {k: v for k, v in asdict(cfg).items() if k != "teacher"}, "splits": list(self.splits),
                  "teacher": cfg.teacher.public(), "prompts": {"caption": self.prompt.version}}
        try:  # in seconds, before the run is recorded, when nothing listens there
            await self.teacher.check_reachable()
        except MulcotError:
            await self.teacher.aclose()
            raise
        with self.store.run(self.run_id, kind="captions", dataset=cfg.dataset, config=config) as run:
            run.metrics = self.summary  # recorded however the run ends
            try:
                todo = self.plan()
                self._total = len(todo)
                self._report()
                pending = iter(todo)

                async def worker() -> None:
                    for path, samples in pending:
                        if self._stop:
                            return
                        await self._caption(path, samples)

                if todo:  # the first request alone: a teacher without vision is told once, not once per worker
                    path, samples = next(pending)
                    await self._caption(path, samples, first=True)
                    await asyncio.gather(*(worker() for _ in range(min(cfg.concurrency, len(todo)))))
            finally:
                self.summary.wall_s = time.perf_counter() - start
                await self.teacher.aclose()
            samples = [s for split in self.splits for s in self.store.samples(cfg.dataset, split) if s["has_image"]]
            self.summary.samples_with_image = len(samples)
            self.summary.samples_captioned = sum(1 for s in samples if (s["meta"] or {}).get("caption"))
            run.status = "stopped" if self.summary.stopped else "done"
        return self.summary


def caption_images(store: Store, config: CaptionConfig, progress: Progress | None = None,
                   teacher: Teacher | None = None) -> CaptionSummary:
    """Have the teacher caption every image of the dataset's splits that has no caption yet (blocking)."""
    return asyncio.run(Captioner(store, config, teacher=teacher, progress=progress).run_async())
