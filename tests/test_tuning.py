"""The head's hyper-parameter search (`llmembed_hf.tuning`: ``tune_head``) on tiny random backbones; ``llmembed tune``
is tested in test_cli.py."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset, DatasetDict

from helpers import NAMES, head_kwargs, keyword_rows
from llmembed_hf import LLMEmbedConfig, LLMEmbedForSequenceClassification, SearchSpace, tune_head
from llmembed_hf.tuning import preset_defaults, run_trial, sample_trials, usable_space
from llmembed_hf.training_args import HeadTrainingArguments

#: A small grid that trains in seconds on the tiny backbones.
SMALL_SPACE = dict(sigma=[0.1, 1.0], epochs=[2, 3], learning_rate=[3e-3], dropout=[0.2], projection_dim=[8, 16],
                   batch_size=[16], concat_encoder_views=[False, True])


class RecordingDatasetDict(DatasetDict):
    """A DatasetDict that remembers which splits were read, to prove the search never reads ``test``."""

    read: set[str]

    def __getitem__(self, split):
        self.read.add(split)
        return super().__getitem__(split)


@pytest.fixture(scope="module")
def keyword_dict() -> RecordingDatasetDict:
    data = RecordingDatasetDict(
        train=Dataset.from_list(keyword_rows(60, seed=0)), test=Dataset.from_list(keyword_rows(20, seed=1))
    )
    data.read = set()
    return data


@pytest.fixture
def tiny_model(tiny_backbones):
    def make() -> LLMEmbedForSequenceClassification:
        config = LLMEmbedConfig(**head_kwargs(tiny_backbones), id2label=dict(enumerate(NAMES)),
                                label2id={n: i for i, n in enumerate(NAMES)})
        return LLMEmbedForSequenceClassification.from_backbones(config)

    return make


# ----------------------------------------------------------------------------------------------------------------------
# The search plan
# ----------------------------------------------------------------------------------------------------------------------


def test_trials_are_seeded_distinct_and_start_with_the_defaults():
    space = SearchSpace()
    defaults = preset_defaults(LLMEmbedConfig.from_preset("small", num_labels=2), HeadTrainingArguments())
    first = sample_trials(space, 12, seed=3, first=defaults)
    assert first == sample_trials(space, 12, seed=3, first=defaults)
    assert first != sample_trials(space, 12, seed=4, first=defaults)
    assert first[0] == defaults
    assert len({json.dumps(t, sort_keys=True) for t in first}) == 12
    grid = space.grid()
    assert all(trial in grid for trial in first)


def test_defaults_outside_the_space_are_not_forced_in():
    space = SearchSpace.from_dict({"sigma": [0.5]})
    trials = sample_trials(space, 3, seed=0, first={**space.grid()[0], "sigma": 0.1})
    assert all(trial["sigma"] == 0.5 for trial in trials)


def test_a_small_grid_runs_every_point_once():
    space = SearchSpace.from_dict(SMALL_SPACE)
    assert len(space.grid()) == 16
    trials = sample_trials(space, 100, seed=0)
    assert len(trials) == 16 and all(point in trials for point in space.grid())


@pytest.mark.parametrize("trials", [0, -1, 1.5, True])
def test_trials_below_one_is_a_clear_error(trials):
    with pytest.raises(ValueError, match="trials=.* must be an integer >= 1"):
        sample_trials(SearchSpace(), trials, seed=0)


@pytest.mark.parametrize(
    "space, message",
    [
        ({"sigma": []}, "sigma has no candidate values"),
        ({"epochs": [0]}, r"epochs=0 must be an integer >= 1"),
        ({"epochs": [2.5]}, r"epochs=2.5 must be an integer"),
        ({"dropout": [1.0]}, r"dropout=1.0 must be a number in \[0, 1\)"),
        ({"sigma": [-0.1]}, r"sigma=-0.1 must be a number > 0"),
        ({"learning_rate": ["fast"]}, r"learning_rate='fast' must be a number"),
        ({"width": [1]}, r"unknown hyper-parameter\(s\) \['width'\]"),
        ({"concat_encoder_views": [True, "yes"]}, r"concat_encoder_views='yes' must be True or False"),
    ],
)
def test_bad_search_space_is_a_clear_error(space, message):
    with pytest.raises(ValueError, match=message):
        SearchSpace.from_dict(space).validate()


def test_tune_head_rejects_bad_input_before_extracting(keyword_dict, tmp_path):
    with pytest.raises(ValueError, match="trials=0"):
        tune_head(keyword_dict, tmp_path, trials=0, model=object())
    with pytest.raises(ValueError, match="sigma has no candidate values"):
        tune_head(keyword_dict, tmp_path, search_space={"sigma": []}, model=object())
    with pytest.raises(ValueError, match="metric='loss' is unknown"):
        tune_head(keyword_dict, tmp_path, metric="loss", model=object())
    with pytest.raises(ValueError, match="eval_split='test': tuning never reads an evaluation split"):
        tune_head(keyword_dict, tmp_path, eval_split="test", model=object())


# ----------------------------------------------------------------------------------------------------------------------
# Determinism and the search end to end
# ----------------------------------------------------------------------------------------------------------------------


def test_same_seed_gives_the_same_head_and_accuracy(tiny_model, keyword_dict, tmp_path):
    """One extraction, three trainings: seeds 0, 0 and 1 (initial weights, shuffling and dropout all seeded)."""
    from llmembed_hf.features import extract_features

    model = tiny_model()
    rows = keyword_dict["train"]
    features = extract_features(model, rows["text"], extra_columns={"labels": rows["label"]})
    train, validation = features.select(range(40)), features.select(range(40, 60))
    params = dict(sigma=0.1, epochs=3, learning_rate=3e-3, dropout=0.2, projection_dim=16, batch_size=16,
                  concat_encoder_views=True)

    def run(seed: int, name: str):
        head, result = run_trial(model.config, params, train, validation, rows["label"][40:], seed, tmp_path / name)
        return {k: v.clone() for k, v in head.state_dict().items()}, result

    (first, first_result), (second, second_result), (other, _) = run(0, "a"), run(0, "b"), run(1, "c")
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert first_result["accuracy"] == second_result["accuracy"]
    assert first_result["macro_f1"] == second_result["macro_f1"]
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_fixing_the_fusion_keeps_the_numeric_draws():
    """The fusion is the grid's last axis: fixed to either value, the same numeric points are drawn."""
    numeric = {k: v for k, v in SMALL_SPACE.items() if k != "concat_encoder_views"}
    fixed = {fusion: sample_trials(SearchSpace.from_dict({**numeric, "concat_encoder_views": [fusion]}), 5, seed=1)
             for fusion in (True, False)}
    assert [t["concat_encoder_views"] for t in fixed[True]] == [True] * 5
    strip = lambda trials: [{k: v for k, v in t.items() if k != "concat_encoder_views"} for t in trials]  # noqa: E731
    assert strip(fixed[True]) == strip(fixed[False])
    both = sample_trials(SearchSpace.from_dict(numeric), 16, seed=1)  # default candidates: both fusions
    assert {t["concat_encoder_views"] for t in both} == {True, False}


def test_a_single_encoder_view_searches_only_the_fusion_that_sees_its_vector(tiny_backbones):
    """One encoder view gives X @ X.T one value: without its vector the MLP would learn from one number, so the search
    drops that fusion for such heads (and refuses a space holding only it); heads with more views keep both."""
    single = LLMEmbedConfig.from_preset("small", num_labels=2)
    assert usable_space(single, SearchSpace()).concat_encoder_views == [True]
    assert usable_space(single, SearchSpace(concat_encoder_views=[True])).concat_encoder_views == [True]
    with pytest.raises(ValueError, match=r"concat_encoder_views=\[False\] leaves this head's MLP one number"):
        usable_space(single, SearchSpace(concat_encoder_views=[False]))
    several = [LLMEmbedConfig(**head_kwargs(tiny_backbones)),  # an LLM and an encoder
               LLMEmbedConfig.from_preset("small", num_labels=2, pair_encoding="siamese"),  # u, v, |u-v|, u*v
               LLMEmbedConfig.from_preset("small-gemma3", num_labels=2)]
    for config in several:
        assert len(config.view_widths) > 1
        assert usable_space(config, SearchSpace()).concat_encoder_views == [True, False]


def test_the_fusion_searched_is_the_fusion_trained(tiny_model, keyword_dict, tmp_path):
    """A trial's ``concat_encoder_views`` reaches the head: the encoder's vector widens the MLP's input."""
    from llmembed_hf.features import extract_features

    model = tiny_model()
    rows = keyword_dict["train"]
    features = extract_features(model, rows["text"], extra_columns={"labels": rows["label"]})
    params = dict(sigma=0.1, epochs=1, learning_rate=3e-3, dropout=0.0, projection_dim=16, batch_size=16)
    heads = {
        fusion: run_trial(model.config, {**params, "concat_encoder_views": fusion}, features.select(range(40)),
                          features.select(range(40, 60)), rows["label"][40:], 0, tmp_path / str(fusion))[0]
        for fusion in (False, True)
    }
    encoder_width = next(b["hidden_size"] for b in model.config.backbones if b["role"] == "encoder")
    widths = {fusion: head.head.classifier[0].in_features for fusion, head in heads.items()}
    assert widths[True] - widths[False] == encoder_width
    assert heads[True].config.concat_encoder_views and not heads[False].config.concat_encoder_views
    assert model.config.concat_encoder_views is False, "the base config is not changed by a trial"


def test_tune_head_picks_the_best_validation_trial_and_never_reads_test(tiny_model, keyword_dict, tmp_path):
    keyword_dict.read.clear()
    report = tune_head(keyword_dict, tmp_path / "tune", trials=4, search_space=SMALL_SPACE, model=tiny_model(),
                       validation_fraction=0.25)
    assert keyword_dict.read == {"train"}
    assert report.num_train == 45 and report.num_validation == 15
    assert [t["trial"] for t in report.trials] == [0, 1, 2, 3]
    best_score = max(t["accuracy"] for t in report.trials)
    assert report.best["accuracy"] == best_score
    assert report.best["trial"] == min(t["trial"] for t in report.trials if t["accuracy"] == best_score
                                       and t["macro_f1"] == report.best["macro_f1"])
    saved = json.loads((tmp_path / "tune" / "tuning_results.json").read_text())
    assert saved["best"] == report.best and len(saved["trials"]) == 4
    markdown = (tmp_path / "tune" / "tuning_results.md").read_text()
    assert markdown.count("\n| ") == 5 and "**best**" in markdown
    assert not list((tmp_path / "tune").glob(".trial-*")), "trial checkpoints are removed"


def test_tune_head_scores_on_the_datasets_own_validation_split(tiny_model, tmp_path):
    data = RecordingDatasetDict(train=Dataset.from_list(keyword_rows(40, seed=3)),
                                validation=Dataset.from_list(keyword_rows(12, seed=4)),
                                test=Dataset.from_list(keyword_rows(8, seed=5)))
    data.read = set()
    report = tune_head(data, tmp_path / "tune", trials=1, search_space=SMALL_SPACE, model=tiny_model(),
                       validation_split="validation")
    assert data.read == {"train", "validation"}
    assert (report.num_train, report.num_validation) == (40, 12), "nothing is carved off train"
    assert report.validation == "split 'validation'"


def test_tune_head_is_reproducible(tiny_model, keyword_dict, tmp_path):
    runs = [tune_head(keyword_dict, tmp_path / name, trials=2, search_space=SMALL_SPACE, model=tiny_model(), seed=5)
            for name in ("a", "b")]
    strip = lambda trials: [{k: v for k, v in t.items() if k != "train_s"} for t in trials]  # noqa: E731
    assert strip(runs[0].trials) == strip(runs[1].trials)


def test_tune_head_on_text_pairs(tiny_backbones, pair_data, tmp_path):
    """A pair dataset is tuned like single texts (the pair column detected, the preset given the default pair
    encoding, as `llmembed train` does), and the train command needs no pair option."""
    report = tune_head(pair_data, tmp_path / "tune", preset=LLMEmbedConfig(**head_kwargs(tiny_backbones)), trials=2,
                       search_space=SMALL_SPACE)
    assert len(report.trials) == 2 and report.num_train + report.num_validation == 60
    assert all(0.0 <= trial["accuracy"] <= 1.0 for trial in report.trials)
    assert "--text-pair-column" not in report.train_command and "--pair-encoding" not in report.train_command
