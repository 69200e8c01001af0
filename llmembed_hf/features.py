"""Feature extraction through the frozen backbones, computed once per (backbone view, text) in a feature store.

Extraction is almost all of LLMEmbed's cost, so every vector is kept and reused (`llmembed_hf.feature_store`):

* each backbone's pooled views are stored under a fingerprint of that backbone alone (model_id, revision, GGUF
  file, weights sha256, layers, pooling, normalisation, max_length, prompt and whether it is pooled, compute dtype
  and int8 quantisation as loaded, the tokenizer's identity, the storage dtype) and keyed by the sha256 of each text.
  A request reads every vector that is already there and computes only the missing (text, backbone) pairs: a
  superset or another subset of texts, another preset sharing a backbone, a second head on the same texts;
* specs of one model that differ only in what they pool (e.g. its sentence embedding and its middle layers) share
  its forward passes: a text both miss is computed once and each store gets its views
  (`LLMEmbedForSequenceClassification.pass_groups`); a text only one misses runs through that spec's own backbone;
* the missing texts of a backbone are tokenised once, sorted by that backbone's own token counts and cut into batches
  under a token budget (dynamic padding: a batch is padded to its own longest text, long documents get small batches
  so memory stays bounded). The budget is small on CPU, where batches beyond ~1k tokens fall out of cache and get
  slower per token (benchmarks/RESULTS.md), and larger on accelerators;
* whole batches are grouped into segments of about ``shard_size`` texts; each segment is claimed in the store before
  it is computed (so concurrent processes never compute the same texts) and written atomically with checksums once
  done, so an interrupted run loses at most the segment in flight; a corrupted segment is detected and recomputed;
* the requested rows are assembled in the original order into a `datasets.Dataset` (``pooled_features``, plus any
  columns the caller passes), in torch format.

Text pairs (a head whose config has ``pair_encoding``): a ``joint`` backbone's vector of a pair is stored under the
pair's own key (`feature_store.pair_sha256`, never equal to a text's key); a ``siamese`` backbone computes each side as
a single text, so a sentence seen in another pair or alone is computed once, and the pair's features are
`siamese_features` of the two stored vectors, the very function the model applies when serving.

Several processes (``accelerate launch --num_processes N ...``) plan the same batches and share them out through the
store's claims; each returns the whole result.

Which rows are bit-identical: a stored vector is returned as it was stored, so reuse never changes a value; a run
resumed after an interruption, also with another ``shard_size``, gives exactly the features of an uninterrupted run
with the same token budget and ``max_batch_size`` (segments are made of whole batches of one plan). Vectors computed
in other batches (another budget, a superset computed in two requests) agree to float rounding (~1e-7 relative),
since a matmul's rounding depends on the batch's shape; ``max_batch_size=1`` makes every vector independent of its
neighbours, hence bit-identical whatever the request, at a cost in speed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import weakref
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers.utils import logging

from . import feature_store
from .feature_store import BackboneStore, Claim, default_store_root, pair_sha256, text_sha256
from .file_utils import sha256_of_file
from .modeling.configuration_llmembed import BackboneSpec
from .modeling.modeling_llmembed import (  # the batching constants and helper are re-exported here
    ACCELERATOR_TOKENS_PER_BATCH,
    CPU_TOKENS_PER_BATCH,
    INT8_METHOD,
    LLMEmbedForSequenceClassification,
    backbone_quantization,
    default_token_budget,
    length_sorted_batches,
    siamese_features,
)
from .modeling.tokenization_llmembed import _check_pairs, _check_texts
from .training_args import arg

logger = logging.get_logger(__name__)

FEATURES_COLUMN = "pooled_features"
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
#: While waiting for other processes' claims, say so this often (seconds).
WAIT_LOG_SECONDS = 30.0


@dataclass
class ExtractionConfig:
    """Knobs of one extraction run (none of them changes the features beyond float rounding, except ``dtype``).

    ``max_tokens_per_batch=None`` picks `CPU_TOKENS_PER_BATCH` on CPU, `ACCELERATOR_TOKENS_PER_BATCH` elsewhere.
    """

    max_tokens_per_batch: int | None = arg(None, "padded-token budget of one extraction batch (bounds memory; "
                                                 "default: 1024 on CPU, 8192 on accelerators)")
    max_batch_size: int = arg(128, "most texts in one extraction batch (1: every vector independent of its batch)")
    shard_size: int = arg(2048, "texts per feature-store segment, rounded up to whole batches (an interrupted run "
                                "loses at most the segment in flight)")
    dtype: str = arg("float32", "storage dtype of cached features", choices=sorted(STORAGE_DTYPES),
                     aliases=["--feature-dtype", "--feature_dtype"])

    def token_budget(self, device: torch.device | str) -> int:
        """The padded-token budget of one batch on ``device``."""
        if self.max_tokens_per_batch is not None:
            return self.max_tokens_per_batch
        return default_token_budget(device)

    def check(self) -> None:
        if self.dtype not in STORAGE_DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is not supported; choose one of {sorted(STORAGE_DTYPES)}.")
        if self.max_tokens_per_batch is not None and self.max_tokens_per_batch < 1:
            raise ValueError(f"max_tokens_per_batch={self.max_tokens_per_batch} must be a positive token count.")
        for name in ("max_batch_size", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive number of texts.")


# ----------------------------------------------------------------------------------------------------------------------
# Backbone fingerprints
# ----------------------------------------------------------------------------------------------------------------------

_TOKENIZER_IDENTITIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tokenizer_identity(tokenizer: Any) -> str:
    """sha256 of what decides a tokenizer's ids: a fast tokenizer's serialised pipeline (``tokenizer.json`` less its
    call-time truncation/padding state), else the vocabulary and vocabulary files; plus the special token ids."""
    try:
        cached = _TOKENIZER_IDENTITIES.get(tokenizer)
    except TypeError:
        cached = None
    if cached is not None and cached[0] == len(tokenizer):
        return cached[1]
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        pipeline = json.loads(backend.to_str())
        pipeline.pop("truncation", None)
        pipeline.pop("padding", None)
        digest.update(json.dumps(pipeline, sort_keys=True).encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        for key in sorted(getattr(tokenizer, "vocab_files_names", {}) or {}):
            path = getattr(tokenizer, key, None) or getattr(tokenizer, "init_kwargs", {}).get(key)
            if isinstance(path, (str, os.PathLike)) and os.path.isfile(path):
                digest.update(sha256_of_file(path).encode())
    specials = {k: getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "cls", "sep", "unk")}
    digest.update(json.dumps(specials, sort_keys=True).encode())
    identity = digest.hexdigest()
    try:
        _TOKENIZER_IDENTITIES[tokenizer] = (len(tokenizer), identity)
    except TypeError:
        pass
    return identity


def backbone_description(model: LLMEmbedForSequenceClassification, spec: BackboneSpec) -> dict[str, Any]:
    """Everything about one loaded backbone that changes its pooled vectors (the feature store's key, with the
    storage dtype and width). The spec's ``name`` and ``role`` are not in it: presets naming a backbone differently
    share its vectors. A spec with ``dense_modules`` stores its pooled states before its Dense modules and
    normalisation (`stored_width`), so it shares them with the same spec without Dense modules."""
    backbone = model.backbones[spec.name]
    # The weights actually loaded: they differ from the recorded ones when a mismatch was allowed.
    shared = getattr(model, "_shared", {}).get(spec.name)
    loaded_sha256 = shared.sha256 if shared is not None else None
    # Read from the modules (what the spec's quantization made of them; the truth also for backbones attached by hand or
    # loaded with an override). None keeps the fingerprints of float backbones as they were before quantisation existed.
    quantization = backbone_quantization(backbone)
    description = {
        "model_id": spec.model_id,
        "gguf_file": spec.gguf_file,
        "revision": spec.revision,
        "weights_sha256": loaded_sha256 or spec.weights_sha256,
        "layers": list(spec.layers),
        "pooling": spec.pooling,
        "normalize": bool(spec.normalize) and not spec.dense_modules,
        "max_length": spec.max_length,
        "prompt": spec.prompt,
        "compute_dtype": str(getattr(backbone, "dtype", None)),
        "quantization": quantization and {"scheme": quantization, "method": INT8_METHOD},
        "tokenizer": tokenizer_identity(model.tokenizer.tokenizers[spec.name]),
    }
    if spec.prompt is not None:  # without a prompt it changes nothing: left out, so older fingerprints still hold
        description["pool_prompt"] = spec.pool_prompt
    return description


def stored_width(model: LLMEmbedForSequenceClassification, spec: BackboneSpec) -> int:
    """The width of one text's vector in ``spec``'s store: its views, or with ``dense_modules`` the pooled states their
    Dense modules map (`LLMEmbedForSequenceClassification.finish_views`)."""
    if spec.dense_modules:
        return model.backbones[spec.name].config.get_text_config().hidden_size * spec.num_views
    return spec.hidden_size * spec.num_views


def backbone_stores(
    model: LLMEmbedForSequenceClassification, dtype: str = "float32", cache_folder: str | os.PathLike | None = None
) -> dict[str, BackboneStore]:
    """The feature store of each of ``model``'s backbones (loaded if they are not yet), by backbone name."""
    if not model.backbones:
        model.load_backbones()
    root = Path(cache_folder) if cache_folder is not None else default_store_root()
    return {  # one text's (or jointly encoded pair's) views: a siamese head's four parts are never stored
        spec.name: BackboneStore(root, backbone_description(model, spec), stored_width(model, spec), dtype,
                                 name=spec.name)
        for spec in model.config.backbone_specs
    }


@dataclass
class _Inputs:
    """The distinct inputs some backbones compute for one request, in first-seen order: single texts (``pairs`` None)
    or jointly encoded pairs; ``rows`` maps every requested input to its index in ``keys``. For a siamese backbone the
    requested inputs are the first texts, then the second texts."""

    keys: list[bytes]
    texts: list[str]
    pairs: list[str] | None
    rows: np.ndarray


def _distinct(keys: list[bytes], texts: list[str], pairs: list[str] | None = None) -> _Inputs:
    first: dict[bytes, int] = {}
    rows = np.fromiter((first.setdefault(key, len(first)) for key in keys), dtype=np.int64, count=len(keys))
    if len(first) == len(keys):
        return _Inputs(keys, texts, pairs, rows)
    where = np.unique(rows, return_index=True)[1]
    return _Inputs(list(first), [texts[i] for i in where], None if pairs is None else [pairs[i] for i in where], rows)


def _check_request(model: LLMEmbedForSequenceClassification, texts: Sequence[str],
                   text_pairs: Sequence[str] | None) -> tuple[list[str], list[str] | None]:
    """``texts`` (and ``text_pairs``) checked against each other and against the head (pairs or single texts), as the
    composite tokenizer checks them."""
    texts = _check_texts(list(texts))[0]
    pairs = None if text_pairs is None else list(text_pairs)
    return texts, _check_pairs(texts, True, pairs, model.config.pair_encoding, "text_pairs")


def _backbone_inputs(model: LLMEmbedForSequenceClassification, texts: list[str],
                     pairs: list[str] | None) -> dict[str, _Inputs]:
    """What each backbone computes for a request, by backbone name (backbones of one kind share one `_Inputs`)."""
    kinds: dict[str, _Inputs] = {}
    inputs = {}
    for spec in model.config.backbone_specs:
        kind = "joint" if model.config.pair_encoding_of(spec) == "joint" else "texts"
        if kind not in kinds:
            if kind == "joint":
                kinds[kind] = _distinct([pair_sha256(a, b) for a, b in zip(texts, pairs)], texts, pairs)
            else:
                both = texts + (pairs or [])
                kinds[kind] = _distinct([text_sha256(text) for text in both], both)
        inputs[spec.name] = kinds[kind]
    return inputs


def missing_texts(
    model: LLMEmbedForSequenceClassification,
    texts: Sequence[str],
    config: ExtractionConfig | None = None,
    cache_folder: str | os.PathLike | None = None,
    text_pairs: Sequence[str] | None = None,
) -> dict[str, int]:
    """How many distinct inputs of ``texts`` (with ``text_pairs`` for a pair head: distinct sides for a siamese
    backbone, distinct pairs for a joint one) each backbone would compute now (0 everywhere: a full cache hit). Reads
    only the store's index (no vector, no checksum of vectors)."""
    config = config or ExtractionConfig()
    inputs = _backbone_inputs(model, *_check_request(model, texts, text_pairs))
    counts = {}
    for name, store in backbone_stores(model, config.dtype, cache_folder).items():
        store.refresh()
        counts[name] = sum(key not in store.index for key in inputs[name].keys)
    return counts


# ----------------------------------------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------------------------------------


def _tokenize(model: LLMEmbedForSequenceClassification, name: str, texts: list[str],
              pairs: list[str] | None = None) -> list[list[int]]:
    """One backbone's token ids of ``texts`` (or of joint pairs), as the composite tokenizer makes them."""
    return model.tokenizer.backbone_ids(name, texts, pairs)


def extraction_plan(
    model: LLMEmbedForSequenceClassification, texts: Sequence[str], config: ExtractionConfig | None = None
) -> tuple[list[tuple[str, np.ndarray]], dict[str, np.ndarray]]:
    """The forward batches `extract_features` runs on distinct ``texts`` with an empty store in one process, in
    order, as ``(backbone name, indices into texts)``; and each backbone's token counts of the texts.

    Backbones take turns, one segment each (whole batches, about ``shard_size`` texts), longest texts first. Specs
    sharing a forward pass (`LLMEmbedForSequenceClassification.pass_groups`) have their views computed in the batches
    of their group's runner, the only one of them named here."""
    config = config or ExtractionConfig()
    if not model.backbones:
        model.load_backbones()
    texts = _check_texts(list(texts))[0]
    lengths, queues = {}, {}
    for spec in model.config.backbone_specs:
        lengths[spec.name] = np.array([len(ids) for ids in _tokenize(model, spec.name, texts)], dtype=np.int64)
    for name, *_ in model.pass_groups([spec.name for spec in model.config.backbone_specs]):
        budget = config.token_budget(model.backbones[name].device)
        queues[name] = deque(length_sorted_batches(lengths[name], np.arange(len(texts)), budget,
                                                   config.max_batch_size))
    order = []
    while any(queues.values()):
        for name, queue in queues.items():
            total = 0
            while queue and total < config.shard_size:
                order.append((name, queue.popleft()))
                total += len(order[-1][1])
    return order, lengths


class _BackboneJob:
    """One backbone's part of a request: read what is stored, then claim, compute and write the rest."""

    def __init__(self, model: LLMEmbedForSequenceClassification, spec: BackboneSpec, store: BackboneStore,
                 inputs: _Inputs, out: np.ndarray, config: ExtractionConfig) -> None:
        self.model, self.name, self.store, self.out = model, spec.name, store, out
        self.keys, self.texts, self.pairs = inputs.keys, inputs.texts, inputs.pairs
        self.config = config
        self.device = model.backbones[spec.name].device
        self.missing: dict[bytes, int] = {}
        for row, key in enumerate(self.keys):
            self.missing.setdefault(key, row)
        self.queue: deque[np.ndarray] = deque()
        self.ids: dict[int, list[int]] = {}
        self.reused = self.computed = 0
        self.progress = None
        #: Jobs of specs sharing this one's forward pass (`pass_groups`): this job's forwards compute their missing
        #: views of the same texts too; ``leader`` is that job for a rider.
        self.riders: list[_BackboneJob] = []
        self.leader: _BackboneJob | None = None

    def _fill(self, keys: list[bytes]) -> None:
        for key in keys:
            del self.missing[key]

    def read_stored(self) -> None:
        self.store.open()
        filled = self.store.read_into(dict(self.missing), self.out)
        self._fill(filled)
        self.reused += len(filled)

    def plan(self, exclude: set[bytes] = frozenset()) -> None:
        """Tokenise the missing texts (those not claimed by other processes) and batch them longest first."""
        rows = np.array(sorted(row for key, row in self.missing.items() if key not in exclude), dtype=np.int64)
        new = [int(row) for row in rows if int(row) not in self.ids]
        if new:
            pairs = None if self.pairs is None else [self.pairs[row] for row in new]
            self.ids.update(zip(new, _tokenize(self.model, self.name, [self.texts[row] for row in new], pairs)))
        lengths = np.zeros(len(self.keys), dtype=np.int64)
        lengths[rows] = [len(self.ids[int(row)]) for row in rows]
        budget = self.config.token_budget(self.device)
        self.queue = deque(length_sorted_batches(lengths, rows, budget, self.config.max_batch_size))

    def _rides(self, key: bytes) -> bool:
        """Whether ``key`` is left to the leader's forwards (it misses the text too, so one pass gives both views)."""
        return self.leader is not None and key in self.leader.missing

    def _take_chunk(self, claimed: set[bytes]) -> list[np.ndarray]:
        """Whole batches from the plan, about ``shard_size`` texts, without texts stored or claimed meanwhile, nor
        texts a leader will compute."""
        chunk, total = [], 0
        while self.queue and total < self.config.shard_size:
            batch = self.queue.popleft()
            keep = np.array([row for row in batch if (key := self.keys[row]) in self.missing
                             and key not in self.store.index and key not in claimed and not self._rides(key)],
                            dtype=np.int64)
            if len(keep):
                chunk.append(keep)
                total += len(keep)
        return chunk

    def step(self) -> bool:
        """Claim and compute one segment, and read what other processes wrote; False if nothing could be done (the
        remaining texts are being computed by other processes)."""
        if not self.missing:
            return False
        with self.store.lock():
            claimed = self.store.live_claims()
            self.store.refresh()
            available = {key: row for key, row in self.missing.items() if key in self.store.index}
            if not self.queue and any(k not in claimed and k not in available and not self._rides(k)
                                      for k in self.missing):
                # texts of a process that died, or of a segment set aside: plan them again
                self.plan(exclude=claimed | set(available))
            chunk = self._take_chunk(claimed)
            claim = self.store.claim([self.keys[row] for batch in chunk for row in batch]) if chunk else None
        progressed = False
        if available:
            filled = self.store.read_into(available, self.out)
            self._fill(filled)
            self.reused += len(filled)
            progressed = True  # read, or a segment set aside: its texts are planned again at once
        if claim is not None:
            parts = [_Part(self, np.concatenate(chunk), claim)]
            parts += [ride for rider in self.riders if (ride := rider._claim_ride(chunk)) is not None]
            try:
                vectors = self._compute(chunk, parts)
                for part, part_vectors in zip(parts, vectors):
                    part.job.store.write_segment(part.claim, part_vectors)
            finally:
                for part in parts:
                    part.claim.release()
            for part, part_vectors in zip(parts, vectors):
                part.job.out[part.rows] = part_vectors
                part.job._fill([part.job.keys[row] for row in part.rows])
                part.job.computed += len(part.rows)
            progressed = True
        return progressed

    def _claim_ride(self, chunk: list[np.ndarray]) -> _Part | None:
        """Claim the texts of a leader's ``chunk`` this rider misses too (not stored or claimed meanwhile)."""
        with self.store.lock():
            claimed = self.store.live_claims()
            self.store.refresh()
            rows = np.array([row for batch in chunk for row in batch if (key := self.keys[row]) in self.missing
                             and key not in self.store.index and key not in claimed], dtype=np.int64)
            return _Part(self, rows, self.store.claim([self.keys[row] for row in rows])) if len(rows) else None

    def _compute(self, chunk: list[np.ndarray], parts: list[_Part]) -> list[np.ndarray]:
        """Each part's vectors (its rows of ``chunk``, in order), from one forward of this job's backbone per batch:
        the first part is this job's own (every row), the others its riders' (`LLMEmbedForSequenceClassification.
        encode_backbones` pools their views from the same hidden states)."""
        tokenizer = self.model.tokenizer
        dtype = STORAGE_DTYPES[self.config.dtype]
        wanted = [set(part.rows.tolist()) for part in parts]
        vectors = [torch.empty(len(part.rows), part.job.out.shape[1], dtype=dtype) for part in parts]
        done = [0] * len(parts)
        budget = self.config.token_budget(self.device)  # the plan's batches fit it: encode_backbones runs each whole
        with torch.inference_mode():
            for batch in chunk:
                inputs = tokenizer.pad({f"{self.name}_input_ids": [self.ids[int(row)] for row in batch]},
                                       return_tensors="pt", backbones=[self.name]).to(self.device)
                takes = [(i, rows) for i in range(len(parts))
                         if (rows := [j for j, row in enumerate(batch) if int(row) in wanted[i]])]
                pooled = self.model.encode_backbones([parts[i].job.name for i, _ in takes],
                                                     inputs[f"{self.name}_input_ids"],
                                                     inputs[f"{self.name}_attention_mask"], token_budget=budget)
                for i, rows in takes:
                    vectors[i][done[i] : done[i] + len(rows)] = pooled[parts[i].job.name][rows].to("cpu", dtype)
                    done[i] += len(rows)
                if self.progress is not None:
                    self.progress.update(sum(len(rows) for _, rows in takes))
        for part, part_vectors in zip(parts, vectors):
            if not torch.isfinite(part_vectors.float()).all():
                raise FloatingPointError(f"NaN or inf in the features of backbone {part.job.name!r}; try dtype "
                                         "float32 / a float32 backbone.")
        return [part_vectors.numpy() for part_vectors in vectors]


@dataclass
class _Part:
    """The rows of one forward chunk a job computes (all of them for the job running it, some for a rider), and the
    store's claim on them."""

    job: _BackboneJob
    rows: np.ndarray
    claim: Claim


def _finished(model: LLMEmbedForSequenceClassification, spec: BackboneSpec, stored: np.ndarray,
              chunk: int = 4096) -> torch.Tensor:
    """Stored vectors as the head reads them (`LLMEmbedForSequenceClassification.finish_views`), float32 on the CPU,
    in chunks of rows (Dense modules widen them: EmbeddingGemma's to 3,072)."""
    if not spec.dense_modules:
        return torch.from_numpy(stored).float()
    device = model.backbones[spec.name].device
    return torch.cat([model.finish_views(spec.name, torch.from_numpy(stored[start : start + chunk]).to(device)).cpu()
                      for start in range(0, max(len(stored), 1), chunk)])


def extract_features(
    model: LLMEmbedForSequenceClassification,
    texts: Sequence[str] | Dataset,
    text_column: str = "text",
    extra_columns: dict[str, Sequence[Any]] | None = None,
    cache_folder: str | os.PathLike | None = None,
    config: ExtractionConfig | None = None,
    show_progress: bool = True,
    text_pairs: Sequence[str] | None = None,
    text_pair_column: str | None = None,
) -> Dataset:
    """Pooled features of ``texts`` as a `datasets.Dataset` with a ``pooled_features`` column (torch format).

    Every (backbone, text) vector already in the feature store is reused; only the missing ones are computed, by
    calling ``model.encode_backbones(names, input_ids, attention_mask)`` once per batch (the one place backbones run:
    wrap it to count forwards; ``names`` are the specs whose views one forward gives).

    Args:
        model: an LLMEmbed model; its backbones are loaded if they are not yet.
        texts: a list of strings, or a `datasets.Dataset` whose ``text_column`` holds them.
        extra_columns: columns to add to the result (e.g. ``{"labels": [...]}``), not part of any key.
        cache_folder: the feature store's root (default: ``<llmembed cache>/features``).
        config: batching, segment size and storage dtype (`ExtractionConfig`).
        text_pairs: for a head of text pairs (``model.config.pair_encoding``), the second text of every pair (or
            ``text_pair_column`` of the dataset); each backbone encodes the pairs as its pair encoding says.
    """
    from accelerate import PartialState

    config = config or ExtractionConfig()
    config.check()
    if isinstance(texts, Dataset):
        for column in filter(None, (text_column, text_pair_column)):
            if column not in texts.column_names:
                raise ValueError(f"text column {column!r} not found; the dataset has columns {texts.column_names}.")
        if text_pair_column is not None:
            text_pairs = texts[text_pair_column]
        texts = texts[text_column]
    texts, pairs = _check_request(model, texts, text_pairs)
    state = PartialState()
    stores = backbone_stores(model, config.dtype, cache_folder)
    dtype = feature_store.STORAGE_NUMPY_DTYPES[config.dtype]
    inputs = _backbone_inputs(model, texts, pairs)
    rows = np.empty((len(texts), model.config.feature_size), dtype=dtype)
    columns = model.config.backbone_columns
    jobs, in_place = [], {}
    for spec in model.config.backbone_specs:
        request = inputs[spec.name]
        # Distinct inputs, one per row, stored as the head reads them: computed straight into the result's columns.
        in_place[spec.name] = len(request.rows) == len(request.keys) == len(texts) and not spec.dense_modules
        out = rows[:, columns[spec.name]] if in_place[spec.name] else np.empty(
            (len(request.keys), stored_width(model, spec)), dtype=dtype)
        jobs.append(_BackboneJob(model, spec, stores[spec.name], request, out, config))
    by_name = {job.name: job for job in jobs}
    for runner, *others in model.pass_groups(list(by_name)):
        for name in others:
            if inputs[name] is inputs[runner]:  # the same inputs (a joint and a siamese spec of one model differ)
                by_name[name].leader = by_name[runner]
                by_name[runner].riders.append(by_name[name])

    for job in jobs:
        job.read_stored()
    # Every process plans from the same missing texts (before any of them writes), so they share the same batches.
    state.wait_for_everyone()
    for job in jobs:
        if job.missing:
            job.plan()
    pending = sum(len(job.missing) for job in jobs)
    progress = tqdm(total=pending, desc="Extracting features", unit="view",
                    disable=not show_progress or not state.is_local_main_process or not pending)
    for job in jobs:
        job.progress = progress
    try:
        waiting_since = None
        while any(job.missing for job in jobs):
            if any([job.step() for job in jobs]):
                waiting_since = None
                continue
            now = time.monotonic()
            if waiting_since is None or now - waiting_since > WAIT_LOG_SECONDS:
                left = {job.name: len(job.missing) for job in jobs if job.missing}
                logger.info(f"Feature store: waiting for texts other processes are computing ({left}).")
                waiting_since = now
            time.sleep(feature_store.POLL_SECONDS)
    finally:
        progress.close()
    for job in jobs:
        logger.info(f"Feature store {job.store.fingerprint} ({job.name}): {job.reused} texts reused, "
                    f"{job.computed} computed.")
    state.wait_for_everyone()

    for spec, job in zip(model.config.backbone_specs, jobs):
        request = inputs[spec.name]
        if in_place[spec.name]:
            continue
        if model.config.pair_encoding_of(spec) == "siamese":
            u, v = (_finished(model, spec, job.out[request.rows[side]])
                    for side in (slice(0, len(texts)), slice(len(texts), None)))
            rows[:, columns[spec.name]] = siamese_features(u, v).numpy()
        else:
            rows[:, columns[spec.name]] = _finished(model, spec, job.out[request.rows]).numpy()
    column = pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), rows.shape[1])
    features = Dataset(pa.Table.from_arrays([column], names=[FEATURES_COLUMN]))
    for name, values in (extra_columns or {}).items():
        features = features.add_column(name, list(values))
    return features.with_format("torch")


__all__ = [
    "ACCELERATOR_TOKENS_PER_BATCH",
    "CPU_TOKENS_PER_BATCH",
    "ExtractionConfig",
    "FEATURES_COLUMN",
    "backbone_description",
    "backbone_stores",
    "extract_features",
    "extraction_plan",
    "length_sorted_batches",
    "missing_texts",
    "tokenizer_identity",
]
