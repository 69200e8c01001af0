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
    "calibration_metrics",
    "compute_classification_metrics",
    "confusion_matrix",
    "fit_temperature",
    "load_metric",
    "reliability_bins",
    "score_top_level",
    "top_level_groups",
]
