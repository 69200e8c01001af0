"""Deprecated module path: BIO slot tags live in `llmembed_hf.intent_slot.slots`."""

from ._deprecation import forward_names
from .intent_slot import slots as _slots

__getattr__ = forward_names(__name__, dict.fromkeys(_slots.__all__, "llmembed_hf.intent_slot.slots"))
