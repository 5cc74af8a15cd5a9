"""Forced-choice label scoring through a server (:meth:`ServerBackend.score_labels
<mulcot.generation.server.ServerBackend.score_labels>`): the server's prompt log-probabilities of each label's
answer, read through the legacy completions endpoint (``echo``, ``logprobs``, one generated token).

The texts are those of :func:`~mulcot.generation.choice.choice_texts`, rendered with the served model's own
processor (``tokenizer``: the served run's base model or the model folder; text only — the completions endpoint
takes no images, so captions stand for them as with ``--server-text-only``) and tokenized with its tokenizer, which
also gives the scored span (:func:`~mulcot.generation.choice.scored_span`). One request per label and post,
``concurrency`` in flight (a server's prefix cache makes the shared prompt cheap). Two dialects, told apart by
``owned_by`` in ``/v1/models``:

- **vLLM** (``vllm``): the prompt is sent as token ids and the answer asked with ``return_tokens_as_token_ids``;
  entry *j*'s ``token_logprobs`` is log p(token *j* | tokens before it). The echoed ids must equal the sent ones.
- **llama-cpp-python** (``me``): the prompt is sent as text. Its echo leaves out a leading BOS token and every
  other token equal to BOS, and pairs entry *r* with the distribution after the *r*-th prompt token: the log-probs
  are those of the prompt's own tokens only when the prompt starts with BOS (SmolLM2's ``<|im_start|>``); a prompt
  that does not (Qwen's chat template) is refused in one line rather than scored one token off. The server must
  read as many prompt tokens as the local tokenizer makes, and echo the scored tokens' text.

llama.cpp's own ``llama-server`` returns no prompt log-probs (llama.cpp PR #15189 is open) and is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mulcot.core.inputs import TrainItem
from mulcot.core.labels import LABELS
from mulcot.generation.base import LabelScoringError, Post
from mulcot.generation.choice import LabelChoice, choice_from_scores, choice_texts, end_of_turn_id, scored_span

VLLM, LLAMA_CPP_PYTHON = "vllm", "llama-cpp-python"
DIALECTS = {"vllm": VLLM, "me": LLAMA_CPP_PYTHON}
ID_PREFIX = "token_id:"


NO_BOS = ("llama-cpp-python's server pairs prompt log-probs one token off when the prompt does not start with the "
          "BOS token (as this model's chat template does not): serve it with vLLM, score the GGUF in-process (--gguf), "
          "or pass --label-scoring generate")


def dialect_problem(owner: str, tokenizer: str | None) -> str | None:
    """Why a server owned by ``owner`` cannot score label answers for the model ``tokenizer`` names (one line), or
    None (llama-cpp-python: the model's rendered prompt must start with its BOS token; its tokenizer is read)."""
    if owner not in DIALECTS:
        return (f"the server ({owner or 'unknown'}) gives no prompt log-probabilities (llama.cpp's llama-server has "
                "none), so it cannot score label answers by forced choice: pass --label-scoring generate, or serve "
                "the model with vLLM or llama-cpp-python (python -m llama_cpp.server)")
    if tokenizer is None:
        return ("forced choice through a server renders and tokenizes the label answers with the served model's "
                "own tokenizer, and none is known here (eval takes it from --model: a run, a model folder, or an "
                "export with its hf/ folder): pass --label-scoring generate")
    if DIALECTS[owner] == LLAMA_CPP_PYTHON:
        scorer = _processor(tokenizer)
        ids = scorer(text=[scorer.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "x"}]}],
                                                      tokenize=False, add_generation_prompt=True)])["input_ids"][0]
        bos = scorer.tokenizer.bos_token_id
        if bos is None or len(ids) == 0 or int(ids[0]) != bos:
            return NO_BOS
    return None


def _processor(tokenizer: str) -> Any:
    """The model's processor (read once per folder)."""
    from mulcot.models.loading import model_family
    from mulcot.models.processor import load_processor

    if tokenizer not in _PROCESSORS:
        try:
            _PROCESSORS[tokenizer] = load_processor(tokenizer, model_family(tokenizer))
        except (OSError, ValueError) as err:
            raise LabelScoringError(f"cannot read the served model's tokenizer ({tokenizer}): {err}") from None
    return _PROCESSORS[tokenizer]


_PROCESSORS: dict[str, Any] = {}


class ServerLabelScorer:
    """Scores label answers through ``backend``'s server (see the module doc)."""

    def __init__(self, backend: Any, owner: str, tokenizer: str):
        """``backend``: the :class:`~mulcot.generation.server.ServerBackend` whose :meth:`ask` sends the requests."""
        self.backend, self.dialect = backend, DIALECTS[owner]
        self.processor = _processor(tokenizer)
        self.tok = self.processor.tokenizer
        self.eot = end_of_turn_id(self.processor)
        self.bos = self.tok.bos_token_id

    def sequences(self, post: Post, task: str) -> tuple[list[list[int]], list[str], int, list[int]]:
        """The three labels' token ids and texts, and their scored span (start, ends)."""
        item = TrainItem(sample_id=0, text=post.text, aspect=post.aspect, label="", image_path=None, chain=None,
                         caption=post.caption)
        texts = [choice_texts(self.processor, item, task, text_only=True)[label] for label in LABELS]
        ids = [list(self.processor(text=[t])["input_ids"][0]) for t in texts]
        ids = [[int(i) for i in row] for row in ids]
        start, ends = scored_span(ids, self.eot)
        return ids, texts, start, ends

    def score(self, posts: Sequence[Post], task: str) -> list[LabelChoice]:
        if any(p.image is not None for p in posts) and not self.backend.text_only:
            raise LabelScoringError("the completions endpoint takes no images, so forced choice through a server "
                                    "scores text only: pass --server-text-only (captions stand for images) or "
                                    "--label-scoring generate")
        seqs = [self.sequences(p, task) for p in posts]
        scores: dict[tuple[int, int], float] = {}
        problems: list[str] = []
        vllm = self.dialect == VLLM

        async def request(client: Any, tag: tuple[int, int]) -> Any:
            i, k = tag
            if vllm:
                return await client.score(seqs[i][0][k], 1, {"return_tokens_as_token_ids": True})
            return await client.score(seqs[i][1][k], 1)

        def on_answer(tag: tuple[int, int], scored: Any) -> None:
            i, k = tag
            ids, _, start, ends = seqs[i]
            try:
                values = self._token_logprobs(scored, ids[k], start)
                scores[(i, k)] = float(sum(values[start : ends[k]]))
            except LabelScoringError as err:
                problems.append(str(err))

        tags = [(i, k) for i in range(len(posts)) for k in range(len(LABELS))]
        self.backend.ask(tags, request, on_answer, names=[f"post {i + 1} ({LABELS[k]})" for i, k in tags],
                         stage="choice", stop=lambda: bool(problems))
        if problems:
            raise LabelScoringError(problems[0])
        out = []
        for i, (_, _, start, ends) in enumerate(seqs):
            log_probs = {label: scores[(i, k)] for k, label in enumerate(LABELS)}
            tokens = {label: ends[k] - start for k, label in enumerate(LABELS)}
            out.append(choice_from_scores(i, log_probs, tokens))
        return out

    def _token_logprobs(self, scored: Any, ids: list[int], start: int) -> list[float]:
        """Per prompt position p, log p(ids[p] | ids[:p]) from the server's answer (0.0 where it gives none: the
        first token, or a token llama-cpp-python leaves out, never inside the scored span)."""
        lp = scored.logprobs
        tokens, values = lp.get("tokens") or [], lp.get("token_logprobs") or []
        n = len(ids)
        if self.dialect == VLLM:
            got = [int(t[len(ID_PREFIX) :]) if str(t).startswith(ID_PREFIX) else None for t in tokens[:n]]
            if got != ids:
                raise LabelScoringError("the server tokenized the label answer otherwise than the model's tokenizer "
                                        "(or ignores return_tokens_as_token_ids): check --model names the served "
                                        "model")
            return [float(v) if v is not None else 0.0 for v in values[:n]]
        if scored.tokens_in and scored.tokens_in != n:
            raise LabelScoringError(f"the server read {scored.tokens_in} prompt tokens where the model's tokenizer "
                                    f"makes {n}: serve a GGUF converted from this model")
        if self.bos is None or ids[0] != self.bos:
            raise LabelScoringError(NO_BOS)
        positions = [p for p in range(1, n) if ids[p] != self.bos]
        out = [0.0] * n
        for r, p in enumerate(positions):
            if r < len(values) and values[r] is not None:
                out[p] = float(values[r])
        echoed = "".join(str(tokens[r]) for r, p in enumerate(positions) if r < len(tokens) and p >= start)
        expected = self.tok.decode([ids[p] for p in positions if p >= start], skip_special_tokens=True)
        if echoed != expected:
            raise LabelScoringError(f"the server echoed {echoed!r} where the model's tokenizer has {expected!r}: serve "
                                    "a GGUF converted from this model")
        return out
