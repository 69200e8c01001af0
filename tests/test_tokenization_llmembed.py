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


# ----------------------------------------------------------------------------------------------------------------------
# Text pairs
# ----------------------------------------------------------------------------------------------------------------------

FIRSTS = ["the cat sat on the mat", "good " * 40 + "film", "a", "very bad movie " * 30]
SECONDS = ["a dog", "the movie " * 25, "bad film " * 40, "good"]


def _pair_tokenizer(tiny_backbones, pair_encoding):
    from llmembed_hf import LLMEmbedConfig

    from helpers import head_kwargs

    config = LLMEmbedConfig(**head_kwargs(tiny_backbones), pair_encoding=pair_encoding)
    own = {"llm": AutoTokenizer.from_pretrained(tiny_backbones["llama"]),
           "enc": AutoTokenizer.from_pretrained(tiny_backbones["bert"])}
    return LLMEmbedTokenizer(own, config.backbone_specs, config.pair_encoding), own, config


@pytest.mark.parametrize("pair_encoding", ["joint", "siamese", "llm=joint,encoder=siamese", "siamese,encoder=joint"])
def test_pair_inputs_equal_each_backbone_tokenizers_own_encoding(tiny_backbones, pair_encoding):
    """joint: the backbone tokenizer's own pair encoding (longest_first within max_length); siamese: each side as a
    single text, the second under <name>_pair_input_ids. Long sides are truncated as the backbone would."""
    tokenizer, own, config = _pair_tokenizer(tiny_backbones, pair_encoding)
    encoded = tokenizer(FIRSTS, text_pair=SECONDS, padding=False)
    for spec in config.backbone_specs:
        name, backbone = spec.name, own[spec.name]
        if config.pair_encoding_of(spec) == "joint":
            expected = backbone(FIRSTS, SECONDS, truncation="longest_first", max_length=32)["input_ids"]
            assert encoded[f"{name}_input_ids"] == expected
            assert f"{name}_pair_input_ids" not in encoded
            assert max(map(len, expected)) == 32  # the long pairs were truncated
        else:
            for key, side in ((f"{name}_input_ids", FIRSTS), (f"{name}_pair_input_ids", SECONDS)):
                assert encoded[key] == backbone(side, truncation=True, max_length=32)["input_ids"]
                assert encoded[key] == tokenizer.backbone_ids(name, side)  # what the feature store computes
    one = tokenizer(FIRSTS[0], text_pair=SECONDS[0], return_tensors="pt")
    assert all(value.shape[0] == 1 for value in one.values())
    padded = tokenizer(FIRSTS, text_pair=SECONDS, return_tensors="pt")
    assert sorted(padded) == sorted(encoded)  # the masks of every input, padded or not


def test_joint_pairs_are_cut_before_tokenising_without_changing_the_ids(tiny_backbones, monkeypatch):
    from llmembed_hf.modeling import tokenization_llmembed

    tokenizer, _, _ = _pair_tokenizer(tiny_backbones, "joint")
    firsts, seconds = ["the cat sat on the mat " * 2000, "a"], ["good " * 5000 + "bad", "the dog " * 3000]
    cut = tokenizer(firsts, text_pair=seconds, padding=False).data
    monkeypatch.setattr(tokenization_llmembed, "CHARS_PER_TOKEN_BOUND", 10**9)
    assert tokenizer(firsts, text_pair=seconds, padding=False).data == cut


@pytest.mark.parametrize("pair_encoding, text, text_pair, error, message", [
    (None, "a cat", "a dog", ValueError, "text_pair was given, but this head classifies single texts"),
    ("joint", "a cat", None, ValueError, r"this head classifies text pairs: pass text_pair= too"),
    ("joint", ["a", "b"], ["c"], ValueError, r"text_pair must match text.*2 text\(s\) and 1 text_pair\(s\)"),
    ("siamese", ["a"], "c", ValueError, r"text_pair must match text"),
    ("siamese", ["a", "b"], ["c", None], TypeError, r"text_pair\[1\] is NoneType"),
    ("joint", ["a"], [], ValueError, "text_pair is an empty list"),
])
def test_bad_pair_inputs_are_refused(tiny_backbones, pair_encoding, text, text_pair, error, message):
    tokenizer, _, _ = _pair_tokenizer(tiny_backbones, pair_encoding)
    with pytest.raises(error, match=message):
        tokenizer(text, text_pair=text_pair)


def test_the_pair_setting_is_saved_and_must_agree_with_the_config(tiny_config, tmp_path):
    from llmembed_hf import LLMEmbedForSequenceClassification

    model = LLMEmbedForSequenceClassification.from_backbones(tiny_config(pair_encoding="siamese,llm=joint"))
    model.save_pretrained(tmp_path / "head")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "head")
    assert loaded.pair_encoding == {"llm": "joint", "encoder": "siamese"} == model.tokenizer.pair_encoding
    assert loaded(["a cat"], text_pair=["a dog"]).data == model.tokenizer(["a cat"], text_pair=["a dog"]).data
    # Without tokenizer files the fallback takes the setting from config.json.
    (tmp_path / "head" / "tokenizer_config.json").rename(tmp_path / "tokenizer_config.json")
    assert AutoTokenizer.from_pretrained(tmp_path / "head").pair_encoding == loaded.pair_encoding
    (tmp_path / "tokenizer_config.json").rename(tmp_path / "head" / "tokenizer_config.json")
    path = tmp_path / "head" / "tokenizer_config.json"
    values = json.loads(path.read_text())
    values["pair_encoding"] = {"llm": "siamese", "encoder": "siamese"}
    path.write_text(json.dumps(values))
    with pytest.raises(ValueError, match=r"disagrees with config.json on pair_encoding"):
        AutoTokenizer.from_pretrained(tmp_path / "head")


# Per-backbone prompts
# ----------------------------------------------------------------------------------------------------------------------

#: A prompt in the tiny vocabularies: BERT makes it [CLS] the film , ... [SEP]; Llama <s> the film , ...
PROMPT = "the film, "


def prompted_tokenizer(tiny_backbones, enc: dict | None = None, llm: dict | None = None) -> LLMEmbedTokenizer:
    from helpers import tiny_specs

    specs = tiny_specs(tiny_backbones)
    specs[0].update(llm or {})
    specs[1].update(enc or {})
    tokenizers = {"llm": AutoTokenizer.from_pretrained(tiny_backbones["llama"]),
                  "enc": AutoTokenizer.from_pretrained(tiny_backbones["bert"])}
    return LLMEmbedTokenizer(tokenizers, specs)


def test_a_prompt_is_prepended_to_every_text_of_its_backbone_only(tiny_backbones):
    plain = prompted_tokenizer(tiny_backbones)
    prompted = prompted_tokenizer(tiny_backbones, enc={"prompt": PROMPT})
    bert = plain.tokenizers["enc"]
    for text in ("a good movie", "bad"):
        assert prompted(text)["enc_input_ids"] == bert(PROMPT + text)["input_ids"]
        assert prompted(text)["llm_input_ids"] == plain(text)["llm_input_ids"]  # the other backbone has none
    ids = bert.convert_tokens_to_ids(["[CLS]", "the", "film", ","])
    assert prompted.prompt_ids("enc") == ids and prompted.prompt_ids("llm") == []
    llama = prompted_tokenizer(tiny_backbones, llm={"prompt": PROMPT})
    assert llama.prompt_ids("llm") == llama.tokenizers["llm"].convert_tokens_to_ids(["<s>", "the", "film", ","])


def test_truncation_cuts_the_text_and_keeps_the_prompt(tiny_backbones):
    tokenizer = prompted_tokenizer(tiny_backbones, enc={"prompt": PROMPT}, llm={"prompt": PROMPT})
    long = "the cat sat on the mat " * 20
    encoded = tokenizer([long, "dog"], return_tensors="pt")
    for name in ("enc", "llm"):
        prefix = tokenizer.prompt_ids(name)
        ids = encoded[f"{name}_input_ids"]
        assert ids.shape[1] == 32  # max_length, prompt included
        assert ids[:, : len(prefix)].tolist() == [prefix, prefix]
    bert = tokenizer.tokenizers["enc"]
    assert encoded["enc_input_ids"][0, -1] == bert.sep_token_id  # truncated text, closing special token kept
    assert tokenizer(long, max_length=8)["enc_input_ids"][:4] == tokenizer.prompt_ids("enc")


def test_a_prompt_that_leaves_no_room_is_refused(tiny_backbones):
    # [CLS] the film , [SEP]: 5 tokens, so max_length 5 leaves no room for a text
    with pytest.raises(ValueError, match=r"backbones\['enc'\]\.prompt='the film, ' takes 5 tokens .* no room for the "
                                         r"text under max_length=5; shorten the prompt, or raise max_length"):
        prompted_tokenizer(tiny_backbones, enc={"prompt": PROMPT, "max_length": 5})
    tokenizer = prompted_tokenizer(tiny_backbones, enc={"prompt": PROMPT, "max_length": 6})
    assert tokenizer("good movie")["enc_input_ids"] == tokenizer.tokenizers["enc"](PROMPT + "good")["input_ids"]
    with pytest.raises(ValueError, match=r"takes 5 tokens .* under the call's max_length=4"):
        tokenizer("good movie", max_length=4)


def test_a_prompt_survives_save_and_load(tiny_backbones, tmp_path):
    tokenizer = prompted_tokenizer(tiny_backbones, enc={"prompt": PROMPT, "pool_prompt": False})
    tokenizer.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "tokenizer_config.json").read_text())["backbones"][1]
    assert saved["prompt"] == PROMPT and saved["pool_prompt"] is False
    loaded = LLMEmbedTokenizer.from_pretrained(tmp_path)
    assert loaded(TEXTS).data == tokenizer(TEXTS).data
    assert loaded.prompt_ids("enc") == tokenizer.prompt_ids("enc")
