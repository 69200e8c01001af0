"""Accuracy and macro-F1 as one `evaluate` metric module shipped with llmembed-hf, so it loads offline."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = (
    "accuracy: the fraction of predictions equal to the references. macro_f1: the unweighted mean over classes "
    "(those seen in predictions or references) of each class's F1."
)
_CITATION = ""
_KWARGS_DESCRIPTION = "predictions (list of int), references (list of int) -> {'accuracy': float, 'macro_f1': float}"


class Classification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        predictions, references = np.asarray(predictions), np.asarray(references)
        if len(references) == 0:
            return {"accuracy": 0.0, "macro_f1": 0.0}
        scores = []
        for label in np.union1d(predictions, references):
            true_positive = np.sum((predictions == label) & (references == label))
            predicted, actual = np.sum(predictions == label), np.sum(references == label)
            precision = true_positive / predicted if predicted else 0.0
            recall = true_positive / actual if actual else 0.0
            scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        return {"accuracy": float((predictions == references).mean()), "macro_f1": float(np.mean(scores))}
