"""Stage 6b, predict: the student asked about one post, or about every post of a split, through any generation
backend (:mod:`mulcot.generation`: llama.cpp on the exported GGUF, transformers, or a server); a split's answers
are stored as chains for ``mulcot eval`` (:mod:`~mulcot.predict.batch`)."""

from mulcot.predict.batch import (
    PROMPT_STAGES,
    BatchSummary,
    PostPrediction,
    predict_dataset,
    predict_post,
)

__all__ = ["PROMPT_STAGES", "BatchSummary", "PostPrediction", "predict_dataset", "predict_post"]
