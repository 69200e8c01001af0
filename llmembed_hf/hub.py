"""Deprecated module path: model cards and reports are written by `llmembed_hf.model_card`."""

from ._deprecation import forward_names

__getattr__ = forward_names(__name__, dict.fromkeys(
    ["write_card_for_push", "write_finetune_card", "write_model_card"], "llmembed_hf.model_card"))
