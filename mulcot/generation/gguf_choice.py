"""Forced-choice label scoring on a GGUF through llama-cpp-python (:meth:`GGUFBackend.score_labels
<mulcot.generation.gguf.GGUFBackend.score_labels>`): what :mod:`mulcot.generation.choice` computes with
transformers, computed by llama.cpp on the exported file.

Each post's label prompt is rendered exactly as the GGUF backend's generation renders it — the GGUF's own chat
template (``tokenizer.chat_template``), through llama-cpp-python's Jinja renderer, one user message (with the
image's media marker first when a vision projector reads an image) and the generation prompt — followed by
``"Prediction": "``, a label, the closing quote and the end-of-turn token (read off the template: the first control
token after an assistant answer). The three texts are tokenized with the GGUF's vocabulary (text: as the chat
handler tokenizes, no BOS added by hand; with a projector: by mtmd, into text and image chunks, as
``MTMDChatHandler`` does) and :func:`~mulcot.generation.choice.scored_span` gives their common prefix and each
label's continuation.

The common prefix is evaluated once (the image encoded once per post); for text prompts the KV cache of the
previous post's prefix is kept as far as the tokens agree (the chat template's system turn and the instructions).
Each continuation but its last token is then evaluated in one batch with logits at every position; a label's score
is the log-softmax of the prefix's last logits at its first token plus that of each continuation position at the
next token (float64 sums), and the probabilities their softmax (:func:`~mulcot.generation.choice.normalise`).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import numpy as np

from mulcot.core.images import load_image, png_bytes
from mulcot.core.labels import LABELS
from mulcot.core.prompts import get_prompt, image_as_text
from mulcot.generation.base import LabelScoringError, Post
from mulcot.generation.choice import ANSWER_PREFIX, ANSWER_SUFFIX, LabelChoice, choice_from_scores, scored_span

_PROBE_USER, _PROBE_ANSWER = "mulcot-probe-user", "mulcot-probe-answer"


def log_softmax(rows: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    rows = rows.astype(np.float64)
    top = rows.max(axis=-1, keepdims=True)
    return rows - top - np.log(np.exp(rows - top).sum(axis=-1, keepdims=True))


class GGUFScorer:
    """Scores label answers on a loaded :class:`~mulcot.generation.gguf.GGUFBackend` (see the module doc)."""

    def __init__(self, backend: Any):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.backend, self.llm, self.lib = backend, backend.llm, backend._llama_cpp
        self.handler = backend.handler
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise LabelScoringError(f"{backend.name} has no chat template in its metadata: forced choice renders the "
                                    "label prompt with it (pass --label-scoring generate)")
        if self.handler is None and self.llm.chat_format != "chat_template.default":
            raise LabelScoringError(f"{backend.name}: llama-cpp-python chose its built-in '{self.llm.chat_format}' "
                                    "chat format, not the GGUF's template: pass --label-scoring generate")
        eos, bos = self.llm.token_eos(), self.llm.token_bos()
        if self.handler is not None:  # as MTMDChatHandler fills them in
            def piece(t: int) -> str:
                return self.llm.detokenize([t]).decode("utf-8", errors="ignore") if t != -1 else ""
        else:  # as Llama's own chat_template.default handler fills them in
            def piece(t: int) -> str:
                return self.llm._model.token_get_text(t) if t != -1 else ""
        tokens = {"template": template, "eos_token": piece(eos), "bos_token": piece(bos)}
        self.render = Jinja2ChatFormatter(**tokens)
        self.render_turn = Jinja2ChatFormatter(**tokens, add_generation_prompt=False)
        self.eot = self._end_of_turn()
        self.eot_text = backend.token_bytes([self.eot], special=True).decode("utf-8", errors="replace")
        self.cached: list[int] = []  # the text tokens whose KV cache this scorer left in the context

    def _end_of_turn(self) -> int:
        """The token that ends an assistant turn: the first control (or end-of-generation) token the template puts
        after an assistant answer; else the end-of-sequence token."""
        full = self.render_turn(messages=[{"role": "user", "content": _PROBE_USER},
                                          {"role": "assistant", "content": _PROBE_ANSWER}]).prompt
        after = full[full.index(_PROBE_ANSWER) + len(_PROBE_ANSWER) :] if _PROBE_ANSWER in full else ""
        vocab = self.lib.llama_model_get_vocab(self.llm.model)
        for t in self.llm.tokenize(after.encode("utf-8"), add_bos=False, special=True):
            if self.lib.llama_vocab_is_control(vocab, t) or self.lib.llama_vocab_is_eog(vocab, t):
                return int(t)
        eos = self.llm.token_eos()
        if eos == -1:
            raise LabelScoringError(f"{self.backend.name}: the chat template ends an assistant turn with no special "
                                    "token: cannot score the label answers")
        return int(eos)

    def prompt_text(self, post: Post, task: str, with_image: bool) -> str:
        """The label prompt as generation renders it, followed by ``"Prediction": "``."""
        text = get_prompt("label", task).render(post.text, post.aspect)
        if self.backend.text_only:
            text = image_as_text(text, post.caption)
        if self.handler is None:
            content: Any = text
        else:
            marker = self.handler._mtmd_cpp.mtmd_default_marker().decode("utf-8")
            content = ([{"type": "text", "text": marker}] if with_image else []) + [{"type": "text", "text": text}]
        return self.render(messages=[{"role": "user", "content": content}]).prompt + ANSWER_PREFIX

    def score(self, posts: Sequence[Post], task: str) -> list[LabelChoice]:
        out = []
        for i, post in enumerate(posts):
            image = None
            if post.image is not None:
                if self.handler is None:
                    raise LabelScoringError(f"{self.backend.name} has no vision projector loaded, so it cannot read "
                                            "images: pass --mmproj FILE or leave out the image")
                image = load_image(post.image, self.backend.config.max_pixels, self.backend.config.image_max_side)
            prompt = self.prompt_text(post, task, image is not None)
            texts = [prompt + label + ANSWER_SUFFIX + self.eot_text for label in LABELS]
            if self.handler is None:
                log_probs, tokens = self._score_text(texts)
            else:
                log_probs, tokens = self._score_chunks(texts, image)
            out.append(choice_from_scores(i, log_probs, tokens))
        return out

    # ------------------------------------------------------------------------------------------ text prompts

    def _score_text(self, texts: list[str]) -> tuple[dict[str, float], dict[str, int]]:
        seqs = [self.llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]
        start, ends = scored_span(seqs, self.eot)
        prefix = seqs[0][:start]
        keep = 0
        limit = min(len(self.cached), len(prefix) - 1)  # the prefix's last token is run again for its logits
        while keep < limit and self.cached[keep] == prefix[keep]:
            keep += 1
        self.llm.n_tokens = keep
        self.cached = []
        self.llm.eval(prefix[keep:])
        first = self._last_logits()
        self.cached = list(prefix)
        return self._continuations(start, first, [s[start:end] for s, end in zip(seqs, ends, strict=True)])

    def _last_logits(self) -> np.ndarray:
        n_vocab = self.llm.n_vocab()
        return np.ctypeslib.as_array(self.llm._ctx.get_logits_ith(-1), shape=(n_vocab,)).copy()

    def _decode_all(self, tokens: list[int]) -> np.ndarray:
        """Evaluate ``tokens`` after the context's ``n_tokens`` with logits at every position (rows, vocab)."""
        llm = self.llm
        llm._ctx.kv_cache_seq_rm(-1, llm.n_tokens, -1)
        llm._batch.set_batch(batch=tokens, n_past=llm.n_tokens, logits_all=True)
        llm._ctx.decode(llm._batch)
        n_vocab = llm.n_vocab()
        rows = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(tokens) * n_vocab,))
        llm.n_tokens += len(tokens)
        return rows.reshape(len(tokens), n_vocab).copy()

    def _continuations(self, at: int, first: np.ndarray,
                       conts: list[list[int]]) -> tuple[dict[str, float], dict[str, int]]:
        """Each label's score from the prefix's last logits ``first`` (the prefix evaluated up to position ``at``)
        and its continuation run after it; the context is left at ``at``."""
        first_lp = log_softmax(first[None, :])[0]
        log_probs, tokens = {}, {}
        for label, cont in zip(LABELS, conts, strict=True):
            score = float(first_lp[cont[0]])
            if len(cont) > 1:
                self.llm.n_tokens = at
                lp = log_softmax(self._decode_all(cont[:-1]))
                score += float(sum(lp[t - 1, cont[t]] for t in range(1, len(cont))))
            log_probs[label], tokens[label] = score, len(cont)
        self.llm.n_tokens = at
        return log_probs, tokens

    # ------------------------------------------------------------------------- with a vision projector (mtmd)

    def _score_chunks(self, texts: list[str], image: Any) -> tuple[dict[str, float], dict[str, int]]:
        """The three texts tokenized by mtmd (with the image); every chunk but the last evaluated once (the image
        encoded once), then the last text chunk's common prefix, then the continuations."""
        handler = self.handler
        mtmd = handler._mtmd_cpp
        bitmaps = [handler._create_bitmap_from_bytes(png_bytes(image))] if image is not None else []
        owned: list[Any] = []
        try:
            parsed = []
            for text in texts:
                chunks, items = self._tokenize_chunks(text, bitmaps)
                owned.append(chunks)
                parsed.append(items)
            last = [items[-1][1] for items in parsed]
            if any(items[-1][0] != "text" for items in parsed):
                raise LabelScoringError("the label answers did not end in a text chunk: cannot score them")
            start, ends = scored_span(last, self.eot)
            self.cached = []
            self.llm.reset()
            self.llm._ctx.kv_cache_clear()
            for kind, value in parsed[0][:-1]:
                if kind == "text":
                    self.llm.eval(value)
                else:
                    self._eval_media(value)
            self.llm.eval(last[0][:start])
            first = self._last_logits()
            at = self.llm.n_tokens
            return self._continuations(at, first, [s[start:end] for s, end in zip(last, ends, strict=True)])
        finally:
            for chunks in owned:
                mtmd.mtmd_input_chunks_free(chunks)
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)
            self.llm.reset()  # the context holds an image: nothing of it may be reused as text

    def _tokenize_chunks(self, text: str, bitmaps: list[Any]) -> tuple[Any, list[tuple[str, Any]]]:
        """``text`` (with one media marker per bitmap) as mtmd chunks: ("text", token ids) or ("media", chunk)."""
        handler = self.handler
        mtmd = handler._mtmd_cpp
        raw = text.encode("utf-8")
        inp = mtmd.mtmd_input_text()
        inp.text, inp.text_len, inp.add_special, inp.parse_special = raw, len(raw), True, True
        chunks = mtmd.mtmd_input_chunks_init()
        if chunks is None:
            raise LabelScoringError("mtmd could not allocate input chunks")
        array = (mtmd.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
        if mtmd.mtmd_tokenize(handler.mtmd_ctx, chunks, ctypes.byref(inp), array, len(bitmaps)) != 0:
            mtmd.mtmd_input_chunks_free(chunks)
            raise LabelScoringError("mtmd could not tokenize the label prompt with its image")
        items: list[tuple[str, Any]] = []
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t()
                ptr = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                items.append(("text", [int(ptr[j]) for j in range(n.value)]))
            else:
                items.append(("media", chunk))
        return chunks, items

    def _eval_media(self, chunk: Any) -> None:
        """An image chunk into the context (mtmd encodes it and decodes its embeddings), as MTMDChatHandler does."""
        mtmd, lib = self.handler._mtmd_cpp, self.lib
        new_n_past = lib.llama_pos(0)
        result = mtmd.mtmd_helper_eval_chunk_single(self.handler.mtmd_ctx, self.llm._ctx.ctx, chunk,
                                                    lib.llama_pos(self.llm.n_tokens), lib.llama_seq_id(0),
                                                    self.llm.n_batch, False, ctypes.byref(new_n_past))
        if result != 0:
            raise LabelScoringError(f"llama.cpp could not encode the image (mtmd error {result})")
        self.llm.n_tokens = new_n_past.value
