"""Metrics of every training line, computed with the `evaluate` modules shipped beside this file (offline).

`classification/` (accuracy + macro-F1) scores the head and fine-tuning lines, `intent_slot/` (intent accuracy,
slot span F1, frame exact match) the intent + slot line; the helpers here turn `Trainer` outputs into their inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

METRICS_DIR = Path(__file__).parent


def load_metric(name: str = "classification"):
    """An `evaluate` metric module shipped with the package (``classification`` or ``intent_slot``): no Hub access."""
    import evaluate

    return evaluate.load(str(METRICS_DIR / name))


def compute_classification_metrics(eval_pred) -> dict[str, float]:
    """`Trainer` ``compute_metrics``: accuracy and macro-F1 of the arg-max predictions."""
    logits, labels = eval_pred
    predictions = np.asarray(logits).argmax(axis=-1)
    return load_metric().compute(predictions=predictions, references=labels)


def confusion_matrix(labels: list[int], predictions: np.ndarray, num_labels: int) -> list[list[int]]:
    """Counts of (true class, predicted class) pairs, rows = true class, as the model cards plot them."""
    matrix = np.zeros((num_labels, num_labels), dtype=int)
    np.add.at(matrix, (np.asarray(labels), predictions), 1)
    return matrix.tolist()


def top_level_groups(names: list[str], separator: str = ".") -> tuple[list[int], list[str]]:
    """Map each class to the group named by its first ``separator``-component; returns (group id per class, groups).

    20 Newsgroups scored as its 7 top-level groups (alt, comp, misc, rec, sci, soc, talk), as in arXiv 2412.08587:
    ``comp.graphics`` and ``comp.windows.x`` both become ``comp``. Groups are sorted by name.
    """
    prefixes = [name.split(separator, 1)[0] for name in names]
    groups = sorted(set(prefixes))
    index = {group: i for i, group in enumerate(groups)}
    return [index[prefix] for prefix in prefixes], groups


def score_top_level(predictions, references, names: list[str], separator: str = ".") -> dict[str, float]:
    """Accuracy and macro-F1 after mapping predicted and true class ids to their top-level groups."""
    mapping = np.asarray(top_level_groups(names, separator)[0])
    predictions, references = np.asarray(predictions), np.asarray(references)
    if predictions.shape != references.shape:
        raise ValueError(f"{predictions.shape[0]} predictions for {references.shape[0]} references.")
    ids = np.concatenate([predictions, references])
    if ids.size and (ids.min() < 0 or ids.max() >= len(names)):
        raise ValueError(f"class ids must lie in 0..{len(names) - 1} (the {len(names)} class names given).")
    metrics = load_metric().compute(predictions=mapping[predictions], references=mapping[references])
    return {f"top_level_{key}": value for key, value in metrics.items()}


__all__ = [
    "compute_classification_metrics",
    "confusion_matrix",
    "load_metric",
    "score_top_level",
    "top_level_groups",
]
