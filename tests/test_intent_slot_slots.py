"""The intent + slot line's BIO helpers (`llmembed_hf.intent_slot.slots`): repair, spans, word alignment on encoder
and decoder tokenizers, and character spans of the text."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from helpers import SLOTS
from llmembed_hf.intent_slot.slots import (
    IGNORE_INDEX,
    Span,
    bio_to_spans,
    decode_slots,
    repair_bio,
    spans_to_bio,
    tokenize_and_align,
    word_offsets,
)


def test_repair_turns_an_orphan_inside_tag_into_a_beginning():
    tags = ["I-date", "I-date", "O", "I-time", "B-date", "I-time", "I-time"]
    assert repair_bio(tags) == ["B-date", "I-date", "O", "B-time", "B-date", "B-time", "I-time"]
    assert repair_bio(["B-date", "I-date"]) == ["B-date", "I-date"]  # valid sequences are left alone
    # the metrics read spans through the same repair
    assert bio_to_spans(tags) == [Span("date", 0, 2), Span("time", 3, 4), Span("date", 4, 5), Span("time", 5, 7)]


def test_spans_round_trip_with_a_slot_at_the_end_adjacent_slots_and_none():
    tags = ["O", "B-date", "B-date", "I-date", "O", "B-time"]
    spans = bio_to_spans(tags)
    assert spans == [Span("date", 1, 2), Span("date", 2, 4), Span("time", 5, 6)]
    assert spans_to_bio(spans, len(tags)) == tags
    assert bio_to_spans(["O", "O"]) == [] and bio_to_spans([]) == []
    with pytest.raises(ValueError, match="does not fit"):
        spans_to_bio([Span("date", 1, 3)], 2)


def test_alignment_labels_first_subtokens_only(tiny_backbones):
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbones["bert"])
    # tokens: [CLS] the cat ##s sat ! on mat . [SEP]  (punctuation is its own word or a word's second piece)
    words = [["the", "cats", "sat", "!", "on", "mat."], ["the", "cat"], []]
    tags = [["O", "B-date", "I-date", "O", "O", "B-time"], [0, 0], []]
    encoded = tokenize_and_align(tokenizer, words, tags, SLOTS)
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"][0]) == [
        "[CLS]", "the", "cat", "##s", "sat", "!", "on", "mat", ".", "[SEP]"]
    assert encoded["slot_labels"][0] == [IGNORE_INDEX, 0, 1, IGNORE_INDEX, 2, 0, 0, 3, IGNORE_INDEX, IGNORE_INDEX]
    assert encoded["slot_labels"][1] == [IGNORE_INDEX, 0, 0, IGNORE_INDEX]  # no slots at all
    assert encoded["slot_labels"][2] == [IGNORE_INDEX, IGNORE_INDEX]  # no words at all
    assert encoded["attention_mask"][0] == [1] * 10


def test_alignment_on_a_decoder_tokenizer_repairs_tags_and_truncates(tiny_backbones):
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbones["llama"])  # "<s> ..." and no end token
    encoded = tokenize_and_align(tokenizer, [["on", "mats"]], [["O", "I-time"]], SLOTS)
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"][0]) == ["<s>", "on", "mat", "##s"]
    assert encoded["slot_labels"][0] == [IGNORE_INDEX, 0, 3, IGNORE_INDEX]  # I-time after O trained as B-time
    short = tokenize_and_align(tokenizer, [["the", "cat", "sat"]], [[0, 1, 2]], SLOTS, max_length=3)
    assert short["slot_labels"][0] == [IGNORE_INDEX, 0, 1]  # the cut word is not trained on


def test_alignment_errors_name_the_example(tiny_backbones):
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbones["bert"])
    with pytest.raises(ValueError, match=r"example 2: 2 tokens but 3 slot tags"):
        tokenize_and_align(tokenizer, [["a"], ["b"], ["c", "d"]], [[0], [0], [0, 0, 0]], SLOTS)
    with pytest.raises(ValueError, match=r"example 1: slot tag id 9"):
        tokenize_and_align(tokenizer, [["a"], ["b"]], [[0], [9]], SLOTS)
    with pytest.raises(ValueError, match=r"example 0: unknown slot tag"):
        tokenize_and_align(tokenizer, [["a"]], [["B-place"]], SLOTS)


def test_decode_slots_gives_character_spans_of_the_text():
    text = "wake me  up at nine am, friday!"
    assert word_offsets(text)[2] == (9, 11)
    tags = ["O", "O", "O", "O", "B-time", "I-time", "I-date"]  # the orphan I-date is read as B-date
    slots = decode_slots(text, tags, [1, 1, 1, 1, 0.9, 0.7, 0.5])
    assert slots == [
        {"type": "time", "start": 15, "end": 23, "text": "nine am,", "score": pytest.approx(0.8)},
        {"type": "date", "start": 24, "end": 31, "text": "friday!", "score": pytest.approx(0.5)},
    ]
    assert decode_slots("", []) == [] and decode_slots("hello there", ["O", "O"]) == []
    with pytest.raises(ValueError, match="2 tags for 3 words"):
        decode_slots("a b c", ["O", "O"])
