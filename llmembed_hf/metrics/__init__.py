"""Metrics of every training line and problem type.

Single-label classification is scored by the `evaluate` modules shipped beside this file (offline):
`classification/` (accuracy + macro-F1) for the head and fine-tuning lines, `intent_slot/` (intent accuracy, slot
span F1, frame exact match) for the intent + slot line. Multi-label classification (micro/macro/example-based F1,
subset accuracy, and the per-label thresholds that maximise each label's F1) and regression (Pearson, Spearman,
MSE) are plain numpy/scipy functions here, so the per-label counts behind the scores, the thresholds and the
cards' plots have one home. `COMPUTE_METRICS` and `SELECTION_METRICS` say, per problem type, how `Trainer` scores
an epoch and which score picks the best epoch (and `llmembed tune`'s best trial).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

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


# ----------------------------------------------------------------------------------------------------------------------
# Multi-label classification
# ----------------------------------------------------------------------------------------------------------------------


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def per_label_f1(predictions: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Each label's F1 = 2 TP / (2 TP + FP + FN) over multi-hot (rows, labels) arrays; NaN for a label that is neither
    predicted nor true in any row (no F1 to measure)."""
    predictions, references = np.asarray(predictions).astype(bool), np.asarray(references).astype(bool)
    true_positives = (predictions & references).sum(0)
    denominator = predictions.sum(0) + references.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * true_positives / denominator, np.nan)


def multi_label_scores(predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """Micro-F1 (counts pooled over labels), macro-F1 (mean of `per_label_f1` over the labels predicted or true
    somewhere, as the single-label macro-F1), example-based F1 (each row's F1 of its predicted and true label sets,
    averaged; 1.0 for a row with neither) and subset accuracy (rows whose predicted set is exactly the true set)."""
    predictions, references = np.asarray(predictions).astype(bool), np.asarray(references).astype(bool)
    if predictions.shape != references.shape:
        raise ValueError(f"predictions {predictions.shape} and references {references.shape} differ in shape.")
    if references.shape[0] == 0:
        return {"micro_f1": 0.0, "macro_f1": 0.0, "samples_f1": 0.0, "subset_accuracy": 0.0}
    true_positives = (predictions & references).sum()
    pooled = predictions.sum() + references.sum()
    per_label = per_label_f1(predictions, references)
    row_true_positives = (predictions & references).sum(1)
    row_sizes = predictions.sum(1) + references.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_row = np.where(row_sizes > 0, 2 * row_true_positives / row_sizes, 1.0)
    return {
        "micro_f1": float(2 * true_positives / pooled) if pooled else 0.0,
        "macro_f1": float(np.nanmean(per_label)) if not np.isnan(per_label).all() else 0.0,
        "samples_f1": float(per_row.mean()),
        "subset_accuracy": float((predictions == references).all(1).mean()),
    }


def compute_multi_label_metrics(eval_pred, thresholds: np.ndarray | list[float] | None = None) -> dict[str, float]:
    """`multi_label_scores` of the labels whose sigmoid score reaches their threshold (None: 0.5 for every label;
    what a head's inference logits give, its tuned thresholds being folded into them)."""
    logits, labels = eval_pred
    probabilities = sigmoid(logits)
    return multi_label_scores(probabilities >= (0.5 if thresholds is None else np.asarray(thresholds)), labels)


def fit_thresholds(probabilities: np.ndarray, labels: np.ndarray) -> list[float]:
    """Per label, the probability threshold that maximises its F1 on these (validation) rows: halfway between the
    lowest score it counts as positive and the next lower score, so a tie is never split; 0.5 for a label with no
    positive row (there is no F1 to maximise), and the highest threshold among equally good ones."""
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels).astype(bool)
    thresholds = []
    for scores, truth in zip(probabilities.T, labels.T):
        positives = int(truth.sum())
        if positives == 0:
            thresholds.append(0.5)
            continue
        order = np.argsort(-scores, kind="stable")
        ranked, hits = scores[order], np.cumsum(truth[order])
        # Predict the top k as positive; only cuts between two different scores are possible.
        cuts = np.flatnonzero(np.append(ranked[:-1] > ranked[1:], True))
        f1 = 2 * hits[cuts] / (cuts + 1 + positives)
        k = cuts[int(np.argmax(f1))]
        lower = ranked[k + 1] if k + 1 < len(ranked) else 0.0
        thresholds.append(float(np.clip((ranked[k] + lower) / 2, 1e-6, 1 - 1e-6)))
    return thresholds


def compute_tuned_multi_label_metrics(eval_pred) -> dict[str, float]:
    """`compute_multi_label_metrics` at the thresholds `fit_thresholds` tunes on these very rows: what a head scores
    on its validation data once `train_head` has tuned them, so the best epoch (and tuning trial) is chosen on the
    score the head will have, not on a 0.5 cut that rare labels never reach early in training."""
    logits, labels = eval_pred
    return compute_multi_label_metrics(eval_pred, fit_thresholds(sigmoid(logits), labels))


# ----------------------------------------------------------------------------------------------------------------------
# Regression
# ----------------------------------------------------------------------------------------------------------------------


def regression_scores(predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlations and the mean squared error; a correlation is 0.0 where either side is
    constant (none can be measured)."""
    from scipy.stats import pearsonr, spearmanr

    predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
    references = np.asarray(references, dtype=np.float64).reshape(-1)
    if predictions.shape != references.shape:
        raise ValueError(f"{predictions.shape[0]} predictions for {references.shape[0]} references.")
    measurable = len(references) > 1 and np.ptp(predictions) > 0 and np.ptp(references) > 0
    correlation = lambda function: float(function(predictions, references)[0]) if measurable else 0.0  # noqa: E731
    return {"pearson": correlation(pearsonr), "spearman": correlation(spearmanr),
            "mse": float(np.mean((predictions - references) ** 2)) if len(references) else 0.0}


def compute_regression_metrics(eval_pred) -> dict[str, float]:
    """`Trainer` ``compute_metrics`` of a one-output regression head: `regression_scores` of its outputs."""
    predictions, labels = eval_pred
    return regression_scores(np.asarray(predictions).reshape(len(labels), -1)[:, 0], labels)


# ----------------------------------------------------------------------------------------------------------------------
# Per problem type
# ----------------------------------------------------------------------------------------------------------------------


def problem_type_of(config: Any) -> str:
    """A head config's problem type: its ``problem_type``, else what transformers infers for class-id labels
    (regression for one output, single-label otherwise)."""
    return config.problem_type or ("regression" if config.num_labels == 1 else "single_label_classification")


#: `compute_metrics` per problem type, scoring a head's inference logits (multi-label: its tuned thresholds are
#: folded into them, so a label applies where the sigmoid reaches 0.5) or raw logits with the 0.5 cut.
COMPUTE_METRICS: dict[str, Callable[[Any], dict[str, float]]] = {
    "single_label_classification": compute_classification_metrics,
    "multi_label_classification": compute_multi_label_metrics,
    "regression": compute_regression_metrics,
}
#: What scores an epoch while training (raw logits, no thresholds yet): multi-label at thresholds tuned on the rows.
TRAINING_METRICS = {**COMPUTE_METRICS, "multi_label_classification": compute_tuned_multi_label_metrics}
#: The scores `llmembed tune` may optimise per problem type; the first picks the best epoch and is tune's default.
TUNING_METRICS = {
    "single_label_classification": ("accuracy", "macro_f1"),
    "multi_label_classification": ("macro_f1", "micro_f1", "samples_f1", "subset_accuracy"),
    "regression": ("spearman", "pearson"),
}
SELECTION_METRICS = {problem_type: metrics[0] for problem_type, metrics in TUNING_METRICS.items()}


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


def _probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


def reliability_bins(logits: np.ndarray, labels, temperature: float = 1.0, bins: int = 10) -> dict[str, list[float]]:
    """Confidence (top softmax score) in ``bins`` equal-width bins: each bin's mean confidence, accuracy and size."""
    probabilities = _probabilities(logits, temperature)
    confidence, correct = probabilities.max(-1), probabilities.argmax(-1) == np.asarray(labels)
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins)
    sums = lambda values: np.bincount(index, weights=values, minlength=bins)  # noqa: E731
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence, accuracy = sums(confidence) / counts, sums(correct.astype(float)) / counts
    return {"confidence": np.nan_to_num(mean_confidence).tolist(), "accuracy": np.nan_to_num(accuracy).tolist(),
            "count": counts.tolist()}


def calibration_metrics(logits: np.ndarray, labels, temperature: float = 1.0, bins: int = 10) -> dict[str, float]:
    """Expected calibration error (``bins`` equal-width confidence bins, weighted by size) and negative log-likelihood
    of the softmax of ``logits / temperature``."""
    labels = np.asarray(labels)
    probabilities = _probabilities(logits, temperature)
    table = reliability_bins(logits, labels, temperature, bins)
    counts = np.asarray(table["count"], dtype=float)
    gaps = np.abs(np.asarray(table["confidence"]) - np.asarray(table["accuracy"]))
    nll = -np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, None)).mean()
    return {"ece": float((gaps * counts).sum() / max(counts.sum(), 1)), "nll": float(nll)}


def fit_temperature(logits: np.ndarray, labels) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels`` under ``softmax(logits / T)``
    (temperature scaling, Guo et al. 2017): one positive scalar, so the arg-max never changes."""
    import torch

    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    log_temperature = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_temperature.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_temperature.detach().clamp(-5.0, 5.0).exp())


__all__ = [
    "COMPUTE_METRICS",
    "SELECTION_METRICS",
    "TRAINING_METRICS",
    "TUNING_METRICS",
    "calibration_metrics",
    "compute_classification_metrics",
    "compute_multi_label_metrics",
    "compute_regression_metrics",
    "compute_tuned_multi_label_metrics",
    "confusion_matrix",
    "fit_temperature",
    "fit_thresholds",
    "load_metric",
    "multi_label_scores",
    "per_label_f1",
    "problem_type_of",
    "regression_scores",
    "reliability_bins",
    "score_top_level",
    "sigmoid",
    "top_level_groups",
]
