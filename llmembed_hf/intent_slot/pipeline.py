"""``pipeline("intent-slot-filling")``: the intent with its score and the slots as typed character spans of the text.

Registered with transformers' ``PIPELINE_REGISTRY`` when `llmembed_hf` is imported, so
``pipeline("intent-slot-filling", model=folder_or_repo_id)`` works like a built-in task.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .slots import decode_slots, first_subtoken_positions, word_offsets

TASK = "intent-slot-filling"


class IntentSlotFillingPipeline(Pipeline):
    """Intent detection and slot filling with an `LLMEmbedForIntentAndSlotFilling` model.

    Each text gives ``{"intent": str, "score": float, "slots": [{"type", "start", "end", "text", "score"}]}``:
    ``text[start:end]`` is the slot's text. The text is split into words on whitespace, as in training; a word's
    tag is read from its first sub-token, and BIO tags are repaired as in the metrics (`llmembed_hf.slots`). A slot's
    score is the mean probability of its words' tags. Words cut off by ``max_length`` are tagged ``O``.
    """

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False

    def _sanitize_parameters(self, max_length: int | None = None, **kwargs: Any) -> tuple[dict, dict, dict]:
        return ({"max_length": max_length} if max_length is not None else {}), {}, {}

    def _max_length(self) -> int:
        spec = getattr(self.model.config, "backbone_spec", None) or {}
        return int(spec.get("max_length") or min(getattr(self.tokenizer, "model_max_length", 512), 512))

    def preprocess(self, text: str, max_length: int | None = None) -> dict[str, Any]:
        if not isinstance(text, str):
            raise TypeError(f"{TASK} takes str texts, got {type(text).__name__} ({text!r:.50}).")
        encoding = self.tokenizer(
            [text.split()], is_split_into_words=True, truncation=True, max_length=max_length or self._max_length(),
            return_tensors="pt", return_token_type_ids=False,
        )
        return {"input_ids": encoding["input_ids"], "attention_mask": encoding["attention_mask"],
                "word_ids": encoding.word_ids(0), "text": text}

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        outputs = self.model(input_ids=model_inputs["input_ids"], attention_mask=model_inputs["attention_mask"])
        return {"intent_logits": outputs.intent_logits, "slot_logits": outputs.slot_logits,
                "attention_mask": model_inputs["attention_mask"], "word_ids": model_inputs["word_ids"],
                "text": model_inputs["text"]}

    def postprocess(self, model_outputs: dict[str, Any]) -> dict[str, Any]:
        config = self.model.config
        text = model_outputs["text"]
        intent_probs = model_outputs["intent_logits"][0].float().softmax(-1)
        # Real tokens in order, wherever batching put the padding (left or right).
        token_probs = model_outputs["slot_logits"][0][model_outputs["attention_mask"][0].bool()].float().softmax(-1)
        positions = first_subtoken_positions(model_outputs["word_ids"], len(word_offsets(text)))
        tags, scores = [], []
        for position in positions:
            if position is None:
                tags.append("O")
                scores.append(1.0)
            else:
                score, index = torch.max(token_probs[position], dim=-1)
                tags.append(config.slot_labels[int(index)])
                scores.append(float(score))
        intent_score, intent = torch.max(intent_probs, dim=-1)
        return {"intent": config.id2label[int(intent)], "score": float(intent_score),
                "slots": decode_slots(text, tags, scores)}


PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=IntentSlotFillingPipeline, pt_model=AutoModel, type="text")

__all__ = ["TASK", "IntentSlotFillingPipeline"]
