"""The intent + slot line (arXiv 2412.08587's multi-task model): one backbone, an intent head and a slot head.

The same shape as the head line: `training_args` (data and training arguments), `data` (word lists, BIO tags and
intents, encoded for a backbone), `slots` (BIO repair, spans, sub-token alignment), `trainer`
(`finetune_intent_slot`) and `pipeline` (``pipeline("intent-slot-filling")``); the model itself is
`LLMEmbedForIntentAndSlotFilling` (``modeling/``) and its card is written by `llmembed_hf.model_card`.
"""

from .data import IntentSlotCollator, encode_intent_slot, load_intent_slot_split, slot_label_names
from .pipeline import IntentSlotFillingPipeline  # registers pipeline("intent-slot-filling")
from .trainer import KeepBestCallback, finetune_intent_slot, intent_slot_metrics_fn
from .training_args import IntentSlotArguments, IntentSlotDataArguments

__all__ = [
    "IntentSlotArguments",
    "IntentSlotCollator",
    "IntentSlotDataArguments",
    "IntentSlotFillingPipeline",
    "KeepBestCallback",
    "encode_intent_slot",
    "finetune_intent_slot",
    "intent_slot_metrics_fn",
    "load_intent_slot_split",
    "slot_label_names",
]
