"""Feature extraction: equality with a direct forward, original order, batching, resume, corruption, what a change of
input or backbone recomputes (counted in backbone forwards), bad input. The store's own behaviour (reuse across
requests and models, concurrent processes, claims, info/prune) is tested in test_feature_store.py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from safetensors.numpy import load_file, save_file

from llmembed_hf import ExtractionConfig, LLMEmbedForSequenceClassification, extract_features
from llmembed_hf.feature_store import BackboneStore
from llmembed_hf.file_utils import file_sha256
from llmembed_hf.features import (
    ACCELERATOR_TOKENS_PER_BATCH,
    CPU_TOKENS_PER_BATCH,
    FEATURES_COLUMN,
    backbone_description,
    backbone_stores,
    extraction_plan,
)
from llmembed_hf.modeling.modeling_llmembed import INT8_METHOD

from helpers import middle_layer_spec, spy_passes, tiny_specs

#: Words of the tiny vocabularies (not "not": conftest gives it an id beyond the tiny models' vocab_size).
_WORDS = "the a cat dog sat on mat movie film good bad very".split()
#: Word counts in no sorted order; the tiny backbones truncate at 32 tokens, so lengths range from 2 to 32.
_LENGTHS = [2, 25, 5, 1, 12, 30, 3, 8, 18, 4, 40, 6, 10, 15]
TEXTS = [" ".join(_WORDS[(i + j) % len(_WORDS)] for j in range(n)) for i, n in enumerate(_LENGTHS)]
#: Several segments (of >= 3 texts, whole batches) per backbone, each of several batches (the longest texts get
#: batches of 2 rows).
SMALL = ExtractionConfig(shard_size=3, max_tokens_per_batch=64)
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
    real = model.encode_backbones

    def spy(names, input_ids, attention_mask, **kwargs):
        batches.extend((name, attention_mask.clone()) for name in names)
        return real(names, input_ids, attention_mask, **kwargs)

    monkeypatch.setattr(model, "encode_backbones", spy)
    return batches


def rows_of(batches, backbone: str = "llm") -> list[int]:
    return [len(mask) for name, mask in batches if name == backbone]


def computed(batches) -> Counter:
    """Texts each backbone ran on."""
    counts = Counter({"llm": 0, "enc": 0})
    for name, mask in batches:
        counts[name] += len(mask)
    return counts


def forbid_encode(model, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("a backbone ran although the features are cached")

    monkeypatch.setattr(model, "encode_backbones", fail)


def stores(model, root: Path, dtype: str = "float32") -> dict[str, BackboneStore]:
    return backbone_stores(model, dtype, root)


def segment_files(store: BackboneStore) -> list[Path]:
    return store.segment_files()


def segment_rows(store: BackboneStore) -> list[int]:
    return [int(load_file(str(path))["text_sha256"].shape[0]) for path in segment_files(store)]


def backbone_folders(root: Path) -> list[Path]:
    return sorted(p for p in (root / "v2").iterdir() if p.is_dir() and p.name != "locks")


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
    assert computed(batches) == {"llm": len(TEXTS), "enc": len(TEXTS)}
    assert len(rows_of(batches)) > 3
    assert rows_of(batches)[0] == 2  # 64 tokens // 32 tokens
    # Each backbone is batched by its own token lengths: no batch holds a column of pads only, none exceeds the
    # budget, and each backbone's batches come longest first.
    own = [(name, mask.sum(1)) for name, mask in batches]
    assert all(bool((mask[:, -1] == 1).any()) and mask.numel() <= SMALL.max_tokens_per_batch for _, mask in batches)
    for backbone in ("llm", "enc"):
        widths = [int(lengths.max()) for name, lengths in own if name == backbone]
        assert widths == sorted(widths, reverse=True)
    # Segments of whole batches, >= shard_size texts each but the last; together every text once per backbone.
    for store in stores(model, tmp_path).values():
        rows = segment_rows(store)
        assert sum(rows) == len(TEXTS) and len(rows) > 2
        assert all(n >= SMALL.shard_size for n in rows[:-1]) or len(rows) == 1


def test_specs_of_one_model_share_the_forwards_of_texts_both_miss(tiny_config, tiny_backbones, tmp_path,
                                                                    monkeypatch):
    """A text both specs of the tiny Llama miss runs once, its views going to both stores; a text only one of them
    misses runs through that spec's own copy (block 1's: two blocks of three) and gives the same vectors."""
    torch.manual_seed(0)
    both = LLMEmbedForSequenceClassification.from_backbones(
        tiny_config(backbones=tiny_specs(tiny_backbones) + [middle_layer_spec(tiny_backbones)])).eval()
    passes = spy_passes(both, monkeypatch)
    shared = values(extract(both, tmp_path / "shared"))
    assert {names for names, _ in passes} == {("llm", "mid"), ("enc",)}
    assert sum(rows for names, rows in passes if names == ("llm", "mid")) == len(TEXTS)
    torch.testing.assert_close(shared, direct_features(both), atol=1e-5, rtol=0)
    for store in stores(both, tmp_path / "shared").values():  # each store holds every text once
        assert sum(segment_rows(store)) == len(TEXTS)
    # The same stores filled in two steps: a head without the middle layer first, then the middle layer alone.
    torch.manual_seed(0)
    extract(LLMEmbedForSequenceClassification.from_backbones(tiny_config()).eval(), tmp_path / "apart")
    passes.clear()
    apart = values(extract(both, tmp_path / "apart"))
    assert {names for names, _ in passes} == {("mid",)}
    assert sum(rows for _, rows in passes) == len(TEXTS)
    torch.testing.assert_close(apart, shared, atol=1e-6, rtol=0)


def test_extraction_plan_is_the_order_of_the_forwards(model, tmp_path, monkeypatch):
    """`extraction_plan` (what the benchmarks replay) lists the batches `extract_features` runs, in order."""
    order, lengths = extraction_plan(model, TEXTS, SMALL)
    batches = spy_batches(model, monkeypatch)
    extract(model, tmp_path)
    assert [(name, len(rows)) for name, rows in order] == [(name, len(mask)) for name, mask in batches]
    assert [int(lengths[name][rows].max()) for name, rows in order] == [mask.shape[1] for _, mask in batches]
    names = [name for name, _ in order]
    assert names.index("enc") < len(names) - 1 - names[::-1].index("llm")  # backbones take turns, a segment each


def test_dataset_input_and_extra_columns(model, tmp_path, monkeypatch):
    dataset = Dataset.from_dict({"sentence": TEXTS, "label": list(range(len(TEXTS)))})
    features = extract_features(model, dataset, text_column="sentence", extra_columns={"labels": dataset["label"]},
                                cache_folder=tmp_path, config=SMALL, show_progress=False)
    assert features.column_names == [FEATURES_COLUMN, "labels"]
    assert features[:]["labels"].tolist() == list(range(len(TEXTS)))
    torch.testing.assert_close(values(features), direct_features(model), atol=1e-5, rtol=0)
    # The store is keyed by the texts only: a list of the same texts computes nothing.
    forbid_encode(model, monkeypatch)
    assert torch.equal(values(extract(model, tmp_path)), values(features))


def test_repeated_texts_are_computed_once(model, tmp_path, monkeypatch):
    texts = [TEXTS[3], TEXTS[0], TEXTS[3], TEXTS[5], TEXTS[0], TEXTS[3]]
    batches = spy_batches(model, monkeypatch)
    got = values(extract(model, tmp_path, texts=texts))
    assert computed(batches) == {"llm": 3, "enc": 3}
    assert torch.equal(got[0], got[2]) and torch.equal(got[0], got[5]) and torch.equal(got[1], got[4])
    monkeypatch.undo()
    torch.testing.assert_close(got, direct_features(model, texts), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------------------
# Resume and corruption
# ----------------------------------------------------------------------------------------------------------------------


def interrupted_run(model, root: Path, after: int = 2, config: ExtractionConfig = SMALL) -> dict[str, BackboneStore]:
    """Extract into ``root`` until ``after`` segments are written (backbones take turns: llm, enc, llm, ...); the
    next write is interrupted (Ctrl-C) instead."""
    real_write = BackboneStore.write_segment
    written = []

    def write_then_interrupt(store, claim, vectors):
        if len(written) == after:
            raise KeyboardInterrupt(f"simulated interruption after {after} segments")
        written.append(real_write(store, claim, vectors))
        return written[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BackboneStore, "write_segment", write_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            extract(model, root, config=config)
    by_name = stores(model, root, config.dtype)
    assert sum(len(segment_files(store)) for store in by_name.values()) == after
    for store in by_name.values():
        assert not any(p.name.startswith(".") for p in store.segments.iterdir()), "a temporary file was left behind"
        assert list(store.claims.iterdir()) == [], "a claim was left behind"
    return by_name


def test_resume_after_interruption_computes_only_missing_segments(model, tmp_path, monkeypatch):
    reference = values(extract(model, tmp_path / "uninterrupted"))

    by_name = interrupted_run(model, tmp_path / "resumed")
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for store in by_name.values() for p in segment_files(store)}
    done = {name: sum(segment_rows(store)) for name, store in by_name.items()}
    assert all(n >= SMALL.shard_size for n in done.values())
    batches = spy_batches(model, monkeypatch)

    resumed = values(extract(model, tmp_path / "resumed"))

    # Bit-identical: the resumed run plans the same batches for the texts that are left.
    assert torch.equal(resumed, reference)
    assert computed(batches) == {name: len(TEXTS) - n for name, n in done.items()}
    assert all(path.read_bytes() == data and path.stat().st_mtime_ns == mtime
               for path, (mtime, data) in before.items())


def _rewrite(path: Path, tensors: dict[str, np.ndarray], **meta_changes: str) -> None:
    """Rewrite a segment with valid checksums for ``tensors`` (so only the other checks can catch it)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        meta = dict(handle.metadata())
    meta["vectors_sha256"] = hashlib.sha256(np.ascontiguousarray(tensors["vectors"]).tobytes()).hexdigest()
    meta["text_sha256_sha256"] = hashlib.sha256(np.ascontiguousarray(tensors["text_sha256"]).tobytes()).hexdigest()
    meta.update(meta_changes)
    save_file(tensors, str(path), metadata={k: v for k, v in meta.items() if v is not None})


@pytest.mark.parametrize("damage", ["truncate", "flip_bytes", "wrong_rows_with_valid_checksum", "drop_checksum",
                                    "nan_with_valid_checksum", "other_fingerprint"])
def test_corrupted_segment_is_recomputed(model, tmp_path, monkeypatch, damage):
    reference = values(extract(model, tmp_path / "uninterrupted"))
    by_name = interrupted_run(model, tmp_path / "damaged")
    data = segment_files(by_name["llm"])[0]
    damaged_rows = segment_rows(by_name["llm"])[0]
    enc_done = sum(segment_rows(by_name["enc"]))
    tensors = load_file(str(data))
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    elif damage == "flip_bytes":
        raw = bytearray(data.read_bytes())
        for i in range(len(raw) - 64, len(raw) - 32):  # inside the stored values
            raw[i] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif damage == "wrong_rows_with_valid_checksum":
        _rewrite(data, {"vectors": tensors["vectors"][:-1].copy(), "text_sha256": tensors["text_sha256"]})
    elif damage == "drop_checksum":
        _rewrite(data, tensors, vectors_sha256=None)
    elif damage == "nan_with_valid_checksum":
        tensors["vectors"][0, 3] = np.nan
        _rewrite(data, tensors)
    else:
        _rewrite(data, tensors, fingerprint="0" * 32)
    batches = spy_batches(model, monkeypatch)

    recomputed = values(extract(model, tmp_path / "damaged"))

    # The damaged segment's texts and those never written were computed (in the batches of an uninterrupted run);
    # enc's segment was reused; the damaged file was set aside.
    assert torch.equal(recomputed, reference)
    assert computed(batches) == {"llm": len(TEXTS), "enc": len(TEXTS) - enc_done}
    assert damaged_rows >= SMALL.shard_size
    assert not data.exists() and data.with_name(data.name + ".corrupt").exists()
    assert sum(segment_rows(by_name["llm"])) == len(TEXTS)


# ----------------------------------------------------------------------------------------------------------------------
# What a change recomputes
# ----------------------------------------------------------------------------------------------------------------------


def test_same_texts_are_a_cache_hit(model, tmp_path, monkeypatch):
    first = values(extract(model, tmp_path))
    forbid_encode(model, monkeypatch)
    # A different batching config does not change the features, hence not the key either.
    again = values(extract(model, tmp_path, config=ExtractionConfig(shard_size=100, max_tokens_per_batch=4096)))
    assert torch.equal(first, again)
    assert len(backbone_folders(tmp_path)) == 2


def test_changed_texts_compute_only_the_changed_text(model, tmp_path, monkeypatch):
    first = values(extract(model, tmp_path))
    changed = TEXTS[:-1] + [TEXTS[-1] + " cat"]
    with monkeypatch.context() as patch:
        batches = spy_batches(model, patch)
        features = values(extract(model, tmp_path, texts=changed))
    assert computed(batches) == {"llm": 1, "enc": 1}
    assert torch.equal(features[:-1], first[:-1])
    torch.testing.assert_close(features, direct_features(model, changed), atol=1e-5, rtol=0)
    # Order: features come back in the order of the texts, from the store.
    forbid_encode(model, monkeypatch)
    assert torch.equal(values(extract(model, tmp_path, texts=TEXTS[::-1])), first.flip(0))
    assert len(backbone_folders(tmp_path)) == 2


def test_changed_layers_recompute_only_that_backbone(model, tiny_config, tmp_path, monkeypatch):
    first = values(extract(model, tmp_path))
    other = LLMEmbedForSequenceClassification.from_backbones(tiny_config(llm={"layers": [-2, -1]})).eval()
    assert stores(other, tmp_path)["llm"].fingerprint != stores(model, tmp_path)["llm"].fingerprint
    assert stores(other, tmp_path)["enc"].fingerprint == stores(model, tmp_path)["enc"].fingerprint
    batches = spy_batches(other, monkeypatch)
    features = values(extract(other, tmp_path))
    assert computed(batches) == {"llm": len(TEXTS), "enc": 0}
    assert len(backbone_folders(tmp_path)) == 3
    assert features.shape == (len(TEXTS), 2 * 48 + 32)
    assert torch.equal(features[:, -32:], first[:, -32:])
    monkeypatch.undo()
    torch.testing.assert_close(features, direct_features(other), atol=1e-5, rtol=0)


def test_changed_pooling_recomputes_only_that_backbone(model, tiny_config, tmp_path, monkeypatch):
    first = values(extract(model, tmp_path))
    other = LLMEmbedForSequenceClassification.from_backbones(tiny_config(enc={"pooling": "mean"})).eval()
    batches = spy_batches(other, monkeypatch)
    features = values(extract(other, tmp_path))
    assert computed(batches) == {"llm": 0, "enc": len(TEXTS)}
    assert len(backbone_folders(tmp_path)) == 3
    assert torch.equal(features[:, :-32], first[:, :-32])
    monkeypatch.undo()
    torch.testing.assert_close(features, direct_features(other), atol=1e-5, rtol=0)


def test_float16_storage_is_a_miss_and_close_to_float32(model, tmp_path):
    full = values(extract(model, tmp_path))
    half_config = ExtractionConfig(shard_size=3, max_tokens_per_batch=64, dtype="float16")
    assert all(stores(model, tmp_path, "float16")[name].fingerprint != store.fingerprint
               for name, store in stores(model, tmp_path).items())
    features = extract(model, tmp_path, config=half_config)
    half = values(features)
    assert len(backbone_folders(tmp_path)) == 4
    # Stored as float16 (on disk and in the dataset; the torch format hands them out as float32 tensors).
    assert features.features[FEATURES_COLUMN].feature.dtype == "float16"
    assert all(load_file(str(path))["vectors"].dtype == np.float16
               for store in stores(model, tmp_path, "float16").values() for path in segment_files(store))
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
    with pytest.raises(ValueError, match="shard_size=0"):
        extract(model, tmp_path, config=ExtractionConfig(shard_size=0))


def test_unsupported_dtype_is_rejected(model, tmp_path):
    with pytest.raises(ValueError, match="bfloat16.*float16"):
        extract(model, tmp_path, config=ExtractionConfig(dtype="bfloat16"))


def test_changed_backbone_weights_recompute_that_backbone(tiny_backbones, tiny_config, tmp_path, monkeypatch):
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
    assert stores(retrained, cache)["enc"].fingerprint != stores(model, cache)["enc"].fingerprint
    batches = spy_batches(retrained, monkeypatch)
    second = values(extract(retrained, cache))
    assert computed(batches) == {"llm": 0, "enc": len(TEXTS)}
    assert len(backbone_folders(cache)) == 3
    assert not torch.allclose(first[:, -32:], second[:, -32:], atol=1e-3)
    monkeypatch.undo()
    torch.testing.assert_close(second, direct_features(retrained), atol=1e-5, rtol=0)


def test_changed_tokenizer_recomputes_that_backbone(tiny_backbones, tiny_config, tmp_path, monkeypatch):
    """Same weights, another tokenizer (no lower-casing): another identity, so the enc vectors are not reused."""
    bert = tmp_path / "bert"
    shutil.copytree(tiny_backbones["bert"], bert)
    model = LLMEmbedForSequenceClassification.from_backbones(tiny_config(enc={"model_id": str(bert)})).eval()
    cache = tmp_path / "cache"
    texts = [text.upper() for text in TEXTS]
    first = values(extract(model, cache, texts=texts))
    tokenizer_file = bert / "tokenizer.json"
    pipeline = json.loads(tokenizer_file.read_text())
    pipeline["normalizer"]["lowercase"] = False
    tokenizer_file.write_text(json.dumps(pipeline))
    (bert / "tokenizer_config.json").write_text(
        json.dumps({**json.loads((bert / "tokenizer_config.json").read_text()), "do_lower_case": False}))

    other = LLMEmbedForSequenceClassification.from_backbones(tiny_config(enc={"model_id": str(bert)})).eval()
    assert other.config.backbones[1]["weights_sha256"] == model.config.backbones[1]["weights_sha256"]
    assert stores(other, cache)["enc"].fingerprint != stores(model, cache)["enc"].fingerprint
    batches = spy_batches(other, monkeypatch)
    second = values(extract(other, cache, texts=texts))
    assert computed(batches) == {"llm": 0, "enc": len(TEXTS)}
    assert not torch.allclose(first[:, -32:], second[:, -32:], atol=1e-3)


def test_fingerprint_is_stable_across_calls(model, tmp_path):
    """Tokenising (which sets the fast tokenizer's truncation state) does not change a backbone's identity."""
    before = {name: store.fingerprint for name, store in stores(model, tmp_path).items()}
    model.tokenizer(TEXTS, max_length=7, return_tensors="pt")
    extract(model, tmp_path)
    assert {name: store.fingerprint for name, store in stores(model, tmp_path).items()} == before


def test_prompt_and_pooling_of_the_prompt_change_only_that_backbones_fingerprint(model, tiny_config, tmp_path,
                                                                                   monkeypatch):
    first = values(extract(model, tmp_path))
    prompted = LLMEmbedForSequenceClassification.from_backbones(tiny_config(enc={"prompt": "the film, "})).eval()
    assert stores(prompted, tmp_path)["enc"].fingerprint != stores(model, tmp_path)["enc"].fingerprint
    assert stores(prompted, tmp_path)["llm"].fingerprint == stores(model, tmp_path)["llm"].fingerprint
    batches = spy_batches(prompted, monkeypatch)
    features = values(extract(prompted, tmp_path))
    assert computed(batches) == {"llm": 0, "enc": len(TEXTS)}
    assert torch.equal(features[:, :-32], first[:, :-32]) and not torch.allclose(features[:, -32:], first[:, -32:])
    unpooled = LLMEmbedForSequenceClassification.from_backbones(
        tiny_config(enc={"prompt": "the film, ", "pooling": "mean", "pool_prompt": False})).eval()
    pooled = LLMEmbedForSequenceClassification.from_backbones(
        tiny_config(enc={"prompt": "the film, ", "pooling": "mean"})).eval()
    assert stores(unpooled, tmp_path)["enc"].fingerprint != stores(pooled, tmp_path)["enc"].fingerprint


def test_a_float_backbone_without_prompt_keeps_the_fingerprint_it_had_before_prompts_and_int8(model):
    """Feature stores written before these options existed stay valid: the same keys, None for prompt and
    quantisation, no pool_prompt (it changes nothing without a prompt)."""
    description = backbone_description(model, model.config.backbone_specs[1])
    assert sorted(description) == ["compute_dtype", "gguf_file", "layers", "max_length", "model_id", "normalize",
                                   "pooling", "prompt", "quantization", "revision", "tokenizer", "weights_sha256"]
    assert (description["prompt"], description["quantization"], description["compute_dtype"]) == (
        None, None, "torch.float32")


def test_a_spec_with_dense_modules_reuses_the_pooled_states_of_the_spec_without(tiny_backbones, tiny_config, tmp_path,
                                                                                 monkeypatch):
    """A model's sentence embedding (`BackboneSpec.dense_modules`) is its pooled state through its Dense modules: the
    store keeps the pooled state, shared with the spec without Dense modules, and the head reads it mapped."""
    from safetensors.torch import save_file

    folder = tmp_path / "bert-st"
    shutil.copytree(tiny_backbones["bert"], folder)
    (folder / "modules.json").write_text(json.dumps([{"path": "1_Dense", "type": "sentence_transformers.models.Dense"}]))
    (folder / "1_Dense").mkdir()
    (folder / "1_Dense" / "config.json").write_text(json.dumps({"in_features": 32, "out_features": 24, "bias": True}))
    torch.manual_seed(0)
    save_file({"linear.weight": torch.randn(24, 32), "linear.bias": torch.randn(24)},
              folder / "1_Dense" / "model.safetensors")
    spec = {"model_id": str(folder), "hidden_size": None, "pooling": "mean"}
    plain = LLMEmbedForSequenceClassification.from_backbones(tiny_config(enc=spec)).eval()
    dense = LLMEmbedForSequenceClassification.from_backbones(
        tiny_config(enc=spec | {"dense_modules": True, "normalize": True})).eval()
    assert stores(dense, tmp_path)["enc"].fingerprint == stores(plain, tmp_path)["enc"].fingerprint
    extract(plain, tmp_path)
    batches = spy_batches(dense, monkeypatch)
    features = values(extract(dense, tmp_path))
    assert computed(batches) == {"llm": 0, "enc": 0}  # every vector came from the plain spec's store
    monkeypatch.undo()
    assert features.shape == (len(TEXTS), 3 * 48 + 24)
    torch.testing.assert_close(features, direct_features(dense), atol=1e-5, rtol=1e-5)
    assert torch.allclose(features[:, -24:].norm(dim=-1), torch.ones(len(TEXTS)))


def test_quantisation_and_compute_dtype_as_loaded_are_in_the_fingerprint(model, tiny_config, tmp_path):
    int8 = LLMEmbedForSequenceClassification.from_backbones(tiny_config(enc={"quantization": "int8"})).eval()
    assert backbone_description(int8, int8.config.backbone_specs[1])["quantization"] == {
        "scheme": "int8", "method": INT8_METHOD}
    assert stores(int8, tmp_path)["enc"].fingerprint != stores(model, tmp_path)["enc"].fingerprint
    assert stores(int8, tmp_path)["llm"].fingerprint == stores(model, tmp_path)["llm"].fingerprint
    # Served with int8 knowingly: the fingerprint records what runs, not what the config was trained on.
    served = LLMEmbedForSequenceClassification(model.config).load_backbones(quantization="int8",
                                                                            allow_quantization_mismatch=True)
    assert stores(served, tmp_path)["enc"].fingerprint == stores(int8, tmp_path)["enc"].fingerprint
    bf16 = LLMEmbedForSequenceClassification.from_backbones(tiny_config(enc={"dtype": "bfloat16"})).eval()
    assert backbone_description(bf16, bf16.config.backbone_specs[1])["compute_dtype"] == "torch.bfloat16"
    assert stores(bf16, tmp_path)["enc"].fingerprint != stores(model, tmp_path)["enc"].fingerprint
    # int8 scales activations per tensor, i.e. per batch: the store's batches give vectors close to, not equal to,
    # those of one direct batch (float backbones agree to 1e-5).
    features, direct = values(extract(int8, tmp_path)), direct_features(int8)
    assert F.cosine_similarity(features[:, -32:], direct[:, -32:]).min() > 0.999
    torch.testing.assert_close(features[:, :-32], direct[:, :-32], atol=1e-5, rtol=0)


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


def test_nan_features_raise_and_write_no_segment(model, tmp_path, monkeypatch):
    real = model.encode_backbones

    def nan_encode(*args, **kwargs):
        features = real(*args, **kwargs)
        next(iter(features.values()))[0, 5] = float("nan")
        return features

    monkeypatch.setattr(model, "encode_backbones", nan_encode)
    with pytest.raises(FloatingPointError, match="NaN"):
        extract(model, tmp_path)
    assert list(tmp_path.rglob("seg-*")) == [] and list(tmp_path.rglob("*.claim")) == []
    # Fixing the cause and rerunning gives finite features.
    monkeypatch.undo()
    assert torch.isfinite(values(extract(model, tmp_path))).all()


def test_float16_overflow_is_caught(model, tmp_path, monkeypatch):
    """Values beyond float16's range become inf when stored as float16: an error, not a silent inf."""
    real = model.encode_backbones

    def huge(*args, **kwargs):
        return {name: views * 1e6 for name, views in real(*args, **kwargs).items()}

    monkeypatch.setattr(model, "encode_backbones", huge)
    with pytest.raises(FloatingPointError, match="float32"):
        extract(model, tmp_path, config=ExtractionConfig(shard_size=3, max_tokens_per_batch=64, dtype="float16"))
    assert list(tmp_path.rglob("seg-*")) == [] and list(tmp_path.rglob("*.claim")) == []
