"""Stage 6, export: a trained student becomes files that run offline on a laptop (a merged Hugging Face folder, the
text GGUF and its vision projector GGUF, quantized GGUFs, ``manifest.json`` and an Ollama ``Modelfile``).

* :mod:`~mulcot.export.steps`: the resumable step runner :func:`export`, its config, progress events and result;
* :mod:`~mulcot.export.source`: what an export starts from (run, adapter or full model folder);
* :mod:`~mulcot.export.merge`: the adapter merged into its base model;
* :mod:`~mulcot.export.llamacpp`: llama.cpp's converter matching the installed runtime, fetched once;
* :mod:`~mulcot.export.convert`: the converter and quantizer runs;
* :mod:`~mulcot.export.gguf`: GGUF names and header checks (light: what predict uses);
* :mod:`~mulcot.export.manifest` and :mod:`~mulcot.export.ollama`: the manifest and the Modelfile.
"""

from mulcot.export.convert import convert_to_gguf, quantize_gguf
from mulcot.export.gguf import (
    GGUF_MAGIC,
    OUTTYPES,
    QUANT_TYPES,
    check_gguf,
    gguf_names,
    inspect_gguf,
    outtype_mmproj,
    parse_quants,
    safe_name,
)
from mulcot.export.manifest import (
    MANIFEST,
    MANIFEST_FORMAT,
    package_versions,
    read_manifest,
    sha256_file,
    write_manifest,
)
from mulcot.export.merge import MERGE_STAMP, merge_adapter, merged_folder_problem
from mulcot.export.ollama import MODELFILE, OLLAMA_QWEN_TEMPLATE, QWEN25_DEFAULT_SYSTEM, modelfile_text
from mulcot.export.source import ExportSource, resolve_source
from mulcot.export.steps import (
    HF_DIR,
    LOG_DIR,
    ExportConfig,
    ExportResult,
    Progress,
    StepResult,
    export,
)

__all__ = [
    "GGUF_MAGIC",
    "HF_DIR",
    "LOG_DIR",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "MERGE_STAMP",
    "MODELFILE",
    "OLLAMA_QWEN_TEMPLATE",
    "OUTTYPES",
    "QUANT_TYPES",
    "QWEN25_DEFAULT_SYSTEM",
    "ExportConfig",
    "ExportResult",
    "ExportSource",
    "Progress",
    "StepResult",
    "check_gguf",
    "convert_to_gguf",
    "export",
    "gguf_names",
    "inspect_gguf",
    "merge_adapter",
    "merged_folder_problem",
    "modelfile_text",
    "outtype_mmproj",
    "package_versions",
    "parse_quants",
    "quantize_gguf",
    "read_manifest",
    "resolve_source",
    "safe_name",
    "sha256_file",
    "write_manifest",
]
