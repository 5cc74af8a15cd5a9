"""The assistant's top-k soft labels read from an OpenAI-compatible server (``distill --soft-labels server``), so a
large assistant never has to sit beside the student: the server scores every training sequence (its prompt
log-probs) and the same top-k cache as in-process is written (:mod:`mulcot.train.soft_labels.cache`).

One request per sequence through the completions endpoint: the rendered sequence as the prompt, ``echo``,
``logprobs=k``, one generated token. Two servers give prompt log-probs, each in its own dialect (told apart by
``owned_by`` in ``/v1/models``):

- **vLLM** (``vllm``): asked for ``return_tokens_as_token_ids``, its keys are ``token_id:N`` — exact ids — and entry
  *j* is the distribution that predicts token *j* (OpenAI's convention). k is capped by the server's
  ``--max-logprobs`` (default 20).
- **llama-cpp-python** (``me``; its default ``logits_all``): keys are token *texts* (llama.cpp pieces, special
  tokens as ""), and entry *j* is the distribution *after* token *j* (it pairs each prompt token with the next
  position's distribution); when the prompt starts with the BOS token that token is left out of the echo and the
  pairing shifts by one, and every other token equal to BOS is left out too (SmolLM2's BOS is ``<|im_start|>``).
  Texts map back to ids through the student's
  tokenizer; a text several ids share (control tokens such as ``<|im_end|>``, partial UTF-8 bytes) cannot be
  mapped and is dropped, so k+margin entries are asked for and the top k of the mapped ones kept. A position where
  a dropped entry ranked inside the top k is counted as *inexact* (see :class:`ScoreStats`). It takes no images:
  sequences are scored as text (``--server-text-only``: captions stand for images).

Each answer is checked against the student's own tokenization of the sequence (same tokens, no added BOS): a
server that tokenizes differently is refused in one line rather than cached misaligned. llama.cpp's own
``llama-server`` returns no prompt log-probs and is refused.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mulcot.core.client import Usage
from mulcot.core.inputs import TrainItem
from mulcot.errors import MulcotError
from mulcot.events import Progress
from mulcot.generation.server import Job, ServerConfig, ServerError, check_server, generate, public_url
from mulcot.train.config import DistillConfig
from mulcot.train.losses import prediction_mask
from mulcot.train.soft_labels.base import TopKSource, check_tokenizers, item_key

VLLM, LLAMA_CPP_PYTHON = "vllm", "llama-cpp-python"
SERVERS = {"vllm": VLLM, "me": LLAMA_CPP_PYTHON}
MARGIN = 8  # llama-cpp-python: extra entries asked for, to make up for texts that map to no single id
PAD_LOGPROB = -1.0e4  # a padded entry: no mass (exp underflows to 0), finite so the KL stays finite
ID_PREFIX = "token_id:"


class ServerScoreError(MulcotError):
    """The server's answer cannot be used as soft labels (other tokens, an added BOS, a misaligned answer)."""


@dataclass
class ScoreStats(Usage):
    """What scoring did: sequences and positions scored, positions whose top k is inexact (llama-cpp-python: an
    entry whose text maps to no single id ranked inside the top k) or padded (fewer than k mapped entries)."""

    server: str = ""
    kind: str = ""
    sequences: int = 0
    positions: int = 0
    inexact_positions: int = 0
    padded_positions: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    http_retries: int = 0
    tokens_in: int = 0
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def server_kind(owners: dict[str, str], config: ServerConfig) -> str:
    """The dialect of the server serving ``config.served_model`` (from ``/v1/models``' ``owned_by``)."""
    owner = owners.get(config.served_model, "")
    kind = SERVERS.get(owner)
    if kind is None:
        raise ServerError(
            f"the server at {public_url(config.url)} ({owner or 'unknown'}) cannot give prompt log-probs for soft "
            "labels: serve the assistant with vLLM (vllm serve … --max-logprobs K) or llama-cpp-python "
            "(python -m llama_cpp.server); llama.cpp's llama-server has no prompt log-probs"
        )
    return kind


class PieceIds:
    """Token text → id for llama-cpp-python's text-keyed log-probs: llama.cpp's piece of each id (control tokens
    as "", bytes decoded as UTF-8 ignoring errors), built from the student's tokenizer; None where ids share one."""

    def __init__(self, tokenizer: Any):
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        byte_of = {c: b for b, c in bytes_to_unicode().items()}
        # control tokens: special ones, and those llama.cpp's converter takes for special by their look (<|…|>)
        special = {i for i, t in tokenizer.added_tokens_decoder.items()
                   if t.special or (t.content.startswith("<|") and t.content.endswith("|>"))}
        added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
        self.piece: dict[int, str] = {}
        for tok, i in tokenizer.get_vocab().items():
            if i in special:
                text = ""
            elif i in added:
                text = added[i]
            elif all(c in byte_of for c in tok):  # byte-level BPE (Qwen, SmolLM2): the token is its bytes
                text = bytes(byte_of[c] for c in tok).decode("utf-8", errors="ignore")
            else:
                text = tokenizer.convert_tokens_to_string([tok])
            self.piece[i] = text
        self.bos: int | None = tokenizer.bos_token_id
        self.ids: dict[str, int | None] = {}
        for i, text in self.piece.items():
            self.ids[text] = None if text in self.ids else i

    def id_of(self, text: str) -> int | None:
        return self.ids.get(text)


@dataclass
class Sequence:
    """One training sequence to score: its cache key, text, token ids and target positions (the logits the
    losses use: position p predicts token p+1)."""

    key: str
    text: str
    ids: list[int]
    positions: list[int]


def sequence(collator: Any, item: TrainItem, task: int, key: str) -> Sequence:
    """The sequence the student trains on (text-only rendering when the collator is text-only)."""
    batch = collator([item], (task,))
    ids = batch["input_ids"][0].tolist()
    positions = prediction_mask(batch["labels"])[0].nonzero().flatten().tolist()
    return Sequence(key=key, text=collator.text(item, task), ids=ids, positions=positions)


def top_k_rows(kind: str, logprobs: dict[str, Any], seq: Sequence, top_k: int, pieces: PieceIds | None,
               tokens_in: int, stats: ScoreStats) -> tuple[Any, Any]:
    """The cache rows of one scored sequence: ([positions, k] ids int32, [positions, k] log-probs float32)."""
    import torch

    tokens, tops = logprobs.get("tokens") or [], logprobs.get("top_logprobs") or []
    n = len(seq.ids)
    if len(tops) < len(tokens):
        raise ServerScoreError(f"{seq.key}: the server gave {len(tops)} top log-probs for {len(tokens)} tokens")
    if kind == VLLM:
        if len(tokens) < n:
            raise ServerScoreError(f"{seq.key}: the server echoed {len(tokens)} tokens of a {n}-token sequence")
        got = [_token_id(t, seq.key) for t in tokens[:n]]
        if got != seq.ids:
            raise ServerScoreError(_differs(seq, got))
        entry_of = {p: p + 1 for p in seq.positions}  # entry j is the distribution that predicts token j
    else:
        if tokens_in and tokens_in != n:
            raise ServerScoreError(
                f"{seq.key}: the server read {tokens_in} prompt tokens where the student's tokenizer makes {n} "
                "(it adds a BOS token, or tokenizes otherwise): serve a GGUF converted from the student's tokenizer"
            )
        # llama-cpp-python pairs echoed token first+i with the distribution after prompt token i, where first = 1
        # when the prompt starts with its BOS token (dropped from the echo), and leaves out every token equal to
        # BOS (SmolLM2's BOS is <|im_start|>): entry r holds the distribution after prompt token echoed[r]
        bos = pieces.bos  # type: ignore[union-attr]
        first = int(bos is not None and seq.ids[0] == bos)
        echoed = [i for i in range(n - first) if seq.ids[i + first] != bos]
        expected = [pieces.piece.get(seq.ids[i + first], "") for i in echoed]  # type: ignore[union-attr]
        if tokens[: len(echoed)] != expected:
            raise ServerScoreError(_differs(seq, tokens[: len(echoed)], expected))
        entry_of = {i: r for r, i in enumerate(echoed)}
    ids_rows, lp_rows = [], []
    for p in seq.positions:
        r = entry_of.get(p)
        entry = tops[r] if r is not None and r < len(tops) else None
        if not entry:
            raise ServerScoreError(f"{seq.key}: the server gave no log-probs after position {p}")
        ranked = sorted(entry.items(), key=lambda kv: -kv[1])
        kept: dict[int, float] = {}
        inexact = False
        for text, lp in ranked:
            i = _token_id(text, seq.key) if kind == VLLM else pieces.id_of(text)  # type: ignore[union-attr]
            if i is None:
                inexact = inexact or len(kept) < top_k
                continue
            if i not in kept:
                kept[i] = float(lp)
            if len(kept) == top_k:
                break
        stats.inexact_positions += inexact
        row = list(kept.items())
        if len(row) < top_k:
            stats.padded_positions += 1
            present = set(kept)
            fill = (i for i in range(top_k + len(present)) if i not in present)
            row += [(next(fill), PAD_LOGPROB) for _ in range(top_k - len(row))]
        ids_rows.append([i for i, _ in row])
        lp_rows.append([v for _, v in row])
    stats.positions += len(seq.positions)
    return torch.tensor(ids_rows, dtype=torch.int32), torch.tensor(lp_rows, dtype=torch.float32)


def _token_id(text: str, key: str) -> int:
    if not text.startswith(ID_PREFIX):
        raise ServerScoreError(f"{key}: the server keyed its log-probs by text ('{text}'), not by token id: it "
                               "ignores return_tokens_as_token_ids (vLLM ≥ 0.6 needed)")
    return int(text[len(ID_PREFIX) :])


def _differs(seq: Sequence, got: list, expected: list | None = None) -> str:
    want = expected if expected is not None else seq.ids
    at = next((j for j, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    return (f"{seq.key}: the server tokenized the sequence otherwise than the student's tokenizer (token {at}: "
            f"{got[at] if at < len(got) else 'end'!r} vs {want[at] if at < len(want) else 'end'!r}): serve the "
            "assistant with the student's tokenizer (the same family)")


class ServerScorer:
    """Scores training sequences through the server: ``scorer(jobs)`` gives (key, ids, log-probs) per job (None
    for a job that failed; the reasons are kept) — the ``compute`` of
    :func:`mulcot.train.soft_labels.cache.build_soft_label_cache`."""

    def __init__(self, config: ServerConfig, collator: Any, tokenizer: Any, top_k: int,
                 progress: Progress | None = None):
        self.config, self.collator, self.top_k, self.progress = config, collator, top_k, progress
        self.kind = server_kind(check_server(config), config)
        self.pieces = PieceIds(tokenizer) if self.kind == LLAMA_CPP_PYTHON else None
        self.stats = ScoreStats(server=public_url(config.url), kind=self.kind)
        self.dead: ServerError | None = None
        self.refused: ServerScoreError | None = None
        self._key = item_key

    def __call__(self, jobs: list[tuple[TrainItem, int]]) -> list[tuple[str, Any, Any] | None]:
        if self.dead is not None or self.refused is not None:
            return [None] * len(jobs)
        seqs = [sequence(self.collator, item, task, self._key(item, task)) for item, task in jobs]
        results: dict[int, tuple[str, Any, Any]] = {}
        k_asked = self.top_k + (MARGIN if self.kind == LLAMA_CPP_PYTHON else 0)
        vllm = self.kind == VLLM

        async def request(client: Any, job: Job, url: str | None) -> Any:
            # vLLM takes the token ids themselves; llama-cpp-python's server only text (checked token by token)
            if vllm:
                return await client.score(seqs[job.tag].ids, k_asked, {"return_tokens_as_token_ids": True})
            return await client.score(job.prompt, k_asked)

        def on_answer(job: Job, scored: Any) -> None:
            seq = seqs[job.tag]
            try:
                ids, lps = top_k_rows(self.kind, scored.logprobs, seq, self.top_k, self.pieces, scored.tokens_in,
                                      self.stats)
            except ServerScoreError as err:
                self.refused = self.refused or err
                return
            results[job.tag] = (seq.key, ids, lps)
            self.stats.sequences += 1
            self.stats.count_usage(scored.http_retries, scored.tokens_in)

        todo = [Job(sample_id=item.sample_id, prompt=seqs[j].text, max_tokens=1, tag=j, name=seqs[j].key)
                for j, (item, _) in enumerate(jobs)]
        try:
            summary = generate(self.config, todo, on_answer, request=request, stage="soft_labels",
                               stop=lambda: self.refused is not None)
        except ServerError as err:
            self.dead = err
        else:
            self.stats.failed += summary.failed
            self.stats.failures += summary.failures
            self.stats.wall_s += summary.wall_s
            if summary.stopped:
                self.dead = ServerError(f"stopped at the --{summary.stopped} budget")
        return [results.get(j) for j in range(len(jobs))]

    def check(self, missing: int) -> None:
        """Raise, in one line, why ``missing`` sequences have no soft labels (the cache keeps the rest). Under a
        launcher every rank calls it (``missing`` is counted over the gathered results): the reason is the first
        rank's that has one."""
        if not missing:
            return
        from mulcot.train import distributed as dist

        mine = self.refused or self.dead or (self.stats.failures[0] if self.stats.failures else None)
        why = next((r for r in dist.gather(str(mine) if mine else "") if r), "no reason given")
        if self.kind == VLLM and "logprob" in why.lower():
            why += "; vLLM caps k at its --max-logprobs (default 20): restart it with --max-logprobs K or lower --top-k"
        raise MulcotError(f"{missing} training sequences have no soft labels from the server ({why}); the scored "
                          "ones are cached: fix it and rerun distill with --resume to score the rest")

    def write_stats(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "server.json").write_text(json.dumps(self.stats.as_dict(), indent=2) + "\n")


class ServerSource(TopKSource):
    """``server``: the assistant's top-k from the server that serves it, scored once and cached like ``cache``. The
    assistant's tokenizer is read (not its weights) to check it is the student's; sequences are rendered as text
    (the completions endpoint takes no images)."""

    mode = "server"

    @classmethod
    def check_settings(cls, config: DistillConfig) -> None:
        """--server and --served-model are needed, and a URL without credentials (the key comes from
        MULCOT_SERVER_KEY)."""
        from mulcot.core.keys import url_secrets

        if not config.server or not config.served_model:
            raise MulcotError("--soft-labels server needs --server URL and --served-model NAME (the assistant as the "
                              "server serves it)")
        if not config.server.startswith(("http://", "https://")):
            raise MulcotError(f"--server must be an http(s) URL such as http://127.0.0.1:8000/v1, not "
                              f"'{config.server}'")
        if found := url_secrets(config.server):
            raise MulcotError(f"--server must not carry credentials (it has {' and '.join(found)}; they would be "
                              "stored with the run): put the key in MULCOT_SERVER_KEY")

    @classmethod
    def check_items(cls, config: DistillConfig, items: list[TrainItem]) -> None:
        """A vision-language run with images must say it accepts soft labels over the text-only rendering; the
        server must be reachable, serve the assistant and give prompt log-probs."""
        from mulcot.models.loading import is_text_family, model_family

        if not config.server_text_only and not is_text_family(model_family(config.model)):
            with_image = sum(i.image_path is not None for i in items)
            if with_image:
                raise MulcotError(
                    f"--soft-labels server scores text only (the completions endpoint takes no images), but "
                    f"{with_image} training items have an image: pass --server-text-only to accept soft labels over "
                    "the text with captions for images, or use --soft-labels cache"
                )
        server_kind(check_server(config.server_config()), config.server_config())

    def prepare(self, student_processor: Any, collator: Any, folder: Path) -> None:
        from mulcot.models.loading import model_family
        from mulcot.models.processor import load_processor
        from mulcot.train import distributed as dist
        from mulcot.train.collator import MultiTaskCollator
        from mulcot.train.soft_labels.cache import build_soft_label_cache

        try:
            processor = load_processor(self.ref.base_model, model_family(self.ref.base_model))
        except (OSError, ValueError) as err:
            raise MulcotError(f"cannot read the assistant's tokenizer ({self.ref.base_model}): {err}") from None
        check_tokenizers(processor.tokenizer, student_processor.tokenizer, self.ref.base_model, self.config.model)
        text_collator = MultiTaskCollator(student_processor, collator.task, max_pixels=collator.max_pixels,
                                          text_only=True)
        scorer = ServerScorer(self.config.server_config(), text_collator, student_processor.tokenizer,
                              self.config.top_k, self.progress)
        self.cache, missing = build_soft_label_cache(self.store, self.config.name, folder / "soft_labels", scorer,
                                                     self.items, self.progress, self.source)
        if dist.is_main():
            scorer.write_stats(folder / "soft_labels")
        self.stats = scorer.stats.as_dict()
        scorer.check(missing)
