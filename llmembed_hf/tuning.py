"""Hyper-parameter search for the fusion head on cached features (``tune_head``, ``llmembed tune``).

Why not `Trainer.hyperparameter_search`: it needs an optional backend (optuna, ray, sigopt or wandb), none of which
the package depends on, and its trials rebuild the model through ``model_init`` inside one `Trainer`, which cannot
change the head's architecture knobs (projection width, dropout, sigma) without extra plumbing. The head trains in
seconds on cached features, so a plain seeded search is just as good and has no dependency:

* the search space is a list of candidate values per hyper-parameter (`SearchSpace`); the candidates are the
  points of its grid. Besides the numbers it includes the fusion itself (``concat_encoder_views``: whether the
  encoders' vectors also reach the MLP), because which fusion wins depends on the data (on SST-2 the reference
  fusion beats the ``small`` preset's; see benchmarks/RESULTS.md);
* trial 0 is the preset's own defaults when they lie in the space (so the table shows what tuning gained), the
  other trials distinct grid points drawn with ``numpy.random.default_rng(seed)``; when ``trials`` covers the whole
  grid this is a grid search;
* features are extracted once (cached, like `train_head`): the trials are scored on ``validation_split`` when the
  dataset has one (MASSIVE does), else on a part carved from the training subset (``validation_fraction``,
  seeded); the test split is never loaded;
* every trial trains a fresh head with `fit_head` (which keeps the epoch with the best validation score, as
  `train_head` does) and is scored on the validation part; the best trial is the highest ``metric`` (by default the
  problem type's: accuracy, multi-label macro-F1 at thresholds tuned on the validation part, regression Spearman),
  ties going to the problem type's other metrics in order, then to the earlier trial.

Same seed, same data, same machine: same trials, same heads, same scores (`fit_head` seeds everything).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict
from transformers import set_seed
from transformers.utils import logging

from .data import describe_source, load_classification_splits
from .features import ExtractionConfig
from .metrics import SELECTION_METRICS, TRAINING_METRICS, TUNING_METRICS, calibration_metrics, problem_type_of
from .model_card import environment
from .modeling.configuration_llmembed import PRESETS, LLMEmbedConfig
from .modeling.modeling_llmembed import LLMEmbedForSequenceClassification
from .trainer import check_model_matches, data_for_model, fit_head, head_config, predict_logits, split_features
from .training_args import DataArguments, HeadArguments, HeadTrainingArguments, command_line, data_arguments

logger = logging.get_logger(__name__)

#: Every score `tune_head` can optimise (`metrics.TUNING_METRICS` says which ones each problem type has).
METRICS = tuple(dict.fromkeys(metric for metrics in TUNING_METRICS.values() for metric in metrics))
#: Share of the training subset that scores the trials when the data has no validation split: more than training's
#: 10%, since here it ranks many heads rather than picking one head's epoch.
TUNING_VALIDATION_FRACTION = 0.2
#: Hyper-parameters that live in the head's config; the others are `HeadTrainingArguments` fields.
CONFIG_KEYS = ("sigma", "dropout", "projection_dim", "concat_encoder_views")
TRAINING_KEYS = ("epochs", "learning_rate", "batch_size")


@dataclass
class SearchSpace:
    """Candidate values of each tuned hyper-parameter (a one-value list fixes it).

    The defaults bracket the ``small`` preset's head: σ over two decades (the reference fixed 0.1 without
    evidence), learning rates around AdamW's usual range for small MLPs, widths from half the preset's 128 to four
    times it, and both fusions (the reference's, and with the encoders' vectors fed to the MLP too). The fusion is
    the last field, so fixing it to one value leaves the draws of the numeric grid as they were.
    """

    sigma: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0])
    epochs: list[int] = field(default_factory=lambda: [5, 10, 20])
    learning_rate: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 5e-4, 1e-3, 3e-3])
    dropout: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.4])
    projection_dim: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    batch_size: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    concat_encoder_views: list[bool] = field(default_factory=lambda: [True, False])

    @classmethod
    def from_dict(cls, values: dict[str, list[Any]]) -> SearchSpace:
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"search space: unknown hyper-parameter(s) {unknown}; tunable ones are {known}.")
        return cls(**{k: list(v) for k, v in values.items()})

    def validate(self) -> None:
        """Raise a ValueError naming the hyper-parameter and the bad value."""
        checks = {
            "sigma": (float, lambda v: v > 0, "> 0"),
            "epochs": (int, lambda v: v >= 1, ">= 1"),
            "learning_rate": (float, lambda v: v > 0, "> 0"),
            "dropout": (float, lambda v: 0 <= v < 1, "in [0, 1)"),
            "projection_dim": (int, lambda v: v >= 1, ">= 1"),
            "batch_size": (int, lambda v: v >= 1, ">= 1"),
        }
        for name in [f.name for f in fields(self)]:
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or len(values) == 0:
                raise ValueError(
                    f"search space: {name} has no candidate values ({values!r}); give at least one, e.g. "
                    f"{getattr(SearchSpace(), name)[:2]}, or leave it out to use the default candidates."
                )
            if name not in checks:  # a switch: only True or False
                wrong = [value for value in values if not isinstance(value, bool)]
                if wrong:
                    raise ValueError(f"search space: {name}={wrong[0]!r} must be True or False.")
                continue
            kind, ok, rule = checks[name]
            for value in values:
                numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
                if not numeric or (kind is int and not float(value).is_integer()) or not ok(value):
                    kind_name = "an integer" if kind is int else "a number"
                    raise ValueError(f"search space: {name}={value!r} must be {kind_name} {rule}.")

    def grid(self) -> list[dict[str, Any]]:
        """Every combination, in a fixed order (the fields' order, each list as given, duplicates removed)."""
        names = [f.name for f in fields(self)]
        values = [list(dict.fromkeys(getattr(self, name))) for name in names]
        return [dict(zip(names, point)) for point in itertools.product(*values)]


def _check_trials(trials: Any) -> None:
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ValueError(f"trials={trials!r} must be an integer >= 1 (the number of heads to train and compare).")


def sample_trials(
    space: SearchSpace, trials: int, seed: int, first: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """``trials`` distinct points of the grid: ``first`` (if given and a grid point), then points drawn without
    replacement by a seeded generator. Fewer when the grid is smaller."""
    _check_trials(trials)
    space.validate()
    grid = space.grid()
    chosen: list[dict[str, Any]] = [dict(first)] if first is not None and first in grid else []
    rest = [point for point in grid if point not in chosen]
    order = np.random.default_rng(seed).permutation(len(rest))
    chosen += [rest[i] for i in order[: max(0, trials - len(chosen))]]
    if len(chosen) < trials:
        logger.warning(f"The search space has only {len(grid)} points; running {len(chosen)} trials, not {trials}.")
    return chosen[:trials]


def preset_defaults(config: LLMEmbedConfig, training: HeadTrainingArguments) -> dict[str, Any]:
    """The point of the search space a plain `train_head` run would use (trial 0)."""
    return {f.name: getattr(config if f.name in CONFIG_KEYS else training, f.name) for f in fields(SearchSpace)}


def usable_space(config: LLMEmbedConfig, space: SearchSpace) -> SearchSpace:
    """``space`` without the fusions that leave the MLP nothing to learn from for this head.

    A head whose only view is one encoder's vector (the ``small`` and ``fast`` presets on single texts) gives
    ``X @ X.T`` a single value, the vector's projected norm; without ``concat_encoder_views`` that number is all the
    MLP sees, so such trials only waste time (GoEmotions: validation macro-F1 0.17 against 0.53).
    """
    if not config.single_encoder_view or False not in space.concat_encoder_views:
        return space
    if space.concat_encoder_views == [False]:
        raise ValueError("search space: concat_encoder_views=[False] leaves this head's MLP one number (its only view "
                         "is one encoder's vector, so X @ X.T is its norm); allow True or add backbones.")
    logger.info("The head has a single encoder view: searching concat_encoder_views=True only (without its vector the "
                "MLP would see one number).")
    return dataclasses.replace(space, concat_encoder_views=[True])


def plan_trials(config: LLMEmbedConfig, space: SearchSpace, trials: int, seed: int) -> list[dict[str, Any]]:
    """The trials `tune_head` runs for a head with ``config``: its current defaults first, then seeded draws."""
    return sample_trials(space, trials, seed, first=preset_defaults(config, HeadTrainingArguments()))


@dataclass
class TuningReport:
    """Every trial with its validation scores, and the best values (written as JSON and markdown)."""

    dataset: str
    preset: str
    metric: str
    seed: int
    num_train: int
    num_validation: int
    validation: str
    search_space: dict[str, list[Any]]
    trials: list[dict[str, Any]]
    best: dict[str, Any]
    problem_type: str = "single_label_classification"
    timings: dict[str, float] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    #: The `llmembed train` command line that trains the best trial's head on the same data.
    train_command: str = ""

    def to_markdown(self) -> str:
        keys = [f.name for f in fields(SearchSpace)]
        scores = [*TUNING_METRICS[self.problem_type], *(["ece"] if "ece" in self.best else [])]
        notes = {
            "single_label_classification": " ECE: expected calibration error of the head's scores (10 bins) before "
                                           "`llmembed train` fits its temperature.",
            "multi_label_classification": " The F1 scores are at per-label thresholds tuned on the validation texts "
                                          "(`llmembed train` tunes them there and on out-of-fold scores of the "
                                          "training rows).",
            "regression": "",
        }
        lines = [
            f"# Head tuning: {self.dataset} ({self.preset} preset)",
            "",
            f"{len(self.trials)} trials, seed {self.seed}; {self.num_train} training texts, scored on "
            f"{self.num_validation} validation texts ({self.validation}); chosen by validation {self.metric}. "
            "Trial 0 is the preset's defaults when they lie in the search space." + notes[self.problem_type],
            "",
            "| trial | " + " | ".join(keys) + " | best epoch | " + " | ".join(f"val {m}" for m in scores)
            + " | train s |",
            "|" + "---|" * (len(keys) + len(scores) + 3),
        ]
        for trial in self.trials:
            mark = " **best**" if trial["trial"] == self.best["trial"] else ""
            values = " | ".join(str(trial["params"][k]) for k in keys)
            measured = " | ".join(f"{trial.get(m, float('nan')):.4f}" for m in scores)
            lines.append(f"| {trial['trial']}{mark} | {values} | {trial['best_epoch']} | {measured} | "
                         f"{trial['train_s']:.1f} |")
        if self.train_command:
            lines += ["", "Train the best head:", "", "```bash", self.train_command, "```"]
        return "\n".join(lines) + "\n"

    def save(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tuning_results.json").write_text(json.dumps(asdict(self), indent=2))
        (folder / "tuning_results.md").write_text(self.to_markdown())


def _best_epoch(log_history: list[dict[str, Any]], metric: str = "accuracy") -> float | None:
    """The epoch whose evaluation had the best ``metric`` (the checkpoint `fit_head` keeps; first one on ties)."""
    evaluations = [entry for entry in log_history if f"eval_{metric}" in entry]
    if not evaluations:
        return None
    return max(evaluations, key=lambda entry: entry[f"eval_{metric}"])["epoch"]


def run_trial(
    base_config: LLMEmbedConfig,
    params: dict[str, Any],
    train_features: Dataset,
    validation_features: Dataset,
    validation_labels: list,
    seed: int,
    work_dir: str | os.PathLike,
    weight_decay: float = 0.0,
) -> tuple[LLMEmbedForSequenceClassification, dict[str, Any]]:
    """Train one fresh head with ``params`` on the cached features; returns it and its validation scores (those of
    `metrics.TRAINING_METRICS` for the config's problem type; single-label: also the ECE)."""
    config = copy.deepcopy(base_config)
    for key in CONFIG_KEYS:
        setattr(config, key, params[key])
    config.validate(require_hidden_size=True)
    set_seed(seed)  # the head's initial weights depend on it, before fit_head seeds the training itself
    model = LLMEmbedForSequenceClassification(config)
    training = HeadTrainingArguments(**{k: params[k] for k in TRAINING_KEYS}, weight_decay=weight_decay, seed=seed)
    started = time.perf_counter()
    trainer = fit_head(model, train_features, validation_features, work_dir, training)
    train_s = time.perf_counter() - started
    logits = predict_logits(model, validation_features)
    problem_type = problem_type_of(config)
    scores = TRAINING_METRICS[problem_type]((logits, np.asarray(validation_labels)))
    if problem_type == "single_label_classification":
        scores["ece"] = calibration_metrics(logits, validation_labels)["ece"]  # before any temperature is fitted
    best_epoch = _best_epoch(trainer.state.log_history, SELECTION_METRICS[problem_type])
    return model, {"params": dict(params), **scores, "best_epoch": best_epoch, "train_s": train_s}


def tune_head(
    data: DataArguments | str | os.PathLike | DatasetDict,
    output_dir: str | os.PathLike,
    preset: str | os.PathLike | LLMEmbedConfig = "small",
    trials: int = 20,
    search_space: SearchSpace | dict[str, list[Any]] | None = None,
    metric: str | None = None,
    seed: int = 42,
    weight_decay: float = 0.0,
    extraction: ExtractionConfig | None = None,
    model: LLMEmbedForSequenceClassification | None = None,
    **data_fields: Any,
) -> TuningReport:
    """Search the head's hyper-parameters on the validation split (else a part carved from the training split);
    never reads an evaluation split.

    ``data``: `DataArguments`, or a dataset source with any of its fields as keywords (``validation_fraction``
    defaults to `TUNING_VALIDATION_FRACTION` then). Extracts (or reuses cached) features of a seeded subset of
    ``max_train_samples`` training texts once, then trains ``trials`` heads (see the module docstring for the
    search) and writes ``tuning_results.json`` and ``tuning_results.md`` to ``output_dir``. ``preset``: a preset
    name or an `LLMEmbedConfig`; pass ``model`` (with its backbones) to tune over already loaded backbones. The best
    values go into ``HeadArguments(sigma=..., dropout=..., projection_dim=..., concat_encoder_views=...)`` and
    ``HeadTrainingArguments(epochs=..., learning_rate=..., batch_size=...)`` (`TuningReport.train_command` spells
    the `llmembed train` command line). ``metric``: the validation score to maximise, one of
    `metrics.TUNING_METRICS` of the labels' problem type (None: its first: accuracy, macro-F1, Spearman).
    """
    if metric is not None and metric not in METRICS:
        raise ValueError(f"metric={metric!r} is unknown; choose one of {METRICS}.")
    if data_fields.get("eval_split") is not None:
        raise ValueError(f"eval_split={data_fields['eval_split']!r}: tuning never reads an evaluation split (choosing "
                         "on it would overfit the test); drop it, and score the winner with `llmembed train`.")
    if not isinstance(data, DataArguments):
        data_fields.setdefault("validation_fraction", TUNING_VALIDATION_FRACTION)
    data = data_arguments(data, **{**data_fields, "eval_split": None})  # the test split is never read
    _check_trials(trials)
    space = search_space if isinstance(search_space, SearchSpace) else SearchSpace.from_dict(search_space or {})
    space.validate()
    preset_name = str(preset) if model is None and str(preset) in PRESETS else "custom"
    #: How `llmembed train --preset` names these backbones (a config object or a built model has no name).
    preset_option = str(preset) if model is None and isinstance(preset, (str, os.PathLike)) else "CONFIG_JSON"
    started = time.perf_counter()

    splits = load_classification_splits(data_for_model(data, model), seed=seed)
    train, validation, names, problem_type = splits.train, splits.validation, splits.names, splits.problem_type
    pairs = splits.text_pair_column is not None
    metric = metric or SELECTION_METRICS[problem_type]
    if metric not in TUNING_METRICS[problem_type]:
        raise ValueError(f"metric={metric!r} does not score {problem_type} labels; choose one of "
                         f"{TUNING_METRICS[problem_type]}.")
    if model is None:
        model = LLMEmbedForSequenceClassification.from_backbones(
            head_config(preset, None, names, problem_type, pairs=pairs))
    elif model.config.num_labels != len(names):
        raise ValueError(f"the model has {model.config.num_labels} labels but the data has {len(names)} classes.")
    else:
        check_model_matches(model.config, problem_type, pairs)
        model.config.problem_type = problem_type
    space = usable_space(model.config, space)
    planned = plan_trials(model.config, space, trials, seed)
    loaded = time.perf_counter()

    extraction = extraction or ExtractionConfig()
    train_features = split_features(model, train, extraction)
    validation_features = split_features(model, validation, extraction)
    extracted = time.perf_counter()

    base_config = model.config
    results: list[dict[str, Any]] = []
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for number, params in enumerate(planned):
        logger.warning(f"Trial {number + 1}/{len(planned)}: {params}")
        work_dir = tempfile.mkdtemp(dir=output_dir, prefix=".trial-")
        try:
            _, result = run_trial(base_config, params, train_features, validation_features, validation.labels,
                                  seed, work_dir, weight_decay)
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)  # checkpoints are only needed within the trial
        results.append({"trial": number, **result})
        logger.warning(f"Trial {number + 1}: validation " + ", ".join(
            f"{name} {result[name]:.4f}" for name in TUNING_METRICS[problem_type]))
    others = [name for name in TUNING_METRICS[problem_type] if name != metric]
    best = max(results, key=lambda r: (r[metric], *(r[name] for name in others), -r["trial"]))
    best_params = best["params"]
    winner = [
        dataclasses.replace(data, eval_split=DataArguments.eval_split),
        HeadArguments(**{k: best_params[k] for k in CONFIG_KEYS}),
        HeadTrainingArguments(**{k: best_params[k] for k in TRAINING_KEYS}, weight_decay=weight_decay, seed=seed),
        extraction,
    ]
    report = TuningReport(
        dataset=describe_source(data.dataset), preset=preset_name, metric=metric, seed=seed,
        problem_type=problem_type,
        train_command=command_line("llmembed train", *winner, output_dir="OUTPUT_DIR",
                                   preset=preset_option)
        if isinstance(data.dataset, str) else "",
        num_train=len(train.texts), num_validation=len(validation.texts),
        validation=splits.validation_name,
        search_space=asdict(space), trials=results, best=best, environment=environment(),
        timings={"load_backbones_s": loaded - started, "extract_s": extracted - loaded,
                 "search_s": time.perf_counter() - extracted, "total_s": time.perf_counter() - started},
    )
    report.save(output_dir)
    return report
