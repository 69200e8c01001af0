"""Feature extraction through the frozen backbones, with a resumable on-disk cache.

Extraction is almost all of LLMEmbed's cost, so it is done once per (texts, backbones) and cached:

* texts are tokenised once; for each backbone they are sorted by that backbone's own token counts and cut into
  batches under a token budget (dynamic padding: a batch is padded to its own longest text, and long documents get
  small batches so memory stays bounded). The budget is small on CPU, where batches beyond ~1k tokens fall out of
  cache and get slower per token (benchmarks/RESULTS.md), and larger on accelerators;
* the sorted order is cut into shards; each finished shard is written atomically with a checksum beside it, so an
  interrupted run resumes from the completed shards, and a corrupted or truncated shard is recomputed;
* the shards are assembled in the original order into a `datasets.Dataset` (`pooled_features`, plus any columns
  the caller passes) saved under a folder named by a fingerprint of the texts, each backbone's weights sha256,
  layers, pooling, max_length and normalisation, and the storage dtype. A rerun with the same inputs is a hit;
  any change is a miss.

Several processes (``accelerate launch --num_processes N ...``) split the shards between them; the main process
assembles the result once every shard is there.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset, load_from_disk
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers.utils import logging

from .file_utils import atomic_save, atomic_write_text, build_folder_atomically, cache_dir, sha256_of_file
from .modeling.modeling_llmembed import LLMEmbedForSequenceClassification
from .modeling.tokenization_llmembed import _check_texts
from .training_args import arg

logger = logging.get_logger(__name__)

FEATURES_COLUMN = "pooled_features"
CACHE_FORMAT_VERSION = 1
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


#: Default token budgets of one batch (padded tokens): measured best on CPU (benchmarks/RESULTS.md), and the value
#: the accelerator runs used.
CPU_TOKENS_PER_BATCH = 1024
ACCELERATOR_TOKENS_PER_BATCH = 8192


@dataclass
class ExtractionConfig:
    """Knobs of one extraction run (none of them changes the features beyond float rounding, except ``dtype``).

    ``max_tokens_per_batch=None`` picks `CPU_TOKENS_PER_BATCH` on CPU, `ACCELERATOR_TOKENS_PER_BATCH` elsewhere.
    """

    max_tokens_per_batch: int | None = arg(None, "padded-token budget of one extraction batch (bounds memory; "
                                                 "default: 1024 on CPU, 8192 on accelerators)")
    max_batch_size: int = arg(128, "most texts in one extraction batch")
    shard_size: int = arg(2048, "texts per cache shard (an interrupted run resumes from finished shards)")
    dtype: str = arg("float32", "storage dtype of cached features", choices=sorted(STORAGE_DTYPES),
                     aliases=["--feature-dtype", "--feature_dtype"])

    def token_budget(self, device: torch.device | str) -> int:
        """The padded-token budget of one batch on ``device``."""
        if self.max_tokens_per_batch is not None:
            return self.max_tokens_per_batch
        return CPU_TOKENS_PER_BATCH if torch.device(device).type == "cpu" else ACCELERATOR_TOKENS_PER_BATCH


def features_fingerprint(model: LLMEmbedForSequenceClassification, texts: Sequence[str], dtype: str) -> str:
    """Key of a feature cache: the texts and everything about the backbones that changes a pooled vector."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text.encode("utf-8")).digest())
    backbones = [
        {k: spec[k] for k in ("model_id", "gguf_file", "revision", "weights_sha256", "layers", "pooling",
                              "normalize", "max_length")}
        for spec in model.config.backbones
    ]
    key = {"version": CACHE_FORMAT_VERSION, "texts": digest.hexdigest(), "n": len(texts),
           "backbones": backbones, "dtype": dtype}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


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


class ShardStore:
    """Shard files of one extraction: ``shard-XXXXX.safetensors`` + a ``.json`` with its checksum and size."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _paths(self, shard: int) -> tuple[Path, Path]:
        return self.folder / f"shard-{shard:05d}.safetensors", self.folder / f"shard-{shard:05d}.json"

    def load(self, shard: int, expected_rows: int, width: int) -> dict[str, torch.Tensor] | None:
        """A completed shard's tensors, or None if it is missing, corrupted, truncated or holds NaN."""
        data_path, meta_path = self._paths(shard)
        if not (data_path.is_file() and meta_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta["sha256"] != sha256_of_file(data_path):
                raise ValueError("checksum mismatch")
            tensors = load_file(str(data_path))
            if tensors["features"].shape != (expected_rows, width) or len(tensors["indices"]) != expected_rows:
                raise ValueError(f"shape {tuple(tensors['features'].shape)} != {(expected_rows, width)}")
            if not torch.isfinite(tensors["features"].float()).all():
                raise ValueError("non-finite values")
        except (OSError, ValueError, KeyError, SafetensorError) as error:
            logger.warning(f"Shard {data_path.name} is unusable ({error}); recomputing it.")
            return None
        return tensors

    def save(self, shard: int, features: torch.Tensor, indices: torch.Tensor) -> None:
        """Write the shard atomically, then its checksum (a shard without one is recomputed)."""
        data_path, meta_path = self._paths(shard)
        tensors = {"features": features.contiguous(), "indices": indices.contiguous()}
        atomic_save(data_path, lambda tmp: save_file(tensors, str(tmp)))
        atomic_write_text(meta_path, json.dumps({"sha256": sha256_of_file(data_path), "rows": len(indices)}))


def extract_features(
    model: LLMEmbedForSequenceClassification,
    texts: Sequence[str] | Dataset,
    text_column: str = "text",
    extra_columns: dict[str, Sequence[Any]] | None = None,
    cache_folder: str | os.PathLike | None = None,
    config: ExtractionConfig | None = None,
    show_progress: bool = True,
) -> Dataset:
    """Pooled features of ``texts`` as a `datasets.Dataset` with a ``pooled_features`` column (cached).

    Args:
        model: an LLMEmbed model; its backbones are loaded if they are not yet.
        texts: a list of strings, or a `datasets.Dataset` whose ``text_column`` holds them.
        extra_columns: columns to add to the result (e.g. ``{"labels": [...]}``), not part of the cache key.
        cache_folder: where feature caches live (default: ``<llmembed cache>/features``).
        config: batching, sharding and storage dtype (`ExtractionConfig`).
    """
    from accelerate import PartialState

    config = config or ExtractionConfig()
    if config.dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype={config.dtype!r} is not supported; choose one of {sorted(STORAGE_DTYPES)}.")
    if config.max_tokens_per_batch is not None and config.max_tokens_per_batch < 1:
        raise ValueError(f"max_tokens_per_batch={config.max_tokens_per_batch} must be a positive token count.")
    if isinstance(texts, Dataset):
        if text_column not in texts.column_names:
            raise ValueError(f"text column {text_column!r} not found; the dataset has columns {texts.column_names}.")
        texts = texts[text_column]
    texts, _ = _check_texts(list(texts))
    if not model.backbones:
        model.load_backbones()
    state = PartialState()
    key = features_fingerprint(model, texts, config.dtype)
    root = Path(cache_folder) if cache_folder is not None else cache_dir() / "features"
    final = root / key / "dataset"
    if not final.is_dir():
        _extract_shards(model, texts, root / key / "shards", config, state, show_progress)
        state.wait_for_everyone()
        if state.is_main_process:
            _assemble(root / key / "shards", final, len(texts), model.config.feature_size, config)
        state.wait_for_everyone()
    else:
        logger.info(f"Feature cache hit: {final}")
    features = load_from_disk(str(final))
    for name, values in (extra_columns or {}).items():
        features = features.add_column(name, list(values))
    return features.with_format("torch")


def shard_plan(
    model: LLMEmbedForSequenceClassification, texts: list[str], shard_size: int
) -> tuple[dict[str, list[list[int]]], dict[str, np.ndarray], list[np.ndarray]]:
    """Tokenise once; return the ragged ids per backbone, their lengths, and shards of indices (longest first)."""
    encoded = model.tokenizer(texts, padding=False)
    ids = {spec.name: encoded[f"{spec.name}_input_ids"] for spec in model.config.backbone_specs}
    lengths = {name: np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows)) for name, rows in ids.items()}
    order = np.argsort(-np.max(np.stack(list(lengths.values())), axis=0), kind="stable")
    shards = [order[i : i + shard_size] for i in range(0, len(order), shard_size)]
    return ids, lengths, shards


def _extract_shards(model, texts, folder: Path, config: ExtractionConfig, state, show_progress):
    store = ShardStore(folder)
    width = model.config.feature_size
    ids, lengths, shards = shard_plan(model, texts, config.shard_size)
    mine = [i for i in range(len(shards)) if i % state.num_processes == state.process_index]
    todo = [i for i in mine if store.load(i, len(shards[i]), width) is None]
    if len(todo) < len(mine):
        logger.info(f"Resuming: {len(mine) - len(todo)} of {len(mine)} shards already extracted.")
    device = next(iter(model.backbones.values())).device
    budget = config.token_budget(device)
    columns = model.config.backbone_columns
    # Each backbone runs over the shard in its own length order, so progress counts a text once per backbone.
    share = 1 / len(ids)
    progress = tqdm(total=sum(len(shards[i]) for i in todo), desc="Extracting features", unit="text",
                    bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]",
                    disable=not show_progress or not state.is_local_main_process)
    for shard in todo:
        indices = shards[shard]
        features = torch.empty(len(indices), width, dtype=STORAGE_DTYPES[config.dtype])
        with torch.inference_mode():
            for name, rows in ids.items():
                # batches of positions within the shard, sorted by this backbone's own lengths
                for batch in length_sorted_batches(lengths[name][indices], np.arange(len(indices)), budget,
                                                   config.max_batch_size):
                    inputs = model.tokenizer.pad({f"{name}_input_ids": [rows[i] for i in indices[batch]]},
                                                 return_tensors="pt", backbones=[name]).to(device)
                    pooled = model.encode_backbone(name, inputs[f"{name}_input_ids"], inputs[f"{name}_attention_mask"])
                    features[torch.from_numpy(batch), columns[name]] = pooled.to("cpu", features.dtype)
                    progress.update(len(batch) * share)
        if not torch.isfinite(features.float()).all():
            raise FloatingPointError(
                f"NaN or inf in the features of shard {shard}; try dtype float32 / a float32 backbone."
            )
        store.save(shard, features, torch.from_numpy(np.ascontiguousarray(indices)))
    progress.close()


def _assemble(folder: Path, final: Path, num_texts: int, width: int, config: ExtractionConfig) -> None:
    """Put every shard's rows back in the original text order and save them as a `datasets.Dataset`."""
    store = ShardStore(folder)
    shard_files = sorted(folder.glob("shard-*.safetensors"))
    out = np.zeros((num_texts, width), dtype=np.float32 if config.dtype == "float32" else np.float16)
    seen = 0
    for path in shard_files:
        shard = int(path.stem.split("-")[1])
        meta = json.loads((folder / f"{path.stem}.json").read_text())
        tensors = store.load(shard, meta["rows"], width)
        if tensors is None:
            raise RuntimeError(f"shard {path} became unusable before assembly; run the extraction again.")
        out[tensors["indices"].numpy()] = tensors["features"].numpy()
        seen += len(tensors["indices"])
    if seen != num_texts:
        raise RuntimeError(f"only {seen} of {num_texts} texts have features; run the extraction again to resume.")

    def save(tmp: Path) -> None:
        column = pa.FixedSizeListArray.from_arrays(pa.array(out.reshape(-1)), width)
        Dataset(pa.Table.from_arrays([column], names=[FEATURES_COLUMN])).save_to_disk(str(tmp))

    build_folder_atomically(final, save)
