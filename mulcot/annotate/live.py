"""Stage 1, CoT enhancement: the teacher annotates the training split in two passes, with ARC retries.

- Pass 1 (P_pre, label-free) on every sample that has no final chain yet for this teacher and prompt version;
  the correct ones form D_t1.
- Pass 2 (P_exp, gold label given) on the samples pass 1 got wrong or could not produce a valid chain for; D_t2.
- ARC, the adaptive retry controller: an output that does not parse into the five fields or has no valid label
  (in pass 2: not the gold label it was given) is regenerated, up to ``max_retries`` times. Every attempt is stored;
  the last one is marked final. A failed HTTP request (after its own retries) counts as an attempt.

Results are committed as they arrive, so an interrupted run loses at most the requests in flight; running the
same command again picks up where it stopped (attempts already made count toward the retry limit).

The decisions and the record are shared with batch annotation (:mod:`mulcot.annotate.batch`): what a sample needs
next (:meth:`Annotator.next_step`), the prompt (:meth:`Annotator.render`) and request body
(:meth:`mulcot.core.client.Teacher.request_body`),
and how an answer becomes a stored attempt (:meth:`Annotator.record`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from mulcot.core.chains import EXPLAIN, PREDICT, arc_accepts, arc_error, chain_row
from mulcot.core.client import UNREACHABLE_STOP, Budget, BudgetReached, Teacher, TeacherConfig, TeacherError, Usage
from mulcot.core.client import model_slug as _slug
from mulcot.core.images import jpeg_data_url
from mulcot.core.prompts import get_prompt
from mulcot.core.refs import check_name
from mulcot.core.settings import Validated, field_
from mulcot.errors import MulcotError, StoreBusyError
from mulcot.events import Progress, emit
from mulcot.store import Store
from mulcot.store.runs import RunRecord

PASSES = (PREDICT, EXPLAIN)  # the teacher's two passes (chain stages)
WRITE_TRIES = 10  # busy timeouts an answer already paid for waits for a locked store


@dataclass
class AnnotateConfig(Validated):
    """What to annotate and how (validated on construction, as the command's flags are)."""

    dataset: str
    teacher: TeacherConfig
    split: str = "train"
    stage: str = field_("both", "predict (P_pre), explain (P_exp) or both.", choices=("predict", "explain", "both"))
    concurrency: int = field_(8, "Requests in flight at most.", min=1)
    max_retries: int = field_(3, "ARC: regenerations of an invalid output.", min=0)
    budget_usd: float | None = field_(None, "Stop before the cost would exceed this.", min=0)
    limit: int | None = field_(None, "Only the first N samples of the split.", min=1)
    run_id: str | None = None
    force: bool = False  # share the run with a live writer of it (each sample goes to one of them)


@dataclass
class AnnotateSummary(Usage):
    """What a run did (this invocation only) and where the dataset now stands."""

    run_id: str
    samples: int = 0
    requests: int = 0
    predicted: int = 0
    predicted_correct: int = 0
    explained: int = 0
    failed: int = 0
    retries: dict[int, int] = field(default_factory=dict)  # retries needed -> (sample, stage) count
    http_retries: int = 0
    answered: int = 0  # requests that got an answer (valid or not); 0 with requests > 0: the teacher never answered
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    cost_known: bool = True
    wall_s: float = 0.0
    stopped: str | None = None  # "budget": the budget stopped it; "pending": batches or files still out;
    # "unreachable": the teacher stopped answering (every request in a row failed to connect)
    skipped_done: int = 0
    skipped_other_writer: int = 0  # with force: samples another process writing the run has taken
    teacher_set: int = 0  # |D_t| for the split after the run
    failures: list[str] = field(default_factory=list)
    last_error: str | None = None  # the last request that got no answer, and why
    # batch annotation (mulcot.annotate.batch): batches sent and taken in, files written, result lines skipped
    batches_submitted: int = 0
    batches_ingested: int = 0
    batches_pending: int = 0
    batch_files: list[str] = field(default_factory=list)
    malformed_lines: int = 0
    stale_results: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Annotator:
    """Runs one annotation job against one store and one teacher."""

    def __init__(self, store: Store, config: AnnotateConfig, teacher: Teacher | None = None,
                 progress: Progress | None = None):
        if config.run_id is not None:
            check_name(config.run_id, "run id", "--run")
        self.store = store
        self.config = config
        self.dataset = store.require_dataset(config.dataset)
        if config.split not in store.splits(config.dataset):
            raise MulcotError(f"dataset '{config.dataset}' has no split '{config.split}' "
                              f"(splits: {', '.join(store.splits(config.dataset))})")
        self.teacher = teacher or Teacher(config.teacher)
        self.progress = progress
        self.task = self.dataset["task"]
        self.prompts = {"predict": get_prompt("pre", self.task), "explain": get_prompt("exp", self.task)}
        self.budget = Budget(config.budget_usd)
        self.run_id = config.run_id or f"annotate-{config.dataset}-{config.split}-{_slug(config.teacher.model)}"
        self.summary = AnnotateSummary(run_id=self.run_id, cost_known=self.teacher.price is not None)
        self._jobs_total = 0
        self._jobs_done = 0
        self._stop = False
        self._unreachable = 0  # requests in a row that got no answer at all (after their HTTP retries)

    # -- the decisions and the record, shared by the live and the batch path -----------------------------------

    def render(self, sample: dict[str, Any], stage: str) -> str:
        """The prompt text for one (sample, stage): P_pre, or P_exp given the gold label."""
        return self.prompts[stage].render(sample["text"], sample["aspect"],
                                          sample["label"] if stage == EXPLAIN else None)

    def progress_state(self) -> dict[str, dict[int, dict[str, Any]]]:
        """Per stage and sample: attempts so far and the final chain (or None), for this teacher and prompts."""
        cfg = self.config
        return {
            stage: self.store.chain_progress(cfg.dataset, cfg.split, source="teacher", model=cfg.teacher.model,
                                             stage=stage, prompt_version=self.prompts[stage].version)
            for stage in PASSES
        }

    def next_step(self, sample: dict[str, Any], state: dict[str, dict]) -> tuple[str, int] | None:
        """What a sample needs next, as (stage, attempt number), or None when it is done: P_pre until a final chain
        exists, then P_exp when that chain is invalid or wrong (and the sample has a gold label)."""
        stages = PASSES if self.config.stage == "both" else (self.config.stage,)
        pred = state[PREDICT].get(sample["id"])
        pred_final = pred["final"] if pred else None
        if PREDICT in stages and pred_final is None:
            return PREDICT, (pred["attempts"] if pred else 0) + 1
        if (
            EXPLAIN in stages
            and sample["label"]
            and pred_final is not None
            and needs_explanation(pred_final, sample["label"])
        ):
            exp = state[EXPLAIN].get(sample["id"])
            if exp is None or exp["final"] is None:
                return EXPLAIN, (exp["attempts"] if exp else 0) + 1
        return None

    def record(self, sample: dict[str, Any], stage: str, attempt: int, *, output: str | None, error: str | None,
               state: dict[str, dict] | None = None, tokens_in: int | None = None, tokens_out: int | None = None,
               cost_usd: float | None = None, latency_s: float | None = None,
               http_retries: int = 0) -> dict[str, Any]:
        """Record one attempt's answer (``output`` None: the request failed with ``error``): its chain row with ARC's
        verdict (final when accepted or the retries are spent), tokens and cost, in the store and the summary; the
        ``state`` (see :meth:`progress_state`) follows. Returns ``accepted``, ``final``, ``valid``, ``prediction``."""
        row = chain_row(
            sample_id=sample["id"], source="teacher", model=self.config.teacher.model, stage=stage, output=output,
            run_id=self.run_id, prompt_version=self.prompts[stage].version, origin="annotate", attempt=attempt,
            error=error,
        )
        accepted = arc_accepts(row, sample["label"])
        row["final"] = final = accepted or attempt >= self.config.max_retries + 1
        row["error"] = None if accepted else arc_error(row, sample["label"])
        s = self.summary
        s.requests += 1
        s.http_retries += http_retries  # a request that gave up made retries too ("gave up after 6 tries": 5)
        if output is not None:
            s.answered += 1
        elif error:
            s.last_error = f"sample {sample['key']} ({stage}): {error}"
        if output is not None or tokens_in:
            s.count_usage(0, tokens_in, tokens_out, cost_usd)  # (its HTTP retries are counted above)
            row.update(tokens_in=tokens_in, tokens_out=tokens_out, cost_usd=cost_usd,
                       latency_s=None if latency_s is None else round(latency_s, 4))
        self._keep(row)
        outcome = {"accepted": accepted, "final": final, "valid": row["valid"], "prediction": row["prediction"]}
        if state is not None:
            state[stage][sample["id"]] = {"attempts": attempt, "final": outcome if final else None}
        if final:
            self._jobs_done += 1
            s.retries[attempt - 1] = s.retries.get(attempt - 1, 0) + 1
            if stage == PREDICT:
                s.predicted += 1
                if row["valid"] and row["prediction"] == sample["label"]:
                    s.predicted_correct += 1
            elif accepted:
                s.explained += 1
            if not accepted:
                s.failed += 1
                s.failures.append(f"sample {sample['key']} ({stage}): {row['error']}")
        return outcome

    def _keep(self, row: dict[str, Any]) -> None:
        """Store an answer that was paid for: a store locked by another process is waited for again
        (:data:`WRITE_TRIES` busy timeouts) rather than the answer lost."""
        for tries in range(1, WRITE_TRIES + 1):
            try:
                self.store.add_reasoning(**row)
                return
            except StoreBusyError:
                if tries == WRITE_TRIES:
                    raise
                emit(self.progress, "annotate", "info", message=f"the store is locked by another process: writing "
                     f"the answer again ({tries + 1} of {WRITE_TRIES})", summary=self.summary)

    # -- the live path: one (sample, stage) with ARC, requests in flight -------------------------------------------

    async def _image(self, sample: dict[str, Any], cache: dict[str, str | None]) -> str | None:
        """The sample's image as a data URL, encoded once per sample (off the event loop)."""
        if "url" not in cache:
            cache["url"] = None
            if sample["has_image"]:
                cache["url"] = await asyncio.to_thread(jpeg_data_url, sample["image_path"],
                                                       self.config.teacher.image_max_side)
        return cache["url"]

    async def _attempts(self, sample: dict[str, Any], stage: str, first: int, state: dict[str, dict],
                        image_cache: dict[str, str | None]) -> dict[str, Any] | None:
        """Request attempts from ``first`` on until one is final (valid, or the retries spent); returns its outcome."""
        prompt = self.render(sample, stage)
        image = await self._image(sample, image_cache)
        for attempt in range(first, self.config.max_retries + 2):
            if self._stop:
                return None
            try:
                reserved = self.budget.reserve(self.teacher.estimate(prompt))
            except BudgetReached:
                self._stop = True
                self.summary.stopped = "budget"
                return None
            comp, error, retried = None, None, 0
            try:
                comp = await self.teacher.complete(prompt, image)
                self._unreachable = 0
            except TeacherError as exc:
                error, retried = str(exc), exc.retries
                self._unreachable = self._unreachable + 1 if exc.kind in ("connection", "timeout") else 0
            self.budget.settle(reserved, comp.cost_usd if comp else None)
            outcome = self.record(
                sample, stage, attempt, output=comp.text if comp else None, error=error, state=state,
                **({"tokens_in": comp.tokens_in, "tokens_out": comp.tokens_out, "cost_usd": comp.cost_usd,
                    "latency_s": comp.latency_s, "http_retries": comp.http_retries} if comp else
                   {"http_retries": retried}),
            )
            if self._unreachable >= UNREACHABLE_STOP:  # the server went away: stop, keep the samples for a rerun
                self._stop = True
                self.summary.stopped = "unreachable"
                return None
            if outcome["final"]:
                return outcome
        return None

    async def _sample(self, sample: dict[str, Any], state: dict[str, dict]) -> None:
        worked = False
        image_cache: dict[str, str | None] = {}
        while (step := self.next_step(sample, state)) is not None:
            stage, attempt = step
            if stage == EXPLAIN:
                self._jobs_total += 1
            if await self._attempts(sample, stage, attempt, state, image_cache) is None:
                return
            worked = True
            self._report()
        if worked:
            self.summary.samples += 1
        else:
            self.summary.skipped_done += 1

    def run_config(self) -> dict[str, Any]:
        """What the run records as its config (never the key)."""
        return {"annotate": {k: v for k, v in asdict(self.config).items() if k != "teacher"},
                "teacher": self.config.teacher.public(),
                "prompts": {s: p.version for s, p in self.prompts.items()}}

    def _report(self) -> None:
        """(sample, stage) jobs done of those known so far, with the summary so far."""
        emit(self.progress, "annotate", done=self._jobs_done, total=self._jobs_total, summary=self.summary)

    async def run_async(self) -> AnnotateSummary:
        start = time.perf_counter()
        cfg = self.config
        samples = self.store.samples(cfg.dataset, cfg.split)
        if cfg.limit is not None:
            samples = samples[: cfg.limit]
        if not samples:
            raise MulcotError(f"no samples in {cfg.dataset}/{cfg.split}")
        state = self.progress_state()
        self._jobs_total = (
            sum(1 for s in samples if (state["predict"].get(s["id"]) or {}).get("final") is None)
            if cfg.stage != "explain"
            else 0
        )
        config = self.run_config()
        try:  # in seconds, before the run is recorded, when nothing listens there
            await self.teacher.check_reachable()
        except MulcotError:
            await self.teacher.aclose()
            raise
        self._report()
        # `concurrency` workers share one iterator, each with one request in flight: only that many samples (and
        # encoded images) are in memory at once, however large the split, and each image is encoded just before
        # its request
        pending = iter(samples)

        async def worker(run: RunRecord) -> None:
            for sample in pending:
                if self._stop:
                    return
                # one writer per sample: another process writing this run (--force) may have taken it
                if self.next_step(sample, state) is not None and not run.claim([f"sample {sample['id']}"]):
                    self.summary.skipped_other_writer += 1
                    continue
                await self._sample(sample, state)

        with self.store.run(self.run_id, kind="annotate", dataset=cfg.dataset, config=config,
                            force=cfg.force) as run:
            run.metrics = self.summary  # recorded however the run ends
            try:
                await asyncio.gather(*(worker(run) for _ in range(min(cfg.concurrency, len(samples)))))
            finally:
                self.summary.wall_s = time.perf_counter() - start
                await self.teacher.aclose()
            self.summary.teacher_set = len(
                {r["sample_id"] for r in self.store.teacher_set(cfg.dataset, cfg.split, cfg.teacher.model)}
            )
            run.status = "stopped" if self.summary.stopped else "done"
        return self.summary


def annotate(store: Store, config: AnnotateConfig, progress: Progress | None = None,
             teacher: Teacher | None = None) -> AnnotateSummary:
    """Annotate ``config.split`` of ``config.dataset`` with the teacher (blocking)."""
    return asyncio.run(Annotator(store, config, teacher=teacher, progress=progress).run_async())


def needs_explanation(pred_final: dict[str, Any], gold: str | None) -> bool:
    """Stage 2's rule: a sample goes to P_exp when its final P_pre chain is invalid or predicts another label."""
    return not pred_final["valid"] or pred_final["prediction"] != gold
