"""The Ollama ``Modelfile`` written beside an export's GGUFs: Qwen's chat template, the vision projector as a second
``FROM``, and greedy decoding, as the student is evaluated."""

from __future__ import annotations

MODELFILE = "Modelfile"

# Qwen's chat format (ChatML) in Ollama's Go template language: system turn when there is one, then user and
# assistant turns, ending with an open assistant turn.
OLLAMA_QWEN_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ if $last }}<|im_start|>assistant
{{ end }}
{{- else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- end }}"""

# The system turn the Qwen2.5-VL chat template adds when a conversation has none: the student was trained with it.
QWEN25_DEFAULT_SYSTEM = "You are a helpful assistant."


def modelfile_text(
    family: str,
    text_gguf: str,
    mmproj_gguf: str | None,
    *,
    name: str = "student",
    max_tokens: int = 512,
    ctx: int = 4096,
) -> str:
    """An Ollama ``Modelfile`` for the exported student (paths relative to the export folder)."""
    lines = [
        f"# Ollama Modelfile for the MulCoT-RD student '{name}' ({family}), written by mulcot export.",
        f"#   ollama create {name.lower()} -f Modelfile",
        "# Ask it with mulcot's reasoning prompt (P_cot) and an image; it answers with the five fields",
        "# Text_analysis, Image_analysis, Conflict_resolution, Final_conclusion and Prediction.",
        f"FROM ./{text_gguf}",
    ]
    if mmproj_gguf:
        lines += ["# The vision projector: Ollama takes a projector GGUF as a second FROM.", f"FROM ./{mmproj_gguf}"]
    lines.append(f'TEMPLATE """{OLLAMA_QWEN_TEMPLATE}"""')
    if family in ("qwen2.5-vl", "qwen2-vl"):
        lines.append(f'SYSTEM """{QWEN25_DEFAULT_SYSTEM}"""')
    lines += [
        "# Greedy decoding, as the student is evaluated.",
        "PARAMETER temperature 0",
        "PARAMETER top_k 1",
        "PARAMETER top_p 1",
        "PARAMETER repeat_penalty 1",
        f"PARAMETER num_ctx {ctx}",
        f"PARAMETER num_predict {max_tokens}",
        'PARAMETER stop "<|im_end|>"',
        'PARAMETER stop "<|im_start|>"',
        'PARAMETER stop "<|endoftext|>"',
    ]
    return "\n".join(lines) + "\n"
