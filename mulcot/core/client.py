"""The one OpenAI-compatible client: any chat-completions endpoint (OpenAI, vLLM, Ollama, llama.cpp server, …)
reached through the ``openai`` SDK's async client over real HTTP — the teacher (stage 1), and the generation
servers of :mod:`mulcot.generation.server`. Named after its first user, the teacher (:class:`Teacher`,
:class:`TeacherConfig`); prices, the shared spending :class:`Budget` and the usage of each answer live here too.

HTTP-level failures are retried here (429 honours ``Retry-After``; 5xx, timeouts and dropped connections back off
exponentially with jitter); output-level retries (ARC) are the annotator's business. The API key is held in memory
only: it never appears in :meth:`TeacherConfig.public`, which is what gets stored.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import asdict, dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from mulcot.core.keys import DEFAULT_KEY_ENV, is_openai, key_env_problem, public_url, url_secrets
from mulcot.errors import MulcotError

# USD per 1M tokens (input, output), list prices; override with --price. Unknown models cost 0 and are flagged.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
}


# this many requests in a row without any answer (each after its HTTP retries) stop a run (annotate, judge)
UNREACHABLE_STOP = 3


def model_slug(model: str) -> str:
    """A model name as part of a run id: its last path part, other characters than letters, digits, '.', '_', '-'
    replaced by '-'."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in model.split("/")[-1])


class Usage:
    """The usage counters a summary keeps — answered requests' HTTP retries, tokens and cost — for the dataclasses
    that declare them (annotate, captions, served generation, server scoring); a counter a summary does not declare
    is left alone."""

    def count_usage(self, http_retries: int = 0, tokens_in: int | None = 0, tokens_out: int | None = 0,
                    cost_usd: float | None = None) -> None:
        """Add one answer's usage."""
        for name, value in (("http_retries", http_retries), ("tokens_in", tokens_in), ("tokens_out", tokens_out),
                            ("cost_usd", cost_usd)):
            if value and hasattr(self, name):
                setattr(self, name, getattr(self, name) + value)

    def count_answer(self, answer: Any) -> None:
        """Add the usage of an answer that carries it (a :class:`Completion`, a scored prompt, a generation)."""
        self.count_usage(getattr(answer, "http_retries", 0), getattr(answer, "tokens_in", 0),
                         getattr(answer, "tokens_out", 0), getattr(answer, "cost_usd", None))


class TeacherError(MulcotError):
    """A request failed for good (after the HTTP retries), or the endpoint refused it. ``kind`` says how:
    ``refused`` (a 4xx other than 408/409/429), ``status`` (5xx, 408, 409), ``rate`` (429), ``timeout`` or
    ``connection`` (no answer at all: the server is down or unreachable)."""

    def __init__(self, message: str, kind: str = "refused", retries: int = 0):
        super().__init__(message)
        self.kind = kind
        self.retries = retries  # HTTP retries made before giving up


class TeacherUnreachable(MulcotError):
    """Nothing answers at the teacher's endpoint (checked before a run starts, or every request of a run failed to
    connect): the run stops at once instead of retrying every sample."""


class BudgetReached(Exception):
    """No further request fits into the budget."""


class Budget:
    """A spending limit in USD shared by concurrent requests: each reserves its estimated cost (at least the
    largest cost seen so far) before it is sent and settles the real cost when it returns."""

    def __init__(self, limit: float | None):
        self.limit = limit
        self.spent = 0.0
        self.reserved = 0.0
        self.largest = 0.0

    def reserve(self, estimate: float) -> float:
        """Reserve room for one request; raises :class:`BudgetReached` when it could exceed the limit."""
        if self.limit is None:
            return 0.0
        guess = max(self.largest, estimate)
        if self.spent + self.reserved + guess > self.limit:
            raise BudgetReached
        self.reserved += guess
        return guess

    def settle(self, reserved: float, cost: float | None) -> None:
        """Release a reservation and count the request's real cost (None: unknown or not billed)."""
        self.reserved -= reserved
        if cost:
            self.spent += cost
            self.largest = max(self.largest, cost)


def price_for(model: str, override: tuple[float, float] | None = None) -> tuple[float, float] | None:
    """(input, output) USD per 1M tokens for ``model`` (longest known prefix), or None when unknown."""
    if override is not None:
        return override
    name = model.split("/")[-1].lower()
    for known in sorted(PRICES, key=len, reverse=True):
        if name == known or name.startswith(known + "-20"):
            return PRICES[known]
    return None


@dataclass
class TeacherConfig:
    """How to reach the teacher. ``api_key`` is resolved from ``key_env`` when not given and never stored.

    ``key_env`` None: OPENAI_API_KEY for the OpenAI API, no key for any other server (local servers take any).
    A named ``key_env`` goes to another server only when named like an API key (see :func:`key_env_problem`)."""

    model: str
    base_url: str | None = None
    key_env: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 120.0
    http_retries: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    temperature: float | None = None
    max_tokens: int = 1024
    json_mode: bool = False
    image_max_side: int = 280
    price: tuple[float, float] | None = None

    def check(self) -> None:
        """Refuse, in one line, a base URL with a query (``?api-key=`` would be echoed into error messages, and the
        OpenAI client cannot join paths to it) and a key variable that may not go there (see
        :func:`key_env_problem`)."""
        if self.base_url and urlsplit(self.base_url).query:
            found = url_secrets(self.base_url)
            what = " and ".join(found) if found else "a query (?...)"
            raise MulcotError(f"--base-url carries {what}: give the endpoint without a query (e.g. "
                              f"{public_url(self.base_url.split('?')[0])}); a key travels in a header: put it in a "
                              "variable such as MULCOT_TEACHER_KEY and pass --api-key-env NAME")
        if self.key_env is not None and (problem := key_env_problem(self.key_env, self.base_url)):
            raise MulcotError(problem)

    def resolve_key(self) -> str:
        """The key to send: ``api_key``, else ``$key_env`` (see the class doc); checks where it may go first."""
        self.check()
        if self.api_key:
            return self.api_key
        env = self.key_env or (DEFAULT_KEY_ENV if is_openai(self.base_url) else None)
        key = os.environ.get(env) if env else None
        if key:
            return key
        if not is_openai(self.base_url):  # local servers (vLLM, llama.cpp, Ollama) take any key
            return "not-needed"
        raise MulcotError(
            f"no API key: set {env} (or pass --api-key-env NAME, or --base-url for a local server)"
        )

    def public(self) -> dict[str, Any]:
        """The configuration as stored with a run: everything but the key, the base URL without credentials."""
        data = asdict(self)
        data.pop("api_key")
        data["base_url"] = public_url(self.base_url)
        return data


@dataclass
class Completion:
    """One successful chat completion."""

    text: str
    tokens_in: int
    tokens_out: int
    latency_s: float
    http_retries: int
    cost_usd: float | None
    finish_reason: str | None = None


@dataclass
class Scored:
    """One scored prompt: the completions endpoint's ``logprobs`` object (``tokens``, ``token_logprobs``,
    ``top_logprobs``) over the echoed prompt and one generated token."""

    logprobs: dict[str, Any]
    tokens_in: int
    tokens_out: int
    latency_s: float
    http_retries: int


def _usage(resp: Any) -> tuple[int, int]:
    usage = getattr(resp, "usage", None)
    return (usage.prompt_tokens or 0, usage.completion_tokens or 0) if usage else (0, 0)


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class Teacher:
    """Async access to one teacher model."""

    def __init__(self, config: TeacherConfig, client: Any = None, *, connect: bool = True,
                 price: tuple[float, float] | None = None):
        """``connect=False``: no client (building request bodies only, e.g. for batch files); ``price`` overrides
        the live price (batch prices)."""
        import openai

        self.config = config
        self._openai = openai
        self.client = client
        if client is None and connect:
            self.client = openai.AsyncOpenAI(
                api_key=config.resolve_key(), base_url=config.base_url, timeout=config.timeout_s, max_retries=0
            )
        self.price = price or price_for(config.model, config.price)

    def cost(self, tokens_in: int, tokens_out: int) -> float | None:
        if self.price is None:
            return None
        return (tokens_in * self.price[0] + tokens_out * self.price[1]) / 1e6

    def estimate(self, prompt: str) -> float:
        """A guess at one request's cost before it is made (0 when the price is unknown)."""
        return self.cost(len(prompt) // 3 + 300, self.config.max_tokens) or 0.0

    def request_body(self, prompt: str, image_url: str | None = None) -> dict[str, Any]:
        """The chat-completions request body for one prompt (and image): what a live request sends and what a batch
        file line carries as ``body``."""
        body: dict[str, Any] = {"model": self.config.model, "messages": self.messages(prompt, image_url),
                                "max_tokens": self.config.max_tokens}
        if self.config.temperature is not None:
            body["temperature"] = self.config.temperature
        if self.config.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    def messages(self, prompt: str, image_url: str | None) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = []
        if image_url:
            content.append({"type": "image_url", "image_url": {"url": image_url}})
        content.append({"type": "text", "text": prompt})
        return [{"role": "user", "content": content}]

    def _backoff(self, attempt: int) -> float:
        delay = min(self.config.backoff_max_s, self.config.backoff_base_s * 2**attempt)
        return delay * (0.5 + random.random() / 2)

    async def models(self) -> list[str]:
        """The model names the endpoint serves (``GET /models``); raises :class:`TeacherError` (kind
        ``connection`` when nothing answers)."""
        return list(await self.model_owners())

    async def model_owners(self) -> dict[str, str]:
        """``{name: owned_by}`` of ``GET /models`` (vLLM says ``vllm``, llama-cpp-python ``me``)."""
        oa = self._openai
        try:
            page = await self.client.models.list()
        except oa.APIStatusError as exc:
            raise TeacherError(f"HTTP {exc.status_code} {_short(exc.message)}", "refused") from None
        except oa.APITimeoutError:
            raise TeacherError(f"timed out after {self.config.timeout_s:g} s", "timeout") from None
        except oa.APIConnectionError as exc:
            raise TeacherError(f"connection failed ({_short(str(exc.__cause__ or exc))})", "connection") from None
        return {m.id: str(getattr(m, "owned_by", "") or "") for m in page.data}

    async def probe(self, timeout_s: float = 10.0) -> None:
        """Fail fast where nothing answers: one ``GET /models`` without retries. Raises :class:`TeacherError` (kind
        ``connection`` or ``timeout``) when no answer comes; any answer, even an error status (a server without
        ``/models``), passes."""
        oa = self._openai
        try:
            await self.client.with_options(timeout=timeout_s, max_retries=0).models.list()
        except oa.APITimeoutError:
            raise TeacherError(f"no answer within {timeout_s:g} s", "timeout") from None
        except oa.APIConnectionError as exc:
            raise TeacherError(f"connection failed ({_short(str(exc.__cause__ or exc))})", "connection") from None
        except Exception:  # noqa: BLE001 - it answered (404, 401, a body that is no model list): it is there
            return

    async def check_reachable(self, timeout_s: float = 10.0) -> None:
        """Raise :class:`TeacherUnreachable` (one line) when :meth:`probe` gets no answer."""
        try:
            await self.probe(timeout_s)
        except TeacherError as exc:
            hint = "is the server running? check --base-url" if self.config.base_url else "check the network"
            raise TeacherUnreachable(f"nothing answers at {self.where()}: {exc}; {hint}") from None

    def where(self) -> str:
        """The endpoint in words, without credentials: its URL, or "the OpenAI API"."""
        return public_url(self.config.base_url) if self.config.base_url else "the OpenAI API"

    async def complete(self, prompt: str, image_url: str | None = None, *, max_tokens: int | None = None,
                       params: dict[str, Any] | None = None) -> Completion:
        """One chat completion, retrying transient HTTP failures; raises :class:`TeacherError` when it gives up.
        ``max_tokens`` overrides the configured limit; ``params`` are further request fields (sampling settings a
        server understands: ``temperature``, ``top_k``, ``seed``, ...) sent as they are."""
        # The messages travel as extra_body: the SDK would otherwise walk the whole payload, base64 image included,
        # through its typed transform (~8 ms of CPU per request, the largest cost of a request on our side).
        kwargs = self.request_body(prompt, image_url)
        kwargs["extra_body"] = {"messages": kwargs.pop("messages"), **(params or {})}
        kwargs["messages"] = []
        if max_tokens:
            kwargs["max_tokens"] = max_tokens
        resp, retries, latency = await self._with_retries(self.client.chat.completions.create, kwargs)
        choice = resp.choices[0] if resp.choices else None
        t_in, t_out = _usage(resp)
        return Completion(text=(choice.message.content or "") if choice else "", tokens_in=t_in, tokens_out=t_out,
                          latency_s=latency, http_retries=retries, cost_usd=self.cost(t_in, t_out),
                          finish_reason=choice.finish_reason if choice else None)

    async def score(self, prompt: str | list[int], top_logprobs: int,
                    params: dict[str, Any] | None = None) -> Scored:
        """The prompt's own token log-probs (top ``top_logprobs`` per position) through the legacy completions
        endpoint: ``echo`` the prompt (text, or token ids where the server takes them), ``logprobs=k``, one generated
        token. ``params`` are further request fields
        (vLLM's ``return_tokens_as_token_ids``). Same retries as :meth:`complete`."""
        kwargs: dict[str, Any] = {"model": self.config.model, "prompt": prompt, "max_tokens": 1, "echo": True,
                                  "logprobs": top_logprobs, "temperature": 0.0}
        if params:
            kwargs["extra_body"] = dict(params)
        resp, retries, latency = await self._with_retries(self.client.completions.create, kwargs)
        choice = resp.choices[0] if resp.choices else None
        logprobs = getattr(choice, "logprobs", None) if choice is not None else None
        if logprobs is None:
            raise TeacherError("the server answered without log-probs (does it support echo with logprobs?)")
        t_in, t_out = _usage(resp)
        return Scored(logprobs=logprobs.model_dump() if hasattr(logprobs, "model_dump") else dict(logprobs),
                      tokens_in=t_in, tokens_out=t_out, latency_s=latency, http_retries=retries)

    async def _with_retries(self, create: Any, kwargs: dict[str, Any]) -> tuple[Any, int, float]:
        """``await create(**kwargs)`` until it answers: 429 waits (``Retry-After``), 5xx/timeouts/drops back off;
        other 4xx refuse at once. Returns (response, retries, latency of the last try)."""
        oa = self._openai
        retries = 0
        while True:
            start = time.perf_counter()
            resp: Any = None
            try:
                resp = await create(**kwargs)
            except oa.RateLimitError as exc:
                wait = _retry_after(exc)
                reason, kind = "HTTP 429 rate limited", "rate"
                wait = self._backoff(retries) if wait is None else min(wait, self.config.backoff_max_s)
            except oa.APIStatusError as exc:
                if exc.status_code < 500 and exc.status_code not in (408, 409):
                    raise TeacherError(f"the teacher endpoint refused the request: HTTP {exc.status_code} "
                                       f"{_short(exc.message)}") from None
                reason, kind, wait = f"HTTP {exc.status_code}", "status", self._backoff(retries)
            except oa.APITimeoutError:
                reason, kind = f"timed out after {self.config.timeout_s:g} s", "timeout"
                wait = self._backoff(retries)
            except oa.APIConnectionError as exc:
                reason, kind = f"connection failed ({_short(str(exc.__cause__ or exc))})", "connection"
                wait = self._backoff(retries)
            else:
                if not hasattr(resp, "choices"):  # a 200 whose body is not a completion (the SDK hands back text)
                    reason, kind = f"malformed answer ({_short(str(resp), 60)!r})", "status"
                    resp, wait = None, self._backoff(retries)
            if resp is not None:
                return resp, retries, time.perf_counter() - start
            if retries >= self.config.http_retries:
                raise TeacherError(f"{reason}; gave up after {retries + 1} tries", kind, retries)
            retries += 1
            await asyncio.sleep(wait)

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.close()


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
