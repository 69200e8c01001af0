# Self-contained (torch + transformers only): this file is uploaded with every intent + slot model as remote code.
"""Configuration of the multi-task intent detection + slot filling model (one backbone, two heads)."""

from __future__ import annotations

import copy
from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import logging

from .configuration_llmembed import BackboneSpec

logger = logging.get_logger(__name__)

#: How the intent head pools the backbone's last hidden states (masked: padding never counts).
INTENT_POOLINGS = ("mean", "cls", "last_token")
#: frozen: only the heads train and are saved; lora: adapters + heads; full: every weight.
TUNING_MODES = ("frozen", "lora", "full")


#: The slot loss weight of a multi-task model (the intent's is 1). On all of MASSIVE en-US it kept a MiniLM multi-task
#: model within 1 point of both single-task models with LoRA (slot F1 74.4 vs 71.2 at weight 1, intent unchanged;
#: full fine-tuning: 76.3 vs 66.2, intent -1.0): benchmarks/RESULTS.md, "Fine-tuning at full size: MASSIVE en-US".
DEFAULT_SLOT_LOSS_WEIGHT = 3.0


class LLMEmbedIntentSlotConfig(PretrainedConfig):
    r"""Configuration of [`LLMEmbedForIntentAndSlotFilling`]: a backbone with an intent and a slot head.

    The intent labels are the usual ``id2label``/``label2id``; the slot labels are a separate BIO tag list, so the
    same config drives `AutoModel`, `pipeline` and the metrics without a side file.

    Args:
        backbone (`dict` or `PretrainedConfig`): the backbone's own configuration (a sub-config, as
            `EncoderDecoderConfig` holds its encoder's). The model builds the backbone from it with
            `AutoModel.from_config`, so a saved model knows its architecture without downloading anything.
        backbone_spec (`dict`, *optional*): where the pretrained backbone weights come from (a [`BackboneSpec`]:
            model_id, revision, gguf_file, weights_sha256, max_length). Needed whenever the saved weights
            leave the backbone out (``tuning_mode`` ``frozen`` or ``lora``): loading then re-reads the
            backbone from here and refuses weights whose sha256 differs from the one trained on.
        slot_labels (`list[str]`): BIO tags of the slot head, e.g. ``["O", "B-date", "I-date", ...]``.
        pooling (`str`): how the intent head pools tokens: ``last_token`` for decoders (the only position that
            has seen the whole text), ``mean`` or ``cls`` for encoders.
        intent_loss_weight, slot_loss_weight (`float`): weights of the two cross-entropies in the joint loss. A
            weight of 0 trains that task not at all, which gives the single-task baselines with the same code. The
            slot weight defaults to `DEFAULT_SLOT_LOSS_WEIGHT`.
        classifier_dropout (`float`): dropout before both heads.
        tuning_mode (`str`): ``frozen`` (backbone fixed, heads trained), ``lora`` (LoRA adapters on the backbone
            and the heads) or ``full`` (everything). Decides what ``save_pretrained`` writes.
        lora (`dict`, *optional*): LoRA hyper-parameters when ``tuning_mode="lora"``: ``r``, ``lora_alpha``,
            ``lora_dropout``, ``target_modules``.
    """

    model_type = "llmembed-intent-slot"
    sub_configs_defaults = {"backbone": SubConfigSpec(config_class=AutoConfig, model_type="bert", optional=True)}

    def __init__(
        self,
        backbone: dict[str, Any] | PretrainedConfig | None = None,
        backbone_spec: dict[str, Any] | None = None,
        slot_labels: list[str] | None = None,
        pooling: str = "mean",
        intent_loss_weight: float = 1.0,
        slot_loss_weight: float = DEFAULT_SLOT_LOSS_WEIGHT,
        classifier_dropout: float = 0.1,
        tuning_mode: str = "frozen",
        lora: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(backbone, dict):
            backbone = copy.deepcopy(backbone)
            model_type = backbone.pop("model_type", None)
            if model_type is None:
                raise ValueError("backbone: the sub-config dict needs a 'model_type' (e.g. 'bert', 'llama').")
            backbone.pop("transformers_version", None)
            backbone = AutoConfig.for_model(model_type, **backbone)
        self.backbone = backbone
        self.backbone_spec = BackboneSpec.from_dict(backbone_spec).to_dict() if backbone_spec else None
        self.slot_labels = list(slot_labels) if slot_labels is not None else ["O"]
        self.pooling = pooling
        self.intent_loss_weight = float(intent_loss_weight)
        self.slot_loss_weight = float(slot_loss_weight)
        self.classifier_dropout = classifier_dropout
        self.tuning_mode = tuning_mode
        self.lora = dict(lora) if lora is not None else None
        super().__init__(**kwargs)
        # transformers builds a bare config to diff defaults on save: only validate real ones.
        if backbone is not None:
            self.validate()

    def validate(self) -> None:
        """Raise a ValueError naming the field, the bad value and the fix if the configuration is unusable."""
        if self.pooling not in INTENT_POOLINGS:
            raise ValueError(f"pooling={self.pooling!r} is unknown; choose one of {INTENT_POOLINGS}.")
        if self.tuning_mode not in TUNING_MODES:
            raise ValueError(f"tuning_mode={self.tuning_mode!r} is unknown; choose one of {TUNING_MODES}.")
        if (self.tuning_mode == "lora") != (self.lora is not None):
            raise ValueError(
                f"tuning_mode={self.tuning_mode!r} with lora={self.lora!r}: LoRA hyper-parameters go with "
                "tuning_mode='lora' and only with it."
            )
        if self.tuning_mode != "full" and self.backbone_spec is None:
            raise ValueError(
                f"tuning_mode={self.tuning_mode!r} saves no backbone weights, so backbone_spec must say where they "
                "come from; build the model with LLMEmbedForIntentAndSlotFilling.from_backbone(...)."
            )
        weights = (self.intent_loss_weight, self.slot_loss_weight)
        if min(weights) < 0 or max(weights) <= 0:
            raise ValueError(
                f"intent_loss_weight={weights[0]}, slot_loss_weight={weights[1]}: weights must be >= 0 and at least "
                "one > 0 (a weight of 0 switches that task off)."
            )
        if not 0.0 <= float(self.classifier_dropout) < 1.0:
            raise ValueError(f"classifier_dropout={self.classifier_dropout!r} must be in [0, 1).")
        tags = self.slot_labels
        bad = [t for t in tags if t != "O" and not (t[:2] in ("B-", "I-") and len(t) > 2)]
        if bad or len(set(tags)) != len(tags) or "O" not in tags:
            raise ValueError(
                f"slot_labels must be distinct BIO tags ('O', 'B-<type>', 'I-<type>') including 'O'; "
                f"bad or repeated: {bad or sorted({t for t in tags if tags.count(t) > 1})}."
            )

    @property
    def num_slot_labels(self) -> int:
        return len(self.slot_labels)

    @property
    def slot_label2id(self) -> dict[str, int]:
        return {tag: i for i, tag in enumerate(self.slot_labels)}

    @property
    def intent_labels(self) -> list[str]:
        """Intent names in id order."""
        return [self.id2label[i] for i in range(self.num_labels)]


__all__ = ["INTENT_POOLINGS", "TUNING_MODES", "LLMEmbedIntentSlotConfig"]
