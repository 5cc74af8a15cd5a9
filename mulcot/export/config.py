"""What an export does (:class:`ExportConfig`, every field a CLI option) and what it made (:class:`ExportResult`,
one :class:`StepResult` per step)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mulcot.core.gguf import OUTTYPES
from mulcot.core.settings import ConfigError, Validated, field_

HF_DIR = "hf"  # the merged Hugging Face folder inside an export
LOG_DIR = "logs"  # the converter's and quantizer's full output


@dataclass
class ExportConfig(Validated):
    """What to export and how (every field is a CLI option; validated on construction)."""

    source: str  # runs/<name>, an adapter folder, a run name in the store, or a full model folder
    out: str
    quants: tuple[str, ...] = ("q4_k_m",)
    gguf: bool = True  # False: stop after the merged Hugging Face folder
    outtype: str = field_("f16", "f16, bf16 or f32 for the converted text GGUF (the mmproj is f16, or f32 with f32).",
                          choices=OUTTYPES)
    llama_cpp_dir: str | None = None  # a llama.cpp checkout / sdist (default: the installed version's sdist)
    name: str | None = None  # file name stem (default: the run name)
    base_model: str | None = None  # override the adapter's recorded base model
    dtype: str | None = None  # dtype to merge and save in (default: the base checkpoint's)
    threads: int | None = field_(None, "Quantizer threads (default: all cores).", min=1)
    force: bool = False  # redo every step
    verify: int | None = field_(None, "Score N posts by forced choice with every GGUF and the merged model.", min=1)
    verify_dataset: str | None = None  # the dataset (in the store) whose posts --verify scores
    verify_split: str = "test"

    def check(self) -> None:
        if self.verify is not None and not self.gguf:
            raise ConfigError("--verify scores the exported GGUF files against the merged model, and an export made "
                              "with --no-gguf has none: leave out --no-gguf")
        if self.verify is not None and not self.verify_dataset:
            raise ConfigError("--verify N scores N posts of a dataset in the store: pass --verify-dataset NAME")


@dataclass
class StepResult:
    step: str
    status: str  # done | skipped
    outputs: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class ExportResult:
    out: str
    name: str
    family: str
    source_kind: str
    run_id: str | None
    base_model: str
    hf_dir: str
    text_gguf: str | None = None
    mmproj_gguf: str | None = None
    quantized: dict[str, str] = field(default_factory=dict)
    default_gguf: str | None = None
    manifest: str | None = None
    modelfile: str | None = None
    steps: list[StepResult] = field(default_factory=list)
    verify: dict[str, Any] | None = None  # --verify: each GGUF against the merged model (export.verify)
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
