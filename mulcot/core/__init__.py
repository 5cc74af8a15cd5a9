"""The core every stage stands on (layer 2 of the house plan; see the README's Layout).

- records and parsing: :mod:`~mulcot.core.labels`, :mod:`~mulcot.core.reasoning` (the five-field record),
  :mod:`~mulcot.core.chains` (the chain row every stage stores), :mod:`~mulcot.core.prompts` (versioned templates);
- what a name on the command line means: :mod:`~mulcot.core.refs` (runs, adapters, models, exports);
- model inputs: :mod:`~mulcot.core.inputs` (a sample as an item, its prompt, its image line) and
  :mod:`~mulcot.core.images` (the one image module: pixel budget, loading, data URLs);
- the outside tools: :mod:`~mulcot.core.client` (the OpenAI-compatible client: teacher, judge, servers),
  :mod:`~mulcot.core.gguf` (GGUF names and header checks, the export manifest reader) and
  :mod:`~mulcot.core.llamacpp` (llama.cpp's converter and vocabulary, fetched once).

The core imports only the store, errors and events: never a stage, the pipeline, the CLI or the TUI.
"""
