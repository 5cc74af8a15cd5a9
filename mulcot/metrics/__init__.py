"""The metrics of MulCoT-RD (DESIGN.md §1 Stage 5), as pure functions (layer 2 of the house plan, beside the core):
classification and reasoning quality. The evaluate stage applies them to a model or a source of chains; training
(dev selection), expand and predict score with the classification ones.

- :mod:`~mulcot.metrics.classification`: accuracy, weighted-F1, macro-F1 and consistency
  (:func:`classification_metrics`, :func:`consistency`), scikit-learn with the three labels fixed.
- :mod:`~mulcot.metrics.calibration`: metrics of label probabilities (AUROC, ECE and reliability bins, log
  loss, Brier), :func:`probability_metrics`;
- :mod:`~mulcot.metrics.paired`: two models on the same posts (exact McNemar, paired cluster bootstrap of
  the accuracy and macro-F1 differences, agreement), :func:`paired_comparison`;
- :mod:`~mulcot.metrics.reasoning`: :func:`reasoning_metrics`, generated reasoning against the
  teacher's reasoning, averaged per pair (corpus-level BLEU and Distinct are options), built from
- :mod:`~mulcot.metrics.text`: BLEU, ROUGE-L, METEOR, Distinct-n and their tokens;
- :mod:`~mulcot.metrics.sim`: Sim, cosine similarity of sentence-transformers embeddings;
- :mod:`~mulcot.metrics.sim_cache`: Sim embeddings kept on disk;
- :mod:`~mulcot.metrics.wordnet`: WordNet for METEOR, found and set up offline.

Each module's docstring gives its metrics' exact definitions.
"""

from mulcot.metrics.calibration import expected_calibration_error, probability_metrics
from mulcot.metrics.classification import INVALID_PREDICTION, classification_metrics, consistency
from mulcot.metrics.paired import agreement, mcnemar_exact, paired_bootstrap, paired_comparison, score_intervals
from mulcot.metrics.reasoning import (
    CORPUS_METRICS,
    REASONING_METRICS,
    Progress,
    ReasoningScores,
    normalize_metric_names,
    reasoning_metrics,
)
from mulcot.metrics.sim import (
    DEFAULT_SIM_MODEL_PACKAGE,
    default_sim_model_path,
    load_sim_model,
    sim_scores,
)
from mulcot.metrics.sim_cache import EmbeddingCache, default_embedding_cache_dir, sim_model_key
from mulcot.metrics.text import (
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
    "score_intervals",
    "probability_metrics",
    "reasoning_metrics",
    "rouge_l_f",
    "sentence_bleu",
    "sim_model_key",
    "sim_scores",
    "tokenize",
]
