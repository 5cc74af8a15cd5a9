"""Offline inference with the exported student: llama.cpp (llama-cpp-python) on the GGUF files, or transformers on
a Hugging Face folder for comparison.

The GGUF backend uses ``llama_cpp.llama_chat_format.MTMDChatHandler`` with the mmproj: it renders the chat
template embedded in the text GGUF (the student's own), so prompts match transformers' token for token (the
Qwen2.5-VL-specific handler drops the newline after ``<|im_start|>assistant`` and drifts). Decoding is greedy at
temperature 0 (no repeat penalty, as transformers), so the two backends give the same tokens for the same
image pixels.

The student is asked with the reasoning prompt P_cot; its answer is parsed into the five fields and the label
(:func:`mulcot.reasoning.parse_reasoning`). In batch mode every answer is stored as a chain (source
``student-gguf``, stage ``eval``, model = the GGUF file name, prompt version of P_cot) so ``mulcot eval`` can score
it; samples that already have one for that model and prompt are skipped, so an interrupted run resumes. With
the label prompt P_label too, its answers are stored as ``mulcot.evaluate`` stores them (stage ``label``, fields
``{"Prediction": label}``), so eval reports the label head beside the chains' own Prediction.
"""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mulcot.errors import DataError, ModelError, MulcotError, NotFoundError
from mulcot.export import check_gguf, read_manifest, safe_name
from mulcot.prompts import get_prompt
from mulcot.reasoning import format_prediction, parse_reasoning
from mulcot.sft_data import DEFAULT_MAX_PIXELS

SOURCE_GGUF = "student-gguf"
SOURCE_HF = "student-hf"
STAGE = "eval"  # stage of reasoning chains (P_cot), as mulcot.evaluate stores them
STAGE_LABEL = "label"  # stage of label-prompt answers (P_label), as mulcot.evaluate stores them
STAGES = {"cot": STAGE, "label": STAGE_LABEL}
BACKENDS = ("gguf", "hf")


@dataclass
class PredictConfig:
    """Decoding and input settings shared by both backends."""

    max_tokens: int = 512
    label_max_tokens: int = 32  # for the label prompt (P_label), whose answer is one line
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    n_threads: int | None = None  # llama.cpp threads (default: llama-cpp-python's, half the logical cores)
    ctx: int = 4096  # llama.cpp context length
    # read the GGUF into memory (False) or map it (True). Reading is the default: llama.cpp repacks Q4_K / Q8_0
    # weights for the CPU, and a mapped file then stays resident beside the repacked copy (+27% peak RSS measured)
    mmap: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS  # images are downsized (aspect kept) to at most this many pixels
    image_max_side: int | None = None  # ... and to at most this many pixels on their longer side
    batch_size: int = 4  # transformers backend
    device: str | None = None  # transformers backend
    dtype: str | None = None  # transformers backend
    ignore_eos: bool = False  # generate exactly max_tokens tokens (benchmarks)


@dataclass
class Generated:
    """One raw generation."""

    text: str
    token_ids: list[int] | None
    tokens_in: int | None
    tokens_out: int
    latency_s: float
    first_token_s: float | None = None
    finish_reason: str | None = None


@dataclass
class Post:
    """A post to predict: text, optional aspect (MASC) and optional image (a path)."""

    text: str
    aspect: str | None = None
    image: str | os.PathLike[str] | None = None


@dataclass
class PostPrediction:
    """What the student made of one post with one prompt."""

    prompt: str
    task: str
    prompt_version: str
    raw: str
    fields: dict[str, str]
    prediction: str | None
    parse_status: str
    valid: bool
    tokens_in: int | None
    tokens_out: int
    latency_s: float
    finish_reason: str | None = None
    token_ids: list[int] | None = None

    def as_dict(self, with_ids: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not with_ids:
            out.pop("token_ids")
        return out


# ------------------------------------------------------------------------------------------------------ images


def prepare_image(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS,
                  max_side: int | None = None) -> Any:  # fmt: skip
    """An RGB PIL image from ``path``, downsized (aspect kept) to at most ``max_pixels`` pixels and ``max_side``
    pixels on its longer side. Both backends see exactly these pixels."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path).expanduser()
    if not p.is_file():
        raise NotFoundError(f"image not found: {p}")
    try:
        with Image.open(p) as im:
            im = im.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"cannot read the image ({err})", file=str(p)) from err
    w, h = im.size
    scale = 1.0
    if max_pixels and w * h > max_pixels:
        scale = (max_pixels / (w * h)) ** 0.5
    if max_side and max(w, h) * scale > max_side:
        scale = max_side / max(w, h)
    if scale < 1.0:
        im = im.resize((max(28, int(w * scale)), max(28, int(h * scale))), Image.Resampling.BICUBIC)
    return im


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def image_data_url(image: Any) -> str:
    """A PIL image as a ``data:image/png;base64,...`` URL (lossless: the pixels stay exactly as given)."""
    return "data:image/png;base64," + base64.b64encode(_png(image)).decode("ascii")


# ------------------------------------------------------------------------------------------------ GGUF backend


def find_gguf(path: str | os.PathLike[str], *, quant: str | None = None,
              mmproj: str | os.PathLike[str] | None = None) -> tuple[Path, Path | None]:  # fmt: skip
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


class GGUFBackend:
    """llama.cpp on a text GGUF, with the vision projector through ``MTMDChatHandler`` when one is given."""

    kind = "gguf"
    source = SOURCE_GGUF

    def __init__(self, model: str | os.PathLike[str], mmproj: str | os.PathLike[str] | None = None,
                 config: PredictConfig | None = None):  # fmt: skip
        self.config = config or PredictConfig()
        self.model_path = Path(model)
        self.mmproj_path = Path(mmproj) if mmproj is not None else None
        self.info = check_gguf(self.model_path, "text")
        if self.mmproj_path is not None:
            check_gguf(self.mmproj_path, "mmproj")
        self.name = self.model_path.name
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
                                      use_mmap=self.config.mmap, verbose=False)  # fmt: skip
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

    def __enter__(self) -> GGUFBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
                content.insert(0, {"type": "image_url", "image_url": {"url": image_data_url(image)}})
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
                         finish_reason=out["choices"][0].get("finish_reason"))  # fmt: skip

    def generate(self, posts: Sequence[Post], prompt: str, task: str) -> list[Generated]:
        template = get_prompt(prompt, task)
        out = []
        for post in posts:
            image = None
            if post.image is not None:
                image = prepare_image(post.image, self.config.max_pixels, self.config.image_max_side)
            limit = self.config.label_max_tokens if prompt == "label" else self.config.max_tokens
            out.append(self.generate_one(template.render(post.text, post.aspect), image, limit))
        return out


# -------------------------------------------------------------------------------------------------- HF backend


class HFBackend:
    """transformers on a Hugging Face folder (a merged export's ``hf/``), a run / adapter folder (base + adapter)
    or a run name, through :func:`mulcot.generation.generate`."""

    kind = "hf"
    source = SOURCE_HF

    def __init__(self, model: str | os.PathLike[str], config: PredictConfig | None = None, store: Any = None):
        from mulcot.export import resolve_source
        from mulcot.models import load_model, load_with_adapter

        self.config = config or PredictConfig()
        source = resolve_source(model, store)
        if source.kind == "model":
            self.model, self.processor, self.family = load_model(source.path, device=self.config.device,
                                                                 dtype=self.config.dtype)  # fmt: skip
            self.name = source.path.resolve().name
            if self.name == "hf":  # an export's hf/ folder: name it after the export
                self.name = f"{source.path.resolve().parent.name}-hf"
        else:
            base, self.processor, self.family = load_model(source.base_model, device=self.config.device,
                                                           dtype=self.config.dtype)  # fmt: skip
            self.model = load_with_adapter(base, source.adapter)
            self.name = source.run_id or Path(model).name

    has_vision = True

    def close(self) -> None:
        self.model = None

    def __enter__(self) -> HFBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate(self, posts: Sequence[Post], prompt: str, task: str) -> list[Generated]:
        from mulcot.generation import GenerationConfig, generate
        from mulcot.sft_data import TrainItem

        cfg = self.config
        limit = cfg.label_max_tokens if prompt == "label" else cfg.max_tokens
        gen = GenerationConfig(max_new_tokens=limit, do_sample=cfg.temperature > 0,
                               temperature=cfg.temperature or 1.0, top_p=cfg.top_p, batch_size=cfg.batch_size,
                               max_pixels=cfg.max_pixels, seed=cfg.seed)  # fmt: skip
        items = []
        for i, post in enumerate(posts):
            image = None
            if post.image is not None:  # the same pixels as the GGUF backend, handed over as an in-memory PNG
                image = io.BytesIO(_png(prepare_image(post.image, cfg.max_pixels, cfg.image_max_side)))
            items.append(TrainItem(sample_id=i, text=post.text, aspect=post.aspect, label="", image_path=image,  # type: ignore[arg-type]
                                   chain=None))  # fmt: skip
        out: list[Generated] = []
        tok = self.processor.tokenizer
        for startat in range(0, len(items), cfg.batch_size):
            chunk = items[startat : startat + cfg.batch_size]
            t0 = time.perf_counter()
            answers = generate(self.model, self.processor, chunk, prompt, task, gen)
            each = (time.perf_counter() - t0) / len(chunk)
            for answer in answers:
                text = answer[0]
                n_out = len(tok.encode(text, add_special_tokens=False))
                out.append(Generated(text=text, token_ids=None, tokens_in=None, tokens_out=n_out, latency_s=each))
        return out


def open_backend(
    backend: str,
    *,
    gguf: str | os.PathLike[str] | None = None,
    model: str | os.PathLike[str] | None = None,
    quant: str | None = None,
    mmproj: str | os.PathLike[str] | None = None,
    config: PredictConfig | None = None,
    store: Any = None,
) -> GGUFBackend | HFBackend:
    """A backend from CLI-style arguments: ``gguf`` (export folder or text GGUF) or ``hf`` (``model`` folder)."""
    if backend == "gguf":
        if gguf is None:
            raise MulcotError("the gguf backend needs --gguf DIR|FILE (an export folder or a text GGUF)")
        text, projector = find_gguf(gguf, quant=quant, mmproj=mmproj)
        return GGUFBackend(text, projector, config)
    if backend == "hf":
        if model is None:
            raise MulcotError("the hf backend needs --model DIR (a merged export's hf/ folder, a model or a run)")
        return HFBackend(model, config, store)
    raise MulcotError(f"unknown backend '{backend}' (use one of: {', '.join(BACKENDS)})")


# --------------------------------------------------------------------------------------------------- predicting


def _prediction(gen: Generated, prompt: str, task: str) -> PostPrediction:
    template = get_prompt(prompt, task)
    parsed = parse_reasoning(gen.text)
    if prompt == "cot":
        fields, status, valid = parsed.fields, parsed.status, parsed.valid
    else:  # a label answer: only its label counts
        label = parsed.prediction
        fields, status, valid = ({"Prediction": label} if label else {}), ("full" if label else "none"), bool(label)
    return PostPrediction(prompt=prompt, task=task, prompt_version=template.version, raw=gen.text,
                          fields=fields, prediction=parsed.prediction, parse_status=status, valid=valid,
                          tokens_in=gen.tokens_in, tokens_out=gen.tokens_out, latency_s=round(gen.latency_s, 4),
                          finish_reason=gen.finish_reason, token_ids=gen.token_ids)  # fmt: skip


def _check_prompts(prompts: Sequence[str]) -> None:
    if not prompts or any(p not in STAGES for p in prompts) or prompts[0] != "cot" and "cot" in prompts:
        raise MulcotError(f"prompts must be cot and/or label (cot first), not {list(prompts)}")


def predict_post(backend: GGUFBackend | HFBackend, post: Post, *, task: str | None = None,
                 prompts: Sequence[str] = ("cot",)) -> list[PostPrediction]:  # fmt: skip
    """Predict one post with each of ``prompts`` (``cot``: the five-field reasoning; ``label``: the label only).
    ``task`` defaults to ``masc`` when the post has an aspect, else ``msa``."""
    _check_prompts(prompts)
    task = task or ("masc" if post.aspect else "msa")
    if task == "masc" and not post.aspect:
        raise MulcotError("an aspect-level (masc) prediction needs --aspect")
    return [_prediction(backend.generate([post], p, task)[0], p, task) for p in prompts]


@dataclass
class BatchSummary:
    """A batch prediction run: what it did now, and the figures over every stored chain of the model."""

    run_id: str
    model: str
    source: str
    dataset: str
    split: str
    prompt_version: str
    predicted: int = 0
    skipped_done: int = 0
    samples: int = 0
    chains: int = 0  # final chains of this model and prompt on the split (this run and earlier ones)
    accuracy: float | None = None
    macro_f1: float | None = None
    weighted_f1: float | None = None
    invalid: int = 0
    mean_latency_s: float | None = None
    tokens_per_s: float | None = None
    wall_s: float = 0.0
    extra_prompts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


BatchProgress = Callable[[int, int, PostPrediction | None], None]


def predict_dataset(
    store: Any,
    backend: GGUFBackend | HFBackend,
    dataset: str,
    split: str = "test",
    *,
    limit: int | None = None,
    run_id: str | None = None,
    source: str | None = None,
    prompts: Sequence[str] = ("cot",),
    progress: BatchProgress | None = None,
) -> BatchSummary:
    """Predict every sample of ``dataset``/``split`` (the first ``limit``) and store each answer as a chain (source
    ``student-gguf`` or ``student-hf``, stage ``eval``, model = the backend's name); samples that already have a
    final chain for this model and prompt are skipped. The run is recorded in the store (kind ``predict``)."""
    start = time.perf_counter()
    _check_prompts(prompts)
    ds = store.require_dataset(dataset)
    task = ds["task"]
    if split not in store.splits(dataset):
        raise MulcotError(f"dataset '{dataset}' has no split '{split}' (splits: {', '.join(store.splits(dataset))})")
    source = source or backend.source
    samples = store.samples(dataset, split)
    if limit is not None:
        samples = samples[:limit]
    cot = get_prompt("cot", task)
    run_id = run_id or f"predict-{safe_name(backend.name)}-{dataset}-{split}"
    summary = BatchSummary(run_id=run_id, model=backend.name, source=source, dataset=dataset, split=split,
                           prompt_version=cot.version)  # fmt: skip
    todo: dict[str, list[dict[str, Any]]] = {}
    for p in prompts:
        version = get_prompt(p, task).version
        done = store.chain_progress(dataset, split, source=source, model=backend.name, stage=STAGES[p],
                                    prompt_version=version)  # fmt: skip
        todo[p] = [s for s in samples if (done.get(s["id"]) or {}).get("final") is None]
    summary.skipped_done = len(samples) - len(todo[prompts[0]])
    needs_vision = any(s["has_image"] for p in prompts for s in todo[p])
    if needs_vision and not backend.has_vision:
        raise ModelError(
            f"{backend.name} has no vision projector (mmproj) loaded, but {dataset}/{split} has images: export with "
            "`mulcot export` (writes mmproj-*.gguf beside it) or pass --mmproj FILE"
        )
    for s in {s["id"]: s for p in prompts for s in todo[p]}.values():
        if s["has_image"] and not (s["image_path"] and Path(s["image_path"]).is_file()):
            raise DataError(f"image of sample {s['key']} not found: {s['image_path']}", file=s["image_path"])
    config = {"backend": backend.kind, "model": backend.name, "split": split, "prompts": list(prompts),
              "limit": limit, **{k: v for k, v in asdict(backend.config).items() if k not in ("device",)}}  # fmt: skip
    store.create_run(run_id, kind="predict", dataset=dataset, config=config)
    total = sum(len(v) for v in todo.values())
    count = 0
    if progress:
        progress(0, total, None)
    try:
        for p in prompts:
            for offset in range(0, len(todo[p]), backend.config.batch_size if backend.kind == "hf" else 1):
                chunk = todo[p][offset : offset + (backend.config.batch_size if backend.kind == "hf" else 1)]
                posts = [Post(text=s["text"], aspect=s["aspect"], image=s["image_path"] if s["has_image"] else None)
                         for s in chunk]  # fmt: skip
                gens = backend.generate(posts, p, task)
                for sample, gen in zip(chunk, gens, strict=True):
                    pred = _prediction(gen, p, task)
                    if p == "cot":
                        text = parse_reasoning(pred.raw).to_text()
                    else:
                        text = format_prediction(pred.prediction) if pred.prediction else pred.raw
                    store.add_reasoning(
                        sample_id=sample["id"], source=source, model=backend.name, stage=STAGES[p],
                        prompt_version=pred.prompt_version, raw=pred.raw, text=text,
                        fields=pred.fields, prediction=pred.prediction, parse_status=pred.parse_status,
                        valid=pred.valid, attempt=1, final=True, tokens_in=pred.tokens_in, tokens_out=pred.tokens_out,
                        latency_s=pred.latency_s, run_id=run_id, origin="predict",
                    )  # fmt: skip
                    count += 1
                    if p == prompts[0]:
                        summary.predicted += 1
                    else:
                        summary.extra_prompts[p] = summary.extra_prompts.get(p, 0) + 1
                    if progress:
                        progress(count, total, pred)
    except KeyboardInterrupt:
        store.update_run(run_id, status="interrupted", error="interrupted: run the same command again to resume")
        raise
    except Exception as exc:
        store.update_run(run_id, status="failed", error=str(exc)[:500])
        raise
    summary.samples = len(samples)
    _score(store, summary, task)
    summary.wall_s = round(time.perf_counter() - start, 3)
    store.update_run(run_id, status="done", metrics=summary.as_dict())
    return summary


def _score(store: Any, summary: BatchSummary, task: str) -> None:
    """Figures over every final chain of the model and prompt on the split."""
    from mulcot.evaluate.metrics import classification_metrics

    chains = [c for c in store.reasonings(dataset=summary.dataset, split=summary.split, source=summary.source,
                                          stage=STAGE, final_only=True)
              if c["model"] == summary.model and c["prompt_version"] == summary.prompt_version]  # fmt: skip
    summary.chains = len(chains)
    summary.invalid = sum(1 for c in chains if not c["valid"])
    latencies = [c["latency_s"] for c in chains if c["latency_s"] is not None]
    if latencies:
        summary.mean_latency_s = round(sum(latencies) / len(latencies), 4)
        tokens = sum(c["tokens_out"] or 0 for c in chains if c["latency_s"] is not None)
        summary.tokens_per_s = round(tokens / sum(latencies), 2) if sum(latencies) > 0 else None
    labelled = [c for c in chains if c["gold"]]
    if labelled:
        m = classification_metrics([c["gold"] for c in labelled], [c["prediction"] for c in labelled])
        summary.accuracy, summary.macro_f1, summary.weighted_f1 = m["accuracy"], m["macro_f1"], m["weighted_f1"]
