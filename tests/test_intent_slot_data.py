"""Data of the intent + slot line (`llmembed_hf.intent_slot.data`): loading a split with its columns, the slot tag
names, encoding with tags on first sub-tokens, and the collator's padding."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value
from transformers import AutoTokenizer

from helpers import INTENTS, SLOTS, write_split
from llmembed_hf.intent_slot import IntentSlotDataArguments
from llmembed_hf.intent_slot.data import (
    IntentSlotCollator,
    encode_intent_slot,
    load_intent_slot_split,
    slot_label_names,
)
from llmembed_hf.intent_slot.slots import IGNORE_INDEX

#: Rows with custom column names: words, BIO tag ids and an intent name.
ROWS = [
    {"words": ["the", "cats", "sat"], "bio": [0, 1, 2], "intent": "play_music"},
    {"words": ["on", "mat"], "bio": [0, 3], "intent": "alarm_set"},
    {"words": ["dog"], "bio": [0], "intent": "play_music"},
]
CUSTOM = dict(text_column="words", tags_column="bio", label_column="intent")


@pytest.fixture
def custom_folder(tmp_path):
    write_split(tmp_path, "train", ROWS)
    (tmp_path / "slot_labels.json").write_text(json.dumps(SLOTS))
    return tmp_path


def test_collator_pads_on_the_right_and_keeps_the_intents():
    features = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "slot_labels": [-100, 1, 2], "labels": 2},
                {"input_ids": [8], "attention_mask": [1], "slot_labels": [0], "labels": 0}]
    batch = IntentSlotCollator(pad_token_id=9)(features)
    assert set(batch) == {"input_ids", "attention_mask", "slot_labels", "labels"}
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["slot_labels"].tolist() == [[-100, 1, 2], [0, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["labels"].tolist() == [2, 0]
    assert all(t.dtype == torch.long for t in batch.values())


def test_collator_pads_on_the_left_and_without_slot_labels():
    features = [{"input_ids": [8], "attention_mask": [1], "slot_labels": [3]},
                {"input_ids": [5, 6], "attention_mask": [1, 1], "slot_labels": [0, 4]}]
    batch = IntentSlotCollator(pad_token_id=0, padding_side="left")(features)
    assert batch["input_ids"].tolist() == [[0, 8], [5, 6]]
    assert batch["attention_mask"].tolist() == [[0, 1], [1, 1]]
    assert batch["slot_labels"].tolist() == [[IGNORE_INDEX, 3], [0, 4]]
    assert "labels" not in batch
    unlabelled = IntentSlotCollator(pad_token_id=0)([{"input_ids": [1, 2], "attention_mask": [1, 1]},
                                                     {"input_ids": [3], "attention_mask": [1]}])
    assert set(unlabelled) == {"input_ids", "attention_mask"} and unlabelled["input_ids"].tolist() == [[1, 2], [3, 0]]


def test_load_split_with_custom_columns(custom_folder):
    dataset, intents, names = load_intent_slot_split(custom_folder, "train", IntentSlotDataArguments(
        dataset=str(custom_folder), **CUSTOM))
    assert dataset["words"] == [r["words"] for r in ROWS] and dataset["bio"] == [r["bio"] for r in ROWS]
    assert names == ["alarm_set", "play_music"] and intents == [1, 0, 1]  # string intents, sorted names
    # names given (e.g. the training split's) are kept, so every split shares the same ids
    _, intents, names = load_intent_slot_split(custom_folder, "train", IntentSlotDataArguments(
        dataset=str(custom_folder), **CUSTOM), intent_names=INTENTS)
    assert names == INTENTS and intents == [1, 0, 1]


def test_load_split_takes_a_seeded_subset(custom_folder):
    columns = IntentSlotDataArguments(dataset=str(custom_folder), **CUSTOM)
    first, intents, _ = load_intent_slot_split(custom_folder, "train", columns, max_samples=2, seed=3)
    again, _, _ = load_intent_slot_split(custom_folder, "train", columns, max_samples=2, seed=3)
    assert len(first) == 2 and first["words"] == again["words"]
    assert intents == [1 if r == "play_music" else 0 for r in first["intent"]]


@pytest.mark.parametrize("column, bad", [("text_column", "tokens"), ("tags_column", "ner_tags"),
                                         ("label_column", "label")])
def test_load_split_names_a_missing_column(custom_folder, column, bad):
    columns = IntentSlotDataArguments(dataset=str(custom_folder), **{**CUSTOM, column: bad})
    with pytest.raises(ValueError, match=rf"column '{bad}' not found in split 'train'.*'words', 'bio', 'intent'"):
        load_intent_slot_split(custom_folder, "train", columns)


def test_slot_label_names_from_the_json_file_or_a_class_label_feature(custom_folder):
    dataset = Dataset.from_list(ROWS)
    assert slot_label_names(custom_folder, dataset, "bio") == SLOTS
    features = Features({"tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=SLOTS[:3]))})
    tagged = Dataset.from_dict({"tokens": [["a"]], "ner_tags": [[1]]}, features=features)
    assert slot_label_names(DatasetDict(train=tagged), tagged, "ner_tags") == SLOTS[:3]


def test_slot_label_names_without_names_says_how_to_give_them(tmp_path):
    dataset = Dataset.from_list(ROWS)
    message = r"no slot tag names for column 'bio'.*Sequence\(ClassLabel\).*slot_labels\.json"
    with pytest.raises(ValueError, match=message):
        slot_label_names(tmp_path, dataset, "bio")  # a folder without slot_labels.json
    with pytest.raises(ValueError, match=message):
        slot_label_names(DatasetDict(train=dataset), dataset, "bio")  # in memory, plain int tags


def test_encode_puts_word_tags_on_first_subtokens(tiny_backbones):
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbones["bert"])
    dataset = Dataset.from_list(ROWS[:2])
    encoded = encode_intent_slot(tokenizer, dataset, [1, 0], IntentSlotDataArguments(dataset="x", **CUSTOM), SLOTS,
                                 max_length=16)
    assert set(encoded.column_names) == {"input_ids", "attention_mask", "slot_labels", "labels"}
    assert tokenizer.convert_ids_to_tokens(encoded[0]["input_ids"]) == ["[CLS]", "the", "cat", "##s", "sat", "[SEP]"]
    # "cats" is B-date on "cat"; "##s" and the specials are ignored; "sat" I-date
    assert encoded[0]["slot_labels"] == [IGNORE_INDEX, 0, 1, IGNORE_INDEX, 2, IGNORE_INDEX]
    assert encoded[1]["slot_labels"] == [IGNORE_INDEX, 0, 3, IGNORE_INDEX]
    assert encoded["labels"] == [1, 0] and encoded[0]["attention_mask"] == [1] * 6
