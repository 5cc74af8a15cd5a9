"""Stage 1, CoT enhancement: the teacher annotates, live or through batch files, with ARC retries.

- :mod:`~mulcot.annotate.live`: two passes (P_pre, then P_exp for the misses) through the live endpoint;
- :mod:`~mulcot.annotate.batch`: the same decisions through the OpenAI Batch API or ``vllm run-batch`` files;
- :mod:`~mulcot.annotate.captions`: one caption per image, for text-only backbones;
- :mod:`~mulcot.annotate.replay` and :mod:`~mulcot.annotate.chat_server`: a local OpenAI-compatible server that
  replays stored chains (the demo's teacher).

The endpoint is reached through :mod:`mulcot.core.client`.
"""

from mulcot.annotate.live import PASSES, AnnotateConfig, AnnotateSummary, Annotator, annotate

__all__ = ["PASSES", "AnnotateConfig", "AnnotateSummary", "Annotator", "annotate"]
