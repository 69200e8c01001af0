# Self-contained (torch + transformers only): this file is uploaded with every intent + slot model as remote code.
"""Joint intent detection and slot filling: one backbone, an intent head on the pooled text, a slot head on tokens.

One model replaces two single-task models (arXiv 2412.08587): the loss is
``intent_loss_weight * CE(intent) + slot_loss_weight * CE(slot tags)``, and setting one weight to 0 gives the
single-task model of the other task with the same code. The backbone is frozen (only the heads train), adapted
with LoRA (adapters + heads train), or fully fine-tuned; ``save_pretrained`` writes only what trained, and
``from_pretrained`` reads the untouched backbone weights back from ``config.backbone_spec``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init  # init functions that respect weights loaded from a checkpoint
from transformers.utils import ModelOutput, cached_file, logging

from .configuration_llmembed import BackboneSpec
from .configuration_llmembed_intent_slot import LLMEmbedIntentSlotConfig
from .modeling_llmembed import POOLING_FUNCTIONS, OneCommitPushMixin, check_backbone_sha256, default_backbone_loader
from .tokenization_llmembed import ensure_pad_token

logger = logging.get_logger(__name__)

WEIGHTS_FILE = "model.safetensors"
#: `from_pretrained` keyword arguments that say where the saved files are (passed on to `cached_file`).
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")
#: Model types whose checkpoints are bidirectional encoders (mean pooling by default); others pool the last token.
_ENCODER_TYPES = ("bert", "mpnet", "roberta", "xlm-roberta", "deberta", "deberta-v2", "distilbert", "electra",
                  "albert", "camembert", "modernbert")


@dataclass
class IntentSlotOutput(ModelOutput):
    """Outputs of [`LLMEmbedForIntentAndSlotFilling`].

    Args:
        loss: the weighted joint loss, when labels are given.
        intent_logits: (batch, num_intents) raw scores of the intent head.
        slot_logits: (batch, sequence, num_slot_labels) raw scores of the slot head for every token.
    """

    loss: torch.FloatTensor | None = None
    intent_logits: torch.FloatTensor | None = None
    slot_logits: torch.FloatTensor | None = None


class LLMEmbedIntentSlotPreTrainedModel(PreTrainedModel):
    config_class = LLMEmbedIntentSlotConfig
    base_model_prefix = "llmembed_intent_slot"
    main_input_name = "input_ids"
    _supports_sdpa = True
    supports_gradient_checkpointing = True

    def _init_weights(self, module: nn.Module) -> None:
        # Only the heads reach here: transformers initialises the backbone with its own `_init_weights`.
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=getattr(self.config.backbone, "initializer_range", 0.02))
            init.zeros_(module.bias)


class LLMEmbedForIntentAndSlotFilling(OneCommitPushMixin, LLMEmbedIntentSlotPreTrainedModel):
    """A backbone with an intent head (on the pooled sequence) and a slot head (on every token).

    ``forward(input_ids, attention_mask, labels=intent ids, slot_labels=token tag ids with -100 where ignored)``.
    Build a fresh model over pretrained weights with [`from_backbone`]; load a trained one with ``from_pretrained``
    or ``AutoModel.from_pretrained`` (and ``pipeline("intent-slot-filling", model=...)`` with `llmembed_hf`).
    """

    accepts_loss_kwargs = False
    _push_commit_message = "Upload LLMEmbed intent + slot model"
    #: ``(spec, **kwargs) -> (model, tokenizer, weights_sha256)``; `llmembed_hf` installs its resolver here.
    backbone_loader: Callable[..., tuple[PreTrainedModel, Any, str | None]] = staticmethod(default_backbone_loader)

    def __init__(self, config: LLMEmbedIntentSlotConfig, backbone: PreTrainedModel | None = None) -> None:
        if config.backbone is None:
            raise ValueError("config.backbone is missing: build the model with from_backbone(...) or pass its config.")
        config.validate()
        # The composite's init resets its sub-configs' attention implementation: keep the one the backbone chose.
        attention = backbone.config._attn_implementation if backbone is not None else None
        super().__init__(config)
        config = self.config  # PreTrainedModel keeps its own copy
        # Built from the sub-config (its weights come from the checkpoint), or a pretrained one passed in.
        self.backbone = backbone if backbone is not None else AutoModel.from_config(config.backbone)
        attention = attention or self.backbone.config._attn_implementation
        # One config object, so edits through either stay in sync.
        self.backbone.config = config.backbone
        config.backbone._attn_implementation = attention
        hidden_size = config.backbone.get_text_config().hidden_size
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.intent_classifier = nn.Linear(hidden_size, config.num_labels)
        self.slot_classifier = nn.Linear(hidden_size, config.num_slot_labels)
        self.tokenizer = None
        self.post_init()
        if config.tuning_mode == "lora":
            self._inject_lora()  # after post_init, whose initialisation would overwrite LoRA's zero B matrices
        self._set_trainable()

    # -- construction ------------------------------------------------------------------------------------------------

    @classmethod
    def from_backbone(
        cls,
        backbone: str | os.PathLike | BackboneSpec | dict[str, Any] | PreTrainedModel,
        intent_labels: list[str],
        slot_labels: list[str],
        tokenizer: Any = None,
        tuning_mode: str = "frozen",
        pooling: str | None = None,
        lora: dict[str, Any] | None = None,
        **config_kwargs: Any,
    ) -> LLMEmbedForIntentAndSlotFilling:
        """A fresh model (random heads) over pretrained backbone weights.

        ``backbone``: a Hub id or local folder, a [`BackboneSpec`] (or its dict: a GGUF file, a revision), or an
        already loaded model (then pass its ``tokenizer``; nothing records where its weights came from, so prefer a
        spec for models you will save in ``frozen``/``lora`` mode). ``pooling`` defaults to ``mean`` for encoders and
        ``last_token`` for decoders. ``lora`` overrides the LoRA defaults ``r=8, lora_alpha=16, lora_dropout=0.1,
        target_modules=None`` (peft's choice for the architecture, else every linear layer). Other keyword
        arguments go to [`LLMEmbedIntentSlotConfig`] (loss weights, dropout).
        """
        if isinstance(backbone, PreTrainedModel):
            model, sha256 = backbone, None
            spec = BackboneSpec(name="backbone", model_id=backbone.name_or_path or "unknown")
            if tokenizer is None:
                raise ValueError("from_backbone: pass the tokenizer that goes with an already loaded backbone model.")
        else:
            if isinstance(backbone, (BackboneSpec, dict)):
                spec = BackboneSpec.from_dict(backbone)
            else:
                spec = BackboneSpec(name="backbone", model_id=str(backbone))
            model, loaded_tokenizer, sha256 = cls.backbone_loader(spec)
            tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
        model_type = model.config.get_text_config().model_type
        role = "encoder" if model_type in _ENCODER_TYPES else "llm"
        pooling = pooling or ("mean" if role == "encoder" else "last_token")
        spec_values = {**spec.to_dict(), "role": role, "layers": [-1], "pooling": pooling,
                       "hidden_size": model.config.get_text_config().hidden_size}
        if sha256 is not None:
            spec_values["weights_sha256"] = sha256
        if tuning_mode == "lora":
            lora = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": None, **(lora or {})}
        config = LLMEmbedIntentSlotConfig(
            backbone=model.config, backbone_spec=spec_values, slot_labels=slot_labels, pooling=pooling,
            tuning_mode=tuning_mode, lora=lora, id2label=dict(enumerate(intent_labels)),
            label2id={name: i for i, name in enumerate(intent_labels)},
            # set on the composite, it propagates to the sub-config (the backbone's own config object)
            attn_implementation=model.config._attn_implementation, **config_kwargs,
        )
        instance = cls(config, backbone=model)
        if tokenizer is not None:
            ensure_pad_token(tokenizer)  # batching needs one (its id never matters: it is masked)
            tokenizer.padding_side = "right"
        instance.tokenizer = tokenizer
        return instance

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args: Any,
        config: LLMEmbedIntentSlotConfig | None = None,
        allow_backbone_mismatch: bool | None = None,
        **kwargs: Any,
    ) -> LLMEmbedForIntentAndSlotFilling:
        """Load a saved model; a ``frozen``/``lora`` one re-reads its backbone from ``config.backbone_spec``.

        Those checkpoints hold only the heads (and adapters), so the backbone weights are loaded first and checked
        against the sha256 recorded at training time (a mismatch is an error unless ``allow_backbone_mismatch=True``
        or ``LLMEMBED_ALLOW_BACKBONE_MISMATCH=1``), then the saved weights, which must match the model exactly.
        ``full`` checkpoints load through transformers' own ``from_pretrained``.
        """
        hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
        if not isinstance(config, LLMEmbedIntentSlotConfig):
            config = cls.config_class.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        if config.tuning_mode == "full":
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)
        spec = BackboneSpec.from_dict(config.backbone_spec)
        backbone, _, sha256 = cls.backbone_loader(spec, dtype=kwargs.get("dtype"))
        check_backbone_sha256(spec.weights_sha256, sha256, allow=allow_backbone_mismatch,
                              what=f"{pretrained_model_name_or_path} (backbone {spec.model_id})")
        model = cls(config, backbone=backbone)
        weights = cached_file(pretrained_model_name_or_path, WEIGHTS_FILE, **hub_kwargs)
        from safetensors.torch import load_file

        model.load_trained_state_dict(load_file(weights), source=str(pretrained_model_name_or_path))
        model.config.name_or_path = str(pretrained_model_name_or_path)
        device = kwargs.get("device_map")
        if isinstance(device, (str, torch.device)) and str(device) != "auto":
            model.to(device)
        return model.eval()

    # -- what trains, what is saved --------------------------------------------------------------------------------

    def _inject_lora(self) -> None:
        """Wrap the backbone's target layers with LoRA adapters (peft), recording the resolved target modules."""
        try:
            from peft import LoraConfig, inject_adapter_in_model
            from peft.tuners.lora import LoraLayer
            from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULT_TARGETS
        except ImportError as error:
            raise ImportError("tuning_mode='lora' needs peft: pip install peft") from error
        lora = dict(self.config.lora)
        targets = lora.pop("target_modules", None)
        if not targets:
            targets = DEFAULT_TARGETS.get(self.config.backbone.get_text_config().model_type, "all-linear")
        inject_adapter_in_model(LoraConfig(target_modules=targets, bias="none", **lora), self.backbone)
        wrapped = {name.rsplit(".", 1)[-1] for name, m in self.backbone.named_modules() if isinstance(m, LoraLayer)}
        self.config.lora["target_modules"] = sorted(wrapped)

    def _set_trainable(self) -> None:
        mode = self.config.tuning_mode
        for name, parameter in self.backbone.named_parameters():
            parameter.requires_grad = mode == "full" or (mode == "lora" and "lora_" in name)
        # A task with loss weight 0 is switched off: its head gets no gradient and does not count as trained.
        self.intent_classifier.requires_grad_(self.config.intent_loss_weight > 0)
        self.slot_classifier.requires_grad_(self.config.slot_loss_weight > 0)

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights ``save_pretrained`` writes: heads (frozen), heads + adapters (lora), or all (full)."""
        state = self.state_dict()
        mode = self.config.tuning_mode
        if mode == "full":
            return state
        return {k: v for k, v in state.items() if not k.startswith("backbone.") or (mode == "lora" and "lora_" in k)}

    def load_trained_state_dict(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Load what `trained_state_dict` saved; every expected key must be there and nothing else."""
        expected = set(self.trained_state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(
                f"{source}: the saved weights do not fit a tuning_mode={self.config.tuning_mode!r} model: missing "
                f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                f"{'...' if len(unexpected) > 5 else ''}."
            )
        self.load_state_dict(state, strict=False)

    def train(self, mode: bool = True) -> LLMEmbedForIntentAndSlotFilling:
        super().train(mode)
        if self.config.tuning_mode == "frozen":
            self.backbone.eval()  # a frozen backbone is a fixed feature extractor: no dropout noise
        return self

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """Save config, the trained weights only (see `trained_state_dict`), code and the tokenizer if attached."""
        if kwargs.get("state_dict") is None:
            kwargs["state_dict"] = self.trained_state_dict()
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if self.tokenizer is not None and kwargs.get("is_main_process", True):
            self.tokenizer.save_pretrained(save_directory)
        return result

    # -- forward ---------------------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        slot_labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> IntentSlotOutput | tuple:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        frozen = self.config.tuning_mode == "frozen"
        with torch.no_grad() if frozen else contextlib.nullcontext():
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        hidden = hidden.to(self.intent_classifier.weight.dtype)
        pooled = POOLING_FUNCTIONS[self.config.pooling](hidden, attention_mask).to(hidden.dtype)
        intent_logits = self.intent_classifier(self.dropout(pooled))
        slot_logits = self.slot_classifier(self.dropout(hidden))
        loss = self.joint_loss(intent_logits, slot_logits, labels, slot_labels)
        if return_dict is False:
            return tuple(x for x in (loss, intent_logits, slot_logits) if x is not None)
        return IntentSlotOutput(loss=loss, intent_logits=intent_logits, slot_logits=slot_logits)

    def joint_loss(
        self,
        intent_logits: torch.Tensor,
        slot_logits: torch.Tensor,
        labels: torch.Tensor | None,
        slot_labels: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """``w_intent * CE(intent) + w_slot * CE(slots)`` over the tasks that have labels and a weight > 0.

        The slot term averages over labelled tokens (first sub-tokens); a batch without any contributes 0, not NaN.
        """
        terms = []
        if labels is not None and self.config.intent_loss_weight > 0:
            terms.append(self.config.intent_loss_weight * F.cross_entropy(intent_logits.float(), labels.to(intent_logits.device)))
        if slot_labels is not None and self.config.slot_loss_weight > 0:
            flat = slot_labels.to(slot_logits.device).reshape(-1)
            total = F.cross_entropy(slot_logits.float().reshape(flat.numel(), -1), flat, ignore_index=-100,
                                    reduction="sum")
            terms.append(self.config.slot_loss_weight * total / (flat != -100).sum().clamp(min=1))
        return torch.stack(terms).sum() if terms else None


__all__ = ["IntentSlotOutput", "LLMEmbedIntentSlotPreTrainedModel", "LLMEmbedForIntentAndSlotFilling"]
