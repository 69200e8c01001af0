"""Data loading (`llmembed_hf.data`): JSONL and gzipped splits, labels.json, saved datasets, string and ClassLabel
labels, and clear errors on bad input."""

from __future__ import annotations

import json

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Json, List, Value

from helpers import NAMES, write_split
from llmembed_hf.data import load_labelled


def test_jsonl_and_gz_splits_with_labels_json(keyword_data):
    train, names = load_labelled(keyword_data, "train")
    assert names == NAMES
    assert len(train.texts) == 60 and all(isinstance(t, str) for t in train.texts)
    assert train.labels == [int("good" in t.split()) for t in train.texts]
    test, _ = load_labelled(keyword_data, "test", label_names=names)  # the .jsonl.gz split
    assert len(test.texts) == 20 and test.labels == [int("good" in t.split()) for t in test.texts]


def test_labels_json_as_mapping(tmp_path):
    write_split(tmp_path, "train", [{"text": "a", "label": 1}, {"text": "b", "label": 0}, {"text": "c", "label": 2}])
    (tmp_path / "labels.json").write_text(json.dumps({"2": "sports", "0": "world", "1": "business"}))
    split, names = load_labelled(tmp_path, "train")
    assert names == ["world", "business", "sports"] and split.labels == [1, 0, 2]


def test_max_samples_is_a_seeded_subset(keyword_data):
    first, _ = load_labelled(keyword_data, "train", max_samples=10, seed=3)
    again, _ = load_labelled(keyword_data, "train", max_samples=10, seed=3)
    other, _ = load_labelled(keyword_data, "train", max_samples=10, seed=4)
    full, _ = load_labelled(keyword_data, "train")
    assert first == again and first != other and len(first.texts) == 10
    assert set(zip(first.texts, first.labels)) <= set(zip(full.texts, full.labels))


@pytest.mark.parametrize("missing", ["text", "label"])
def test_missing_column_lists_the_columns(tmp_path, missing):
    row = {"sentence": "the cat", "target": 0, "text": "the cat", "label": 0}
    del row[missing]
    write_split(tmp_path, "train", [row])
    with pytest.raises(ValueError, match=rf"column '{missing}' not found.*\[.*'sentence'.*'target'.*\]"):
        load_labelled(tmp_path, "train")
    split, _ = load_labelled(tmp_path, "train", text_column="sentence", label_column="target")
    assert split.texts == ["the cat"] and split.labels == [0]


def test_missing_split_lists_the_files(keyword_data):
    with pytest.raises(FileNotFoundError, match=r"validation.*labels\.json.*test\.jsonl\.gz.*train\.jsonl"):
        load_labelled(keyword_data, "validation")


def test_label_ids_outside_the_classes(tmp_path):
    write_split(tmp_path, "train", [{"text": "a", "label": 0}, {"text": "b", "label": 2}, {"text": "c", "label": 1}])
    (tmp_path / "labels.json").write_text(json.dumps(NAMES))
    with pytest.raises(ValueError, match=r"label id\(s\) \[2\] outside 0\.\.1"):
        load_labelled(tmp_path, "train")
    write_split(tmp_path, "test", [{"text": "a", "label": -1}, {"text": "b", "label": 0}])
    with pytest.raises(ValueError, match=r"\[-1\] outside"):
        load_labelled(tmp_path, "test")


def test_unknown_label_string_in_eval_split(tmp_path):
    write_split(tmp_path, "train", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}])
    write_split(tmp_path, "test", [{"text": "c", "label": "neutral"}, {"text": "d", "label": "pos"}])
    _, names = load_labelled(tmp_path, "train")
    with pytest.raises(ValueError, match=r"'test'.*\['neutral'\].*\['neg', 'pos'\]"):
        load_labelled(tmp_path, "test", label_names=names)


def test_string_labels_map_to_sorted_ids(tmp_path):
    write_split(tmp_path, "train", [{"text": t, "label": l} for t, l in
                                    [("a", "sports"), ("b", "world"), ("c", "business"), ("d", "world")]])
    split, names = load_labelled(tmp_path, "train")
    assert names == ["business", "sports", "world"]
    assert split.labels == [1, 2, 0, 2]
    write_split(tmp_path, "test", [{"text": "e", "label": "world"}, {"text": "f", "label": "business"}])
    test, _ = load_labelled(tmp_path, "test", label_names=names)
    assert test.labels == [2, 0]


def test_class_label_feature_gives_names():
    features = Features({"text": Value("string"), "label": ClassLabel(names=["sad", "happy", "angry"])})
    data = DatasetDict({"train": Dataset.from_dict({"text": ["x", "y", "z"], "label": [2, 0, 1]}, features=features)})
    split, names = load_labelled(data, "train")
    assert names == ["sad", "happy", "angry"] and split.labels == [2, 0, 1]
    with pytest.raises(ValueError, match=r"split 'test' not found.*\['train'\]"):
        load_labelled(data, "test")


def test_save_to_disk_folder(tmp_path):
    Dataset.from_dict({"text": ["x", "y"], "label": [1, 0]}).save_to_disk(str(tmp_path / "saved"))
    split, names = load_labelled(tmp_path / "saved", "train")
    assert split.texts == ["x", "y"] and split.labels == [1, 0] and names == ["0", "1"]


def test_empty_dataset():
    empty = Dataset.from_dict({"text": [], "label": []}, features=Features({"text": Value("string"),
                                                                          "label": Value("int64")}))
    with pytest.raises(ValueError, match="'train' is empty"):
        load_labelled(DatasetDict({"train": empty}), "train")


def test_empty_jsonl_split(tmp_path):
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_labelled(tmp_path, "train")


@pytest.mark.parametrize("bad_text", [None, 5])
def test_non_string_text(tmp_path, bad_text):
    write_split(tmp_path, "train", [{"text": "a", "label": 0}, {"text": "b", "label": 1},
                                    {"text": bad_text, "label": 0}])
    with pytest.raises(TypeError, match=rf"row 2: the text is {type(bad_text).__name__}"):
        load_labelled(tmp_path, "train")


@pytest.mark.parametrize("bad_label, problem_type", [(None, None), (True, None),
                                                     (1.5, "single_label_classification")])
def test_labels_neither_int_nor_string(bad_label, problem_type):
    """(1.5 alone reads as a regression score: tested below.)"""
    data = DatasetDict({"train": Dataset.from_dict({"text": ["a", "b"], "label": [bad_label, bad_label]})})
    with pytest.raises(ValueError, match=r"neither an int nor a string"):
        load_labelled(data, "train", problem_type=problem_type)


def test_nan_label_is_named(tmp_path):
    write_split(tmp_path, "train", [{"text": "a", "label": 0}, {"text": "b", "label": float("nan")}])
    with pytest.raises(ValueError, match="label NaN"):
        load_labelled(tmp_path, "train")


# ----------------------------------------------------------------------------------------------------------------------
# Multi-label and regression columns
# ----------------------------------------------------------------------------------------------------------------------

EMOTIONS = ["anger", "joy", "fear"]


def test_a_list_valued_labels_column_is_multi_label(tmp_path):
    """GoEmotions' layout: no `label` column but a `labels` list of ids per row, names in labels.json; an empty list
    is a row where no label applies (all negative)."""
    write_split(tmp_path, "train", [{"text": "a", "labels": [0, 2]}, {"text": "b", "labels": []},
                                    {"text": "c", "labels": [1]}, {"text": "d", "labels": [1, 1]}])
    (tmp_path / "labels.json").write_text(json.dumps(EMOTIONS))
    split, names = load_labelled(tmp_path, "train")
    assert names == EMOTIONS and split.problem_type == "multi_label_classification"
    assert split.labels == [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]


def test_multi_label_names_and_class_label_lists():
    data = DatasetDict({"train": Dataset.from_dict({"text": ["a", "b", "c"],
                                                    "tags": [["joy", "anger"], [], ["joy"]]})})
    split, names = load_labelled(data, "train", label_column="tags")
    assert names == ["anger", "joy"] and split.labels == [[1.0, 1.0], [0.0, 0.0], [0.0, 1.0]]
    features = Features({"text": Value("string"), "labels": List(ClassLabel(names=EMOTIONS))})
    data = DatasetDict({"train": Dataset.from_dict({"text": ["a", "b"], "labels": [[2], [0, 1]]}, features=features)})
    split, names = load_labelled(data, "train", label_column="labels")
    assert names == EMOTIONS and split.labels == [[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]


def test_the_other_splits_follow_the_training_labels(tmp_path):
    from llmembed_hf.data import load_classification_splits
    from llmembed_hf.training_args import DataArguments

    write_split(tmp_path, "train", [{"text": t, "labels": [i % 3]} for i, t in enumerate("abcdefghij")])
    write_split(tmp_path, "test", [{"text": "x", "labels": [1, 2]}, {"text": "y", "labels": 1}])
    (tmp_path / "labels.json").write_text(json.dumps(EMOTIONS))
    with pytest.raises(ValueError, match=r"split 'test', row 1: the label 1 is not a list.*write \[1\]"):
        load_classification_splits(DataArguments(str(tmp_path)))
    write_split(tmp_path, "test", [{"text": "x", "labels": [1, 2]}])
    splits = load_classification_splits(DataArguments(str(tmp_path)))
    assert splits.problem_type == "multi_label_classification" and splits.label_column == "labels"
    assert splits.validation.problem_type == splits.evaluation.problem_type == "multi_label_classification"
    assert splits.evaluation.labels == [[0.0, 1.0, 1.0]]


@pytest.mark.parametrize("rows, message", [
    ([[0], None, [1]], r"row 1: no labels \(null\).*write \[\] where none does"),
    ([[0], [1, 3]], r"row 1: the label id 3 is outside 0\.\.2 \(labels \['anger', 'joy', 'fear'\]\)"),
    ([[0], [-1]], r"row 1: the label id -1 is outside 0\.\.2"),
    ([["joy"], ["rage"]], r"row 1: the label 'rage' is not among the 3 labels.*add the name"),
    ([["joy"], [1]], r"row 1: the label 1 is not a name, but row 0 names its labels"),
    ([[0], [1.5]], r"row 1: the label 1\.5 is neither a label id \(an int\) nor a label name"),
    ([[0], [1], 2], r"mixes lists of labels and single labels: row 0 is a list, row 2 is 2.*write \[2\]"),
    ([1, 0, [2]], r"mixes lists of labels and single labels: row 2 is a list, row 0 is 1"),
])
def test_bad_multi_label_rows_are_named(rows, message):
    names = EMOTIONS if "rage" in str(rows) or not any("'" in str(r) for r in rows) else None
    data = DatasetDict({"train": Dataset.from_dict({"text": ["t"] * len(rows), "labels": rows},
                                                   features=Features({"text": Value("string"), "labels": Json()}))})
    with pytest.raises(ValueError, match=message):
        load_labelled(data, "train", label_column="labels", label_names=names)


def test_lists_read_as_single_labels_point_at_the_problem_type():
    data = DatasetDict({"train": Dataset.from_dict({"text": ["a", "b"], "label": [[0], [1]]})})
    with pytest.raises(ValueError, match=r"row 0: the label \[0\] is a list.*'multi_label_classification'"):
        load_labelled(data, "train", problem_type="single_label_classification")


def test_non_integer_numbers_are_regression(tmp_path):
    write_split(tmp_path, "train", [{"text": "a", "label": 0.5}, {"text": "b", "label": 3.8},
                                    {"text": "c", "label": 2}])
    split, names = load_labelled(tmp_path, "train")
    assert split.problem_type == "regression" and names == ["LABEL_0"]
    assert split.labels == [0.5, 3.8, 2.0] and all(isinstance(v, float) for v in split.labels)
    write_split(tmp_path, "test", [{"text": "d", "label": 1}, {"text": "e", "label": 4}])
    whole, _ = load_labelled(tmp_path, "test")  # whole numbers alone are classes, unless regression is asked for
    assert whole.problem_type == "single_label_classification" and whole.labels == [1, 4]
    scores, _ = load_labelled(tmp_path, "test", problem_type="regression")
    assert scores.labels == [1.0, 4.0] and scores.problem_type == "regression"


@pytest.mark.parametrize("bad, message", [
    ("high", r"row 1: the regression label 'high' is not a number \(write numbers without quotes\).*e\.g\. 3\.8"),
    (None, r"row 1: the regression label None is not a number"),
    (float("nan"), r"row 1: the regression label is nan; every row needs a finite score"),
    (True, r"row 1: the regression label True is not a number"),
])
def test_non_numeric_regression_labels_are_named(bad, message):
    kind = Value("float64") if isinstance(bad, float) else Json()  # JSON has no NaN
    data = DatasetDict({"train": Dataset.from_dict({"text": ["a", "b", "c"], "label": [0.5, bad, 2.5]},
                                                   features=Features({"text": Value("string"), "label": kind}))})
    with pytest.raises(ValueError, match=message):
        load_labelled(data, "train", problem_type="regression")


def test_a_non_numeric_score_in_a_jsonl_regression_column(tmp_path):
    """JSON lines mixing numbers and strings load (as a Json column); the score's row is named, detected or not."""
    write_split(tmp_path, "train", [{"text": "a", "label": 1.5}, {"text": "b", "label": "high"},
                                    {"text": "c", "label": 0.2}])
    with pytest.raises(ValueError, match=r"split 'train', row 1: the regression label 'high' is not a number"):
        load_labelled(tmp_path, "train")


# ----------------------------------------------------------------------------------------------------------------------
# Text pairs
# ----------------------------------------------------------------------------------------------------------------------


def test_a_text_pair_column_is_detected_and_kept_with_its_rows(pair_data):
    from llmembed_hf.data import load_classification_splits
    from llmembed_hf.training_args import DataArguments

    rows = [json.loads(line) for line in (pair_data / "train.jsonl").read_text().splitlines()]
    splits = load_classification_splits(DataArguments(str(pair_data), max_train_samples=30))
    assert splits.text_pair_column == "text_pair"
    for part in (splits.train, splits.validation, splits.evaluation):
        assert part.pairs is not None and len(part.pairs) == len(part.texts) == len(part.labels)
    by_text = {(r["text"], r["text_pair"]): r["label"] for r in rows}
    # the carved validation and the subset keep each pair's sides and label together
    for part in (splits.train, splits.validation):
        assert all(by_text[(t, p)] == y for t, p, y in zip(part.texts, part.pairs, part.labels))
    single = load_classification_splits(DataArguments(str(pair_data), text_pair_column="none"))
    assert single.text_pair_column is None and single.train.pairs is None and single.evaluation.pairs is None
    assert load_labelled(pair_data, "train")[0].pairs is None  # the function's default: single texts


def test_a_text_pair_column_is_chosen_by_name(tmp_path):
    from llmembed_hf.data import load_classification_splits
    from llmembed_hf.training_args import DataArguments

    rows = [{"premise": f"the cat {i}", "hypothesis": f"a dog {i}", "label": i % 2} for i in range(6)]
    write_split(tmp_path, "train", rows)
    write_split(tmp_path, "test", rows[:2])
    splits = load_classification_splits(DataArguments(str(tmp_path), text_column="premise",
                                                      text_pair_column="hypothesis"))
    assert splits.text_pair_column == "hypothesis"
    assert sorted(splits.train.pairs + splits.validation.pairs) == sorted(r["hypothesis"] for r in rows)
    assert load_classification_splits(DataArguments(str(tmp_path), text_column="premise")).train.pairs is None
    write_split(tmp_path, "test", [{"premise": "x", "label": 0}])  # the evaluation split lacks the chosen column
    with pytest.raises(ValueError, match=r"column 'hypothesis' not found in split 'test'.*--text-pair-column"):
        load_classification_splits(DataArguments(str(tmp_path), text_column="premise", text_pair_column="hypothesis"))


@pytest.mark.parametrize("bad, state", [(None, "is missing"), (7, r"is int \(7\), not a str")])
def test_a_pair_missing_or_not_a_string_names_the_first_such_row(tmp_path, bad, state):
    rows = [{"text": "a", "text_pair": "b", "label": 0}, {"text": "c", "text_pair": "d", "label": 1},
            {"text": "e", "label": 0}, {"text": "f", "text_pair": "g", "label": 1}, {"text": "h", "label": 0}]
    if bad is not None:
        rows[2]["text_pair"] = bad
    write_split(tmp_path, "train", rows)
    message = (rf"split 'train', row 2 \(counting from 0\): the second text of the pair \(column 'text_pair'\) "
               rf"{state}\. Every row of pair data needs both texts: fill it in or drop the row")
    with pytest.raises(ValueError, match=message):
        load_labelled(tmp_path, "train", text_pair_column="auto")
    with pytest.raises(ValueError, match=message):  # also when the seeded subset would not hold that row
        load_labelled(tmp_path, "train", text_pair_column="auto", max_samples=1, seed=0)
