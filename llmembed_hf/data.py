"""Text classification data from a folder of JSON lines, a saved dataset or a Hub dataset id, with clean labels.

A label column holds one of transformers' problem types, read from the training labels unless named: one class per
row (single-label: ids or names), a list of classes per row (multi-label; ``[]`` where none applies) or a number
(regression). Labels are encoded as the loss takes them: class ids, multi-hot rows of 0.0/1.0, or floats.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, load_dataset, load_from_disk

from .training_args import PROBLEM_TYPES, DataArguments

JSON_SUFFIXES = (".jsonl.gz", ".jsonl", ".json.gz", ".json")
SINGLE_LABEL, MULTI_LABEL, REGRESSION = PROBLEM_TYPES
#: The one output of a regression head, named as transformers names it (``pipeline`` returns it as the label).
REGRESSION_NAMES = ["LABEL_0"]
#: The column of the second text of a pair, as transformers' pipelines name it; detected when present.
TEXT_PAIR_COLUMN = "text_pair"


@dataclass
class LabelledTexts:
    """One split as plain lists: the texts and their labels (class ids, multi-hot rows or scores: see the module); for
    text pairs, the second texts (``pairs``)."""

    texts: list[str]
    labels: list
    pairs: list[str] | None = None
    problem_type: str = SINGLE_LABEL

    def select(self, indices: Any) -> LabelledTexts:
        """These rows, in this order."""
        return LabelledTexts([self.texts[i] for i in indices], [self.labels[i] for i in indices],
                             None if self.pairs is None else [self.pairs[i] for i in indices], self.problem_type)


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
    """Class names: a ClassLabel feature's names (of a list of them too), else ``labels.json`` beside the data, else
    None."""
    feature = dataset.features.get(label_column)
    feature = getattr(feature, "feature", feature)  # List(ClassLabel) of a multi-label column
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


def resolve_label_column(dataset: Dataset, label_column: str) -> str:
    """``label_column``; but when it is the default ``label`` and the data has none, its ``labels`` column (the
    multi-label data sets' name, GoEmotions' for one)."""
    columns = dataset.column_names
    if label_column == DataArguments.label_column and label_column not in columns and "labels" in columns:
        return "labels"
    return label_column


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def detect_problem_type(values: list, split: str) -> str:
    """The problem type of a label column: lists of labels are multi-label, numbers that are not all whole are
    regression, anything else single-label classes; a column mixing lists and single labels is an error."""
    kinds = [(i, _is_list(v)) for i, v in enumerate(values) if v is not None]
    if any(is_list for _, is_list in kinds):
        first_row, first_is_list = kinds[0]
        row = next((i for i, is_list in kinds if is_list != first_is_list), None)
        if row is not None:
            lists, single = (first_row, row) if first_is_list else (row, first_row)
            raise ValueError(
                f"split {split!r} mixes lists of labels and single labels: row {lists} is a list, row {single} is "
                f"{values[single]!r}. A multi-label column needs a list in every row (write [{values[single]!r}] for "
                "one label, [] where none applies); a single-label column one label per row."
            )
        return MULTI_LABEL
    if any(isinstance(v, float) and math.isfinite(v) and not v.is_integer() for v in values):
        return REGRESSION
    return SINGLE_LABEL


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
            row = next(i for i, v in enumerate(values) if v not in index)
            raise ValueError(f"split {split!r} has label(s) {unknown[:10]} that are not among the classes {names} "
                             f"(first at row {row}); fix those rows or add the names to the class names "
                             "(labels.json).")
        return [index[v] for v in values], names
    if any(isinstance(v, str) for v in values):
        row = next(i for i, v in enumerate(values) if not isinstance(v, str))
        raise ValueError(f"split {split!r} mixes string and non-string labels (row {row} is {values[row]!r}); use "
                         "one kind for every row.")
    nan = [i for i, v in enumerate(values) if isinstance(v, float) and math.isnan(v)]
    if nan:
        raise ValueError(f"split {split!r} has a label NaN at row {nan[0]}; every row needs a class.")
    values = [int(v) if isinstance(v, float) and v.is_integer() else v for v in values]  # a float column of ints
    bad = [i for i, v in enumerate(values) if isinstance(v, bool) or not isinstance(v, int)]
    if bad:
        raise ValueError(f"split {split!r} has a label {values[bad[0]]!r} (row {bad[0]}) that is neither an int nor "
                         "a string.")
    num_classes = len(names) if names else max(values) + 1
    outside = sorted({v for v in values if not 0 <= v < num_classes})
    if outside:
        row = next(i for i, v in enumerate(values) if not 0 <= v < num_classes)
        raise ValueError(
            f"split {split!r} has label id(s) {outside[:10]} outside 0..{num_classes - 1} "
            f"({'classes ' + str(names) if names else 'inferred from the training labels'}; first at row {row}); "
            "fix those rows, or list every class name in labels.json."
        )
    return list(values), names or [str(i) for i in range(num_classes)]


def encode_multi_labels(values: list, names: list[str] | None, split: str) -> tuple[list[list[float]], list[str]]:
    """Map lists of labels (ids or names; ``[]`` where no label applies) to multi-hot rows of 0.0/1.0; returns them
    and the label names used (ids without names: ``0..max id`` of this split)."""
    for row, value in enumerate(values):
        if value is None:
            raise ValueError(f"split {split!r}, row {row}: no labels (null). A multi-label row lists the labels that "
                             "apply; write [] where none does.")
        if not _is_list(value):
            raise ValueError(f"split {split!r}, row {row}: the label {value!r} is not a list, but this is a "
                             f"multi-label column; write [{value!r}] for one label, [] where none applies.")
    items = [(row, item) for row, value in enumerate(values) for item in value]
    named = [(row, item) for row, item in items if isinstance(item, str)]
    if named and len(named) != len(items):
        row, item = next((row, item) for row, item in items if not isinstance(item, str))
        raise ValueError(f"split {split!r}, row {row}: the label {item!r} is not a name, but row {named[0][0]} names "
                         f"its labels ({named[0][1]!r}); use label ids or label names in every row, not both.")
    if named:
        names = names or sorted({item for _, item in items})
        index = {name: i for i, name in enumerate(names)}
        unknown = next(((row, item) for row, item in items if item not in index), None)
        if unknown is not None:
            raise ValueError(f"split {split!r}, row {unknown[0]}: the label {unknown[1]!r} is not among the "
                             f"{len(names)} labels {names}; fix the row, or add the name to the label names "
                             "(labels.json).")
        ids = [[index[item] for item in value] for value in values]
    else:
        bad = next(((row, item) for row, item in items if isinstance(item, bool)
                    or not (isinstance(item, int) or isinstance(item, float) and item.is_integer())), None)
        if bad is not None:
            raise ValueError(f"split {split!r}, row {bad[0]}: the label {bad[1]!r} is neither a label id (an int) nor "
                             "a label name (a str).")
        ids = [[int(item) for item in value] for value in values]
        num_labels = len(names) if names else max((item for value in ids for item in value), default=-1) + 1
        if num_labels == 0:
            raise ValueError(f"split {split!r}: no row has a label and there are no label names, so the labels are "
                             "unknown; list them in labels.json beside the data.")
        outside = next(((row, item) for row, value in enumerate(ids) for item in value
                        if not 0 <= item < num_labels), None)
        if outside is not None:
            raise ValueError(
                f"split {split!r}, row {outside[0]}: the label id {outside[1]} is outside 0..{num_labels - 1} "
                f"({'labels ' + str(names) if names else 'inferred from the training labels'}); fix the row, or "
                "list every label's name in labels.json."
            )
        names = names or [str(i) for i in range(num_labels)]
    multi_hot = [[0.0] * len(names) for _ in values]
    for row, value in enumerate(ids):
        for item in value:
            multi_hot[row][item] = 1.0
    return multi_hot, names


def encode_scores(values: list, split: str) -> list[float]:
    """Regression labels as floats; a missing, non-numeric or non-finite score is an error naming its row."""
    for row, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            quoted = " (write numbers without quotes)" if isinstance(value, str) else ""
            raise ValueError(f"split {split!r}, row {row}: the regression label {value!r} is not a number{quoted}; "
                             "every row needs a numeric score, e.g. 3.8.")
        if not math.isfinite(value):
            raise ValueError(f"split {split!r}, row {row}: the regression label is {value}; every row needs a finite "
                             "score.")
    return [float(value) for value in values]


def encode_label_column(values: list, names: list[str] | None, split: str,
                        problem_type: str | None = None) -> tuple[list, list[str], str]:
    """Encode a label column as ``problem_type`` (None: `detect_problem_type`); returns the labels, the label names
    (`REGRESSION_NAMES` for a score) and the problem type."""
    problem_type = problem_type or detect_problem_type(values, split)
    if problem_type == MULTI_LABEL:
        return (*encode_multi_labels(values, names, split), problem_type)
    if problem_type == REGRESSION:
        return encode_scores(values, split), list(REGRESSION_NAMES), problem_type
    if problem_type != SINGLE_LABEL:
        raise ValueError(f"problem_type={problem_type!r} is unknown; choose one of {PROBLEM_TYPES}.")
    lists = [row for row, value in enumerate(values) if _is_list(value)]
    if lists:
        raise ValueError(f"split {split!r}, row {lists[0]}: the label {values[lists[0]]!r} is a list, but the "
                         "labels are single-label classes; pass problem_type='multi_label_classification' "
                         "(--problem-type) if every row lists its labels.")
    return (*encode_labels(values, names, split), problem_type)


def load_labelled(
    source: str | os.PathLike | DatasetDict,
    split: str,
    text_column: str = "text",
    label_column: str = "label",
    label_names: list[str] | None = None,
    max_samples: int | None = None,
    seed: int = 42,
    problem_type: str | None = None,
    text_pair_column: str | None = None,
) -> tuple[LabelledTexts, list[str]]:
    """Texts and labels of one split (a seeded random subset of ``max_samples`` if given) and the label names.

    ``problem_type``: how to read the label column (None: from its values, `detect_problem_type`); the labels'
    problem type is in the result's ``problem_type``. ``text_pair_column``: the pairs' second texts (``"auto"``:
    `TEXT_PAIR_COLUMN` when the split has it; see `resolve_text_pair_column`), checked on every row of the split so an
    error names the row in the file.
    """
    dataset = load_split(source, split)
    label_column = resolve_label_column(dataset, label_column)
    text_pair_column = resolve_text_pair_column(dataset, text_pair_column)
    check_columns(dataset, split, text_column, label_column, text_pair_column)
    if text_pair_column is not None:
        check_text_pairs(dataset[text_pair_column], split, text_pair_column)
    if max_samples is not None and max_samples < len(dataset):
        dataset = dataset.shuffle(seed=seed).select(range(max_samples))
    names = label_names or label_names_from(source, dataset, label_column)
    labels, names, problem_type = encode_label_column(list(dataset[label_column]), names, split, problem_type)
    texts = list(dataset[text_column])
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"split {split!r}, row {i}: the text is {type(text).__name__} ({text!r:.50}), not a str.")
    pairs = list(dataset[text_pair_column]) if text_pair_column is not None else None
    return LabelledTexts(texts, labels, pairs, problem_type), names


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
    label_column: str = "label"  #: the column the labels were read from (see `resolve_label_column`)
    text_pair_column: str | None = None  #: the pairs' second texts (None: single texts)

    @property
    def problem_type(self) -> str:
        """The problem type of the labels (the training split's, which the other splits follow)."""
        return self.train.problem_type


def load_classification_splits(data: DataArguments, seed: int = 42) -> ClassificationSplits:
    """Load train/validation/evaluation the same way for every trainer (head training, tuning and fine-tuning).

    The validation rows are ``data.validation_split`` if given, else ``data.validation_fraction`` of the
    (subsetted) training rows; ``data.eval_split`` is only for the final score, never for choosing a checkpoint.
    The problem type is ``data.problem_type``, else read from the training labels; the other splits follow it.
    """
    source = data.dataset
    label_column = resolve_label_column(load_split(source, data.train_split), data.label_column)
    train, names = load_labelled(source, data.train_split, data.text_column, label_column,
                                 max_samples=data.max_train_samples, seed=seed, problem_type=data.problem_type,
                                 text_pair_column=data.text_pair_column)
    problem_type = train.problem_type
    # Detected on the training split: the other splits must then have the same column.
    pair_column = None if train.pairs is None else (
        TEXT_PAIR_COLUMN if data.text_pair_column == "auto" else data.text_pair_column)
    if data.validation_split is not None:
        validation, _ = load_labelled(source, data.validation_split, data.text_column, label_column, names,
                                      problem_type=problem_type, text_pair_column=pair_column)
        validation_name = f"split {data.validation_split!r}"
    else:
        train, validation = carve_validation(train, data.validation_fraction, seed)
        validation_name = f"{data.validation_fraction:.0%} of the training subset (seed {seed})"
    evaluation = None
    if data.eval_split is not None:
        evaluation, _ = load_labelled(source, data.eval_split, data.text_column, label_column, names,
                                      max_samples=data.max_eval_samples, seed=seed, problem_type=problem_type,
                                      text_pair_column=pair_column)
    return ClassificationSplits(train, validation, evaluation, names, validation_name, label_column, pair_column)


def describe_source(source: str | os.PathLike | DatasetDict) -> str:
    """How reports name a dataset: a Hub id or relative path as given, an absolute local path by its folder name only
    (reports and cards are pushed: they must not carry this machine's paths), or that it was passed in memory."""
    if isinstance(source, (DatasetDict, dict)):
        return "in-memory DatasetDict"
    path = Path(source).expanduser()
    return path.name if path.is_absolute() or str(source).startswith("~") else str(source)
