"""The GGUF backend: llama.cpp (llama-cpp-python) on an export's text GGUF and vision projector.

It uses ``llama_cpp.llama_chat_format.MTMDChatHandler`` with the mmproj: it renders the chat template embedded in
the text GGUF (the student's own), so prompts match transformers' token for token (the Qwen2.5-VL-specific handler
drops the newline after ``<|im_start|>assistant`` and drifts). Decoding is greedy at temperature 0 (no repeat
penalty, as transformers), so the two backends give the same tokens for the same image pixels.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mulcot.core.gguf import check_gguf, read_manifest
from mulcot.core.images import load_image, png_data_url
from mulcot.core.prompts import get_prompt, image_as_text
from mulcot.errors import ModelError, MulcotError, NotFoundError
from mulcot.generation.base import SOURCE_GGUF, Backend, Generated, Post, PredictConfig

if TYPE_CHECKING:
    from mulcot.generation.choice import LabelChoice

_LOG_CALLBACK: Any = None
_LOG_TAIL: list[str] = []


def _quiet_mtmd() -> None:
    """Send mtmd's (vision encoder's) log lines to a buffer instead of stderr; warnings and errors are kept for
    error messages."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is not None:
        return
    import ctypes

    import llama_cpp
    import llama_cpp.mtmd_cpp as mtmd

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: Any) -> None:
        if level in (2, 3):  # GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR
            _LOG_TAIL.append(text.decode("utf-8", "replace").strip())
            del _LOG_TAIL[:-20]

    _LOG_CALLBACK = callback
    for name in ("mtmd_log_set", "mtmd_helper_log_set"):
        setter = getattr(mtmd, name, None)
        if setter is not None:
            setter(callback, ctypes.c_void_p(0))


def _last_log() -> str:
    return next((line for line in reversed(_LOG_TAIL) if line), "")


class GGUFBackend(Backend):
    """llama.cpp on a text GGUF, with the vision projector through ``MTMDChatHandler`` when one is given."""

    kind = "gguf"
    source = SOURCE_GGUF

    def __init__(self, model: str | os.PathLike[str], mmproj: str | os.PathLike[str] | None = None,
                 config: PredictConfig | None = None):
        self.config = config or PredictConfig()
        self.model_path = Path(model)
        self.mmproj_path = Path(mmproj) if mmproj is not None else None
        self.info = check_gguf(self.model_path, "text")
        # a text-only backbone (llama, qwen2, qwen3, ...; not qwen2vl/qwen3vl): captions stand for images
        self.text_only = mmproj is None and "vl" not in str(self.info.get("architecture") or "").lower()
        if self.mmproj_path is not None:
            check_gguf(self.mmproj_path, "mmproj")
        self.name = self.model_path.name
        from mulcot.core.refs import trained_inputs

        self.inputs = trained_inputs(self.model_path)  # an export of an ablated run says what it was trained on
        try:
            import llama_cpp
            from llama_cpp.llama_chat_format import MTMDChatHandler
        except ImportError as err:
            raise ModelError("GGUF inference needs llama-cpp-python: pip install llama-cpp-python") from err
        _quiet_mtmd()

        class RecordingLlama(llama_cpp.Llama):
            """Records every token ``generate`` yields (the ids behind the text) and when the first came."""

            recorded: list[int]
            first_token_at: float | None

            def generate(self, tokens: Sequence[int], **kwargs: Any) -> Any:
                self.recorded, self.first_token_at = [], None
                inner = super().generate(tokens, **kwargs)
                sent = None
                while True:
                    try:
                        token = inner.send(sent)
                    except StopIteration:
                        return
                    if self.first_token_at is None:
                        self.first_token_at = time.perf_counter()
                    self.recorded.append(int(token))
                    sent = yield token

        self._llama_cpp = llama_cpp
        threads = self.config.n_threads  # None: llama-cpp-python's defaults
        handler = None
        if self.mmproj_path is not None:
            try:
                handler = MTMDChatHandler(clip_model_path=str(self.mmproj_path), verbose=False)
            except ValueError as err:
                raise ModelError(f"cannot use the vision projector {self.mmproj_path}: {err}") from err
        try:
            self.llm = RecordingLlama(model_path=str(self.model_path), chat_handler=handler, n_ctx=self.config.ctx,
                                      n_threads=threads, n_threads_batch=threads, seed=self.config.seed,
                                      use_mmap=self.config.mmap, verbose=False)
        except (ValueError, RuntimeError, OSError) as err:
            raise ModelError(f"llama.cpp cannot load {self.model_path} (corrupt or unsupported GGUF?): {err}") from err
        self.handler = handler
        init = getattr(handler, "_init_mtmd_context", None)  # llama-cpp-python loads the projector lazily
        if init is not None:
            try:
                init(self.llm)  # load the projector now, so a bad one fails here
            except (ValueError, RuntimeError, OSError) as err:
                self.close()
                detail = _last_log()
                raise ModelError(
                    f"llama.cpp cannot load the vision projector {self.mmproj_path} (corrupt, or not the projector "
                    f"of {self.model_path.name}?){': ' + detail if detail else ''}"
                ) from err
        self._eog = self._eog_ids() if self.config.ignore_eos else []
        self._scorer: Any = None  # the forced-choice scorer (gguf_choice), made on first use

    @classmethod
    def open(cls, *, config: PredictConfig, store: Any = None, gguf: str | os.PathLike[str] | None = None,
             quant: str | None = None, mmproj: str | os.PathLike[str] | None = None,
             **_: Any) -> GGUFBackend:
        """An export folder (its manifest's default GGUF, or ``quant``), an export's name in the store, or a text
        GGUF file; the vision projector beside it unless ``mmproj`` names one."""
        from mulcot.core.refs import resolve

        if gguf is None:
            raise MulcotError("the gguf backend needs --gguf DIR|FILE (an export folder or a text GGUF)")
        ref = resolve(store, gguf, allow=("export", "gguf"), what="GGUF file or export folder")
        text, projector = find_gguf(ref.path or gguf, quant=quant, mmproj=mmproj)
        return cls(text, projector, config)

    @property
    def has_vision(self) -> bool:
        return self.handler is not None

    def _eog_ids(self) -> list[int]:
        vocab = self._llama_cpp.llama_model_get_vocab(self.llm.model)
        return [i for i in range(self.llm.n_vocab()) if self._llama_cpp.llama_vocab_is_eog(vocab, i)]

    def token_bytes(self, ids: Sequence[int], special: bool = False) -> bytes:
        """The bytes of ``ids``. (llama-cpp-python 0.3.36's ``detokenize`` reads each piece into a 32-byte buffer
        and silently drops longer tokens, such as runs of spaces or dashes; this grows the buffer instead.)"""
        import ctypes

        vocab = self._llama_cpp.llama_model_get_vocab(self.llm.model)
        size = 64
        buf = ctypes.create_string_buffer(size)
        out = bytearray()
        for token in ids:
            n = self._llama_cpp.llama_token_to_piece(vocab, int(token), buf, size, 0, special)
            if n < 0:
                size = -n
                buf = ctypes.create_string_buffer(size)
                n = self._llama_cpp.llama_token_to_piece(vocab, int(token), buf, size, 0, special)
            out += buf.raw[: max(n, 0)]
        return bytes(out)

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
            self.llm = None

    def generate_one(self, prompt: str, image: Any = None, max_tokens: int | None = None) -> Generated:
        """Generate for one rendered prompt and an optional PIL image (at most ``max_tokens``, default the
        config's)."""
        cfg = self.config
        limit = max_tokens or cfg.max_tokens
        if image is not None and self.handler is None:
            raise ModelError(
                f"{self.name} has no vision projector (mmproj) loaded, so it cannot read images: export with "
                "`mulcot export` (writes mmproj-*.gguf beside it) or pass --mmproj FILE"
            )
        if self.handler is not None:
            content: Any = [{"type": "text", "text": prompt}]
            if image is not None:
                content.insert(0, {"type": "image_url", "image_url": {"url": png_data_url(image)}})
        else:
            content = prompt
        greedy = cfg.temperature <= 0
        kwargs: dict[str, Any] = {
            "messages": [{"role": "user", "content": content}],
            "max_tokens": limit,
            "temperature": 0.0 if greedy else cfg.temperature,
            "top_p": 1.0 if greedy else cfg.top_p,
            "top_k": 1 if greedy else 0,
            "min_p": 0.0,
            "repeat_penalty": 1.0,
            "seed": cfg.seed,
        }
        if self._eog:
            kwargs["logit_bias"] = {i: float("-inf") for i in self._eog}
        if self._scorer is not None:
            self._scorer.cached = []  # generation reuses the context: the scorer's prefix is no longer there
        start = time.perf_counter()
        try:
            out = self.llm.create_chat_completion(**kwargs)
        except ValueError as err:
            message = str(err)
            if "n_ctx" in message:
                raise ModelError(f"{message}: raise --ctx or lower --max-pixels / --max-tokens") from err
            detail = _last_log()
            raise ModelError(f"llama.cpp failed: {message}{' (' + detail + ')' if detail else ''}") from err
        latency = time.perf_counter() - start
        # llama-cpp-python may go past max_tokens to complete a multi-byte character: keep max_tokens ids, as
        # transformers does
        ids = list(self.llm.recorded)[:limit]
        vocab = self._llama_cpp.llama_model_get_vocab(self.llm.model)
        while ids and self._llama_cpp.llama_vocab_is_eog(vocab, ids[-1]):
            ids.pop()
        # the ids' bytes decoded as transformers does (U+FFFD for broken UTF-8, special tokens left out)
        text = self.token_bytes(ids).decode("utf-8", errors="replace").strip()
        first = self.llm.first_token_at - start if self.llm.first_token_at is not None else None
        return Generated(text=text, token_ids=ids, tokens_in=out["usage"]["prompt_tokens"], tokens_out=len(ids),
                         latency_s=latency, first_token_s=first,
                         finish_reason=out["choices"][0].get("finish_reason"))

    def cannot_score_labels(self, posts: Sequence[Post] = ()) -> str | None:
        if any(p.image is not None for p in posts) and self.handler is None:
            return (f"{self.name} has no vision projector (mmproj) loaded, so it cannot read images: leave out the "
                    "images, or pass --mmproj FILE (`mulcot export` writes mmproj-*.gguf beside it)")
        return None

    def score_labels(self, posts: Sequence[Post], task: str) -> list[LabelChoice]:
        """Forced choice on the GGUF (:mod:`mulcot.generation.gguf_choice`): the label prompt as generation renders
        it, each label's continuation scored by llama.cpp; the common prefix (and the image) evaluated once."""
        from mulcot.generation.gguf_choice import GGUFScorer

        if self._scorer is None:
            self._scorer = GGUFScorer(self)
        return self._scorer.score(posts, task)

    def generate(self, posts: Sequence[Post], prompt: str, task: str) -> list[Generated]:
        template = get_prompt(prompt, task)
        out = []
        for post in posts:
            image = None
            if post.image is not None and self.text_only:
                raise ModelError(f"{self.name} is a text-only model and cannot read images: leave out the image "
                                 "(a text-only backbone reads a caption, if the store has one)")
            if post.image is not None:
                image = load_image(post.image, self.config.max_pixels, self.config.image_max_side)
            limit = self.config.max_tokens_for(prompt)
            text = template.render(post.text, post.aspect)
            if self.text_only:
                text = image_as_text(text, post.caption)
            out.append(self.generate_one(text, image, limit))
        return out


def find_gguf(path: str | os.PathLike[str], *, quant: str | None = None,
              mmproj: str | os.PathLike[str] | None = None) -> tuple[Path, Path | None]:
    """The text GGUF and vision projector to run, from an export folder (its manifest's default or ``quant``) or a
    text GGUF file (the projector beside it: the only ``mmproj*.gguf`` there). ``mmproj`` overrides the projector.
    The projector is None when none is found (text-only use)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise NotFoundError(f"GGUF file or export folder not found: {p}")
    if p.is_dir():
        manifest = read_manifest(p)
        folder = p
        if manifest is not None and manifest.get("text_gguf"):
            if quant:
                q = quant.lower()
                name = manifest.get("quantized", {}).get(q) or (
                    manifest["text_gguf"] if q == (manifest.get("outtype") or "").lower() else None
                )
                if name is None:
                    have = [*(manifest.get("quantized") or {}), manifest.get("outtype")]
                    raise NotFoundError(f"{p} has no {quant} GGUF (it has: {', '.join(str(h) for h in have if h)})")
            else:
                name = manifest.get("default_gguf") or manifest["text_gguf"]
            text = folder / name
            projector = folder / manifest["mmproj"] if manifest.get("mmproj") else None
        else:
            models = sorted(f for f in p.glob("*.gguf") if not f.name.startswith("mmproj") and ".partial" not in f.name)
            if quant:
                models = [f for f in models if quant.lower() in f.name.lower()]
            if not models:
                raise NotFoundError(f"no text model GGUF in {p}")
            if len(models) > 1:
                names = ", ".join(f.name for f in models)
                raise ModelError(f"{p} holds several model GGUFs ({names}): pass one file, or --quant")
            text, projector = models[0], None
    else:
        text, folder, projector = p, p.parent, None
    if projector is None:
        candidates = sorted(f for f in folder.glob("mmproj*.gguf") if ".partial" not in f.name)
        if len(candidates) == 1:
            projector = candidates[0]
        elif len(candidates) > 1 and mmproj is None:
            names = ", ".join(f.name for f in candidates)
            raise ModelError(f"{folder} holds several vision projectors ({names}): pass --mmproj FILE")
    if mmproj is not None:
        projector = Path(mmproj).expanduser()
        if not projector.exists():
            raise NotFoundError(f"vision projector (mmproj) GGUF not found: {projector}")
    return text, projector
