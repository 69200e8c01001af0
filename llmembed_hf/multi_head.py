"""Several heads, one backbone pass: heads trained on the same frozen backbones classify a text together.

Frozen backbones are most of the cost of a prediction; heads on the same backbones (same specs, same weights) can
share both the loaded copy (`shared_backbone`: loading a second head loads nothing again) and the pass itself:
`MultiHeadClassifier` tokenises once, runs each backbone once, and feeds the pooled features to every head.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch

from .modeling.modeling_llmembed import LLMEmbedForSequenceClassification

#: Spec fields that must agree for heads to share a backbone pass (the views they pool and how they tokenise).
_SHARED_FIELDS = ("name", "model_id", "revision", "gguf_file", "layers", "pooling", "normalize", "max_length",
                  "prompt", "pool_prompt", "quantization", "dtype")


class MultiHeadClassifier:
    """Classify texts with several LLMEmbed heads from one backbone pass.

    ``heads``: loaded heads (or folders / Hub ids) whose backbones are the same; a head over other backbones is an
    error naming the spec field that differs. ``names``: how results call each head (default: its folder name).
    """

    def __init__(self, heads: Sequence[LLMEmbedForSequenceClassification | str | os.PathLike],
                 names: Sequence[str] | None = None) -> None:
        if not heads:
            raise ValueError("MultiHeadClassifier needs at least one head.")
        loaded = [head if isinstance(head, LLMEmbedForSequenceClassification)
                  else LLMEmbedForSequenceClassification.from_pretrained(head) for head in heads]
        self.names = list(names) if names is not None else [
            os.path.basename(os.path.normpath(str(h))) if not isinstance(h, LLMEmbedForSequenceClassification)
            else (h.name_or_path or f"head{i}") for i, h in enumerate(heads)]
        if len(self.names) != len(loaded) or len(set(self.names)) != len(self.names):
            raise ValueError(f"names {self.names} must give each of the {len(loaded)} heads its own name.")
        first = loaded[0].config.backbone_specs
        for name, head in zip(self.names[1:], loaded[1:]):
            specs = head.config.backbone_specs
            if len(specs) != len(first):
                raise ValueError(f"head {name!r} has {len(specs)} backbones, {self.names[0]!r} has {len(first)}: "
                                 "heads share a pass only over the same backbones.")
            if head.config.pair_encoding != loaded[0].config.pair_encoding:
                raise ValueError(f"head {name!r} has pair_encoding={head.config.pair_encoding!r}, {self.names[0]!r} "
                                 f"has {loaded[0].config.pair_encoding!r}: heads share a pass only when they encode "
                                 "their inputs alike.")
            for ours, theirs in zip(first, specs):
                for field in _SHARED_FIELDS + ("weights_sha256",):
                    if getattr(ours, field) != getattr(theirs, field):
                        raise ValueError(
                            f"head {name!r}: backbones[{theirs.name!r}].{field}={getattr(theirs, field)!r} differs "
                            f"from head {self.names[0]!r}: {getattr(ours, field)!r}; heads share a pass only over the "
                            "same backbones."
                        )
        self.heads = loaded
        self.encoder = loaded[0]
        if not self.encoder.backbones:
            self.encoder.load_backbones()
        for head in loaded[1:]:  # the registry hands them the encoder's copies: nothing loads twice
            if not head.backbones:
                head.load_backbones()

    @torch.inference_mode()
    def __call__(self, texts: str | Sequence[str], batch_size: int = 32,
                 text_pairs: str | Sequence[str] | None = None) -> Any:
        """For every text (with ``text_pairs``, for heads of pairs), each head's `prediction_of` (single-label: its
        calibrated top class ``{"label", "score"}``; multi-label: the labels that apply and every label's score;
        regression: the score), keyed by head name: one such dict for a single text, a list of them for a list."""
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if text_pairs is not None:
            text_pairs = [text_pairs] if isinstance(text_pairs, str) else list(text_pairs)
        results: list[dict[str, dict[str, Any]]] = []
        for start in range(0, len(texts), batch_size):
            pairs = None if text_pairs is None else text_pairs[start : start + batch_size]
            batch = self.encoder.tokenizer(texts[start : start + batch_size], text_pair=pairs, padding=True,
                                           return_tensors="pt")
            features = self.encoder.encode(**batch)
            outputs = {}
            for name, head in zip(self.names, self.heads):
                head.eval()
                outputs[name] = pipeline_scores(head.config, head(pooled_features=features.to(head.device)).logits)
            results += [{name: prediction_of(head.config, outputs[name][row])
                         for name, head in zip(self.names, self.heads)} for row in range(features.shape[0])]
        return results[0] if single else results


def pipeline_scores(config: Any, logits: torch.Tensor) -> list[Any]:
    """What ``pipeline("text-classification")`` returns per row of a head's inference ``logits`` (its default
    function by problem type): the top label's ``{"label", "score"}`` (softmax; regression: the raw output), and
    for multi-label every label's sigmoid score, best first (as with ``top_k=None``)."""
    logits = logits.float().cpu()
    if config.problem_type == "multi_label_classification":
        return [sorted(({"label": config.id2label[i], "score": float(s)} for i, s in enumerate(row)),
                       key=lambda entry: entry["score"], reverse=True) for row in logits.sigmoid()]
    if config.problem_type == "regression":
        scores = logits
    else:
        scores = logits.sigmoid() if config.num_labels == 1 else logits.softmax(-1)
    return [{"label": config.id2label[int(row.argmax())], "score": float(row.max())} for row in scores]


def prediction_of(config: Any, output: Any) -> dict[str, Any]:
    """One text's prediction as ``llmembed predict`` writes it, from the pipeline's output for it: ``{"label",
    "score"}``; multi-label (every label's scores, from ``top_k=None``): ``{"labels": [those scoring >= 0.5, the
    decision rule once the tuned thresholds are folded in], "scores": [...]}``; regression: ``{"score"}``."""
    if config.problem_type == "multi_label_classification":
        return {"labels": [entry["label"] for entry in output if entry["score"] >= 0.5], "scores": output}
    if config.problem_type == "regression":
        return {"score": output["score"]}
    return dict(output)


__all__ = ["MultiHeadClassifier", "pipeline_scores", "prediction_of"]
