"""Evaluation metrics of MulCoT-RD (DESIGN.md §1 Stage 5): classification and reasoning quality.

- :mod:`~mulcot.evaluate.metrics.classification`: accuracy, weighted-F1, macro-F1 and consistency
  (:func:`classification_metrics`, :func:`consistency`), scikit-learn with the three labels fixed.
- :mod:`~mulcot.evaluate.metrics.calibration`: metrics of label probabilities (AUROC, ECE and reliability bins, log
  loss, Brier), :func:`probability_metrics`;
- :mod:`~mulcot.evaluate.metrics.paired`: two models on the same posts (exact McNemar, paired cluster bootstrap of
  the accuracy and macro-F1 differences, agreement), :func:`paired_comparison`;
- :mod:`~mulcot.evaluate.metrics.reasoning`: :func:`reasoning_metrics`, generated reasoning against the
  teacher's reasoning, averaged per pair (corpus-level BLEU and Distinct are options), built from
- :mod:`~mulcot.evaluate.metrics.text`: BLEU, ROUGE-L, METEOR, Distinct-n and their tokens;
- :mod:`~mulcot.evaluate.metrics.sim`: Sim, cosine similarity of sentence-transformers embeddings;
- :mod:`~mulcot.evaluate.metrics.sim_cache`: Sim embeddings kept on disk.

Each module's docstring gives its metrics' exact definitions.
"""

from mulcot.evaluate.metrics.calibration import expected_calibration_error, probability_metrics
from mulcot.evaluate.metrics.classification import INVALID_PREDICTION, classification_metrics, consistency
from mulcot.evaluate.metrics.paired import agreement, mcnemar_exact, paired_bootstrap, paired_comparison
from mulcot.evaluate.metrics.reasoning import (
    CORPUS_METRICS,
    REASONING_METRICS,
    Progress,
    ReasoningScores,
    normalize_metric_names,
    reasoning_metrics,
)
from mulcot.evaluate.metrics.sim import (
    DEFAULT_SIM_MODEL_PACKAGE,
    default_sim_model_path,
    load_sim_model,
    sim_scores,
)
from mulcot.evaluate.metrics.sim_cache import EmbeddingCache, default_embedding_cache_dir, sim_model_key
from mulcot.evaluate.metrics.text import (
    corpus_bleu,
    corpus_distinct_n,
    distinct_n,
    meteor,
    rouge_l_f,
    sentence_bleu,
    tokenize,
)

__all__ = [
    "CORPUS_METRICS",
    "DEFAULT_SIM_MODEL_PACKAGE",
    "INVALID_PREDICTION",
    "REASONING_METRICS",
    "EmbeddingCache",
    "Progress",
    "ReasoningScores",
    "agreement",
    "classification_metrics",
    "consistency",
    "corpus_bleu",
    "corpus_distinct_n",
    "default_embedding_cache_dir",
    "default_sim_model_path",
    "distinct_n",
    "expected_calibration_error",
    "load_sim_model",
    "mcnemar_exact",
    "meteor",
    "normalize_metric_names",
    "paired_bootstrap",
    "paired_comparison",
    "probability_metrics",
    "reasoning_metrics",
    "rouge_l_f",
    "sentence_bleu",
    "sim_model_key",
    "sim_scores",
    "tokenize",
]
