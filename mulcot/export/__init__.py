"""Stage 6, export: a trained student becomes files that run offline on a laptop (a merged Hugging Face folder, the
text GGUF and its vision projector GGUF, quantized GGUFs, ``manifest.json`` and an Ollama ``Modelfile``).

* :mod:`~mulcot.export.config`: what to export (:class:`ExportConfig`) and what was made (:class:`ExportResult`);
* :mod:`~mulcot.export.steps`: the resumable step runner :func:`export` and its progress events;
* :mod:`~mulcot.export.merge`: the adapter merged into its base model;
* :mod:`~mulcot.export.convert`: llama.cpp's converter and quantizer runs;
* :mod:`~mulcot.export.manifest` and :mod:`~mulcot.export.ollama`: the manifest and the Modelfile.

What an export starts from is resolved by :mod:`mulcot.core.refs`; GGUF names, header checks and the manifest's
reader are in :mod:`mulcot.core.gguf`, and llama.cpp's converter is fetched by :mod:`mulcot.core.llamacpp` (the
generation backends and the tiny models need them too).
"""

from mulcot.export.config import HF_DIR, LOG_DIR, ExportConfig, ExportResult, StepResult
from mulcot.export.convert import convert_to_gguf, quantize_gguf
from mulcot.export.manifest import package_versions, write_manifest
from mulcot.export.merge import MERGE_STAMP, merge_adapter, merged_folder_problem
from mulcot.export.ollama import MODELFILE, OLLAMA_QWEN_TEMPLATE, QWEN25_DEFAULT_SYSTEM, modelfile_text
from mulcot.export.steps import Progress, export

__all__ = [
    "HF_DIR",
    "LOG_DIR",
    "MERGE_STAMP",
    "MODELFILE",
    "OLLAMA_QWEN_TEMPLATE",
    "QWEN25_DEFAULT_SYSTEM",
    "ExportConfig",
    "ExportResult",
    "Progress",
    "StepResult",
    "convert_to_gguf",
    "export",
    "merge_adapter",
    "merged_folder_problem",
    "modelfile_text",
    "package_versions",
    "quantize_gguf",
    "write_manifest",
]
