"""Intent accuracy, slot span micro-F1 and exact-match frame accuracy as one offline `evaluate` metric module."""

import datasets
import evaluate

from llmembed_hf.intent_slot.slots import bio_to_spans

_DESCRIPTION = (
    "intent_accuracy: fraction of utterances whose intent is right. slot_precision / slot_recall / slot_f1: micro "
    "scores over typed slot spans read from word-level BIO tags (a span counts only if its words and its type both "
    "match; the seqeval convention, with an I-X that continues no X span read as B-X). exact_match: fraction of "
    "utterances whose intent and whole set of slot spans are right (frame accuracy)."
)
_CITATION = ""
_KWARGS_DESCRIPTION = (
    "predictions, references: lists of {'intent': str, 'slots': list of word-level BIO tags (str)} -> "
    "{'intent_accuracy', 'slot_precision', 'slot_recall', 'slot_f1', 'exact_match': float}"
)

_FRAME = {"intent": datasets.Value("string"), "slots": datasets.Sequence(datasets.Value("string"))}


class IntentSlot(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": _FRAME, "references": _FRAME}),
        )

    def _compute(self, predictions, references):
        correct_spans = predicted_spans = reference_spans = right_intents = right_frames = 0
        for index, (prediction, reference) in enumerate(zip(predictions, references)):
            if len(prediction["slots"]) != len(reference["slots"]):
                raise ValueError(
                    f"example {index}: {len(prediction['slots'])} predicted slot tags but "
                    f"{len(reference['slots'])} reference tags; tag every word once."
                )
            predicted, expected = set(bio_to_spans(prediction["slots"])), set(bio_to_spans(reference["slots"]))
            correct_spans += len(predicted & expected)
            predicted_spans += len(predicted)
            reference_spans += len(expected)
            intent_right = prediction["intent"] == reference["intent"]
            right_intents += intent_right
            right_frames += intent_right and predicted == expected
        total = len(references)
        precision = correct_spans / predicted_spans if predicted_spans else 0.0
        recall = correct_spans / reference_spans if reference_spans else 0.0
        return {
            "intent_accuracy": right_intents / total if total else 0.0,
            "slot_precision": precision,
            "slot_recall": recall,
            "slot_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "exact_match": right_frames / total if total else 0.0,
        }
