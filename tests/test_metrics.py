"""Metrics (`llmembed_hf.metrics`): the 20 Newsgroups top-level scores and the intent + slot metric, against
hand-computed values."""

from __future__ import annotations

import json

import pytest

from helpers import NEWSGROUPS
from llmembed_hf.metrics import load_metric, score_top_level, top_level_groups


def test_newsgroups_top_level_groups():
    names = json.loads((NEWSGROUPS / "labels.json").read_text())
    mapping, groups = top_level_groups(names)
    assert groups == ["alt", "comp", "misc", "rec", "sci", "soc", "talk"]
    assert [groups[g] for g in mapping][:3] == ["alt", "comp", "comp"]
    assert sum(g == groups.index("comp") for g in mapping) == 5 and sum(g == groups.index("talk") for g in mapping) == 4
    comp_graphics, comp_x, rec_autos, sci_med = (names.index(n) for n in
                                                 ("comp.graphics", "comp.windows.x", "rec.autos", "sci.med"))
    # fine-grained: 1 of 4 right; top level: comp/comp right, rec/rec right, sci vs rec wrong, comp/comp right
    predictions = [comp_x, rec_autos, sci_med, comp_graphics]
    references = [comp_graphics, rec_autos, rec_autos, comp_x]
    scores = score_top_level(predictions, references, names)
    assert scores["top_level_accuracy"] == pytest.approx(0.75)
    # per group F1: comp 1.0, rec 2/3 (precision 1, recall 1/2), sci 0 -> mean 5/9
    assert scores["top_level_macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    with pytest.raises(ValueError, match="0..19"):
        score_top_level([20], [0], names)


def test_metric_against_hand_computed_values():
    references = [
        {"intent": "alarm_set", "slots": ["O", "B-time", "I-time", "O", "B-date"]},  # 2 spans
        {"intent": "weather_query", "slots": ["B-date", "O"]},  # 1 span
        {"intent": "play_music", "slots": ["O", "O"]},  # none
    ]
    predictions = [
        {"intent": "alarm_set", "slots": ["O", "B-time", "I-time", "O", "B-time"]},  # time right, date typed wrong
        {"intent": "alarm_set", "slots": ["I-date", "B-date"]},  # orphan I-date = B-date: right; extra span
        {"intent": "play_music", "slots": ["O", "O"]},  # frame right
    ]
    # correct spans 2; predicted 4; reference 3 -> P 0.5, R 2/3, F1 4/7; intents 2/3; frames: only the last
    scores = load_metric("intent_slot").compute(predictions=predictions, references=references)
    assert scores == pytest.approx({"intent_accuracy": 2 / 3, "slot_precision": 0.5, "slot_recall": 2 / 3,
                                    "slot_f1": 4 / 7, "exact_match": 1 / 3})
    with pytest.raises(ValueError, match="example 0: 1 predicted slot tags but 2"):
        load_metric("intent_slot").compute(predictions=[{"intent": "a", "slots": ["O"]}],
                                           references=[{"intent": "a", "slots": ["O", "O"]}])


def test_calibration_metrics_against_hand_computed_values():
    import numpy as np

    from llmembed_hf.metrics import calibration_metrics, reliability_bins

    # Softmax top scores 0.88 (right), 0.88 (wrong), 0.5 (right): bins [0.8, 0.9) and [0.5, 0.6).
    logits = np.log(np.array([[0.88, 0.12], [0.12, 0.88], [0.5, 0.5]]))
    labels = [0, 0, 0]
    bins = reliability_bins(logits, labels)
    assert bins["count"][8] == 2 and bins["count"][5] == 1 and sum(bins["count"]) == 3
    assert bins["accuracy"][8] == pytest.approx(0.5) and bins["confidence"][8] == pytest.approx(0.88)
    metrics = calibration_metrics(logits, labels)
    assert metrics["ece"] == pytest.approx((2 * abs(0.88 - 0.5) + abs(0.5 - 1.0)) / 3)
    assert metrics["nll"] == pytest.approx(-(np.log(0.88) + np.log(0.12) + np.log(0.5)) / 3)


def test_temperature_fit_undoes_a_known_overconfidence():
    import numpy as np

    from llmembed_hf.metrics import calibration_metrics, fit_temperature

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 3000)
    calibrated = rng.normal(size=(3000, 3)) + 2.0 * np.eye(3)[labels]  # logits of a well-calibrated model, made
    temperature = fit_temperature(calibrated * 6.0, labels)  # six times over-confident
    assert temperature == pytest.approx(6.0 * fit_temperature(calibrated, labels), rel=1e-3)
    before, after = calibration_metrics(calibrated * 6.0, labels), calibration_metrics(calibrated * 6.0, labels,
                                                                                       temperature)
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"] / 3


# ----------------------------------------------------------------------------------------------------------------------
# Multi-label and regression
# ----------------------------------------------------------------------------------------------------------------------

#: Four rows, four labels; the last label is neither true nor predicted anywhere (no F1 to measure).
REFERENCES = [[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]]
PREDICTIONS = [[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]]


def test_multi_label_scores_against_hand_computed_values():
    import numpy as np

    from llmembed_hf.metrics import multi_label_scores, per_label_f1

    # per label: 0: TP 2 -> F1 1; 1: TP 1, FN 1 -> 2/3; 2: FP 1, FN 1 -> 0; 3: never seen -> not measured
    f1 = per_label_f1(np.array(PREDICTIONS), np.array(REFERENCES))
    assert f1[:3] == pytest.approx([1.0, 2 / 3, 0.0]) and np.isnan(f1[3])
    scores = multi_label_scores(np.array(PREDICTIONS), np.array(REFERENCES))
    assert scores == pytest.approx({
        "macro_f1": (1 + 2 / 3 + 0) / 3,
        "micro_f1": 2 * 3 / (2 * 3 + 1 + 2),  # TP 3, FP 1, FN 2 pooled
        # rows: {0} vs {0,2}: 2/3; {1,2} vs {1}: 2/3; nothing vs nothing: 1; {0} vs {0,1}: 2/3
        "samples_f1": (3 * 2 / 3 + 1) / 4,
        "subset_accuracy": 1 / 4,  # only the empty row is exactly right
    })


def test_multi_label_metrics_from_logits_and_thresholds():
    import numpy as np

    from llmembed_hf.metrics import compute_multi_label_metrics, multi_label_scores

    probabilities = np.array([[0.9, 0.4, 0.3, 0.1], [0.2, 0.6, 0.55, 0.1], [0.1, 0.1, 0.1, 0.1], [0.8, 0.45, 0.2, 0.1]])
    logits = np.log(probabilities / (1 - probabilities))
    at_half = compute_multi_label_metrics((logits, np.array(REFERENCES)))
    assert at_half == pytest.approx(multi_label_scores(np.array(PREDICTIONS), np.array(REFERENCES)))
    # label 1 at 0.42 adds row 3 (right); label 2 at 0.58 drops row 1 (wrong): all three measured labels perfect
    tuned = compute_multi_label_metrics((logits, np.array(REFERENCES)), [0.5, 0.42, 0.58, 0.5])
    assert tuned["macro_f1"] == pytest.approx((1 + 1 + 0) / 3)  # label 2: its one true row (0.3) is still missed
    assert tuned["micro_f1"] == pytest.approx(2 * 4 / (2 * 4 + 0 + 1))


def test_fit_thresholds_maximises_each_labels_f1():
    import numpy as np

    from llmembed_hf.metrics import compute_multi_label_metrics, fit_thresholds

    scores = np.array([
        # best cut: the top 4 (F1 6/7) -> halfway between 0.3 and 0.2
        [0.9, 0.8, 0.7, 0.3, 0.2],
        # no true row: nothing to maximise -> 0.5
        [0.9, 0.1, 0.1, 0.1, 0.1],
        # tied scores are cut together: top 2 (F1 2/3) -> halfway between 0.6 and 0.1
        [0.6, 0.6, 0.1, 0.1, 0.1],
        # F1 2/3 with the top 1 or the top 4: the higher threshold, halfway between 0.9 and 0.8
        [0.9, 0.8, 0.7, 0.6, 0.5],
    ]).T
    labels = np.array([[1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [1, 0, 0, 1, 0]]).T
    thresholds = fit_thresholds(scores, labels)
    assert thresholds == pytest.approx([0.25, 0.5, 0.35, 0.85])
    logits = np.log(scores / (1 - scores))
    tuned = compute_multi_label_metrics((logits, labels), thresholds)
    # label 1 (no true row) is still predicted on row 0 at 0.5: its F1 is 0
    assert tuned["macro_f1"] == pytest.approx((6 / 7 + 0 + 2 / 3 + 2 / 3) / 4)
    for other in ([0.5, 0.5, 0.5, 0.5], [0.1, 0.5, 0.5, 0.95], [0.75, 0.5, 0.65, 0.55]):
        assert compute_multi_label_metrics((logits, labels), other)["macro_f1"] <= tuned["macro_f1"] + 1e-12


def test_regression_metrics_against_hand_computed_values():
    import numpy as np

    from llmembed_hf.metrics import compute_regression_metrics, regression_scores

    gold = [1.0, 3.0, 2.0, 5.0]
    # Pearson: sum(dx*dy) 5.5 / sqrt(5 * 8.75); Spearman: ranks 1234 vs 1324 -> 1 - 6*2/(4*15); MSE (0+1+1+1)/4
    expected = {"pearson": 5.5 / np.sqrt(5 * 8.75), "spearman": 0.8, "mse": 0.75}
    assert regression_scores([1.0, 2.0, 3.0, 4.0], gold) == pytest.approx(expected)
    outputs = np.array([[1.0], [2.0], [3.0], [4.0]])  # what Trainer holds for a one-output head
    assert compute_regression_metrics((outputs, np.array(gold))) == pytest.approx(expected)
    constant = regression_scores([2.0] * 4, gold)
    assert constant["pearson"] == constant["spearman"] == 0.0 and constant["mse"] == pytest.approx((1 + 1 + 0 + 9) / 4)


def test_every_problem_type_has_its_metrics():
    from types import SimpleNamespace

    from llmembed_hf.metrics import COMPUTE_METRICS, SELECTION_METRICS, TUNING_METRICS, problem_type_of
    from llmembed_hf.training_args import PROBLEM_TYPES

    assert set(COMPUTE_METRICS) == set(TUNING_METRICS) == set(PROBLEM_TYPES)
    assert SELECTION_METRICS == {"single_label_classification": "accuracy",
                                 "multi_label_classification": "macro_f1", "regression": "spearman"}
    assert problem_type_of(SimpleNamespace(problem_type=None, num_labels=1)) == "regression"
    assert problem_type_of(SimpleNamespace(problem_type=None, num_labels=3)) == "single_label_classification"
