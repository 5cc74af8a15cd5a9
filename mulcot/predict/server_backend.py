"""The server backend: the student behind an OpenAI-compatible server (llama.cpp's server on the exported GGUF +
mmproj, or vLLM), asked through :mod:`mulcot.serving` with the prompts, pixels and greedy decoding of the GGUF
backend, so its answers equal ``mulcot predict --gguf`` on the same files."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mulcot import serving
from mulcot.predict.config import SOURCE_SERVER, Generated, Post, PredictConfig
from mulcot.prompts import get_prompt, image_as_text


class ServerBackend:
    """A served model, named by the server (``--served-model``); chains are stored with source ``student-server``
    and that name as ``model``."""

    kind = "server"
    source = SOURCE_SERVER

    def __init__(self, server: serving.ServerConfig, config: PredictConfig | None = None):
        self.server = server
        self.config = config or PredictConfig()
        self.text_only = server.text_only
        self.has_vision = not server.text_only
        self.name = server.served_model
        serving.check_server(server)

    def close(self) -> None:
        pass

    def __enter__(self) -> ServerBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def job(self, post: Post, prompt: str, task: str, sample_id: int = 0, name: str = "") -> serving.Job:
        """The request for one post with the ``prompt`` template (``cot`` or ``label``) of ``task``."""
        cfg = self.config
        text = get_prompt(prompt, task).render(post.text, post.aspect)
        if self.text_only:
            text = image_as_text(text, post.caption)
        return serving.Job(sample_id=sample_id, prompt=text, image=None if post.image is None else str(post.image),
                           max_tokens=cfg.label_max_tokens if prompt == "label" else cfg.max_tokens,
                           temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed, max_pixels=cfg.max_pixels,
                           image_max_side=cfg.image_max_side, tag=prompt, name=name)  # fmt: skip

    def generate(self, posts: Sequence[Post], prompt: str, task: str) -> list[Generated]:
        """Answers for ``posts`` (in order), ``server.concurrency`` requests at a time."""
        answers: dict[int, Any] = {}
        jobs = [self.job(post, prompt, task, sample_id=i) for i, post in enumerate(posts)]
        summary = serving.generate(self.server, jobs, lambda job, comp: answers.__setitem__(job.sample_id, comp))
        if summary.failures:
            raise serving.ServerError(summary.failures[0])
        return [generated(answers[i]) for i in range(len(posts))]


def generated(comp: Any) -> Generated:
    """A server's completion as a :class:`~mulcot.predict.config.Generated` (no token ids: servers send text)."""
    return Generated(text=comp.text.strip(), token_ids=None, tokens_in=comp.tokens_in, tokens_out=comp.tokens_out,
                     latency_s=comp.latency_s, finish_reason=comp.finish_reason)  # fmt: skip
