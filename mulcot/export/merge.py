"""Export step 1, ``merge``: the LoRA adapter is merged into its base model (peft ``merge_and_unload``) and saved
as a complete Hugging Face folder ``hf/`` (safetensors weights, config, generation config, tokenizer, processor and
image processor configs, chat template) that ``from_pretrained`` loads alone (through mulcot's image-only processor
classes when torchvision is absent). A stamp in the folder records which adapter it merges.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from mulcot.core.refs import adapter_digest
from mulcot.errors import MulcotError
from mulcot.events import INFO, Progress, emit

MERGE_STAMP = "mulcot_merge.json"


def _checkpoint_dtype(model_dir: str) -> str | None:
    path = Path(model_dir).expanduser() / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for holder in (config, config.get("text_config") or {}):
        for key in ("dtype", "torch_dtype"):
            if isinstance(holder.get(key), str):
                return holder[key]
    return None


def _text_only_folder(folder: Path) -> bool:
    """True when ``folder``'s config names a text-only backbone (not a Qwen-VL family)."""
    from mulcot.models.loading import FAMILIES

    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return False
    return model_type not in FAMILIES


def merged_folder_problem(folder: Path, digest: str | None = None) -> str | None:
    """Why ``folder`` is not a complete merged export (None when it is)."""
    if not folder.is_dir():
        return "missing"
    needed = ["config.json", "generation_config.json", "tokenizer_config.json"]
    if not _text_only_folder(folder):  # a Qwen-VL model ships its image processor too
        needed.append("preprocessor_config.json")
    missing = [n for n in needed if not (folder / n).is_file()]
    if not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors")
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.json").is_file():
        missing.append("tokenizer.json")
    if missing:
        return f"incomplete (missing {', '.join(missing)})"
    if digest is not None:
        stamp = folder / MERGE_STAMP
        try:
            recorded = json.loads(stamp.read_text(encoding="utf-8")).get("adapter_sha256")
        except (OSError, ValueError):
            recorded = None
        if recorded != digest:
            return "a merge of a different adapter"
    return None


def merge_adapter(
    base_model: str,
    adapter: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    dtype: str | None = None,
    digest: str | None = None,
    progress: Progress | None = None,
) -> Path:
    """Merge the LoRA ``adapter`` into ``base_model`` and save a complete Hugging Face folder at ``dest``.

    The merge is computed in float32 on the CPU, then saved in ``dtype`` (default: the base checkpoint's dtype).
    The processor (tokenizer, chat template, image processor) is the adapter folder's when it has one (training
    saves it there), else the base model's. ``dest`` appears only when complete.
    """
    from mulcot.models import load_model, load_with_adapter, resolve_dtype
    from mulcot.models.loading import quiet_progress_bars
    from mulcot.models.processor import load_processor

    adapter = Path(adapter).expanduser()
    dest = Path(dest)
    save_dtype = resolve_dtype(dtype or _checkpoint_dtype(base_model) or "fp32", "cpu")
    emit(progress, "export", INFO, message=f"Loading {base_model} (float32, CPU) and the adapter {adapter}",
         step="merge")
    base, processor, family = load_model(base_model, device="cpu", dtype="fp32")
    peft_model = load_with_adapter(base, adapter)
    emit(progress, "export", INFO, message="Merging the LoRA weights into the base model", step="merge")
    merged = peft_model.merge_and_unload()
    merged = merged.to(save_dtype)
    if (adapter / "tokenizer_config.json").is_file():
        try:
            processor = load_processor(adapter, family)
        except (OSError, ValueError, TypeError, MulcotError):  # an adapter folder without a usable processor
            pass
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    dtype_name = str(save_dtype).removeprefix("torch.")
    emit(progress, "export", INFO, message=f"Saving the merged model ({dtype_name}) to {dest}", step="merge")
    with quiet_progress_bars():
        merged.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    if getattr(processor, "image_processor", None) is not None:  # a text-only backbone has none
        processor.image_processor.save_pretrained(tmp)  # preprocessor_config.json, as the real checkpoints ship it
    stamp = {
        "merged_by": "mulcot.export.merge_adapter",
        "base_model": base_model,
        "adapter": str(adapter),
        "adapter_sha256": digest or adapter_digest(adapter),
        "family": family,
        "dtype": str(save_dtype).removeprefix("torch."),
    }
    (tmp / MERGE_STAMP).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
    del merged, peft_model, base
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest
