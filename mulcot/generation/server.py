"""Generation through an OpenAI-compatible server (vLLM, llama.cpp's ``llama-server``, llama-cpp-python's server)
for expand, ``eval --model`` and ``predict --dataset``: the same prompts as in-process generation, many requests in
flight, each answer handed back (and stored by the caller) as it arrives.

Requests go through the teacher's client (:class:`mulcot.core.client.Teacher`: async openai SDK, retries with backoff,
``Retry-After``). The server applies the model's chat template to one user message — the image (a lossless PNG of
the same pixels the in-process paths see) then the prompt text — as ``mulcot predict --gguf`` does in-process.
Greedy decoding is asked for explicitly (temperature 0, top-k 1, no repetition penalty: llama.cpp's default is 1.1,
vLLM may take one from the model's generation config), so a server gives the tokens in-process decoding gives.

Failures: a request the server answers with an error after its retries (5xx, a malformed body, a refusal) is
counted as failed with its reason and nothing is stored for it (a rerun asks again); a server that stops answering
at all (connection refused or reset, timeouts) stops the job with :class:`ServerError` after the answers already
stored — each answer is one complete row, so nothing is half-written and the same command resumes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from mulcot.core.client import Completion, Teacher, TeacherConfig, TeacherError
from mulcot.core.images import DEFAULT_MAX_PIXELS
from mulcot.errors import MulcotError
from mulcot.events import Progress, emit
from mulcot.generation.base import SOURCE_SERVER, Backend, Generated, Post, PredictConfig, Request, RunSummary

if TYPE_CHECKING:
    from mulcot.generation.choice import LabelChoice

SERVER_KEY_ENV = "MULCOT_SERVER_KEY"  # the server's API key, if it wants one (vLLM --api-key); never stored
DEAD = ("connection", "timeout")  # TeacherError kinds that mean the server stopped answering


class ServerError(MulcotError):
    """The generation server cannot be used: unreachable, not serving the model, or it stopped answering."""


def public_url(url: str) -> str:
    """``url`` without credentials or query (what a run records)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass
class ServerConfig:
    """Where to generate and how hard to push: ``url`` (``http://HOST:PORT/v1``), the ``served_model`` name the
    server knows the model by (vLLM: a ``--lora-modules`` name or ``--served-model-name``; llama-cpp-python:
    ``--model_alias``), requests in flight, HTTP retries, and an optional budget of requests or seconds."""

    url: str
    served_model: str
    concurrency: int = 4
    http_retries: int = 3
    timeout_s: float = 600.0
    backoff_s: float = 1.0
    max_requests: int | None = None
    time_budget_s: float | None = None
    text_only: bool = False  # the served model reads no images: captions stand for them, as in-process
    key_env: str = SERVER_KEY_ENV

    def public(self) -> dict[str, Any]:
        """What a run records: everything but credentials."""
        out = asdict(self)
        out["url"] = public_url(self.url)
        return out

    def teacher(self) -> Teacher:
        """A client for this server (the teacher's: same retries and backoff)."""
        config = TeacherConfig(model=self.served_model, base_url=self.url, key_env=self.key_env,
                               timeout_s=self.timeout_s, http_retries=self.http_retries, backoff_base_s=self.backoff_s,
                               backoff_max_s=max(self.backoff_s, 30.0))
        return Teacher(config)


def check_server(config: ServerConfig) -> dict[str, str]:
    """Refuse, in one line, a bad setting or a server that is unreachable or does not list ``served_model`` in its
    ``/v1/models``; returns the served names and who serves them (``owned_by``: ``vllm``, ``me`` for
    llama-cpp-python, ``llamacpp``)."""
    if config.concurrency < 1:
        raise ServerError("--concurrency must be at least 1")
    if not config.url.startswith(("http://", "https://")):
        raise ServerError(f"--server must be an http(s) URL such as http://127.0.0.1:8000/v1, not '{config.url}'")

    async def ask() -> dict[str, str]:
        client = config.teacher()
        try:
            return await client.model_owners()
        finally:
            await client.aclose()

    try:
        names = asyncio.run(ask())
    except TeacherError as err:
        raise ServerError(f"cannot reach the server at {public_url(config.url)}: {err} (is it running? see "
                          "README 'Generating through a server')") from None
    if config.served_model not in names:
        raise ServerError(f"the server at {public_url(config.url)} does not serve '{config.served_model}' (it serves: "
                          f"{', '.join(names) or 'nothing'}): pass --served-model with one of those")
    return names


@dataclass
class Job:
    """One request: the rendered prompt text, the image file (None: text only) and how to decode."""

    sample_id: int
    prompt: str
    image: str | None = None
    max_tokens: int = 512
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    image_max_side: int | None = None
    tag: Any = None  # the caller's (which prompt, which sample)
    name: str = ""  # how failures name it (sample key and prompt)


def sampling(job: Job) -> dict[str, Any]:
    """The request's decoding fields. Greedy asks for it in every dialect (llama.cpp: top_k 1, repeat_penalty 1;
    vLLM: repetition_penalty 1); unknown fields are ignored by both servers."""
    params: dict[str, Any] = {"min_p": 0.0, "repeat_penalty": 1.0, "repetition_penalty": 1.0}
    if job.temperature <= 0:
        params.update(temperature=0.0, top_p=1.0, top_k=1)
    else:
        params.update(temperature=job.temperature, top_p=job.top_p)
    if job.seed is not None:
        params["seed"] = job.seed
    return params


def image_url(path: str, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = None) -> str:
    """The image as the in-process paths see it (:func:`mulcot.core.images.load_image`), as a PNG data URL."""
    from mulcot.core.images import load_image, png_data_url

    return png_data_url(load_image(path, max_pixels, max_side))


OnJobAnswer = Callable[[Job, Any], None]
SendJob = Callable[[Teacher, Job, "str | None"], Awaitable[Any]]


async def chat(client: Teacher, job: Job, url: str | None) -> Completion:
    """The default request: one greedy (or sampled) chat completion of the job's prompt and image."""
    return await client.complete(job.prompt, url, max_tokens=job.max_tokens, params=sampling(job))


class _Run:
    def __init__(self, config: ServerConfig, on_answer: OnJobAnswer, progress: Progress | None, stage: str,
                 total: int | None, message: str, request: SendJob = chat,
                 stop: Callable[[], bool] | None = None):
        self.request = request
        self.stop = stop
        self.message = message
        self.config = config
        self.on_answer = on_answer
        self.progress = progress
        self.stage = stage
        self.total = total
        self.summary = RunSummary()
        self.dead: TeacherError | None = None
        self.start = time.perf_counter()

    def _over_budget(self) -> str | None:
        cfg = self.config
        if cfg.max_requests is not None and self.summary.requests >= cfg.max_requests:
            return "requests"
        if cfg.time_budget_s is not None and time.perf_counter() - self.start >= cfg.time_budget_s:
            return "time"
        return None

    async def _one(self, client: Teacher, job: Job) -> None:
        url = None
        if job.image is not None and not self.config.text_only:
            url = await asyncio.to_thread(image_url, job.image, job.max_pixels, job.image_max_side)
        self.summary.requests += 1
        try:
            comp = await self.request(client, job, url)
        except TeacherError as err:
            if err.kind in DEAD:
                self.dead = self.dead or err
                return
            self.summary.failed += 1
            self.summary.failures.append(f"{job.name or f'sample {job.sample_id}'}: {err}")
            return
        if self.dead is not None:  # the server died meanwhile: store nothing more, so the job ends in one state
            return
        self.on_answer(job, comp)
        self.summary.answered += 1
        self.summary.count_answer(comp)
        emit(self.progress, self.stage, done=self.summary.answered + self.summary.failed, total=self.total,
             message=self.message)

    async def run(self, jobs: Iterable[Job]) -> RunSummary:
        client = self.config.teacher()
        pending = iter(jobs)

        async def worker() -> None:
            for job in pending:
                if self.dead is not None or self.summary.stopped or (self.stop is not None and self.stop()):
                    return
                over = self._over_budget()
                if over:
                    self.summary.stopped = over
                    return
                await self._one(client, job)

        try:
            await asyncio.gather(*(worker() for _ in range(self.config.concurrency)))
        finally:
            await client.aclose()
            self.summary.wall_s = round(time.perf_counter() - self.start, 3)
        if self.dead is not None:
            raise ServerError(
                f"the server at {public_url(self.config.url)} stopped answering ({self.dead}); "
                f"{self.summary.answered} answers were stored whole: start it again and rerun the same command "
                "to resume"
            )
        return self.summary


def generate(config: ServerConfig, jobs: Iterable[Job], on_answer: OnJobAnswer, *, progress: Progress | None = None,
             stage: str = "generate", total: int | None = None, message: str = "",
             request: SendJob = chat, stop: Callable[[], bool] | None = None) -> RunSummary:
    """Send ``jobs`` to the server, ``config.concurrency`` at a time; ``on_answer(job, answer)`` is called for each
    answer as it arrives (on this thread: store it there). ``request`` makes one job's request (default: a chat
    completion; anything answering with ``tokens_in``/``tokens_out``/``http_retries``); ``stop()`` true ends the
    run before the next request (the caller found a reason not to go on). Raises
    :class:`ServerError` when the server stops answering. Call :func:`check_server` first."""
    return asyncio.run(_Run(config, on_answer, progress, stage, total, message, request, stop).run(jobs))


def vision_lora_tensors(adapter: str | Path) -> int:
    """How many LoRA tensors of ``adapter`` sit on the vision tower (``visual.*``): vLLM drops them unless its
    tower/connector LoRA option is on, so such an adapter should be served merged."""
    folder = Path(adapter)
    files = sorted(folder.glob("adapter_model*.safetensors"))
    if files:
        from safetensors import safe_open

        count = 0
        for f in files:
            with safe_open(str(f), framework="pt") as fh:
                count += sum(1 for k in fh.keys() if ".visual." in k or k.startswith("visual."))  # noqa: SIM118
        return count
    try:
        targets = json.loads((folder / "adapter_config.json").read_text()).get("target_modules")
    except (OSError, ValueError):
        return 0
    return int("visual" in json.dumps(targets))


def served_identity(config: ServerConfig, adapter: str | Path | None) -> tuple[dict[str, Any], list[str]]:
    """What a run records about the serving (server URL without credentials, served name, adapter hash) and the
    warnings to show (an adapter with vision-tower LoRA weights)."""
    from mulcot.core.refs import adapter_digest

    record: dict[str, Any] = {"server": config.public()}
    warnings: list[str] = []
    if adapter is not None:
        record["adapter_sha256"] = adapter_digest(adapter)
        vision = vision_lora_tensors(adapter)
        if vision:
            warnings.append(
                f"the adapter {adapter} has {vision} LoRA tensors on the vision tower: vLLM drops them unless its "
                "tower/connector LoRA option is on; serve a merged model (mulcot export) or a GGUF instead, or the "
                "served model is not the trained one"
            )
    record["warnings"] = warnings
    return record, warnings


class ServerBackend(Backend):
    """A served model, named by the server (``--served-model``): the prompts, pixels and greedy decoding of the
    GGUF backend, ``concurrency`` requests in flight; answers are stored with source ``student-server`` (predict)
    and that name as ``model``."""

    kind = "server"
    source = SOURCE_SERVER

    def __init__(self, server: ServerConfig, config: PredictConfig | None = None, *, tokenizer: str | None = None):
        self.server = server
        self.config = config or PredictConfig()
        self.text_only = server.text_only
        self.name = server.served_model
        self.tokenizer = tokenizer  # the served model's folder or hub id: forced choice renders and tokenizes with it
        self.owner = check_server(server).get(server.served_model, "")
        self._scorer: Any = None

    @classmethod
    def open(cls, *, config: PredictConfig, store: Any = None, server: ServerConfig | None = None,
             tokenizer: str | None = None, **_: Any) -> ServerBackend:
        """The model a server serves (checked: reachable and serving it); ``tokenizer`` (the served model's folder
        or hub id) for forced-choice scoring."""
        if server is None:
            raise MulcotError("the server backend needs --server URL --served-model NAME")
        return cls(server, config, tokenizer=tokenizer)

    def cannot_score_labels(self, posts: Sequence[Post] = ()) -> str | None:
        from mulcot.generation.server_choice import dialect_problem

        return dialect_problem(self.owner, self.tokenizer)

    def score_labels(self, posts: Sequence[Post], task: str) -> list[LabelChoice]:
        """Forced choice from the server's prompt log-probs (:mod:`mulcot.generation.server_choice`): vLLM or
        llama-cpp-python; anything else is refused in one line."""
        from mulcot.generation.base import LabelScoringError
        from mulcot.generation.server_choice import ServerLabelScorer

        problem = self.cannot_score_labels(posts)
        if problem:
            raise LabelScoringError(problem)
        if self._scorer is None:
            self._scorer = ServerLabelScorer(self, self.owner, str(self.tokenizer))
        return self._scorer.score(posts, task)

    def job(self, request: Request, k: int = 0) -> Job:
        """The request for the ``k``-th answer to ``request``."""
        from mulcot.core.prompts import get_prompt, image_as_text

        cfg, post = self.config, request.post
        text = get_prompt(request.prompt, request.task).render(post.text, post.aspect)
        if self.text_only:
            text = image_as_text(text, post.caption)
        seed = (cfg.seed if request.seed is None else request.seed) + k
        return Job(sample_id=k, prompt=text, image=None if post.image is None else str(post.image),
                   max_tokens=cfg.max_tokens_for(request.prompt), temperature=cfg.temperature, top_p=cfg.top_p,
                   seed=seed, max_pixels=cfg.max_pixels, image_max_side=cfg.image_max_side, tag=request,
                   name=request.name)

    def run(self, requests: Iterable[Request], on_answer: Callable[[Request, Generated], None], *,
            progress: Progress | None = None, stage: str = "generate", total: int | None = None, message: str = "",
            stop: Callable[[], bool] | None = None) -> RunSummary:
        """Every answer through the server, ``concurrency`` at a time, each handed over as it arrives; a server that
        stops answering raises :class:`ServerError` after the answers already handed over."""
        jobs = (self.job(request, k) for request in requests for k in range(request.n))
        return generate(self.server, jobs, lambda job, comp: on_answer(job.tag, generated(comp)), progress=progress,
                        stage=stage, total=total, message=message, stop=stop)

    def ask(self, tags: Sequence[Any], request: Callable[[Teacher, Any], Awaitable[Any]],
            on_answer: Callable[[Any, Any], None], *, names: Sequence[str] | None = None, stage: str = "generate",
            stop: Callable[[], bool] | None = None) -> None:
        """One request per tag (``await request(client, tag)``), ``concurrency`` in flight, ``on_answer(tag,
        answer)`` for each as it arrives; a failed request, a budget stop or a dead server raises
        :class:`ServerError` (after the answers already handed over)."""
        jobs = [Job(sample_id=i, prompt="", max_tokens=1, tag=tag, name=names[i] if names else str(tag))
                for i, tag in enumerate(tags)]

        async def send(client: Teacher, job: Job, url: str | None) -> Any:
            return await request(client, job.tag)

        summary = generate(self.server, jobs, lambda job, answer: on_answer(job.tag, answer), request=send,
                           stage=stage, stop=stop)
        if summary.failures or summary.stopped:
            raise ServerError(summary.failures[0] if summary.failures else f"stopped at the --{summary.stopped} budget")

    def generate(self, posts: Sequence[Post], prompt: str, task: str) -> list[Generated]:
        """Answers for ``posts`` (in order); a failed request raises :class:`ServerError`."""
        answers: dict[int, Generated] = {}
        requests = [Request(post=post, prompt=prompt, task=task, tag=i) for i, post in enumerate(posts)]
        summary = self.run(requests, lambda request, gen: answers.__setitem__(request.tag, gen))
        if summary.failures:
            raise ServerError(summary.failures[0])
        return [answers[i] for i in range(len(posts))]


def generated(comp: Any) -> Generated:
    """A server's completion as a :class:`~mulcot.generation.base.Generated` (no token ids: servers send text)."""
    return Generated(text=comp.text.strip(), token_ids=None, tokens_in=comp.tokens_in, tokens_out=comp.tokens_out,
                     latency_s=comp.latency_s, finish_reason=comp.finish_reason,
                     http_retries=comp.http_retries)
