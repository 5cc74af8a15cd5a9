"""Classification metrics: accuracy, weighted-F1, macro-F1 and consistency (DESIGN.md §1 Stage 5).

They follow scikit-learn with the three labels fixed (:data:`mulcot.core.labels.LABELS`); labels are normalised with
:func:`mulcot.core.labels.normalize_label`, and a prediction that is not a label counts as wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mulcot.core.labels import LABELS, normalize_label
from mulcot.errors import MetricsError

#: A prediction that is not a label becomes this string, which is in no column of LABELS: it counts as wrong.
INVALID_PREDICTION = "<invalid>"


def _pred_label(value: object) -> str:
    return normalize_label(value) or INVALID_PREDICTION


def classification_metrics(y_true: Sequence[object], y_pred: Sequence[object]) -> dict[str, Any]:
    """Accuracy, weighted-F1 and macro-F1 over ``LABELS``, the confusion matrix and per-label counts.

    Labels are normalised with :func:`mulcot.core.labels.normalize_label`; a prediction that is not a label (None,
    "I cannot tell", ...) becomes :data:`INVALID_PREDICTION` and counts as wrong. Definitions (scikit-learn,
    with ``labels=LABELS``, ``zero_division=0``): accuracy = share of exact matches; F1 per label =
    2PR/(P+R); weighted-F1 = F1s weighted by gold support (reported for MSA); macro-F1 = unweighted mean
    (reported for MASC); balanced accuracy = mean recall over the labels that occur in the gold labels
    (scikit-learn's ``balanced_accuracy_score``); ``per_label[label]["recall"]`` is each label's recall.
    ``confusion_matrix[i][j]`` counts gold ``LABELS[i]`` predicted as ``LABELS[j]`` (invalid predictions are in
    no column; ``per_label[label]["invalid"]`` counts them by gold label).

    Raises :class:`MetricsError` when the lengths differ, nothing is given, or a gold label is not a label.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    if len(y_true) != len(y_pred):
        raise MetricsError(f"{len(y_true)} gold labels but {len(y_pred)} predictions")
    if not y_true:
        raise MetricsError("no samples to score")
    gold: list[str] = []
    for i, value in enumerate(y_true):
        label = normalize_label(value)
        if label is None:
            raise MetricsError(f"gold label #{i + 1} {value!r} is not one of {', '.join(LABELS)}")
        gold.append(label)
    pred = [_pred_label(v) for v in y_pred]
    labels = list(LABELS)
    precision, recall, f1, support = precision_recall_fscore_support(
        gold, pred, labels=labels, zero_division=0
    )
    matrix = confusion_matrix(gold, pred, labels=labels)
    per_label: dict[str, dict[str, float | int]] = {}
    for k, label in enumerate(labels):
        per_label[label] = {
            "gold": int(support[k]),
            "predicted": sum(p == label for p in pred),
            "correct": int(matrix[k][k]),
            "invalid": sum(g == label and p == INVALID_PREDICTION for g, p in zip(gold, pred, strict=True)),
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
        }
    return {
        "n": len(gold),
        "accuracy": float(accuracy_score(gold, pred)),
        "weighted_f1": float(f1_score(gold, pred, labels=labels, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(gold, pred, labels=labels, average="macro", zero_division=0)),
        "balanced_accuracy": float(sum(recall[k] for k in range(len(labels)) if support[k]) / sum(support > 0)),
        "invalid_predictions": sum(p == INVALID_PREDICTION for p in pred),
        "labels": labels,
        "confusion_matrix": [[int(x) for x in row] for row in matrix],
        "per_label": per_label,
    }


def consistency(chain_preds: Sequence[object], label_preds: Sequence[object]) -> float:
    """Share of samples whose reasoning's own ``Prediction`` equals the label head's prediction.

    Both sides are normalised with :func:`normalize_label`; a pair agrees only when both are valid labels and
    equal (two unparseable predictions do not agree). Raises :class:`MetricsError` on different lengths or no
    samples.
    """
    if len(chain_preds) != len(label_preds):
        raise MetricsError(
            f"{len(chain_preds)} reasoning predictions but {len(label_preds)} label predictions"
        )
    if not chain_preds:
        raise MetricsError("no samples to compare")
    agree = 0
    for a, b in zip(chain_preds, label_preds, strict=True):
        la, lb = normalize_label(a), normalize_label(b)
        agree += la is not None and la == lb
    return agree / len(chain_preds)
