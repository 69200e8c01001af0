"""The per-view feature store: reuse across requests and models counted in backbone forwards (superset, shared
backbone, second head, a saved head), resume with another segment size, concurrent processes and claims, info and
prune."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import middle_layer_spec, tiny_specs
from llmembed_hf import ExtractionConfig, LLMEmbedConfig, LLMEmbedForSequenceClassification, extract_features
from llmembed_hf.feature_store import BackboneStore, cache_info, cache_prune, text_sha256
from llmembed_hf.features import FEATURES_COLUMN, backbone_stores, missing_texts

_WORDS = "the a cat dog sat on mat movie film good bad very".split()
_LENGTHS = [2, 25, 5, 1, 12, 30, 3, 8, 18, 4, 40, 6, 10, 15, 7, 9, 22, 11, 13, 16]
TEXTS = [" ".join(_WORDS[(i + j) % len(_WORDS)] for j in range(n)) for i, n in enumerate(_LENGTHS)]
SMALL = ExtractionConfig(shard_size=3, max_tokens_per_batch=64)
#: Every text its own batch: each vector is then independent of the request (bit-identical to a fresh store).
ALONE = ExtractionConfig(shard_size=3, max_batch_size=1)


@pytest.fixture
def model(tiny_config):
    torch.manual_seed(0)
    return LLMEmbedForSequenceClassification.from_backbones(tiny_config()).eval()


def extract(model, folder, texts=TEXTS, config=SMALL):
    return extract_features(model, texts, cache_folder=folder, config=config, show_progress=False)[:][FEATURES_COLUMN]


def count_forwards(model, monkeypatch) -> Counter:
    """Rows each backbone runs on (the real forwards still run)."""
    counts = Counter({spec.name: 0 for spec in model.config.backbone_specs})
    real = model.encode_backbones

    def counted(names, input_ids, attention_mask, **kwargs):
        counts.update({name: len(input_ids) for name in names})
        return real(names, input_ids, attention_mask, **kwargs)

    monkeypatch.setattr(model, "encode_backbones", counted)
    return counts


def direct_features(model, texts) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model.encode(**model.tokenizer([text], return_tensors="pt")) for text in texts])


# ----------------------------------------------------------------------------------------------------------------------
# Reuse
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [SMALL, ALONE], ids=["batched", "alone"])
def test_superset_computes_only_the_new_texts(model, tmp_path, monkeypatch, config):
    first = extract(model, tmp_path / "store", TEXTS[:12], config)
    assert missing_texts(model, TEXTS, config, tmp_path / "store") == {"llm": 8, "enc": 8}
    counts = count_forwards(model, monkeypatch)
    superset = extract(model, tmp_path / "store", TEXTS, config)
    assert counts == {"llm": 8, "enc": 8}
    assert torch.equal(superset[:12], first)
    # Another subset, overlapping both requests: nothing to compute.
    assert torch.equal(extract(model, tmp_path / "store", TEXTS[6:16], config), superset[6:16])
    assert counts == {"llm": 8, "enc": 8}

    fresh = extract(model, tmp_path / "fresh", TEXTS, config)
    if config is ALONE:
        assert torch.equal(superset, fresh)
    else:  # the 8 new texts were batched among themselves, not with the 12 others: equal to float rounding
        torch.testing.assert_close(superset, fresh, atol=1e-6, rtol=0)
    monkeypatch.undo()
    torch.testing.assert_close(superset, direct_features(model, TEXTS), atol=1e-5, rtol=0)


def test_model_sharing_a_backbone_computes_only_the_other(model, tiny_config, tmp_path, monkeypatch):
    """Another preset-like model: the same encoder spec (under another name), other LLM layers."""
    first = extract(model, tmp_path)
    torch.manual_seed(1)
    other = LLMEmbedForSequenceClassification.from_backbones(
        tiny_config(llm={"layers": [-2, -1], "name": "decoder"}, enc={"name": "bert"}, num_labels=3)).eval()
    counts = count_forwards(other, monkeypatch)
    features = extract(other, tmp_path)
    assert counts == {"decoder": len(TEXTS), "bert": 0}
    assert torch.equal(features[:, -32:], first[:, -32:])
    assert len(cache_info(tmp_path)["backbones"]) == 3


def test_second_head_on_the_same_texts_computes_nothing(model, tiny_config, tmp_path, monkeypatch):
    first = extract(model, tmp_path)
    torch.manual_seed(2)
    head = LLMEmbedForSequenceClassification.from_backbones(
        tiny_config(num_labels=4, projection_dim=8, mlp_hidden_sizes=[8])).eval()
    counts = count_forwards(head, monkeypatch)
    assert torch.equal(extract(head, tmp_path), first)
    assert counts == {"llm": 0, "enc": 0}


def test_saved_head_reloaded_reuses_the_vectors(model, tmp_path, monkeypatch):
    """Tokenizers saved with the head (``tokenizers/<name>/``) have the same identity as the backbones' own."""
    first = extract(model, tmp_path / "store")
    model.save_pretrained(tmp_path / "head")
    loaded = LLMEmbedForSequenceClassification.from_pretrained(tmp_path / "head").eval()
    loaded.load_backbones()
    counts = count_forwards(loaded, monkeypatch)
    assert torch.equal(extract(loaded, tmp_path / "store"), first)
    assert counts == {"llm": 0, "enc": 0}


# ----------------------------------------------------------------------------------------------------------------------
# Interruption (issue 20, item 5: resume with another segment size)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("first", "then"), [(2, 4), (1, 7)])
def test_resume_with_another_segment_size_is_bit_identical(model, tmp_path, monkeypatch, first, then):
    budget = dict(max_tokens_per_batch=64, max_batch_size=4)
    reference = extract(model, tmp_path / "uninterrupted", config=ExtractionConfig(shard_size=first, **budget))
    real_write = BackboneStore.write_segment
    written = []

    def write_then_interrupt(store, claim, vectors):
        if len(written) == 4:
            raise KeyboardInterrupt("simulated interruption after 4 segments")
        written.append(real_write(store, claim, vectors))
        return written[-1]

    with monkeypatch.context() as patch:
        patch.setattr(BackboneStore, "write_segment", write_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            extract(model, tmp_path / "resumed", config=ExtractionConfig(shard_size=first, **budget))
    stored = missing_texts(model, TEXTS, cache_folder=tmp_path / "resumed")
    assert 0 < stored["llm"] < len(TEXTS) and 0 < stored["enc"] < len(TEXTS)
    counts = count_forwards(model, monkeypatch)

    resumed = extract(model, tmp_path / "resumed", config=ExtractionConfig(shard_size=then, **budget))

    assert counts == stored  # only what was missing
    assert torch.equal(resumed, reference)
    assert not (resumed == 0).all(dim=1).any()
    # The plan does not depend on the segment size at all: an uninterrupted run with the other one is the same too.
    assert torch.equal(extract(model, tmp_path / "other", config=ExtractionConfig(shard_size=then, **budget)),
                       reference)


# ----------------------------------------------------------------------------------------------------------------------
# Claims and concurrent processes
# ----------------------------------------------------------------------------------------------------------------------


def test_claim_of_a_dead_process_is_taken_over(model, tmp_path, monkeypatch):
    """A claim file nobody holds a lock on (its process was killed) is removed with its temporary segment, and its
    texts are computed."""
    store = backbone_stores(model, "float32", tmp_path)["llm"].open()
    dead = store.claims / "1-999999-dead.claim"
    dead.write_bytes(b"".join(text_sha256(text) for text in TEXTS[:5]))
    temp = store.segments / ".seg-1-999999-dead.safetensors.abc123"
    temp.write_bytes(b"half a segment")
    counts = count_forwards(model, monkeypatch)
    features = extract(model, tmp_path)
    assert counts == {"llm": len(TEXTS), "enc": len(TEXTS)}
    assert not dead.exists() and not temp.exists()
    monkeypatch.undo()
    torch.testing.assert_close(features, direct_features(model, TEXTS), atol=1e-5, rtol=0)


def test_texts_claimed_by_a_live_process_are_waited_for(model, tmp_path, monkeypatch):
    """While another process holds a claim on some texts, a request computes the rest, then waits for those and
    reads them from the segment the other process writes: it never computes them."""
    claimed_texts = TEXTS[3:8]
    store = backbone_stores(model, "float32", tmp_path)["llm"].open()
    with store.lock():
        claim = store.claim([text_sha256(text) for text in claimed_texts])
    counts = count_forwards(model, monkeypatch)
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("features", extract(model, tmp_path)))
    worker.start()
    deadline = time.monotonic() + 60
    while counts["llm"] < len(TEXTS) - len(claimed_texts) or counts["enc"] < len(TEXTS):
        assert time.monotonic() < deadline and worker.is_alive()
        time.sleep(0.05)
    time.sleep(0.3)
    assert worker.is_alive(), "the request did not wait for the claimed texts"
    # "The other process" finishes its claim: vectors it computed (here: distinguishable ones) in a segment.
    marker = np.full((len(claimed_texts), 3 * 48), 7.0, dtype=np.float32)
    store.write_segment(claim, marker)
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert counts == {"llm": len(TEXTS) - len(claimed_texts), "enc": len(TEXTS)}
    features = result["features"]
    assert (features[3:8, : 3 * 48] == 7.0).all()
    monkeypatch.undo()
    torch.testing.assert_close(features[:3], direct_features(model, TEXTS[:3]), atol=1e-5, rtol=0)


def _extract_in_process(config_json: str, texts: list[str], root: str, barrier, results, delay: float) -> None:
    """Spawned worker: build the tiny model from the config, count forwards, extract into the shared store."""
    model = LLMEmbedForSequenceClassification.from_backbones(LLMEmbedConfig.from_dict(json.loads(config_json))).eval()
    counts = Counter()
    real = model.encode_backbones

    def slow(names, input_ids, attention_mask, **kwargs):  # slow enough for the two processes to overlap
        counts["+".join(names)] += len(input_ids)  # the specs whose views one forward gives
        time.sleep(delay)
        return real(names, input_ids, attention_mask, **kwargs)

    model.encode_backbones = slow
    barrier.wait(timeout=120)
    features = extract_features(model, texts, cache_folder=root, config=SMALL, show_progress=False)
    results.put((os.getpid(), features.with_format("numpy")[:][FEATURES_COLUMN], dict(counts)))


@pytest.mark.parametrize("middle", [False, True], ids=["own-passes", "with-a-view-sharing-a-pass"])
def test_two_processes_on_overlapping_texts(tiny_config, tiny_backbones, tmp_path, middle):
    """Two processes extracting overlapping texts into one store at the same time: identical vectors for the shared
    texts, and every (backbone, text) computed exactly once in total, also for a view computed in another spec's pass
    (the tiny Llama's block 1 beside its last three states)."""
    config = tiny_config(backbones=tiny_specs(tiny_backbones) + ([middle_layer_spec(tiny_backbones)] if middle else []))
    model = LLMEmbedForSequenceClassification.from_backbones(config).eval()
    first, second = TEXTS[:14], TEXTS[6:] + ["very good film", "the bad cat sat"]
    union = set(first) | set(second)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    config_json = json.dumps(config.to_dict())
    workers = [context.Process(target=_extract_in_process,
                               args=(config_json, texts, str(tmp_path), barrier, results, 0.05))
               for texts in (first, second)]
    for worker in workers:
        worker.start()
    outputs = [results.get(timeout=300) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    by_pid = {pid: (features, counts) for pid, features, counts in outputs}
    (one, counts_one), (two, counts_two) = (by_pid[worker.pid] for worker in workers)
    width = model.config.feature_size
    assert one.shape == (len(first), width) and two.shape == (len(second), width)
    shared = [text for text in first if text in second]
    assert len(shared) == 8
    assert np.array_equal(one[[first.index(t) for t in shared]], two[[second.index(t) for t in shared]])
    passes = {"llm+mid", "enc"} if middle else {"llm", "enc"}  # the middle view only ever in the llm spec's pass
    assert set(counts_one) == set(counts_two) == passes
    for name in passes:
        assert counts_one[name] + counts_two[name] == len(union)
        assert counts_one[name] > 0 and counts_two[name] > 0  # both did part of the work
    torch.testing.assert_close(torch.from_numpy(one), direct_features(model, first), atol=1e-5, rtol=0)
    assert all(not list(store.claims.iterdir()) for store in backbone_stores(model, "float32", tmp_path).values())


# ----------------------------------------------------------------------------------------------------------------------
# cache info / prune
# ----------------------------------------------------------------------------------------------------------------------


def test_cache_info_and_prune(model, tiny_config, tmp_path, monkeypatch):
    extract(model, tmp_path)
    other = LLMEmbedForSequenceClassification.from_backbones(tiny_config(llm={"layers": [-1]})).eval()
    extract(other, tmp_path, TEXTS[:5])
    legacy = tmp_path / ("ab" * 16) / "shards"
    legacy.mkdir(parents=True)
    (legacy / "shard-00000.safetensors").write_bytes(b"x" * 100)

    info = cache_info(tmp_path)
    by_layers = {(b["name"], tuple(b["layers"])): b for b in info["backbones"]}
    assert set(by_layers) == {("llm", (-3, -2, -1)), ("llm", (-1,)), ("enc", (-1,))}
    assert by_layers[("llm", (-3, -2, -1))]["vectors"] == len(TEXTS)
    assert by_layers[("llm", (-1,))]["vectors"] == 5 and by_layers[("llm", (-1,))]["width"] == 48
    assert by_layers[("enc", (-1,))]["model_id"] == model.config.backbones[1]["model_id"]
    assert all(b["bytes"] > 0 and b["segments"] > 0 and b["corrupt_segments"] == 0 for b in info["backbones"])
    assert info["total_vectors"] == 2 * len(TEXTS) + 5
    assert info["legacy"] == {"folders": 1, "bytes": 100}
    json.dumps(info)  # printable as JSON by the CLI

    with pytest.raises(ValueError, match="older_than_days"):
        cache_prune(tmp_path)
    assert cache_prune(tmp_path, older_than_days=1)["removed"] == []  # everything was just used
    dry = cache_prune(tmp_path, backbone="llm", dry_run=True)
    assert len(dry["removed"]) == 2 and len(cache_info(tmp_path)["backbones"]) == 3
    pruned = cache_prune(tmp_path, backbone="llm")
    assert sorted(tuple(r["layers"]) for r in pruned["removed"]) == [(-3, -2, -1), (-1,)]
    assert pruned["freed_bytes"] > 0 and pruned["kept"] == 2  # enc and the legacy folder
    assert [b["name"] for b in cache_info(tmp_path)["backbones"]] == ["enc"]
    # The pruned backbone is computed again, the other reused.
    counts = count_forwards(model, monkeypatch)
    extract(model, tmp_path)
    assert counts == {"llm": len(TEXTS), "enc": 0}
    assert [r["name"] for r in cache_prune(tmp_path, backbone="legacy")["removed"]] == ["legacy"]
    assert cache_info(tmp_path)["legacy"]["folders"] == 0
    # Age: a store unused for two days goes with older_than_days=1.
    old = time.time() - 2 * 86400
    enc_folder = Path(next(b["path"] for b in cache_info(tmp_path)["backbones"] if b["name"] == "enc"))
    for path in [enc_folder / "last_used", enc_folder / "backbone.json", *(enc_folder / "segments").iterdir()]:
        os.utime(path, (old, old))
    assert [r["name"] for r in cache_prune(tmp_path, older_than_days=1)["removed"]] == ["enc"]
    assert cache_prune(tmp_path, older_than_days=0)["kept"] == 0
    assert cache_info(tmp_path)["backbones"] == []


def test_corrupt_segment_is_counted_by_cache_info(model, tmp_path):
    extract(model, tmp_path)
    store = backbone_stores(model, "float32", tmp_path)["enc"]
    path = store.segment_files()[0]
    path.write_bytes(path.read_bytes()[:-8])
    assert extract(model, tmp_path).shape == (len(TEXTS), 3 * 48 + 32)
    entry = next(b for b in cache_info(tmp_path)["backbones"] if b["name"] == "enc")
    assert entry["corrupt_segments"] == 1 and entry["vectors"] == len(TEXTS)


# ----------------------------------------------------------------------------------------------------------------------
# Text pairs: joint pairs under their own keys, siamese sides as single texts
# ----------------------------------------------------------------------------------------------------------------------


def test_joint_pair_keys_never_collide_with_text_keys():
    from llmembed_hf.feature_store import _PAIR_PREFIX, pair_sha256

    texts = ["", "a", "ab", "abc", "b", "bc", "c", "\ud800", "é", "x\x00y"]
    pairs = [(a, b) for a in texts for b in texts]
    keys = {pair_sha256(a, b) for a, b in pairs}
    assert len(keys) == len(pairs)  # ("ab", "c"), ("a", "bc") and ("abc", "") differ: the split point counts
    assert keys.isdisjoint(map(text_sha256, texts + [a + b for a, b in pairs]))
    # Even a text spelling out a pair's hashed bytes cannot meet its key: 0xFF is not in any text's UTF-8 bytes.
    spelled = (_PAIR_PREFIX + (1).to_bytes(8, "big") + b"ab").decode("latin-1")
    assert text_sha256(spelled) != pair_sha256("a", "b")
    assert all(0xFF not in t.encode("utf-8", "surrogatepass") for t in texts + [spelled])


@pytest.fixture
def pair_model(tiny_config):
    def make(pair_encoding):
        torch.manual_seed(0)
        return LLMEmbedForSequenceClassification.from_backbones(tiny_config(pair_encoding=pair_encoding)).eval()

    return make


def extract_pairs(model, folder, texts, pairs, config=SMALL):
    return extract_features(model, texts, cache_folder=folder, config=config, show_progress=False,
                            text_pairs=pairs)[:][FEATURES_COLUMN]


def test_siamese_pairs_reuse_single_text_vectors(pair_model, model, tmp_path, monkeypatch):
    """A siamese backbone computes each distinct sentence once, whether it was seen alone, in another pair or on the
    other side; a joint backbone computes each distinct pair once."""
    store = tmp_path / "store"
    extract(model, store, TEXTS[:6])  # single texts, by a head over the same backbones
    mixed = pair_model("default")  # llm joint, enc siamese
    firsts, seconds = TEXTS[:6] + TEXTS[4:8], TEXTS[6:10] + TEXTS[:6]
    counts = count_forwards(mixed, monkeypatch)
    features = extract_pairs(mixed, store, firsts, seconds)
    assert counts == {"llm": 10, "enc": 4}  # 10 distinct pairs; sentences 6-9 are the only new ones
    siamese = pair_model("siamese")
    counts = count_forwards(siamese, monkeypatch)
    swapped = extract_pairs(siamese, store, seconds, firsts)
    assert counts == {"llm": 4, "enc": 0}  # the llm's single vectors of sentences 0-5 came from `model`
    counts.clear()
    again = extract_pairs(mixed, store, firsts, seconds)
    assert sum(counts.values()) == 0 and torch.equal(again, features)
    # The siamese columns are [u, v, |u-v|, u*v] of the stored single vectors.
    single = extract(model, store, TEXTS[:10], ALONE)
    u, v = single[[TEXTS.index(t) for t in firsts], 144:], single[[TEXTS.index(t) for t in seconds], 144:]
    torch.testing.assert_close(features[:, 144:], torch.cat([u, v, (u - v).abs(), u * v], dim=-1), atol=0, rtol=0)
    assert swapped.shape == (10, 4 * 176)
    assert missing_texts(siamese, TEXTS[:10], text_pairs=TEXTS[10:], cache_folder=store) == {"llm": 10, "enc": 10}


def test_joint_pair_features_equal_a_direct_forward_of_the_pair(pair_model, tmp_path):
    joint = pair_model("joint")
    firsts, seconds = TEXTS[:5], TEXTS[5:10]
    features = extract_pairs(joint, tmp_path, firsts, seconds, ALONE)
    with torch.inference_mode():
        direct = torch.cat([joint.encode(**joint.tokenizer([a], text_pair=[b], return_tensors="pt"))
                            for a, b in zip(firsts, seconds)])
    torch.testing.assert_close(features, direct, atol=1e-6, rtol=0)
    # The same texts as single texts are other inputs: a joint pair's vector never stands in for them.
    with pytest.raises(ValueError, match="this head classifies text pairs"):
        extract(joint, tmp_path, firsts)
