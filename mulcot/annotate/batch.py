"""Stage 1 through batch files: the OpenAI Batch API (half price) and offline files for ``vllm run-batch``.

The same decisions and records as live annotation (:class:`mulcot.annotate.Annotator`): the request body is
:meth:`Teacher.request_body <mulcot.core.client.Teacher.request_body>`, what a sample needs next is
:meth:`Annotator.next_step`, and every answer becomes an attempt through :meth:`Annotator.record` (ARC, tokens, cost
at batch prices, summary counts). Only the transport differs: each round writes the due attempts as Batch JSONL
lines (``custom_id`` = ``DATASET:SAMPLE_ID:STAGE:ATTEMPT:PROMPT_VERSION``; the image as a base64 data URL), split at
50,000 requests / 200 MB; stage 2 and ARC retries go out as follow-up rounds once a round's results are in.

Resuming: a batch is registered in the store (``batches``) before its file is uploaded and updated after every step,
so a rerun polls what was submitted (finding a batch created just before a kill by its ``metadata``), ingests what
finished, and submits only the attempts no pending batch holds. Results are matched on ``custom_id``, never line
order; an attempt already in the store is never recorded twice. An expired or cancelled batch gives what finished;
the rest is submitted again. A request the batch answered with an error counts as an attempt, as a failed HTTP
request does live. The API key is only ever in the client's memory.

Long because: one :class:`BatchAnnotator` owns a round's whole life (write, upload, poll, recover after a kill,
ingest, follow up) over the ``batches`` table; its steps share the annotator's state and make sense only together.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mulcot.annotate.live import PASSES, AnnotateConfig, AnnotateSummary, Annotator
from mulcot.core.client import Teacher, TeacherError, price_for
from mulcot.core.images import jpeg_data_url
from mulcot.errors import DataError, MulcotError
from mulcot.events import Progress, emit
from mulcot.store import Store
from mulcot.store.batches import API, FILE, SUPERSEDED, TERMINAL

ENDPOINT = "/v1/chat/completions"
MAX_REQUESTS = 50_000  # per file (Batch API limit)
MAX_BYTES = 200_000_000  # per file (Batch API limit: 200 MB)


@dataclass
class BatchConfig:
    """How batches are built and followed. ``price``: batch USD per 1M tokens (default: half the live price)."""

    price: tuple[float, float] | None = None
    max_requests: int = MAX_REQUESTS
    max_bytes: int = MAX_BYTES
    poll_s: float = 30.0
    wait: bool = True
    runs_dir: str | None = None  # default: runs/ beside the database


def batch_price(config: AnnotateConfig, override: tuple[float, float] | None = None) -> tuple[float, float] | None:
    """Batch price per 1M tokens: ``override``, else half the live price (``--price`` or the table)."""
    if override is not None:
        return override
    live = price_for(config.teacher.model, config.teacher.price)
    return None if live is None else (live[0] / 2, live[1] / 2)


def custom_id(dataset: str, sample_id: int, stage: str, attempt: int, version: str) -> str:
    """The request's name in a batch: dataset, sample, stage, attempt and prompt version."""
    return f"{dataset}:{sample_id}:{stage}:{attempt}:{version}"


def parse_custom_id(cid: Any) -> tuple[str, int, str, int, str] | None:
    """(dataset, sample id, stage, attempt, prompt version) of a :func:`custom_id`, or None when it is not one."""
    if not isinstance(cid, str):
        return None
    parts = cid.rsplit(":", 4)
    if len(parts) != 5 or parts[2] not in PASSES or not parts[1].isdigit() or not parts[3].isdigit():
        return None
    return parts[0], int(parts[1]), parts[2], int(parts[3]), parts[4]


def read_results(lines: Iterable[str], source: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Batch output / error lines by ``custom_id`` (the first of duplicates), each as ``output`` (text or None),
    ``error``, ``tokens_in``, ``tokens_out``; and one message per line that could not be read (file:line: why)."""
    results: dict[str, dict[str, Any]] = {}
    bad: list[str] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            bad.append(f"{source}:{n}: not JSON")
            continue
        if not isinstance(obj, dict) or parse_custom_id(obj.get("custom_id")) is None:
            bad.append(f"{source}:{n}: no mulcot custom_id")
            continue
        if obj["custom_id"] not in results:
            results[obj["custom_id"]] = _result(obj)
    return results, bad


def _result(obj: dict[str, Any]) -> dict[str, Any]:
    resp = obj.get("response") if isinstance(obj.get("response"), dict) else {}
    body = resp.get("body") if isinstance(resp.get("body"), dict) else {}
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    out: dict[str, Any] = {"output": None, "error": None, "tokens_in": usage.get("prompt_tokens"),
                           "tokens_out": usage.get("completion_tokens")}
    error, code = obj.get("error"), resp.get("status_code")
    if error:
        out["error"] = f"batch request failed: {error.get('code', '') if isinstance(error, dict) else ''} " + (
            error.get("message", "") if isinstance(error, dict) else str(error)
        )
    elif code != 200:
        msg = body.get("error", {}).get("message", "") if isinstance(body.get("error"), dict) else ""
        out["error"] = f"batch request failed: HTTP {code} {msg}".strip()
    else:
        choices = body.get("choices")
        first = choices[0] if isinstance(choices, list) and choices else None
        message = first.get("message") if isinstance(first, dict) else None
        if not isinstance(message, dict):
            out["error"] = "malformed batch result: no choices[0].message"
        else:
            out["output"] = message.get("content") or ""
    return out


class BatchAnnotator:
    """One batch annotation job: the API round trip (:meth:`run_api`), or offline files (:meth:`write_file`,
    :meth:`ingest_file`). ``client``: a sync ``openai.OpenAI`` (made from the teacher config when needed)."""

    def __init__(self, store: Store, config: AnnotateConfig, batch: BatchConfig | None = None,
                 progress: Progress | None = None, client: Any = None):
        self.store = store
        self.config = config
        self.batch = batch or BatchConfig()
        if self.batch.max_requests < 1 or self.batch.max_bytes < 1:
            raise MulcotError("batch files need room for at least one request")
        teacher = Teacher(config.teacher, connect=False, price=batch_price(config, self.batch.price))
        self.ann = Annotator(store, config, teacher=teacher, progress=progress)
        self.summary: AnnotateSummary = self.ann.summary
        self.progress = progress
        self._client = client
        samples = store.samples(config.dataset, config.split)
        if config.limit is not None:
            samples = samples[: config.limit]
        if not samples:
            raise MulcotError(f"no samples in {config.dataset}/{config.split}")
        self.samples = {s["id"]: s for s in samples}
        self.state = self.ann.progress_state()
        self.folder = Path(self.batch.runs_dir or store.runs_dir) / self.ann.run_id / "batches"
        self._touched: set[int] = set()
        self._undone_at_start = sum(1 for s in samples if self.ann.next_step(s, self.state) is not None)
        self._submitted_estimate = 0.0

    @property
    def client(self) -> Any:
        if self._client is None:
            import openai

            t = self.config.teacher
            self._client = openai.OpenAI(api_key=t.resolve_key(), base_url=t.base_url, timeout=t.timeout_s,
                                         max_retries=t.http_retries)
        return self._client

    # -- what is due, as files -----------------------------------------------------------------------------------

    def due(self, busy: set[tuple[int, str]]) -> list[tuple[dict[str, Any], str, int]]:
        """The next attempt of every sample that needs one and is not in a pending batch."""
        out = []
        for sample in self.samples.values():
            step = self.ann.next_step(sample, self.state)
            if step is not None and (sample["id"], step[0]) not in busy:
                out.append((sample, *step))
        return out

    def _lines(self, jobs: list[tuple[dict[str, Any], str, int]]) -> Iterator[tuple[str, str, float]]:
        """(custom_id, JSONL line, cost estimate) per job, the image encoded just before its line."""
        for sample, stage, attempt in jobs:
            prompt = self.ann.render(sample, stage)
            image = (jpeg_data_url(sample["image_path"], self.config.teacher.image_max_side)
                     if sample["has_image"] else None)
            cid = custom_id(self.config.dataset, sample["id"], stage, attempt, self.ann.prompts[stage].version)
            line = {"custom_id": cid, "method": "POST", "url": ENDPOINT,
                    "body": self.ann.teacher.request_body(prompt, image)}
            yield cid, json.dumps(line, ensure_ascii=False) + "\n", self.ann.teacher.estimate(prompt)

    def _write(self, jobs: list[tuple[dict[str, Any], str, int]], paths: Iterator[Path]) -> list[dict[str, Any]]:
        """Write the jobs into files of at most ``max_requests`` lines and ``max_bytes``, within the budget: a list of
        ``{path, custom_ids, estimate, stage}``."""
        files: list[dict[str, Any]] = []
        current: dict[str, Any] | None = None
        handle = None
        size = 0
        limit = self.config.budget_usd
        try:
            for cid, line, estimate in self._lines(jobs):
                if limit is not None and self._committed() + estimate > limit:
                    self.summary.stopped = "budget"
                    break
                data = line.encode()
                if len(data) > self.batch.max_bytes:
                    raise MulcotError(f"one request ({cid}) is {len(data)} bytes, over the file limit: "
                                      "lower --image-max-side")
                if (
                    current is None
                    or len(current["custom_ids"]) >= self.batch.max_requests
                    or (size + len(data) > self.batch.max_bytes)
                ):
                    if handle:
                        handle.close()
                    current = {"path": next(paths), "custom_ids": [], "estimate": 0.0, "stages": set()}
                    current["path"].parent.mkdir(parents=True, exist_ok=True)
                    handle = current["path"].open("wb")
                    files.append(current)
                    size = 0
                handle.write(data)
                size += len(data)
                current["custom_ids"].append(cid)
                current["estimate"] += estimate
                current["stages"].add(cid.rsplit(":", 4)[2])
                self._submitted_estimate += estimate
        finally:
            if handle:
                handle.close()
        for f in files:
            stages = f.pop("stages")
            f["stage"] = "+".join(s for s in PASSES if s in stages)
        return files

    def _committed(self) -> float:
        """Spent by this invocation plus the estimate of what it has sent and not yet taken in."""
        return self.summary.cost_usd + self._submitted_estimate

    # -- results -------------------------------------------------------------------------------------------------

    def _ingest(self, results: dict[str, dict[str, Any]], expected: set[str] | None = None,
                missing_error: str | None = None) -> set[str]:
        """Record the results as attempts (in sample, stage, attempt order); ``expected`` custom_ids without a result
        are recorded as failed attempts with ``missing_error`` when given. Returns the custom_ids recorded."""
        done: set[str] = set()
        todo = dict(results)
        if expected is not None and missing_error is not None:
            for cid in expected - set(results):
                todo[cid] = {"output": None, "error": missing_error, "tokens_in": None, "tokens_out": None}

        def order(cid: str) -> tuple:
            p = parse_custom_id(cid)
            return (p[1], PASSES.index(p[2]), p[3]) if p else (0, 0, 0)

        for cid in sorted(todo, key=order):
            dataset, sid, stage, attempt, version = parse_custom_id(cid)  # type: ignore[misc]
            if (
                (expected is not None and cid not in expected)
                or dataset != self.config.dataset
                or (sid not in self.samples)
            ):
                self.summary.stale_results += 1
                continue
            if version != self.ann.prompts[stage].version:
                self.summary.stale_results += 1  # made with other prompt wording: asked again
                continue
            now = self.state[stage].get(sid) or {"attempts": 0, "final": None}
            if attempt <= now["attempts"]:
                continue  # already recorded (a results file taken in twice)
            if attempt != now["attempts"] + 1 or now["final"] is not None:
                self.summary.stale_results += 1
                continue
            r = todo[cid]
            cost = self.ann.teacher.cost(r["tokens_in"] or 0, r["tokens_out"] or 0) if r["tokens_in"] else None
            self.ann.record(self.samples[sid], stage, attempt, output=r["output"], error=r["error"],
                            state=self.state, tokens_in=r["tokens_in"], tokens_out=r["tokens_out"],
                            cost_usd=cost)
            self._touched.add(sid)
            done.add(cid)
        return done

    # -- the Batch API -------------------------------------------------------------------------------------------

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import openai

        try:
            return fn(*args, **kwargs)
        except openai.APIStatusError as exc:
            raise TeacherError(f"batch API: {what} refused: HTTP {exc.status_code} {exc.message}"[:300]) from None
        except openai.APIConnectionError as exc:
            raise TeacherError(f"batch API: {what} failed: {exc.__cause__ or exc}"[:300]) from None

    def _submit(self, row: dict[str, Any]) -> None:
        """Upload a registered batch's file (unless done already) and create the batch."""
        if not row["input_file_id"]:
            path = Path(row["input_path"])
            with path.open("rb") as fh:
                f = self._call("upload", self.client.files.create, file=(path.name, fh), purpose="batch")
            self.store.update_batch(row["id"], input_file_id=f.id, status="uploaded")
            row["input_file_id"] = f.id
        meta = {"mulcot_batch": row["id"], "mulcot_run": row["run_id"]}
        b = self._call("create", self.client.batches.create, input_file_id=row["input_file_id"], endpoint=ENDPOINT,
                       completion_window="24h", metadata=meta)
        self.store.update_batch(row["id"], remote_id=b.id, status=b.status)
        self.summary.batches_submitted += 1

    def _find_remote(self, local_id: str) -> Any:
        """The provider's batch created for ``local_id`` (by its metadata), if any: a kill can fall between
        ``batches.create`` and the store update."""
        page = self._call("list", self.client.batches.list, limit=100)
        for n, b in enumerate(page):
            if (b.metadata or {}).get("mulcot_batch") == local_id:
                return b
            if n >= 1000:
                break
        return None

    def _find_upload(self, filename: str) -> Any:
        """The uploaded file named ``filename`` (our batch id), if any: a kill can fall between the upload and the
        store update."""
        page = self._call("list files", self.client.files.list, purpose="batch")
        for n, f in enumerate(page):
            if f.filename == filename:
                return f
            if n >= 10_000:
                break
        return None

    def _recover(self, row: dict[str, Any]) -> None:
        """A batch registered but not known to be created: adopt it, finish submitting it, or forget it."""
        remote = self._find_remote(row["id"])
        if remote is not None:
            self.store.update_batch(row["id"], remote_id=remote.id, status=remote.status,
                                    input_file_id=remote.input_file_id)
            return
        path = Path(row["input_path"] or "")
        if not row["input_file_id"]:
            uploaded = self._find_upload(path.name)
            if uploaded is not None:
                self.store.update_batch(row["id"], input_file_id=uploaded.id, status="uploaded")
                row["input_file_id"] = uploaded.id
        if row["input_file_id"] or path.is_file():
            self._submit(row)
        else:
            self.store.delete_batch(row["id"])

    def _poll(self, row: dict[str, Any]) -> None:
        """Refresh one submitted batch; take in its results once it has ended."""
        b = self._call("retrieve", self.client.batches.retrieve, row["remote_id"])
        counts = b.request_counts
        errors = [e.message or e.code or "" for e in (b.errors.data or [])] if b.errors else None
        values = {"status": b.status, "output_file_id": b.output_file_id, "error_file_id": b.error_file_id,
                  "completed": counts.completed if counts else None, "failed": counts.failed if counts else None,
                  "errors": errors}
        self.store.update_batch(row["id"], **values)
        if b.status not in TERMINAL:
            return
        results: dict[str, dict[str, Any]] = {}
        for kind in ("output", "error"):
            file_id = values[f"{kind}_file_id"]
            if not file_id:
                continue
            path = self.folder / f"{row['id']}.{kind}.jsonl"
            if not path.is_file():  # kept: taking the results in again needs no download
                data = self._call("download", self.client.files.content, file_id).content
                tmp = path.with_suffix(".part")
                tmp.write_bytes(data)
                tmp.replace(path)
            got, bad = read_results(path.read_text(encoding="utf-8", errors="replace").splitlines(), path.name)
            for cid, r in got.items():
                results.setdefault(cid, r)
            self.summary.malformed_lines += len(bad)
            self.summary.failures.extend(bad[:20])
        # completed/failed: every request had its chance, so one without a result is a failed attempt; expired or
        # cancelled: those without a result never ran and go out again
        missing = None
        if b.status in ("completed", "failed"):
            missing = "no result for this request in the batch's output or error file"
            if b.status == "failed":
                missing = f"batch failed: {'; '.join(errors or []) or 'no reason given'}"
        tokens = (self.summary.tokens_in, self.summary.tokens_out, self.summary.cost_usd)
        with self.store.transaction():
            self._ingest(results, expected=set(row["custom_ids"]), missing_error=missing)
            self.store.update_batch(row["id"], ingested=1, tokens_in=self.summary.tokens_in - tokens[0],
                                    tokens_out=self.summary.tokens_out - tokens[1],
                                    cost_usd=self.summary.cost_usd - tokens[2])
        self._submitted_estimate = max(0.0, self._submitted_estimate - (row["estimate_usd"] or 0.0))
        self.summary.batches_ingested += 1

    def _pending(self, kind: str = API) -> list[dict[str, Any]]:
        return self.store.batches(run_id=self.ann.run_id, kind=kind, pending=True)

    def _busy(self) -> set[tuple[int, str]]:
        busy = set()
        for row in self._pending(API):
            for cid in row["custom_ids"]:
                p = parse_custom_id(cid)
                if p:
                    busy.add((p[1], p[2]))
        return busy

    def _submit_due(self) -> None:
        jobs = self.due(self._busy())
        if not jobs or self.summary.stopped == "budget":
            return

        def paths() -> Iterator[Path]:
            while True:
                yield self.folder / f"mb-{uuid.uuid4().hex[:12]}.input.jsonl"

        for f in self._write(jobs, paths()):
            row = self.store.add_batch(
                f["path"].name.split(".")[0], run_id=self.ann.run_id, dataset=self.config.dataset,
                split=self.config.split, model=self.config.teacher.model, kind=API, stage=f["stage"],
                custom_ids=f["custom_ids"], status="preparing", input_path=str(f["path"]),
                estimate_usd=round(f["estimate"], 8),
            )
            self._submit(row)

    def _report(self, pending: list[dict[str, Any]]) -> None:
        total = sum(r["requests"] for r in pending)
        done = sum((r["completed"] or 0) + (r["failed"] or 0) for r in pending)
        statuses = ", ".join(sorted({r["status"] for r in pending}))
        emit(self.progress, "annotate", done=done, total=total or None, summary=self.summary,
             message=f"{len(pending)} batch(es) {statuses}" if pending else "batches done",
             batches=len(pending))

    def run_api(self) -> AnnotateSummary:
        """Submit, follow and take in batches until every sample is done (or, ``wait=False``, until what is due is
        submitted); a rerun resumes."""
        start = time.perf_counter()
        self.client  # noqa: B018 -- no key, no run: refuse before anything is written
        with self.store.run(self.ann.run_id, kind="annotate", dataset=self.config.dataset,
                            config={**self.ann.run_config(), "batch": asdict(self.batch)}) as run:
            run.metrics = self.summary
            while True:
                for row in self._pending(API):
                    if row["remote_id"] is None:
                        self._recover(row)
                    else:
                        self._poll(row)
                self._submit_due()
                pending = self._pending(API)
                self._report(pending)
                if not pending:
                    break
                if not self.batch.wait:
                    self.summary.stopped = self.summary.stopped or "pending"
                    break
                time.sleep(self.batch.poll_s)
            self._finish(start)
            run.status = "stopped" if self.summary.stopped else "done"
        return self.summary

    # -- offline files (vllm run-batch) ----------------------------------------------------------------------------

    def write_file(self, out: str | Path) -> AnnotateSummary:
        """Write every due attempt to ``out`` (more parts as ``OUT-2.jsonl``, … past the limits) for an offline
        run; earlier files of this run whose results never came back are superseded."""
        start = time.perf_counter()
        with self.store.run(self.ann.run_id, kind="annotate", dataset=self.config.dataset,
                            config={**self.ann.run_config(), "batch": asdict(self.batch)}) as run:
            run.metrics = self.summary
            self._write_next(Path(out))
            self._finish(start)
            run.status = "stopped" if self.summary.stopped else "done"
        return self.summary

    def _write_next(self, out: Path) -> None:
        for row in self._pending(FILE):
            self.store.update_batch(row["id"], status=SUPERSEDED)
        jobs = self.due(self._busy())
        if not jobs:
            return

        def paths() -> Iterator[Path]:
            yield out
            n = 2
            while True:
                yield out.with_name(f"{out.stem}-{n}{out.suffix}")
                n += 1

        if not out.parent.is_dir():
            raise MulcotError(f"folder {out.parent} does not exist: create it or pass another --batch-file")
        for f in self._write(jobs, paths()):
            self.store.add_batch(
                f"mf-{uuid.uuid4().hex[:12]}", run_id=self.ann.run_id, dataset=self.config.dataset,
                split=self.config.split, model=self.config.teacher.model, kind=FILE, stage=f["stage"],
                custom_ids=f["custom_ids"], status="written", input_path=str(f["path"]),
                estimate_usd=round(f["estimate"], 8),
            )
            self.summary.batch_files.append(str(f["path"]))
        self.summary.stopped = self.summary.stopped or "pending"

    def ingest_file(self, results: str | Path, next_file: str | Path | None = None) -> AnnotateSummary:
        """Take in a ``vllm run-batch`` / Batch API output (or error) file, then write the next round's requests
        to ``next_file`` (default: beside the results, ``RUN.round-N.jsonl``)."""
        start = time.perf_counter()
        path = Path(results)
        if not path.is_file():
            raise DataError("no such results file: pass the output of vllm run-batch or the Batch API", file=str(path))
        got, bad = read_results(path.read_text(encoding="utf-8", errors="replace").splitlines(), str(path))
        if not got:
            raise DataError(f"no result lines with a mulcot custom_id ({len(bad)} unreadable)", file=str(path))
        with self.store.run(self.ann.run_id, kind="annotate", dataset=self.config.dataset,
                            config={**self.ann.run_config(), "batch": asdict(self.batch)}) as run:
            run.metrics = self.summary
            self.summary.malformed_lines += len(bad)
            self.summary.failures.extend(bad[:20])
            with self.store.transaction():
                recorded = self._ingest(got)
                for row in self._pending(FILE):
                    answered = sum(1 for c in row["custom_ids"] if c in got)
                    if answered:
                        whole = answered == row["requests"]
                        self.store.update_batch(row["id"], status="ingested" if whole else "partial",
                                                completed=answered, ingested=int(whole))
            self.summary.batches_ingested += bool(recorded)
            if next_file is None:
                n = len(self.store.batches(run_id=self.ann.run_id, kind=FILE)) + 1
                next_file = path.with_name(f"{self.ann.run_id}.round-{n}.jsonl")
            self._write_next(Path(next_file))
            self._finish(start)
            run.status = "stopped" if self.summary.stopped else "done"
        return self.summary

    def _finish(self, start: float) -> None:
        cfg = self.config
        s = self.summary
        s.samples = len(self._touched)
        s.skipped_done = len(self.samples) - self._undone_at_start
        s.batches_pending = len(self._pending(API))
        s.wall_s = time.perf_counter() - start
        s.teacher_set = len({r["sample_id"] for r in self.store.teacher_set(cfg.dataset, cfg.split, cfg.teacher.model)})


def batch_status(store: Store, dataset: str | None = None) -> list[dict[str, Any]]:
    """Every batch (and batch file) of ``dataset`` (or all), oldest first, without its custom_id list."""
    out = []
    for row in store.batches(dataset=dataset):
        row = dict(row)
        row.pop("custom_ids")
        out.append(row)
    return out


def annotate_batch(store: Store, config: AnnotateConfig, batch: BatchConfig | None = None, *,
                   batch_file: str | Path | None = None, ingest: str | Path | None = None,
                   progress: Progress | None = None, client: Any = None) -> AnnotateSummary:
    """Annotate through batches: ``ingest`` a results file (then write the next round to ``batch_file``), write the
    due requests to ``batch_file`` only, or (neither) the Batch API round trip."""
    job = BatchAnnotator(store, config, batch, progress=progress, client=client)
    if ingest is not None:
        return job.ingest_file(ingest, batch_file)
    if batch_file is not None:
        return job.write_file(batch_file)
    return job.run_api()


__all__ = [
    "ENDPOINT", "BatchAnnotator", "BatchConfig", "annotate_batch", "batch_price", "batch_status",
    "custom_id", "parse_custom_id", "read_results",
]
