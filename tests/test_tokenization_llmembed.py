"""The composite tokenizer (`tokenization_llmembed`): the pad-token rule, and the fallback to the backbones' own
tokenizers when a saved head has no tokenizer files."""

from __future__ import annotations

import json

import logging
import shutil

import pytest
import torch
from transformers import AutoTokenizer, pipeline

from helpers import PUBLISHED_TEXTS as TEXTS, assert_same_predictions, pipeline_outputs
from llmembed_hf import LLMEmbedTokenizer
from llmembed_hf.modeling.tokenization_llmembed import ensure_pad_token


def test_ensure_pad_token_reuses_a_special_token(tiny_backbones):
    from transformers import AutoTokenizer

    llama = AutoTokenizer.from_pretrained(tiny_backbones["llama"])
    assert llama.pad_token is None
    assert ensure_pad_token(llama) == llama.eos_token_id and llama.pad_token == "</s>"
    bert = AutoTokenizer.from_pretrained(tiny_backbones["bert"])
    assert ensure_pad_token(bert) == bert.convert_tokens_to_ids("[PAD]")  # an existing pad token is kept
    only_bos = AutoTokenizer.from_pretrained(tiny_backbones["llama"], eos_token=None, unk_token=None)
    assert ensure_pad_token(only_bos) == only_bos.bos_token_id
    bare = AutoTokenizer.from_pretrained(tiny_backbones["llama"], eos_token=None, unk_token=None, bos_token=None)
    with pytest.raises(ValueError, match="no pad, EOS, UNK or BOS token"):
        ensure_pad_token(bare)


def test_missing_tokenizer_files_fall_back_to_the_backbones(saved_head, caplog):
    model, folder = saved_head
    (folder / "tokenizer_config.json").unlink()
    shutil.rmtree(folder / "tokenizers")
    with caplog.at_level(logging.WARNING):
        tokenizer = AutoTokenizer.from_pretrained(folder)
    assert isinstance(tokenizer, LLMEmbedTokenizer)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("has no LLMEmbedTokenizer files" in m and str(folder) in m for m in warnings), warnings
    expected, actual = model.tokenizer(TEXTS, return_tensors="pt"), tokenizer(TEXTS, return_tensors="pt")
    assert sorted(actual.keys()) == sorted(expected.keys())
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key
    # The pipeline over that folder works with the fallback tokenizer and agrees with the original model.
    assert_same_predictions(pipeline("text-classification", model=str(folder), device="cpu")(TEXTS),
                            pipeline_outputs(model, TEXTS))


def test_tokenizer_files_that_disagree_with_the_config_are_refused(saved_head):
    """An edited or mixed-up repo would tokenise for one backbone and run another."""
    _, folder = saved_head
    path = folder / "tokenizer_config.json"
    values = json.loads(path.read_text())
    values["backbones"][1]["max_length"] = 16
    path.write_text(json.dumps(values))
    with pytest.raises(ValueError, match=r"disagrees with config.json on backbones\[1\]\.max_length \(16 vs 32\)"):
        AutoTokenizer.from_pretrained(folder)


def test_long_texts_are_cut_before_tokenising_without_changing_the_ids(saved_head, monkeypatch):
    """Only the first max_length tokens are kept, so tokenising a text cut to max_length * CHARS_PER_TOKEN_BOUND
    characters gives the same ids as tokenising all of it."""
    from llmembed_hf.modeling import tokenization_llmembed

    tokenizer = AutoTokenizer.from_pretrained(saved_head[1])
    texts = ["the cat sat on the mat " * 2000, "good " * 5000 + "bad", "a short one"]
    cut = tokenizer(texts, padding=False).data
    monkeypatch.setattr(tokenization_llmembed, "CHARS_PER_TOKEN_BOUND", 10**9)
    assert tokenizer(texts, padding=False).data == cut
