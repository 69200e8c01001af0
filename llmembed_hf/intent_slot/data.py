"""Data of the intent + slot line: word lists, their BIO tag ids and the intent, encoded for a backbone."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import ClassLabel, Dataset, DatasetDict, Sequence

from ..data import check_columns, encode_labels, label_names_from, load_split
from .slots import IGNORE_INDEX, tokenize_and_align
from .training_args import IntentSlotDataArguments

SLOT_LABELS_FILE = "slot_labels.json"


def slot_label_names(source: str | os.PathLike | DatasetDict, dataset: Dataset, tags_column: str) -> list[str]:
    """BIO tag names: a ``Sequence(ClassLabel)`` feature's names, else ``slot_labels.json`` beside the data."""
    feature = dataset.features.get(tags_column)
    if isinstance(feature, (Sequence, list)):
        inner = feature.feature if isinstance(feature, Sequence) else feature[0]
        if isinstance(inner, ClassLabel):
            return list(inner.names)
    if not isinstance(source, (DatasetDict, dict)):
        path = Path(source).expanduser() / SLOT_LABELS_FILE
        if path.is_file():
            return list(json.loads(path.read_text()))
    raise ValueError(
        f"no slot tag names for column {tags_column!r}: give it a Sequence(ClassLabel) feature or put "
        f"{SLOT_LABELS_FILE} (a JSON list of BIO tags, 'O' first) beside the data."
    )


def load_intent_slot_split(
    source: str | os.PathLike | DatasetDict,
    split: str,
    columns: IntentSlotDataArguments,
    intent_names: list[str] | None = None,
    max_samples: int | None = None,
    seed: int = 42,
) -> tuple[Dataset, list[int], list[str]]:
    """One split (a seeded random subset of ``max_samples`` if given), its intent ids and the intent names."""
    dataset = load_split(source, split)
    check_columns(dataset, split, columns.text_column, columns.label_column)
    check_columns(dataset, split, columns.tags_column, None)
    if max_samples is not None and max_samples < len(dataset):
        dataset = dataset.shuffle(seed=seed).select(range(max_samples))
    names = intent_names or label_names_from(source, dataset, columns.label_column)
    intents, names = encode_labels(list(dataset[columns.label_column]), names, split)
    return dataset, intents, names


def encode_intent_slot(
    tokenizer: Any, dataset: Dataset, intents: list[int], columns: IntentSlotDataArguments, slot_labels: list[str],
    max_length: int,
) -> Dataset:
    """``input_ids``, ``attention_mask``, ``labels`` (intent) and ``slot_labels`` (aligned to sub-tokens)."""
    encoded = tokenize_and_align(tokenizer, dataset[columns.text_column], dataset[columns.tags_column], slot_labels, max_length)
    return Dataset.from_dict({**encoded, "labels": intents})


@dataclass
class IntentSlotCollator:
    """Pads ``input_ids`` (pad token), ``attention_mask`` (0) and ``slot_labels`` (-100) on the tokenizer's side."""

    pad_token_id: int
    padding_side: str = "right"

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        batch: dict[str, list] = {"input_ids": [], "attention_mask": [], "slot_labels": []}
        for feature in features:
            for key, fill in (("input_ids", self.pad_token_id), ("attention_mask", 0), ("slot_labels", IGNORE_INDEX)):
                if key == "slot_labels" and key not in feature:
                    continue
                padding = [fill] * (width - len(feature[key]))
                values = list(feature[key])
                batch[key].append(padding + values if self.padding_side == "left" else values + padding)
        tensors = {key: torch.tensor(values, dtype=torch.long) for key, values in batch.items() if values}
        if "labels" in features[0]:
            tensors["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return tensors


__all__ = ["IntentSlotCollator", "encode_intent_slot", "load_intent_slot_split", "slot_label_names"]
