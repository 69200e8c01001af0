"""Deprecated module path: ``pipeline("intent-slot-filling")`` lives in `llmembed_hf.intent_slot.pipeline`."""

from ._deprecation import forward_names

__getattr__ = forward_names(__name__, dict.fromkeys(["TASK", "IntentSlotFillingPipeline"],
                                                    "llmembed_hf.intent_slot.pipeline"))
