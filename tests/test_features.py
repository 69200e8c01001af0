"""Feature extraction: equality with a direct forward, original order, resumable shards, cache keys, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from datasets import Dataset, load_from_disk
from safetensors.torch import load_file, save_file

from llmembed_hf import ExtractionConfig, LLMEmbedForSequenceClassification, extract_features
from llmembed_hf.features import (
    ACCELERATOR_TOKENS_PER_BATCH,
    CPU_TOKENS_PER_BATCH,
    FEATURES_COLUMN,
    ShardStore,
    features_fingerprint,
)

#: Words of the tiny vocabularies (not "not": conftest gives it an id beyond the tiny models' vocab_size).
_WORDS = "the a cat dog sat on mat movie film good bad very".split()
#: Word counts in no sorted order; the tiny backbones truncate at 32 tokens, so lengths range from 2 to 32.
_LENGTHS = [2, 25, 5, 1, 12, 30, 3, 8, 18, 4, 40, 6, 10, 15]
TEXTS = [" ".join(_WORDS[(i + j) % len(_WORDS)] for j in range(n)) for i, n in enumerate(_LENGTHS)]
#: Several shards (5) of several batches each (the longest texts get batches of 2 rows).
SMALL = ExtractionConfig(shard_size=3, max_tokens_per_batch=64)
NUM_SHARDS = -(-len(TEXTS) // SMALL.shard_size)
FEATURE_SIZE = 3 * 48 + 32


@pytest.fixture
def model(tiny_config):
    torch.manual_seed(0)
    return LLMEmbedForSequenceClassification.from_backbones(tiny_config()).eval()


def direct_features(model, texts=TEXTS) -> torch.Tensor:
    with torch.inference_mode():
        return model.encode(**model.tokenizer(list(texts), return_tensors="pt"))


def values(features) -> torch.Tensor:
    return features[:][FEATURES_COLUMN]


def extract(model, folder, texts=TEXTS, config=SMALL, **kwargs):
    return extract_features(model, texts, cache_folder=folder, config=config, show_progress=False, **kwargs)


def spy_batches(model, monkeypatch) -> list[tuple[str, torch.Tensor]]:
    """Record ``(backbone, attention_mask)`` of every forward batch of the extraction (the real one still runs)."""
    batches: list[tuple[str, torch.Tensor]] = []
    real = model.encode_backbone

    def spy(name, input_ids, attention_mask):
        batches.append((name, attention_mask.clone()))
        return real(name, input_ids, attention_mask)

    monkeypatch.setattr(model, "encode_backbone", spy)
    return batches


def rows_of(batches, backbone: str = "llm") -> list[int]:
    return [len(mask) for name, mask in batches if name == backbone]


def forbid_encode(model, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("a backbone ran although the features are cached")

    monkeypatch.setattr(model, "encode_backbone", fail)


def shard_folder(model, root: Path, texts=TEXTS, dtype: str = "float32") -> Path:
    return root / features_fingerprint(model, texts, dtype) / "shards"


def shard_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("shard-*.safetensors"))


# ----------------------------------------------------------------------------------------------------------------------
# Correctness and order
# ----------------------------------------------------------------------------------------------------------------------


def test_features_equal_direct_forward_in_original_order(model, tmp_path, monkeypatch):
    lengths = [len(ids) for ids in model.tokenizer(TEXTS, padding=False)["llm_input_ids"]]
    assert lengths != sorted(lengths) and lengths != sorted(lengths, reverse=True)
    assert max(lengths) == 32 and min(lengths) <= 3
    batches = spy_batches(model, monkeypatch)

    features = extract(model, tmp_path)

    assert len(features) == len(TEXTS) and features.column_names == [FEATURES_COLUMN]
    got = values(features)
    assert got.dtype == torch.float32 and got.shape == (len(TEXTS), FEATURE_SIZE)
    monkeypatch.undo()
    torch.testing.assert_close(got, direct_features(model), atol=1e-5, rtol=0)
    # Each text's row is its own (the rows are not merely a permutation of the right rows).
    single = torch.cat([direct_features(model, [text]) for text in TEXTS])
    torch.testing.assert_close(got, single, atol=1e-5, rtol=0)
    # Dynamic batching under the token budget: several batches, the longest first and smallest.
    assert sum(rows_of(batches, "llm")) == sum(rows_of(batches, "enc")) == len(TEXTS)
    assert len(rows_of(batches)) > NUM_SHARDS
    assert rows_of(batches)[0] == 2  # 64 tokens // 32 tokens
    # Each backbone is batched by its own token lengths: no batch holds a column of pads only, none exceeds the
    # budget, and within a shard each backbone's batches come longest first.
    own = [(name, mask.sum(1)) for name, mask in batches]
    assert all(bool((mask[:, -1] == 1).any()) and mask.numel() <= SMALL.max_tokens_per_batch for _, mask in batches)
    for backbone in ("llm", "enc"):
        widths = [int(lengths.max()) for name, lengths in own if name == backbone]
        assert widths[:2] == sorted(widths[:2], reverse=True)
    assert len(shard_files(shard_folder(model, tmp_path))) == NUM_SHARDS


def test_dataset_input_and_extra_columns(model, tmp_path):
    dataset = Dataset.from_dict({"sentence": TEXTS, "label": list(range(len(TEXTS)))})
    features = extract_features(model, dataset, text_column="sentence", extra_columns={"labels": dataset["label"]},
                                cache_folder=tmp_path, config=SMALL, show_progress=False)
    assert features.column_names == [FEATURES_COLUMN, "labels"]
    assert features[:]["labels"].tolist() == list(range(len(TEXTS)))
    torch.testing.assert_close(values(features), direct_features(model), atol=1e-5, rtol=0)
    # The cache key is the texts only: a list of the same texts is a hit.
    assert len(list(tmp_path.iterdir())) == 1
    assert torch.equal(values(extract(model, tmp_path)), values(features))


# ----------------------------------------------------------------------------------------------------------------------
# Resume and corruption
# ----------------------------------------------------------------------------------------------------------------------


def interrupted_run(model, root: Path, after: int = 2) -> Path:
    """Extract into ``root`` until ``after`` shards are saved; the next save is interrupted (Ctrl-C) instead."""
    real_save = ShardStore.save
    saved = []

    def save_then_interrupt(store, shard, features, indices):
        if len(saved) == after:
            raise KeyboardInterrupt(f"simulated interruption after {after} shards")
        real_save(store, shard, features, indices)
        saved.append(shard)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ShardStore, "save", save_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            extract(model, root)
    folder = shard_folder(model, root)
    assert len(shard_files(folder)) == after
    assert len(list(folder.glob("shard-*.json"))) == after
    assert not any(p.name.startswith(".") for p in folder.iterdir()), "a temporary file was left behind"
    assert not (folder.parent / "dataset").exists()
    return folder


def test_resume_after_interruption_computes_only_missing_shards(model, tmp_path, monkeypatch):
    reference = values(extract(model, tmp_path / "uninterrupted"))

    folder = interrupted_run(model, tmp_path / "resumed")
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in shard_files(folder)}
    batches = spy_batches(model, monkeypatch)

    resumed = values(extract(model, tmp_path / "resumed"))

    assert torch.equal(resumed, reference)
    # Only the remaining shards were computed: the first two shards hold the 6 longest texts.
    assert sum(rows_of(batches)) == len(TEXTS) - 2 * SMALL.shard_size
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in shard_files(folder)}
    assert len(after) == NUM_SHARDS
    assert all(after[name] == before[name] for name in before)


@pytest.mark.parametrize("damage", ["truncate", "flip_bytes", "wrong_rows_with_valid_checksum", "drop_checksum"])
def test_corrupted_shard_is_recomputed(model, tmp_path, monkeypatch, damage):
    reference = values(extract(model, tmp_path / "uninterrupted"))
    folder = interrupted_run(model, tmp_path / "damaged")
    data = folder / "shard-00000.safetensors"
    meta = folder / "shard-00000.json"
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    elif damage == "flip_bytes":
        raw = bytearray(data.read_bytes())
        for i in range(len(raw) - 64, len(raw) - 32):  # inside the feature values
            raw[i] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif damage == "wrong_rows_with_valid_checksum":
        tensors = load_file(str(data))
        save_file({k: v[:-1].contiguous() for k, v in tensors.items()}, str(data))
        meta.write_text(json.dumps({"sha256": hashlib.sha256(data.read_bytes()).hexdigest(), "rows": 2}))
    else:
        meta.unlink()
    batches = spy_batches(model, monkeypatch)

    recomputed = values(extract(model, tmp_path / "damaged"))

    torch.testing.assert_close(recomputed, reference, atol=1e-6, rtol=0)
    # Shard 0 (3 texts) and the 3 shards never written were computed; shard 1 was reused.
    assert sum(rows_of(batches)) == len(TEXTS) - SMALL.shard_size
    assert load_file(str(data))["features"].shape == (SMALL.shard_size, FEATURE_SIZE)


# ----------------------------------------------------------------------------------------------------------------------
# Cache hits and misses
# ----------------------------------------------------------------------------------------------------------------------


def test_same_texts_are_a_cache_hit(model, tmp_path, monkeypatch):
    first = values(extract(model, tmp_path))
    forbid_encode(model, monkeypatch)
    # A different batching config does not change the features, hence not the key either.
    again = values(extract(model, tmp_path, config=ExtractionConfig(shard_size=100, max_tokens_per_batch=4096)))
    assert torch.equal(first, again)
    assert len(list(tmp_path.iterdir())) == 1


def test_changed_texts_are_a_miss(model, tmp_path, monkeypatch):
    extract(model, tmp_path)
    changed = TEXTS[:-1] + [TEXTS[-1] + " cat"]
    assert features_fingerprint(model, changed, "float32") != features_fingerprint(model, TEXTS, "float32")
    # Order matters too: features are returned in the order of the texts.
    assert features_fingerprint(model, TEXTS[::-1], "float32") != features_fingerprint(model, TEXTS, "float32")
    with monkeypatch.context() as patch:
        forbid_encode(model, patch)
        with pytest.raises(AssertionError, match="cached"):
            extract(model, tmp_path, texts=changed)
    features = values(extract(model, tmp_path, texts=changed))
    assert len(list(tmp_path.iterdir())) == 2
    torch.testing.assert_close(features, direct_features(model, changed), atol=1e-5, rtol=0)


def test_changed_layers_are_a_miss(model, tiny_config, tmp_path):
    extract(model, tmp_path)
    other = LLMEmbedForSequenceClassification.from_backbones(tiny_config(llm={"layers": [-2, -1]})).eval()
    assert features_fingerprint(other, TEXTS, "float32") != features_fingerprint(model, TEXTS, "float32")
    features = values(extract(other, tmp_path))
    assert len(list(tmp_path.iterdir())) == 2
    assert features.shape == (len(TEXTS), 2 * 48 + 32)
    torch.testing.assert_close(features, direct_features(other), atol=1e-5, rtol=0)


def test_changed_pooling_is_a_miss(model, tiny_config, tmp_path):
    extract(model, tmp_path)
    other = LLMEmbedForSequenceClassification.from_backbones(tiny_config(enc={"pooling": "mean"})).eval()
    assert features_fingerprint(other, TEXTS, "float32") != features_fingerprint(model, TEXTS, "float32")
    features = values(extract(other, tmp_path))
    assert len(list(tmp_path.iterdir())) == 2
    torch.testing.assert_close(features, direct_features(other), atol=1e-5, rtol=0)


def test_float16_storage_is_a_miss_and_close_to_float32(model, tmp_path):
    full = values(extract(model, tmp_path))
    assert features_fingerprint(model, TEXTS, "float16") != features_fingerprint(model, TEXTS, "float32")
    half = values(extract(model, tmp_path, config=ExtractionConfig(shard_size=3, max_tokens_per_batch=64,
                                                                   dtype="float16")))
    assert len(list(tmp_path.iterdir())) == 2
    # Stored as float16 on disk (the torch format hands them out as float32 tensors).
    stored = load_from_disk(str(tmp_path / features_fingerprint(model, TEXTS, "float16") / "dataset"))
    assert stored.features[FEATURES_COLUMN].feature.dtype == "float16"
    assert half.shape == full.shape
    assert not torch.equal(half.float(), full)
    torch.testing.assert_close(half.float(), full, atol=1e-3, rtol=1e-3)
    assert torch.equal(half.float(), full.half().float())


def test_default_token_budget_depends_on_the_device(model, tmp_path):
    assert ExtractionConfig().token_budget("cpu") == CPU_TOKENS_PER_BATCH
    assert ExtractionConfig().token_budget(torch.device("cuda", 0)) == ACCELERATOR_TOKENS_PER_BATCH
    assert ExtractionConfig(max_tokens_per_batch=100).token_budget("cpu") == 100
    with pytest.raises(ValueError, match="max_tokens_per_batch=0"):
        extract(model, tmp_path, config=ExtractionConfig(max_tokens_per_batch=0))


def test_unsupported_dtype_is_rejected(model, tmp_path):
    with pytest.raises(ValueError, match="bfloat16.*float16"):
        extract(model, tmp_path, config=ExtractionConfig(dtype="bfloat16"))


def test_changed_backbone_weights_are_a_miss(tiny_backbones, tiny_config, tmp_path, monkeypatch):
    bert = tmp_path / "bert"
    shutil.copytree(tiny_backbones["bert"], bert)
    config = lambda: tiny_config(enc={"model_id": str(bert)})  # noqa: E731
    model = LLMEmbedForSequenceClassification.from_backbones(config()).eval()
    cache = tmp_path / "cache"
    first = values(extract(model, cache))

    from transformers import BertModel

    weights = BertModel.from_pretrained(bert)
    with torch.no_grad():  # the CLS view is the last layer's output: perturb that layer
        weights.encoder.layer[-1].output.dense.weight.add_(
            torch.randn(weights.encoder.layer[-1].output.dense.weight.shape, generator=torch.Generator().manual_seed(0))
        )
    os.unlink(bert / "model.safetensors")
    weights.save_pretrained(bert)

    retrained = LLMEmbedForSequenceClassification.from_backbones(config()).eval()
    old_sha = model.config.backbones[1]["weights_sha256"]
    new_sha = retrained.config.backbones[1]["weights_sha256"]
    assert old_sha and new_sha and old_sha != new_sha
    assert features_fingerprint(retrained, TEXTS, "float32") != features_fingerprint(model, TEXTS, "float32")
    second = values(extract(retrained, cache))
    assert len(list(cache.iterdir())) == 2
    assert not torch.allclose(first[:, -32:], second[:, -32:], atol=1e-3)
    torch.testing.assert_close(second, direct_features(retrained), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------------------


def test_non_string_text_names_its_index(model, tmp_path):
    with pytest.raises(TypeError, match=r"text\[2\] is int"):
        extract(model, tmp_path, texts=["the cat", "a dog", 7, "bad"])
    with pytest.raises(TypeError, match=r"text\[1\] is NoneType"):
        extract(model, tmp_path, texts=["the cat", None])
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_empty_input_is_rejected(model, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        extract(model, tmp_path, texts=[])
    with pytest.raises(ValueError, match="empty"):
        extract(model, tmp_path, texts=Dataset.from_dict({"text": []}))


def test_dataset_without_text_column_lists_columns(model, tmp_path):
    dataset = Dataset.from_dict({"sentence": ["the cat"], "label": [0]})
    with pytest.raises(ValueError, match=r"'text'.*\['sentence', 'label'\]"):
        extract(model, tmp_path, texts=dataset)


def test_nan_features_raise_and_write_no_shard(model, tmp_path, monkeypatch):
    real = model.encode_backbone

    def nan_encode(*args):
        features = real(*args)
        features[0, 5] = float("nan")
        return features

    monkeypatch.setattr(model, "encode_backbone", nan_encode)
    with pytest.raises(FloatingPointError, match="NaN"):
        extract(model, tmp_path)
    assert list(tmp_path.rglob("shard-*")) == []
    assert list(tmp_path.rglob("dataset")) == []
    # Fixing the cause and rerunning gives finite features.
    monkeypatch.undo()
    assert torch.isfinite(values(extract(model, tmp_path))).all()


def test_float16_overflow_is_caught(model, tmp_path, monkeypatch):
    """Values beyond float16's range become inf when stored as float16: an error, not a silent inf."""
    real = model.encode_backbone

    def huge(*args):
        return real(*args) * 1e6

    monkeypatch.setattr(model, "encode_backbone", huge)
    with pytest.raises(FloatingPointError, match="float32"):
        extract(model, tmp_path, config=ExtractionConfig(shard_size=3, max_tokens_per_batch=64, dtype="float16"))
    assert list(tmp_path.rglob("shard-*")) == []
