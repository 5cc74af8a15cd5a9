"""Load a model and its processor from a local folder or a Hugging Face Hub id.

Vision-language families (from the config's ``model_type``): Qwen2.5-VL (``qwen2_5_vl``), Qwen3-VL
(``qwen3_vl``) and Qwen2-VL (``qwen2_vl``). Text-only backbones (paper, Appendix G): any other Hugging Face causal
LM with a chat template (Llama/SmolLM, Qwen2/2.5/3 text, ...); its family is its ``model_type`` and its processor a
:class:`~mulcot.models.processor.TextProcessor` (the image becomes text: a caption, or nothing). Anything else is
refused with a one-line :class:`~mulcot.errors.ModelError`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from mulcot.core.refs import looks_like_path
from mulcot.errors import ModelError, NotFoundError
from mulcot.events import INFO, Progress, emit

# peft asks transformers a deprecated question about every model it wraps; the warning is theirs, not the user's.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

# model_type in config.json → mulcot family name
FAMILIES: dict[str, str] = {
    "qwen2_5_vl": "qwen2.5-vl",
    "qwen3_vl": "qwen3-vl",
    "qwen2_vl": "qwen2-vl",
}

_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}




@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Silence transformers' own tqdm bars (mulcot's library reports through ``progress`` callbacks only)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _offline() -> bool:
    return any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _read_config(path_or_id: str | os.PathLike[str]) -> tuple[dict[str, Any], bool]:
    """The raw ``config.json`` of a folder or hub id, and whether it is local."""
    name = str(path_or_id)
    path = Path(name).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ModelError(f"{path} has no config.json: not a Hugging Face model folder")
        try:
            return json.loads(config_file.read_text(encoding="utf-8")), True
        except (OSError, ValueError) as err:
            raise ModelError(f"cannot read {config_file}: {err}") from err
    if path.exists():
        raise ModelError(f"{path} is a file, not a Hugging Face model folder")
    if looks_like_path(name):
        raise NotFoundError(f"model folder not found: {name}")
    from huggingface_hub import hf_hub_download

    unreachable = None if _offline() else hub_unreachable()
    if unreachable is not None:
        # the Hub does not answer: work from the cache (offline) rather than retry every file for half a minute
        _go_offline()
    try:
        config_file = hf_hub_download(name, "config.json")
    except Exception as err:  # every failure to fetch becomes one line for the user
        problem = _hub_problem(err)
        if unreachable is not None:
            problem = (f"the Hugging Face Hub cannot be reached ({unreachable}) and it is not in the local cache: "
                       "connect to the internet, or pass a local model folder")
        raise NotFoundError(f"cannot find model '{name}': no such local folder, and {problem}") from err
    return json.loads(Path(config_file).read_text(encoding="utf-8")), False


_HUB_PROBE: dict[str, str | None] = {}  # endpoint -> why it cannot be reached (None: it can), once per process


def hub_unreachable(timeout_s: float = 3.0) -> str | None:
    """Why the Hugging Face Hub (``HF_ENDPOINT``, through ``HTTPS_PROXY`` when set) cannot be reached, or None when
    it accepts a connection within ``timeout_s``: a DNS lookup and a TCP connect, seconds at most, instead of
    huggingface_hub's five retries with back-off (about 30 s of "Retrying in 8s")."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    if endpoint not in _HUB_PROBE:
        proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("ALL_PROXY")
        target = urlsplit(proxy if proxy and "://" in proxy else endpoint)
        host, port = target.hostname or "", target.port or (443 if target.scheme == "https" else 80)
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            _HUB_PROBE[endpoint] = None
        except OSError as err:
            why = f"no answer within {timeout_s:g} s" if isinstance(err, TimeoutError) else err.strerror or str(err)
            _HUB_PROBE[endpoint] = f"{host}: {why}"
    return _HUB_PROBE[endpoint]


def _go_offline() -> None:
    """Hub calls from here on read the local cache only (what HF_HUB_OFFLINE=1 does), in this process."""
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True


def _hub_problem(err: BaseException) -> str:
    """Why a hub id could not be fetched, in words for the user."""
    from huggingface_hub import errors as hub

    if isinstance(err, hub.HFValidationError):
        return "it is not a valid Hugging Face Hub id (org/name)"
    if isinstance(err, hub.GatedRepoError):
        return "it is gated on the Hugging Face Hub: accept its license there and log in (hf auth login)"
    if isinstance(err, hub.RepositoryNotFoundError):
        return "there is no such model on the Hugging Face Hub (or it is private: log in with hf auth login)"
    if isinstance(err, hub.RevisionNotFoundError):
        return "the Hugging Face Hub has no such revision of it"
    if isinstance(err, hub.RemoteEntryNotFoundError):
        return "its Hugging Face Hub repository has no config.json"
    if _offline():
        return "it is not in the Hugging Face cache (HF_HUB_OFFLINE is set, so nothing is downloaded)"
    if isinstance(err, hub.LocalEntryNotFoundError):
        return "the Hugging Face Hub cannot be reached and it is not in the local cache (offline?)"
    return f"it cannot be fetched from the Hugging Face Hub ({_first_line(err)})"


def model_family(path_or_id: str | os.PathLike[str]) -> str:
    """The mulcot family (``qwen2.5-vl``, ``qwen3-vl``, ``qwen2-vl``, or a text-only causal LM's ``model_type``,
    e.g. ``llama``, ``qwen2``, ``qwen3``) of a model folder or hub id.

    Raises :class:`NotFoundError` when the model cannot be found and :class:`ModelError` for any other family.
    """
    config, _ = _read_config(path_or_id)
    return family_of_model_type(config.get("model_type"), str(path_or_id))


def family_of_model_type(model_type: str | None, name: str = "the model") -> str:
    """Map a config ``model_type`` to a mulcot family, refusing unsupported ones with a clear message."""
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    if model_type and model_type in _causal_lm_types():
        return model_type
    supported = ", ".join(f"{k} ({v})" for k, v in FAMILIES.items())
    raise ModelError(
        f"{name} is a '{model_type or 'unknown'}' model; mulcot supports Qwen-VL models ({supported}) and "
        "text-only causal LMs (llama, qwen2, qwen3, ...)"
    )


def _causal_lm_types() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def is_text_family(family: str) -> bool:
    """True for a text-only backbone (any family that is not a Qwen-VL one)."""
    return family not in FAMILIES.values()


def default_device() -> str:
    """``cuda`` if available, else ``mps`` if available, else ``cpu``."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def check_device(device: str) -> str:
    """``device`` if torch can use it here, else a :class:`ModelError` (e.g. ``cuda`` on a CPU-only torch)."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise ModelError(f"unknown device '{device}' (use cuda, cuda:N, mps or cpu)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device '{device}' requested, but this torch sees no CUDA GPU")
    mps = getattr(torch.backends, "mps", None)
    if kind == "mps" and not (mps is not None and mps.is_available()):
        raise ModelError(f"device '{device}' requested, but Apple MPS is not available")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """A torch dtype from a name (``bf16``, ``fp16``, ``fp32``, ``auto``/None → the device's default).

    Defaults: bfloat16 on CUDA (float16 where bf16 is unsupported), float16 on MPS, float32 on CPU.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is not None and dtype.lower() != "auto":
        try:
            return _DTYPES[dtype.lower()]
        except KeyError:
            raise ModelError(f"unknown dtype '{dtype}' (use one of: bf16, fp16, fp32, auto)") from None
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "mps":
        return torch.float16
    return torch.float32


def model_class(family: str) -> Any:
    """The transformers ``*ForConditionalGeneration`` class of a Qwen-VL family; ``AutoModelForCausalLM`` for a
    text-only one."""
    import transformers

    if is_text_family(family):
        return transformers.AutoModelForCausalLM

    names = {
        "qwen2.5-vl": "Qwen2_5_VLForConditionalGeneration",
        "qwen3-vl": "Qwen3VLForConditionalGeneration",
        "qwen2-vl": "Qwen2VLForConditionalGeneration",
    }
    if family not in names:
        raise ModelError(f"unknown model family '{family}' (known: {', '.join(names)})")
    return getattr(transformers, names[family])


def _quantization(load_in_4bit: bool, dtype: torch.dtype) -> Any:
    if not load_in_4bit:
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError("4-bit loading needs bitsandbytes, which is not installed: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def load_model(
    model_id_or_path: str | os.PathLike[str],
    *,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    load_in_4bit: bool = False,
    trust_remote_code: bool = False,
    progress: Progress | None = None,
) -> tuple[Any, Any, str]:
    """Load a model, its processor and its family from a local folder or a Hugging Face Hub id.

    Returns ``(model, processor, family)``; the model is in eval mode on ``device`` (default: cuda, else mps,
    else cpu) in ``dtype`` (default: bf16 on cuda, fp16 where bf16 is unsupported or on mps, fp32 on cpu).
    A Qwen-VL processor is image-only (no video processor) unless torchvision is installed; a text-only model's
    is a :class:`~mulcot.models.processor.TextProcessor` (refused in one line without a chat template, before
    the weights are read). ``load_in_4bit`` uses bitsandbytes NF4. ``progress`` receives an info event.
    """
    from mulcot.models.processor import load_processor

    name = str(model_id_or_path)
    config, is_local = _read_config(name)
    family = family_of_model_type(config.get("model_type"), name)
    source = str(Path(name).expanduser()) if is_local else name
    device = check_device(device) if device else default_device()
    torch_dtype = resolve_dtype(dtype, device)
    quantization = _quantization(load_in_4bit, torch_dtype)

    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if quantization is not None:
        kwargs |= {"quantization_config": quantization, "device_map": {"": device}}
    bits = "4-bit NF4" if quantization is not None else str(torch_dtype).removeprefix("torch.")
    emit(progress, "models", INFO, message=f"Loading {family} model {name} on {device} ({bits})")
    try:
        with quiet_progress_bars():
            if is_text_family(family):  # no chat template: refused before the weights are read
                processor = load_processor(source, family, trust_remote_code=trust_remote_code)
            model = model_class(family).from_pretrained(source, **kwargs)
            if quantization is None and not _zero3_loaded():
                model = model.to(device)
            if not is_text_family(family):
                processor = load_processor(source, family, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, ImportError) as err:
        raise ModelError(f"cannot load {family} model from {name}: {_first_line(err)}") from err
    model.eval()
    return model, processor, family


def _zero3_loaded() -> bool:
    """True when DeepSpeed ZeRO-3 is configured (TrainingArguments exist): from_pretrained then partitioned the
    weights across the ranks' GPUs, and moving the module would only touch the empty local placeholders."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return bool(is_deepspeed_zero3_enabled())


def load_with_adapter(base: Any, adapter_dir: str | os.PathLike[str], *, is_trainable: bool = False) -> Any:
    """Wrap a loaded base model with the PEFT (LoRA) adapter saved in ``adapter_dir``; returns a PeftModel."""
    from peft import PeftModel

    path = Path(adapter_dir).expanduser()
    if not path.is_dir():
        raise NotFoundError(f"adapter folder not found: {path}")
    if not (path / "adapter_config.json").is_file():
        raise ModelError(f"{path} has no adapter_config.json: not a PEFT adapter folder")
    try:
        return PeftModel.from_pretrained(base, str(path), is_trainable=is_trainable)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise ModelError(f"cannot apply the adapter in {path}: {_first_line(err)}") from err


def adapter_base_model(adapter_dir: str | os.PathLike[str]) -> str | None:
    """The ``base_model_name_or_path`` recorded in a PEFT adapter folder (None if absent)."""
    path = Path(adapter_dir).expanduser() / "adapter_config.json"
    if not path.is_file():
        raise NotFoundError(f"no PEFT adapter at {path.parent} (adapter_config.json missing)")
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot read {path}: {err}") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
