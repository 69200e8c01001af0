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
