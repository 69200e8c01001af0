"""Text classification data from a folder of JSON lines, a saved dataset or a Hub dataset id, with clean labels."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, load_dataset, load_from_disk

from .training_args import DataArguments

JSON_SUFFIXES = (".jsonl.gz", ".jsonl", ".json.gz", ".json")
#: The column of the second text of a pair, as transformers' pipelines name it; detected when present.
TEXT_PAIR_COLUMN = "text_pair"


@dataclass
class LabelledTexts:
    """One split as plain lists: the texts and their label ids; for text pairs, the second texts (``pairs``)."""

    texts: list[str]
    labels: list[int]
    pairs: list[str] | None = None

    def select(self, indices: Any) -> LabelledTexts:
        """These rows, in this order."""
        return LabelledTexts([self.texts[i] for i in indices], [self.labels[i] for i in indices],
                             None if self.pairs is None else [self.pairs[i] for i in indices])


def _split_file(folder: Path, split: str) -> Path | None:
    for suffix in JSON_SUFFIXES:
        if (folder / f"{split}{suffix}").is_file():
            return folder / f"{split}{suffix}"
    return None


def load_split(source: str | os.PathLike | DatasetDict, split: str) -> Dataset:
    """One split of ``source``: a folder of ``<split>.jsonl[.gz]``, a ``save_to_disk`` folder or a Hub id."""
    if isinstance(source, (DatasetDict, dict)):
        if split not in source:
            raise ValueError(f"split {split!r} not found; the dataset has splits {sorted(source)}.")
        return source[split]
    folder = Path(source).expanduser()
    if folder.is_dir():
        path = _split_file(folder, split)
        if path is not None:
            try:
                # Not load_dataset("json", ...): it pings a Hub download counter first (up to 3 s without a network
                # unless HF_HUB_OFFLINE=1), and a local file needs no network.
                return Dataset.from_json(str(path), split=split)
            except StopIteration:  # datasets' json builder on a file with no rows
                raise ValueError(f"split {split!r} is empty ({path} has no rows): nothing to train or evaluate on.")
        if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
            saved = load_from_disk(str(folder))
            return load_split(saved, split) if isinstance(saved, DatasetDict) else saved
        present = sorted(p.name for p in folder.iterdir())
        raise FileNotFoundError(
            f"no split {split!r} in {folder}: expected {split}.jsonl.gz/.jsonl/.json or a save_to_disk folder; "
            f"found {present}."
        )
    try:
        return load_dataset(str(source), split=split)
    except Exception as error:
        raise FileNotFoundError(
            f"could not load split {split!r} of {source!r}: it is not a local folder, and loading it as a Hub "
            f"dataset failed ({type(error).__name__}: {error})."
        ) from error


def label_names_from(source: str | os.PathLike | DatasetDict, dataset: Dataset, label_column: str) -> list[str] | None:
    """Class names: a ClassLabel feature's names, else ``labels.json`` beside the data, else None."""
    feature = dataset.features.get(label_column)
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    if not isinstance(source, (DatasetDict, dict)):
        names_file = Path(source).expanduser() / "labels.json"
        if names_file.is_file():
            names = json.loads(names_file.read_text())
            return [names[k] for k in sorted(names, key=int)] if isinstance(names, dict) else list(names)
    return None


def check_columns(dataset: Dataset, split: str, text_column: str, label_column: str | None,
                  text_pair_column: str | None = None) -> None:
    for column in (text_column, label_column, text_pair_column):
        if column is not None and column not in dataset.column_names:
            raise ValueError(
                f"column {column!r} not found in split {split!r}; the columns present are {dataset.column_names}. "
                "Choose them with --text-column / --label-column"
                + (" / --text-pair-column ('none' for single texts)." if column == text_pair_column else ".")
            )
    if len(dataset) == 0:
        raise ValueError(f"split {split!r} is empty: there is nothing to train or evaluate on.")


def resolve_text_pair_column(dataset: Dataset, text_pair_column: str | None) -> str | None:
    """The column of the pairs' second texts: ``"auto"`` is `TEXT_PAIR_COLUMN` when ``dataset`` has it (else no
    pairs); None or ``"none"`` means single texts; any other name is used as given."""
    if text_pair_column == "auto":
        return TEXT_PAIR_COLUMN if TEXT_PAIR_COLUMN in dataset.column_names else None
    return None if text_pair_column in (None, "none") else text_pair_column


def check_text_pairs(values: list, split: str, column: str) -> list[str]:
    """The pair column's values; a ValueError naming the first row whose second text is missing or not a string."""
    for row, value in enumerate(values):
        if not isinstance(value, str):
            state = "is missing" if value is None else f"is {type(value).__name__} ({value!r:.50}), not a str"
            raise ValueError(
                f"split {split!r}, row {row} (counting from 0): the second text of the pair (column {column!r}) "
                f"{state}. Every row of pair data needs both texts: fill it in or drop the row (or pass "
                "--text-pair-column none to use the single texts)."
            )
    return values


def encode_labels(values: list, names: list[str] | None, split: str) -> tuple[list[int], list[str]]:
    """Map raw labels (ints or strings) to ids ``0..C-1``; returns the ids and the class names used."""
    if all(isinstance(v, str) for v in values):
        names = names or sorted(set(values))
        index = {name: i for i, name in enumerate(names)}
        unknown = sorted(set(values) - set(index))
        if unknown:
            raise ValueError(f"split {split!r} has label(s) {unknown[:10]} that are not among the classes {names}.")
        return [index[v] for v in values], names
    if any(isinstance(v, str) for v in values):
        raise ValueError(f"split {split!r} mixes string and non-string labels; use one kind for every row.")
    nan = [i for i, v in enumerate(values) if isinstance(v, float) and math.isnan(v)]
    if nan:
        raise ValueError(f"split {split!r} has a label NaN at row {nan[0]}; every row needs a class.")
    values = [int(v) if isinstance(v, float) and v.is_integer() else v for v in values]  # a float column of ints
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int)]
    if bad:
        raise ValueError(f"split {split!r} has a label {bad[0]!r} that is neither an int nor a string.")
    num_classes = len(names) if names else max(values) + 1
    outside = sorted({v for v in values if not 0 <= v < num_classes})
    if outside:
        raise ValueError(
            f"split {split!r} has label id(s) {outside[:10]} outside 0..{num_classes - 1} "
            f"({'classes ' + str(names) if names else 'inferred from the training labels'})."
        )
    return list(values), names or [str(i) for i in range(num_classes)]


def load_labelled(
    source: str | os.PathLike | DatasetDict,
    split: str,
    text_column: str = "text",
    label_column: str = "label",
    label_names: list[str] | None = None,
    max_samples: int | None = None,
    seed: int = 42,
    text_pair_column: str | None = None,
) -> tuple[LabelledTexts, list[str]]:
    """Texts and label ids of one split (a seeded random subset of ``max_samples`` if given) and class names.

    ``text_pair_column``: the pairs' second texts (``"auto"``: `TEXT_PAIR_COLUMN` when the split has it; see
    `resolve_text_pair_column`), checked on every row of the split so an error names the row in the file."""
    dataset = load_split(source, split)
    text_pair_column = resolve_text_pair_column(dataset, text_pair_column)
    check_columns(dataset, split, text_column, label_column, text_pair_column)
    if text_pair_column is not None:
        check_text_pairs(dataset[text_pair_column], split, text_pair_column)
    if max_samples is not None and max_samples < len(dataset):
        dataset = dataset.shuffle(seed=seed).select(range(max_samples))
    names = label_names or label_names_from(source, dataset, label_column)
    labels, names = encode_labels(list(dataset[label_column]), names, split)
    texts = list(dataset[text_column])
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"split {split!r}, row {i}: the text is {type(text).__name__} ({text!r:.50}), not a str.")
    pairs = list(dataset[text_pair_column]) if text_pair_column is not None else None
    return LabelledTexts(texts, labels, pairs), names


def validation_cut(num_rows: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(train, validation)``: a seeded random ``fraction`` of ``num_rows`` rows (at least one) held out
    to choose the best epoch on, and at least one row left to train on."""
    if num_rows < 2:
        raise ValueError(f"cannot hold out a validation fraction of {num_rows} training row(s); use more data.")
    order = np.random.default_rng(seed).permutation(num_rows)
    cut = min(max(1, int(round(num_rows * fraction))), num_rows - 1)
    return order[cut:], order[:cut]


def carve_validation(train: LabelledTexts, fraction: float, seed: int) -> tuple[LabelledTexts, LabelledTexts]:
    """Split a seeded random ``fraction`` (see `validation_cut`) off ``train``."""
    return tuple(train.select(indices) for indices in validation_cut(len(train.texts), fraction, seed))


@dataclass
class ClassificationSplits:
    """The texts of one training run: train, validation (to pick the best epoch), evaluation, and class names."""

    train: LabelledTexts
    validation: LabelledTexts
    evaluation: LabelledTexts | None
    names: list[str]
    validation_name: str  #: how the validation rows were chosen, for reports and cards
    text_pair_column: str | None = None  #: the pairs' second texts (None: single texts)


def load_classification_splits(data: DataArguments, seed: int = 42) -> ClassificationSplits:
    """Load train/validation/evaluation the same way for every trainer (head training, tuning and fine-tuning).

    The validation rows are ``data.validation_split`` if given, else ``data.validation_fraction`` of the
    (subsetted) training rows; ``data.eval_split`` is only for the final score, never for choosing a checkpoint.
    """
    source = data.dataset
    train, names = load_labelled(source, data.train_split, data.text_column, data.label_column,
                                 max_samples=data.max_train_samples, seed=seed,
                                 text_pair_column=data.text_pair_column)
    # Detected on the training split: the other splits must then have the same column.
    pair_column = None if train.pairs is None else (
        TEXT_PAIR_COLUMN if data.text_pair_column == "auto" else data.text_pair_column)
    if data.validation_split is not None:
        validation, _ = load_labelled(source, data.validation_split, data.text_column, data.label_column, names,
                                      text_pair_column=pair_column)
        validation_name = f"split {data.validation_split!r}"
    else:
        train, validation = carve_validation(train, data.validation_fraction, seed)
        validation_name = f"{data.validation_fraction:.0%} of the training subset (seed {seed})"
    evaluation = None
    if data.eval_split is not None:
        evaluation, _ = load_labelled(source, data.eval_split, data.text_column, data.label_column, names,
                                      max_samples=data.max_eval_samples, seed=seed, text_pair_column=pair_column)
    return ClassificationSplits(train, validation, evaluation, names, validation_name, pair_column)


def describe_source(source: str | os.PathLike | DatasetDict) -> str:
    """How reports name a dataset: a Hub id or relative path as given, an absolute local path by its folder name only
    (reports and cards are pushed: they must not carry this machine's paths), or that it was passed in memory."""
    if isinstance(source, (DatasetDict, dict)):
        return "in-memory DatasetDict"
    path = Path(source).expanduser()
    return path.name if path.is_absolute() or str(source).startswith("~") else str(source)
