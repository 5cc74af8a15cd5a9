"""``mulcot judge``: an LLM judge scores chains on the rubric, or guesses their label from the chain alone (leakage),
through the same OpenAI-compatible client as annotate (HTTP retries, budget, usage and cost, concurrency).

Which chains: the final, valid chains of a dataset (``source``: the teacher's stage 1 or stage 2, the assistant's,
the student's, or any), optionally one split and the first N. Each chain gets one verdict row per kind, rubric
version and judge model: ``judged``, or ``failed`` with the reason of its last attempt — an answer that is garbage,
misses a criterion or scores outside 1-5 is a failed attempt, retried up to ``max_retries`` times like ARC; an HTTP
failure counts as an attempt after the client's own retries. When the judge stops answering (connection failures
in a row), the chains not yet sent are recorded as failed with that reason. A rerun judges the failed chains again
and skips the judged ones; the budget stops a run cleanly (the rest stays unjudged). The key is never stored.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from mulcot.core.client import (
    UNREACHABLE_STOP,
    Budget,
    BudgetReached,
    Teacher,
    TeacherConfig,
    TeacherError,
    Usage,
    model_slug,
)
from mulcot.core.images import jpeg_data_url
from mulcot.core.refs import check_name
from mulcot.core.rubric import (
    LEAKAGE_VERSION,
    RUBRIC_VERSION,
    AnswerError,
    leakage_prompt,
    parse_leakage,
    parse_rubric,
    rubric_prompt,
)
from mulcot.core.settings import ConfigError, Validated, field_
from mulcot.errors import MulcotError
from mulcot.events import Progress, emit
from mulcot.store import Store
from mulcot.store.judgements import FAILED, JUDGED, LEAKAGE, RUBRIC
from mulcot.store.runs import RunRecord

# --source: who wrote the chains to judge -> the chain groups of :data:`mulcot.store.judgements.GROUP`
SOURCES: dict[str, tuple[str, ...] | None] = {
    "any": None, "teacher": ("stage1", "stage2"), "stage1": ("stage1",), "stage2": ("stage2",),
    "assistant": ("assistant",), "student": ("student",),
}
KINDS = (RUBRIC, LEAKAGE)


@dataclass
class JudgeConfig(Validated):
    """What to judge and how (validated on construction, as the command's flags are)."""

    dataset: str
    judge: TeacherConfig
    kind: str = field_(RUBRIC, "rubric (scores 1-5) or leakage (the label from the chain alone).", choices=KINDS)
    source: str = field_("any", "Whose chains: any, teacher, stage1, stage2, assistant, student.",
                         choices=tuple(SOURCES))
    split: str | None = field_(None, "Only this split (default: every split).")
    concurrency: int = field_(8, "Requests in flight at most.", min=1)
    max_retries: int = field_(2, "Regenerations of an unusable answer (garbage, out-of-range score).", min=0)
    budget_usd: float | None = field_(None, "Stop before the cost would exceed this.", min=0)
    limit: int | None = field_(None, "Only the first N chains.", min=1)
    image: bool = field_(True, "Send the post's image with the rubric prompt (off: a text-only judge).",
                         flag="--no-image", invert=True)
    run_id: str | None = None
    force: bool = False  # share the run with a live writer of it (each chain goes to one of them)

    def check(self) -> None:
        if self.run_id is not None:
            check_name(self.run_id, "run id", "--run")
        if not self.judge.model:
            raise ConfigError("--judge MODEL is required")

    @property
    def version(self) -> str:
        return RUBRIC_VERSION if self.kind == RUBRIC else LEAKAGE_VERSION


@dataclass
class JudgeSummary(Usage):
    """What a run did (this invocation only)."""

    run_id: str
    kind: str
    rubric_version: str
    chains: int = 0  # chains selected
    skipped_done: int = 0  # already judged by this judge on this rubric
    judged: int = 0
    failed: int = 0
    pending: int = 0  # left unjudged (the budget stopped the run)
    requests: int = 0
    answered: int = 0
    http_retries: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    cost_known: bool = True
    wall_s: float = 0.0
    stopped: str | None = None  # "budget" or "unreachable"
    skipped_other_writer: int = 0
    failures: list[str] = field(default_factory=list)
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Tally:
    """One chain's attempts so far: count, usage, the last error."""

    attempts: int = 0
    http_retries: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float | None = None
    latency_s: float | None = None
    error: str | None = None

    def add(self, comp: Any) -> None:
        self.http_retries += comp.http_retries
        self.tokens_in += comp.tokens_in
        self.tokens_out += comp.tokens_out
        if comp.cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + comp.cost_usd
        self.latency_s = round((self.latency_s or 0.0) + comp.latency_s, 4)


class Judge:
    """One judge run over one store."""

    def __init__(self, store: Store, config: JudgeConfig, teacher: Teacher | None = None,
                 progress: Progress | None = None):
        self.store = store
        self.config = config
        store.require_dataset(config.dataset)
        if config.split is not None and config.split not in store.splits(config.dataset):
            raise MulcotError(f"dataset '{config.dataset}' has no split '{config.split}' "
                              f"(splits: {', '.join(store.splits(config.dataset))})")
        self.chains = store.judge_candidates(config.dataset, split=config.split, groups=SOURCES[config.source],
                                             limit=config.limit)
        if not self.chains:
            where = f"{config.dataset}/{config.split}" if config.split else config.dataset
            raise MulcotError(f"no chains to judge in {where} (source {config.source}): annotate, expand or "
                              "evaluate first")
        self.teacher = teacher or Teacher(config.judge)
        self.progress = progress
        self.budget = Budget(config.budget_usd)
        self.run_id = config.run_id or f"judge-{config.dataset}-{config.kind}-{model_slug(config.judge.model)}"
        self.summary = JudgeSummary(run_id=self.run_id, kind=config.kind, rubric_version=config.version,
                                    chains=len(self.chains), cost_known=self.teacher.price is not None)
        self._stop = False
        self._unreachable = 0
        self._sent: set[int] = set()

    def run_config(self) -> dict[str, Any]:
        """What the run records as its config (never the key)."""
        return {"judge": {k: v for k, v in asdict(self.config).items() if k != "judge"},
                "endpoint": self.config.judge.public(), "rubric_version": self.config.version}

    def _prompt(self, chain: dict[str, Any]) -> tuple[str, bool]:
        if self.config.kind == LEAKAGE:
            return leakage_prompt(chain), False
        image = self.config.image and bool(chain["has_image"])
        return rubric_prompt(chain, image=image), image

    def _save(self, chain: dict[str, Any], tally: _Tally, status: str, **verdict: Any) -> None:
        self.store.save_judgement(
            reasoning_id=chain["id"], kind=self.config.kind, rubric_version=self.config.version,
            judge_model=self.config.judge.model, status=status, error=tally.error if status == FAILED else None,
            attempts=tally.attempts, http_retries=tally.http_retries, tokens_in=tally.tokens_in,
            tokens_out=tally.tokens_out, cost_usd=tally.cost_usd, latency_s=tally.latency_s, run_id=self.run_id,
            **verdict)
        s = self.summary
        if status == JUDGED:
            s.judged += 1
        else:
            s.failed += 1
            s.failures.append(f"chain {chain['id']} (sample {chain['key']}): {tally.error}")
        emit(self.progress, "judge", done=s.judged + s.failed, total=s.chains - s.skipped_done, summary=s)

    def _verdict(self, chain: dict[str, Any], text: str) -> dict[str, Any]:
        """The stored verdict of one answer; raises :class:`AnswerError` when it is unusable."""
        if self.config.kind == LEAKAGE:
            label = parse_leakage(text)
            return {"label": label, "leaked": None if chain["gold"] is None else label == chain["gold"]}
        v = parse_rubric(text)
        return {"scores": v.scores, "reasons": v.reasons, "mean": v.mean}

    async def _judge(self, chain: dict[str, Any]) -> None:
        """Attempts on one chain until an answer is usable or the attempts are spent; records the outcome."""
        prompt, with_image = self._prompt(chain)
        image = await asyncio.to_thread(jpeg_data_url, chain["image_path"], self.config.judge.image_max_side) \
            if with_image else None
        tally, s = _Tally(), self.summary
        self._sent.add(chain["id"])
        while tally.attempts < self.config.max_retries + 1 and not self._stop:
            try:
                reserved = self.budget.reserve(self.teacher.estimate(prompt))
            except BudgetReached:
                self._stop, s.stopped = True, "budget"
                break
            tally.attempts += 1
            s.requests += 1
            try:
                comp = await self.teacher.complete(prompt, image)
            except TeacherError as exc:
                self.budget.settle(reserved, None)
                tally.error, tally.http_retries = str(exc), tally.http_retries + exc.retries
                s.http_retries += exc.retries
                s.last_error = f"chain {chain['id']}: {exc}"
                self._unreachable = self._unreachable + 1 if exc.kind in ("connection", "timeout") else 0
                if self._unreachable >= UNREACHABLE_STOP:
                    self._stop, s.stopped = True, "unreachable"
                if exc.kind == "refused":
                    break  # the endpoint refuses this request: asking again changes nothing
                continue
            self._unreachable = 0
            self.budget.settle(reserved, comp.cost_usd)
            tally.add(comp)
            s.answered += 1
            s.count_answer(comp)
            try:
                verdict = self._verdict(chain, comp.text)
            except AnswerError as exc:
                tally.error = f"unusable answer: {exc}"
                continue
            self._save(chain, tally, JUDGED, **verdict)
            return
        if tally.attempts == 0:  # the budget stopped it before any request: left for a rerun
            self._sent.discard(chain["id"])
            return
        self._save(chain, tally, FAILED)

    def _not_sent(self, todo: list[dict[str, Any]]) -> None:
        """After the judge stopped answering: every chain not sent is failed with that reason; after the budget
        stopped the run, the rest is pending."""
        rest = [c for c in todo if c["id"] not in self._sent]
        if self.summary.stopped != "unreachable":
            self.summary.pending = len(rest)
            return
        for chain in rest:
            self._save(chain, _Tally(error=f"not sent: the judge stopped answering ({self.summary.last_error})"),
                       FAILED)

    async def run_async(self) -> JudgeSummary:
        start = time.perf_counter()
        cfg = self.config
        done = self.store.judged_ids(cfg.kind, cfg.version, cfg.judge.model)
        todo = [c for c in self.chains if c["id"] not in done]
        self.summary.skipped_done = len(self.chains) - len(todo)
        try:
            if todo:
                await self.teacher.check_reachable()
        except MulcotError:
            await self.teacher.aclose()
            raise
        pending = iter(todo)

        async def worker(run: RunRecord) -> None:
            for chain in pending:
                if self._stop:
                    return
                if not run.claim([f"chain {chain['id']}"]):  # another writer of this run (--force) took it
                    self.summary.skipped_other_writer += 1
                    self._sent.add(chain["id"])
                    continue
                await self._judge(chain)

        with self.store.run(self.run_id, kind="judge", dataset=cfg.dataset, config=self.run_config(),
                            force=cfg.force) as run:
            run.metrics = self.summary
            try:
                await asyncio.gather(*(worker(run) for _ in range(min(cfg.concurrency, max(len(todo), 1)))))
                self._not_sent(todo)
            finally:
                self.summary.wall_s = time.perf_counter() - start
                await self.teacher.aclose()
            run.status = "stopped" if self.summary.stopped else "done"
        return self.summary


def run_judge(store: Store, config: JudgeConfig, progress: Progress | None = None,
              teacher: Teacher | None = None) -> JudgeSummary:
    """Judge the chains ``config`` selects (blocking); see the module docstring."""
    return asyncio.run(Judge(store, config, teacher=teacher, progress=progress).run_async())
