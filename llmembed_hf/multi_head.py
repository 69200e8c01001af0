"""Several heads, one backbone pass: heads trained on frozen views of the same backbones classify a text together.

Frozen backbones are most of the cost of a prediction. `MultiHeadClassifier` tokenises once, computes every distinct
view the heads use once (a view: what a spec pools from which backbone, however the head names it), and gives each
head its views: heads on the same preset share every view; heads on different views of one model (``small`` and
``small-layers``: EmbeddingGemma's sentence embedding, and that plus its middle states) share its forward pass too
(`LLMEmbedForSequenceClassification.pass_groups`); loaded backbones are shared through the registry
(`shared_backbone`), so nothing loads twice.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch

from .lexical import lexical_inputs
from .modeling.configuration_llmembed import LLMEmbedConfig
from .modeling.modeling_llmembed import LLMEmbedForSequenceClassification, forward_pass_key

#: Spec fields that, beside its forward pass (`forward_pass_key`), decide a view's vectors of a text: what it pools and
#: what the head reads of the pooled state. The spec's name does not, and its role only through a pair head's encoding.
_POOLING_FIELDS = ("layers", "pooling", "normalize", "pool_prompt", "dense_modules", "hidden_size")


class MultiHeadClassifier:
    """Classify texts with several LLMEmbed heads from one pass of their backbones.

    ``heads``: loaded heads (or folders / Hub ids) of single texts, or all of text pairs encoded alike (else an error
    says so). ``names``: how results call each head (default: its folder name).
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
        pair_encoding = loaded[0].config.pair_encoding
        for name, head in zip(self.names[1:], loaded[1:]):
            if head.config.pair_encoding != pair_encoding:
                raise ValueError(f"head {name!r} has pair_encoding={head.config.pair_encoding!r}, {self.names[0]!r} "
                                 f"has {pair_encoding!r}: heads share a pass only when they encode their inputs "
                                 "alike.")
        self.heads = loaded
        self.encoder, self.views = self._encoder_of(loaded)

    @staticmethod
    def _encoder_of(heads: list[LLMEmbedForSequenceClassification]) -> tuple[LLMEmbedForSequenceClassification,
                                                                            list[list[str]]]:
        """A model over every distinct view of ``heads`` (its own head unused), and each head's views by their names
        there, in the head's order."""
        specs: dict[tuple, dict[str, Any]] = {}
        views = []
        for head in heads:
            views.append([])
            for spec in head.config.backbone_specs:
                pooling = (tuple(value) if isinstance(value, list) else value
                           for value in (getattr(spec, field) for field in _POOLING_FIELDS))
                key = (forward_pass_key(spec), *pooling, head.config.pair_encoding_of(spec))
                if key not in specs:
                    taken = {entry["name"] for entry in specs.values()}
                    name = spec.name if spec.name not in taken else next(
                        f"{spec.name}_{i}" for i in range(2, len(taken) + 2) if f"{spec.name}_{i}" not in taken)
                    specs[key] = dict(spec.to_dict(), name=name)
                views[-1].append(specs[key]["name"])
        config = LLMEmbedConfig(backbones=list(specs.values()), pair_encoding=heads[0].config.pair_encoding)
        encoder = LLMEmbedForSequenceClassification(config).eval()
        encoder.load_backbones()  # the registry hands it the copies the heads hold, if they loaded theirs
        return encoder, views

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
        columns = self.encoder.config.backbone_columns
        results: list[dict[str, dict[str, Any]]] = []
        for start in range(0, len(texts), batch_size):
            pairs = None if text_pairs is None else text_pairs[start : start + batch_size]
            batch = self.encoder.tokenizer(texts[start : start + batch_size], text_pair=pairs, padding=True,
                                           return_tensors="pt")
            features = self.encoder.encode(**batch)
            lexical = (lexical_inputs(texts[start : start + batch_size])
                       if any(head.lexical_view is not None for head in self.heads) else {})
            outputs = {}
            for name, head, views in zip(self.names, self.heads, self.views):
                head.eval()
                own = torch.cat([features[:, columns[view]] for view in views], dim=-1)
                extra = lexical if head.lexical_view is not None else {}
                outputs[name] = pipeline_scores(head.config, head(pooled_features=own.to(head.device), **extra).logits)
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
