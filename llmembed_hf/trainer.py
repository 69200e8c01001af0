"""The fusion-head line: extract features once (cached), train the head with `Trainer`, evaluate, save a Hub folder."""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
import time
import warnings
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset, DatasetDict
from torch import nn
from transformers import EarlyStoppingCallback, Trainer, set_seed
from transformers.utils import logging

from .data import LabelledTexts, describe_source, load_classification_splits
from .features import ExtractionConfig, extract_features
from .lexical import fit_lexical_view, lexical_inputs, lexical_logits, select_rows
from .metrics import (
    COMPUTE_METRICS,
    SELECTION_METRICS,
    TRAINING_METRICS,
    calibration_metrics,
    compute_classification_metrics,
    compute_multi_label_metrics,
    confusion_matrix,
    fit_temperature,
    fit_thresholds,
    multi_label_scores,
    per_label_f1,
    problem_type_of,
    reliability_bins,
    sigmoid,
)
from .model_card import TrainingReport, environment, save_with_card
from .modeling.configuration_llmembed import DEFAULT_PAIR_ENCODING, PRESETS, LLMEmbedConfig
from .modeling.modeling_llmembed import (
    LLMEmbedForSequenceClassification,
    LLMEmbedFusionHead,
    blend_lexical,
    siamese_cosines,
)
from .training_args import (
    DataArguments,
    HeadArguments,
    HeadTrainingArguments,
    OutputArguments,
    data_arguments,
    output_arguments,
)

logger = logging.get_logger(__name__)


def fit_head(
    model: LLMEmbedForSequenceClassification,
    train_features: Dataset,
    eval_features: Dataset | None,
    output_dir: str | os.PathLike,
    args: HeadTrainingArguments | None = None,
    resume_from_checkpoint: bool | str | None = None,
) -> Trainer:
    """Train ``model``'s head with `Trainer` on ``pooled_features``/``labels`` datasets; keeps the best epoch.

    Evaluates every epoch on ``eval_features`` with `metrics.TRAINING_METRICS` of the config's problem type
    (accuracy and macro-F1; multi-label F1s at thresholds tuned on those rows, unless ``args.tune_thresholds`` is
    off; Pearson, Spearman and MSE) and reloads the checkpoint with the best `metrics.SELECTION_METRICS` score
    (accuracy, macro-F1, Spearman) at the end; ``output_dir`` holds the checkpoints, ``resume_from_checkpoint`` is
    `Trainer.train`'s. Returns the trainer (its ``state.log_history`` holds the curves).
    """
    args = args or HeadTrainingArguments()
    set_seed(args.seed)
    if model.config.standardize_features:
        for head in model.fusion_heads:
            head.set_feature_statistics(train_features[:]["pooled_features"])
    has_eval = eval_features is not None
    problem_type = problem_type_of(model.config)
    callbacks = []
    if has_eval and args.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=args.early_stopping_patience))
    trainer = Trainer(
        model=model,
        args=args.to_training_arguments(output_dir, has_eval=has_eval, metric=SELECTION_METRICS[problem_type]),
        train_dataset=train_features,
        eval_dataset=eval_features,
        compute_metrics=(TRAINING_METRICS if args.tune_thresholds else COMPUTE_METRICS)[problem_type],
        callbacks=callbacks,
    )
    with model.head_only_saves():
        trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return trainer


def split_features(model: LLMEmbedForSequenceClassification, split: LabelledTexts,
                   extraction: ExtractionConfig) -> Dataset:
    """The cached ``pooled_features`` of a split's texts (or text pairs), with its ``labels``."""
    return extract_features(model, split.texts, extra_columns={"labels": split.labels}, config=extraction,
                            text_pairs=split.pairs)


def predict_logits(model: LLMEmbedForSequenceClassification, features: Dataset, batch_size: int = 1024,
                   lexical: dict[str, torch.Tensor] | None = None) -> np.ndarray:
    """Logits of the head on a ``pooled_features`` dataset (with the rows' padded ``lexical`` inputs,
    `lexical.lexical_inputs`, for a head with a lexical view)."""
    model.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(features), batch_size):
            batch = features[start : start + batch_size]["pooled_features"].to(model.device)
            extra = {key: rows[start : start + batch_size] for key, rows in (lexical or {}).items()}
            outputs.append(model(pooled_features=batch, **extra).logits.float().cpu().numpy())
    return np.concatenate(outputs)


def calibrate(model: LLMEmbedForSequenceClassification, scored: dict[str, tuple[np.ndarray, list[int]]]) -> dict:
    """Fit the temperature on the raw ``scored["validation"]`` logits, store it in the config (the pipeline's scores
    become calibrated probabilities; arg-max unchanged), and measure ECE/NLL before and after on every scored split,
    with the reliability bins of the last one (the evaluation split when there is one) for the card's diagram."""
    logits, labels = scored["validation"]
    temperature = fit_temperature(logits, labels)
    model.config.calibration_temperature = temperature
    splits = {name: {f"{key}_{when}": value for when, t in (("before", 1.0), ("after", temperature))
                     for key, value in calibration_metrics(split_logits, split_labels, t).items()}
              for name, (split_logits, split_labels) in scored.items()}
    shown, (last_logits, last_labels) = list(scored.items())[-1]
    bins = {when: reliability_bins(last_logits, last_labels, t) for when, t in (("before", 1.0), ("after", temperature))}
    logger.info(f"Calibration: temperature {temperature:.3f}; " + ", ".join(
        f"{name} ECE {m['ece_before']:.4f} -> {m['ece_after']:.4f}" for name, m in splits.items()))
    return {"temperature": temperature, "splits": splits, "reliability_split": shown, "reliability": bins}


def threshold_fold_rows(num_rows: int, folds: int, seed: int) -> list[np.ndarray]:
    """The training rows each threshold fold leaves out (`train_fold_heads`): a seeded split into ``folds`` parts."""
    return np.array_split(np.random.default_rng(seed).permutation(num_rows), folds)


def train_fold_heads(model: LLMEmbedForSequenceClassification, train_features: Dataset,
                     validation_features: Dataset, args: HeadTrainingArguments
                     ) -> tuple[list[LLMEmbedFusionHead], np.ndarray]:
    """Heads that each never saw one fold of the training rows, and the raw logits of every training row from the
    head that left it out: the rows are split into ``args.threshold_folds`` seeded folds, and per fold a fresh head of
    ``model``'s config is trained by `fit_head` on the other folds (its epoch chosen on the validation split, as for
    ``model``) and scores the fold. Thresholds tuned on these scores too see several times the positive rows of a
    rare label that the validation split has; the heads themselves, averaged with ``model``'s, are an ensemble at no
    further training cost (`LLMEmbedForSequenceClassification.add_fold_heads`)."""
    config = copy.deepcopy(model.config)
    config.calibration_temperature, config.decision_thresholds, config.similarity_blend = 1.0, None, None
    config.num_fold_heads = 0
    folds = threshold_fold_rows(len(train_features), args.threshold_folds, args.seed)
    logits = np.zeros((len(train_features), config.num_labels), dtype=np.float32)
    heads = []
    with tempfile.TemporaryDirectory(prefix="llmembed-threshold-folds-") as work:
        for index, held_out in enumerate(folds):
            logger.info(f"Threshold fold {index + 1}/{len(folds)}: a head on {len(train_features) - len(held_out)} "
                        f"training rows scores the other {len(held_out)}.")
            fold_args = dataclasses.replace(args, seed=args.seed + 1 + index)
            set_seed(fold_args.seed)  # the fold head's initial weights
            fold_model = LLMEmbedForSequenceClassification(config)
            others = train_features.select(np.setdiff1d(np.arange(len(train_features)), held_out))
            fit_head(fold_model, others, validation_features, Path(work) / f"fold-{index}", fold_args)
            logits[held_out] = predict_logits(fold_model, train_features.select(held_out))
            heads.append(fold_model.head)
    return heads, logits


def fold_heads_help(model: LLMEmbedForSequenceClassification, heads: list[LLMEmbedFusionHead],
                    validation_features: Dataset, validation_labels: list) -> dict[str, float]:
    """Validation loss (mean binary cross-entropy) of ``model``'s head alone and of its mean with ``heads``. Fold
    heads each see a fold fewer training rows than the head: on a large training set their mean may beat it, on a
    small one it drags it down; this decides which. The loss, not macro-F1, because it needs no thresholds (which
    would be tuned on the rows they are scored on) and rare labels do not make it jump."""
    labels = torch.as_tensor(np.asarray(validation_labels), dtype=torch.float32)
    alone = torch.from_numpy(predict_logits(model, validation_features))
    own = model.fold_heads
    model.fold_heads = nn.ModuleList(heads)  # scored as the model would score with them, then put back
    try:
        together = torch.from_numpy(predict_logits(model, validation_features))
    finally:
        model.fold_heads = own
    return {name: float(F.binary_cross_entropy_with_logits(logits, labels))
            for name, logits in (("head_alone", alone), ("with_fold_heads", together))}


def threshold_folds(model: LLMEmbedForSequenceClassification, train_features: Dataset, validation_features: Dataset,
                    splits: Any, training: HeadTrainingArguments) -> tuple[tuple[np.ndarray, list] | None, int,
                                                                           dict[str, float] | None]:
    """A multi-label head's threshold folds (`train_fold_heads`), where the training rows allow 2 a fold: their
    heads join ``model`` (``training.keep_fold_heads``) if `fold_heads_help` says so. Returns the out-of-fold logits
    with their labels (None without folds), the number of folds, and `fold_heads_help`'s scores (None if not asked)."""
    folds = training.threshold_folds if len(train_features) >= 2 * training.threshold_folds else 0
    if training.threshold_folds and not folds:
        logger.warning(f"{len(train_features)} training rows are too few for {training.threshold_folds} "
                       "threshold folds (2 rows a fold at least): thresholds from the validation split alone.")
    if not folds:
        return None, 0, None
    heads, logits = train_fold_heads(model, train_features, validation_features, training)
    out_of_fold = (logits, splits.train.labels)
    if not training.keep_fold_heads:
        return out_of_fold, folds, None
    scores = fold_heads_help(model, heads, validation_features, splits.validation.labels)
    if scores["with_fold_heads"] <= scores["head_alone"]:
        model.add_fold_heads(heads)
    logger.info(f"Fold heads {'kept' if model.fold_heads else 'dropped'}: validation loss "
                f"{scores['head_alone']:.5f} for the head alone, {scores['with_fold_heads']:.5f} with them.")
    return out_of_fold, folds, scores


#: The lexical view's weights `choose_lexical_view` tries (0: the head alone).
LEXICAL_BLEND_WEIGHTS = tuple(float(w) for w in np.round(np.arange(0.0, 0.91, 0.1), 1))


def choose_lexical_view(model: LLMEmbedForSequenceClassification, train_inputs: dict[str, torch.Tensor],
                        train_labels: list, inputs: dict[str, dict[str, torch.Tensor]],
                        scored: dict[str, tuple[np.ndarray, list]], out_of_fold: tuple[np.ndarray, list] | None,
                        folds: int, training: HeadTrainingArguments) -> tuple[dict, tuple[np.ndarray, list] | None]:
    """Fit a lexical view (`lexical.fit_lexical_view`) on the training texts' lexical ``train_inputs``, and with
    threshold folds one per fold (fitted without it, scoring it: out-of-fold lexical scores, the rows
    `train_fold_heads` left out), and blend it into ``model`` (`set_lexical_view`) with the `LEXICAL_BLEND_WEIGHTS`
    weight that scores best on the validation rows: a multi-label head's macro-F1 on the rows thresholds are tuned
    on (validation and out-of-fold), at thresholds tuned there as `tune_thresholds` does; a single-label head's
    accuracy (before the temperature, which is fitted on the blend), a tie going to the better log-loss. Weight 0
    keeps the head alone, and the smallest weight wins a remaining tie. ``scored`` holds the head's raw logits per
    split (``inputs`` their texts' lexical inputs).
    Returns the report, with the scores of every scored split without and with the view (a multi-label head's each
    at its weight's thresholds), and the out-of-fold logits, blended if the view is kept."""
    started = time.perf_counter()
    multi_label = model.config.problem_type == "multi_label_classification"
    criterion = "macro_f1" if multi_label else "accuracy"
    train_labels = np.asarray(train_labels)
    fit = partial(fit_lexical_view, c=training.lexical_c, num_labels=model.config.num_labels)
    views = [fit(train_inputs, train_labels)]
    if out_of_fold is not None:
        fold_rows = threshold_fold_rows(len(train_labels), folds, training.seed)
        for index, rows in enumerate(fold_rows):
            logger.info(f"Lexical view of threshold fold {index + 1}/{len(fold_rows)}.")
            others = np.setdiff1d(np.arange(len(train_labels)), rows)
            views.append(fit(select_rows(train_inputs, others), train_labels[others]))
    if any(view is None for view in views):
        return {"kept": False, "reason": "no word n-gram occurs in two training texts"}, out_of_fold
    head = {name: logits for name, (logits, _) in scored.items()}
    lexical = {name: lexical_logits(views[0], inputs[name]) for name in scored}
    gold = {name: np.asarray(labels) for name, (_, labels) in scored.items()}
    fitted = ["validation"]
    if out_of_fold is not None:
        head["out_of_fold"], gold["out_of_fold"] = out_of_fold[0], np.asarray(out_of_fold[1])
        lexical["out_of_fold"] = np.zeros_like(out_of_fold[0])
        for view, rows in zip(views[1:], fold_rows):
            lexical["out_of_fold"][rows] = lexical_logits(view, select_rows(train_inputs, rows))
        fitted.append("out_of_fold")

    def blended(name: str, weight: float) -> np.ndarray:
        return blend_lexical(torch.from_numpy(head[name]), torch.from_numpy(lexical[name]), weight,
                             multi_label=multi_label).numpy()

    def split_scores(logits: np.ndarray, labels: np.ndarray, thresholds: np.ndarray | None) -> dict[str, float]:
        if multi_label:
            return multi_label_scores(sigmoid(logits) >= thresholds, labels)
        return compute_classification_metrics((logits, labels))

    def tuned(weight: float) -> tuple[float, np.ndarray | None, float]:
        """The criterion at ``weight``, the thresholds it was measured at, and a tie-break: a single-label blend's
        negative log-loss (accuracy moves by whole rows, so several weights often share the best)."""
        logits = np.concatenate([blended(name, weight) for name in fitted])
        labels = np.concatenate([gold[name] for name in fitted])
        thresholds = np.asarray(fit_thresholds(sigmoid(logits), labels)) if multi_label else None
        tie_break = 0.0 if multi_label else float(
            torch.log_softmax(torch.from_numpy(logits).double(), -1)[np.arange(len(labels)), labels].mean())
        return split_scores(logits, labels, thresholds)[criterion], thresholds, tie_break

    candidates = {weight: tuned(weight) for weight in LEXICAL_BLEND_WEIGHTS}
    # The best criterion, then the best tie-break, then the smallest weight.
    weight = max(candidates, key=lambda w: (candidates[w][0], candidates[w][2]))
    report = {
        "kept": weight > 0, "weight": weight, "vocab_size": len(views[0].idf), "c": training.lexical_c,
        "criterion": criterion, "fitted_rows": int(sum(len(gold[name]) for name in fitted)),
        "candidates": {str(w): score for w, (score, *_) in candidates.items()},
        "splits": {name: {f"{key}_{when}": value for when, w in (("without", 0.0), ("with", weight))
                          for key, value in split_scores(blended(name, w), gold[name], candidates[w][1]).items()}
                   for name in scored},
    }
    if weight > 0:
        model.set_lexical_view(views[0], weight)
        if out_of_fold is not None:
            out_of_fold = (blended("out_of_fold", weight), out_of_fold[1])
    report["fit_s"] = time.perf_counter() - started
    logger.info(f"Lexical view {'kept' if weight else 'dropped'}: weight {weight}; {criterion} on the "
                f"{report['fitted_rows']} rows that choose it {candidates[0.0][0]:.4f} without it, "
                f"{candidates[weight][0]:.4f} with it.")
    return report, out_of_fold


def tune_thresholds(model: LLMEmbedForSequenceClassification, scored: dict[str, tuple[np.ndarray, list]],
                    out_of_fold: tuple[np.ndarray, list] | None = None) -> dict:
    """Tune each label's decision threshold on the raw ``scored["validation"]`` logits, and the training rows'
    ``out_of_fold`` ones (`train_fold_heads`) if given (`fit_thresholds`: its F1 maximised), store them in the
    config (the pipeline's scores then reach 0.5 exactly at them), and measure the multi-label scores at 0.5 and at
    the tuned thresholds on every scored split, with each label's F1 on the last one (the evaluation split when there
    is one) for the card's plot."""
    logits, labels = scored["validation"]
    labels = np.asarray(labels)
    if out_of_fold is not None:
        logits, labels = np.concatenate([logits, out_of_fold[0]]), np.concatenate([labels, np.asarray(out_of_fold[1])])
    thresholds = fit_thresholds(sigmoid(logits), labels)
    model.config.decision_thresholds = thresholds
    model.config.validate()
    splits = {name: {f"{key}_{when}": value for when, cut in (("before", None), ("after", thresholds))
                     for key, value in compute_multi_label_metrics((split_logits, split_labels), cut).items()}
              for name, (split_logits, split_labels) in scored.items()}
    shown, (last_logits, last_labels) = list(scored.items())[-1]
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    probabilities = sigmoid(last_logits)
    per_label = {when: [None if np.isnan(f1) else float(f1) for f1 in per_label_f1(probabilities >= cut, last_labels)]
                 for when, cut in (("before", 0.5), ("after", np.asarray(thresholds)))}
    logger.info("Decision thresholds: " + ", ".join(
        f"{name} macro-F1 {m['macro_f1_before']:.4f} -> {m['macro_f1_after']:.4f}" for name, m in splits.items()))
    return {"thresholds": dict(zip(names, thresholds)), "fitted_rows": len(labels), "splits": splits,
            "per_label_split": shown,
            "per_label_f1": per_label, "support": np.asarray(last_labels).sum(0).astype(int).tolist()}


#: `blend_similarity` leaves out a siamese cosine whose standard deviation over the validation pairs is below this
#: (a real sentence encoder's cosines spread over the pairs: they rank STS-B with Spearman 0.82-0.88).
MIN_COSINE_SPREAD = 1e-3


def blend_similarity(model: LLMEmbedForSequenceClassification, scored: dict[str, tuple[np.ndarray, list]],
                     features: dict[str, Dataset]) -> dict:
    """Fit ``config.similarity_blend`` by least squares on the validation split: the head's raw score and each
    siamese backbone's cosine of the two sides (`siamese_cosines`) against the gold scores. A plain cosine often
    ranks similarity better than a head trained on a few thousand pairs; the blend keeps both. Measures the
    regression scores of the head alone and of the blend on every scored split.

    A cosine that hardly varies over the validation pairs (spread below `MIN_COSINE_SPREAD`) ranks nothing, and least
    squares would pair it with a huge weight and an opposite bias (about 1/spread) that turn float noise in the
    features into visible noise in the served score: it gets weight 0."""
    logits, labels = scored["validation"]
    cosines = siamese_cosines(model.config, features["validation"].with_format("torch")[:]["pooled_features"]).numpy()
    informative = cosines.std(axis=0) > MIN_COSINE_SPREAD
    columns = np.column_stack([logits[:, 0], cosines[:, informative], np.ones(len(labels))])
    fitted, *_ = np.linalg.lstsq(columns, np.asarray(labels, dtype=float), rcond=None)
    cosine_weights = np.zeros(cosines.shape[1])
    cosine_weights[informative] = fitted[1:-1]
    model.config.similarity_blend = [float(fitted[0]), *(float(w) for w in cosine_weights), float(fitted[-1])]
    model.config.validate()
    splits = {name: {f"{key}_{when}": value for when, predictions in (("before", split_logits),
                                                                      ("after", predict_logits(model, features[name])))
                     for key, value in COMPUTE_METRICS["regression"]((predictions, split_labels)).items()}
              for name, (split_logits, split_labels) in scored.items()}
    names = ["head", *(f"{spec.name} cosine" for spec in model.config.siamese_specs), "bias"]
    logger.info("Similarity blend: " + ", ".join(
        f"{name} Spearman {m['spearman_before']:.4f} -> {m['spearman_after']:.4f}" for name, m in splits.items()))
    return {"weights": dict(zip(names, model.config.similarity_blend)), "splits": splits}


#: At most this many (gold, predicted) points of a regression head go into the report for the card's scatter plot.
SCATTER_POINTS = 2000


def scatter_points(predictions: np.ndarray, gold: list[float], split: str, seed: int) -> dict[str, Any]:
    """Gold and predicted scores of a split (a seeded sample of `SCATTER_POINTS` of them if more) for the card."""
    rows = np.arange(len(gold))
    if len(rows) > SCATTER_POINTS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, SCATTER_POINTS, replace=False))
    return {"split": split, "num_rows": len(gold), "gold": [float(gold[i]) for i in rows],
            "predicted": [float(predictions[i]) for i in rows]}


def data_for_model(data: DataArguments, model: LLMEmbedForSequenceClassification | None) -> DataArguments:
    """``data``, reading its labels as the given model's problem type when the model has one (``num_labels=1``:
    regression) and ``data.problem_type`` names none."""
    if model is None or data.problem_type is not None:
        return data
    if model.config.problem_type is None and model.config.num_labels != 1:
        return data
    return dataclasses.replace(data, problem_type=problem_type_of(model.config))


def head_config(preset: str | os.PathLike | LLMEmbedConfig, head: HeadArguments | None, names: list[str],
                problem_type: str = "single_label_classification", pairs: bool = False) -> LLMEmbedConfig:
    """The config of a head for labels ``names`` of ``problem_type`` (regression: one output) with ``head``'s
    overrides: ``preset`` is a preset's name, a config object, or a ``config.json`` (or the folder holding one)
    written by ``LLMEmbedConfig.save_pretrained``; what a trained head's config fitted to its data (temperature,
    thresholds) is not carried over.

    ``pairs``: the data are text pairs; the head then gets a ``pair_encoding`` (the override's, else the preset's,
    else `DEFAULT_PAIR_ENCODING`)."""
    overrides = head.overrides() if head is not None else {}
    id2label = dict(enumerate(names))
    labels = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}, "problem_type": problem_type,
              "calibration_temperature": 1.0, "decision_thresholds": None, "similarity_blend": None,
              "num_fold_heads": 0, "lexical_vocab_size": 0, "lexical_blend": None}
    if not isinstance(preset, LLMEmbedConfig) and str(preset) not in PRESETS and Path(preset).exists():
        preset = LLMEmbedConfig.from_pretrained(preset)
    if isinstance(preset, LLMEmbedConfig):
        config = LLMEmbedConfig.from_dict({**preset.to_dict(), **overrides, **labels})
    else:
        config = LLMEmbedConfig.from_preset(str(preset), **overrides, **labels)
    if pairs and config.pair_encoding is None:
        config.pair_encoding = dict(DEFAULT_PAIR_ENCODING)
    check_pairs_match(config, pairs)
    config.validate()
    return config


def check_pairs_match(config: LLMEmbedConfig, pairs: bool) -> None:
    """A ValueError when a head of text pairs meets single texts, or the reverse."""
    if pairs and config.pair_encoding is None:
        raise ValueError("the data are text pairs but the model classifies single texts (its config has no "
                         "pair_encoding); build it with LLMEmbedConfig(pair_encoding='default', ...), or pass "
                         "--text-pair-column none to use the first texts only.")
    if not pairs and config.pair_encoding is not None:
        raise ValueError(f"the head classifies text pairs (pair_encoding={config.pair_encoding}) but the data have no "
                         "pair column; name it with --text-pair-column (text_pair_column=), or drop pair_encoding.")


def check_model_matches(config: LLMEmbedConfig, problem_type: str, pairs: bool) -> None:
    """A ValueError when a given model's problem type (None: any) or its pair setting differs from the data's."""
    if config.problem_type not in (None, problem_type):
        raise ValueError(f"the model's problem_type {config.problem_type!r} differs from the data's "
                         f"{problem_type!r}; build the model with problem_type={problem_type!r}.")
    check_pairs_match(config, pairs)


def train_head(
    data: DataArguments | str | os.PathLike | DatasetDict,
    output_dir: str | os.PathLike | OutputArguments,
    preset: str | os.PathLike | LLMEmbedConfig = "small",
    training: HeadTrainingArguments | None = None,
    extraction: ExtractionConfig | None = None,
    model: LLMEmbedForSequenceClassification | None = None,
    push_to_hub: str | None = None,
    head: HeadArguments | None = None,
    **data_fields: Any,
) -> tuple[LLMEmbedForSequenceClassification, TrainingReport]:
    """Extract (cached), train the head with `Trainer`, evaluate, and write a ready Hub-style folder.

    ``data``: `DataArguments`, or a dataset source with any of its fields as keywords (``text_column=...``).
    ``preset``: a preset name, an `LLMEmbedConfig` or its saved ``config.json`` (the labels are set from the
    data); ``head`` overrides its
    head hyper-parameters; ``model``: a built model with its backbones, used instead. The checkpoint is chosen on
    the validation split, never on the evaluation split, which is only scored at the end. ``output_dir`` (a path
    or `OutputArguments`: overwrite, resume, keep_checkpoints) receives config.json, model.safetensors (head only),
    the composite tokenizer, the remote-code files, a model card and ``training_report.json``, replaced whole at
    the end; pass ``push_to_hub="org/name"`` to upload that folder.
    """
    if "sigma" in data_fields:  # the one head setting the first API took as a keyword
        warnings.warn("train_head(sigma=...) is deprecated; pass head=HeadArguments(sigma=...).", FutureWarning,
                      stacklevel=2)
        head = HeadArguments(**{**asdict(head or HeadArguments()), "sigma": data_fields.pop("sigma")})
    data = data_arguments(data, **data_fields)
    output = output_arguments(output_dir)
    output.check()
    training = training or HeadTrainingArguments()
    extraction = extraction or ExtractionConfig()
    started = time.perf_counter()
    data = data_for_model(data, model)
    splits = load_classification_splits(data, seed=training.seed)
    names, problem_type = splits.names, splits.problem_type
    pairs = splits.text_pair_column is not None
    multi_label = problem_type == "multi_label_classification"
    lexical_applies = not pairs and (problem_type == "single_label_classification"
                                     or multi_label and training.tune_thresholds)
    if training.lexical_view and not lexical_applies:
        raise ValueError(f"lexical_view serves classifiers of single texts (multi-label ones with tuned thresholds); "
                         f"these data are {problem_type}{' text pairs' if pairs else ''} (tune_thresholds="
                         f"{training.tune_thresholds}). Drop --lexical-view.")
    # Off by default for single-label heads: it helps topics, is mixed on intents, untested on sentiment (RESULTS.md).
    fit_lexical = lexical_applies and multi_label if training.lexical_view is None else training.lexical_view

    if model is None:
        config = head_config(preset, head, names, problem_type, pairs=pairs)
        set_seed(training.seed)  # the head's initial weights too, not only the training order, follow the seed
        model = LLMEmbedForSequenceClassification.from_backbones(config)
    elif [model.config.id2label[i] for i in range(model.config.num_labels)] != names:
        raise ValueError(
            f"the model's labels {model.config.id2label} differ from the data's classes {dict(enumerate(names))}; "
            "build the model with id2label matching the data."
        )
    else:
        check_model_matches(model.config, problem_type, pairs)
    if model.fold_heads:
        raise ValueError(f"the model already averages {len(model.fold_heads)} fold heads with its head; train_head "
                         "trains one head (and, for multi-label data, its fold heads): pass a model built from a "
                         "config with num_fold_heads=0, e.g. head_config(model.config, ...).")
    model.config.problem_type = problem_type
    loaded = time.perf_counter()

    train_features = split_features(model, splits.train, extraction)
    validation_features = split_features(model, splits.validation, extraction)
    evaluation = splits.evaluation
    eval_features = split_features(model, evaluation, extraction) if evaluation is not None else None
    extracted = time.perf_counter()

    trainer = fit_head(model, train_features, validation_features, output.checkpoint_dir, training,
                       resume_from_checkpoint=output.resume_from_checkpoint())
    trained = time.perf_counter()
    config = model.config
    report = TrainingReport(
        dataset=describe_source(data.dataset), preset=str(preset) if str(preset) in PRESETS else "custom",
        problem_type=problem_type,
        text_column=data.text_column, text_pair_column=splits.text_pair_column, label_column=splits.label_column,
        train_split=data.train_split,
        eval_split=data.eval_split, validation=splits.validation_name, num_train=len(splits.train.texts),
        num_validation=len(splits.validation.texts), num_eval=len(evaluation.texts) if evaluation else 0,
        hyperparameters={**asdict(training), "sigma": config.sigma, "projection_dim": config.projection_dim,
                         "dropout": config.dropout, "mlp_hidden_sizes": config.mlp_hidden_sizes,
                         "concat_encoder_views": config.concat_encoder_views, "feature_dtype": extraction.dtype,
                         **({"pair_encoding": config.pair_encoding} if config.pair_encoding else {})},
        log_history=list(trainer.state.log_history),  # before the final evaluate() appends to it
        validation_metrics={k: v for k, v in trainer.evaluate().items() if k.startswith("eval_")},
        environment=environment(),
    )
    # Raw logits from here on, until `calibrate`, `tune_thresholds` or `blend_similarity` fits what inference applies.
    model.config.calibration_temperature, model.config.decision_thresholds = 1.0, None
    model.config.similarity_blend = None
    model.set_lexical_view(None, None)
    tuning_started = time.perf_counter()
    out_of_fold, folds, fold_heads_validation = (
        threshold_folds(model, train_features, validation_features, splits, training)
        if problem_type == "multi_label_classification" and training.tune_thresholds else (None, 0, None))
    features, gold = {"validation": validation_features}, {"validation": splits.validation.labels}
    texts = {"validation": splits.validation.texts}
    if eval_features is not None:
        features[data.eval_split], gold[data.eval_split] = eval_features, evaluation.labels
        texts[data.eval_split] = evaluation.texts
    scored = {name: (predict_logits(model, split), gold[name]) for name, split in features.items()}
    lexical: dict[str, dict[str, torch.Tensor]] = {}
    if fit_lexical:  # each text's n-grams hashed once, for every fit and score below
        lexical = {name: lexical_inputs(texts[name]) for name in scored}
        report.lexical_view, out_of_fold = choose_lexical_view(
            model, lexical_inputs(splits.train.texts), splits.train.labels, lexical, scored, out_of_fold, folds,
            training)
        if model.lexical_view is None:
            lexical = {}
        else:
            scored = {name: (predict_logits(model, features[name], lexical=lexical[name]), gold[name])
                      for name in scored}
    if problem_type == "single_label_classification" and training.calibrate:  # argmax unchanged: scored after
        report.calibration = calibrate(model, scored)
    if problem_type == "multi_label_classification" and training.tune_thresholds:
        report.thresholds = {**tune_thresholds(model, scored, out_of_fold), "folds": folds,
                             "fold_heads": model.config.num_fold_heads,
                             "fold_heads_validation_loss": fold_heads_validation,
                             "tuning_s": time.perf_counter() - tuning_started}
    if problem_type == "regression" and model.config.siamese_specs and training.blend_similarity:
        report.similarity_blend = blend_similarity(model, scored, features)
    # The last split (the evaluation split when there is one) scored as the pipeline scores it: with the
    # temperature, the thresholds or the blend.
    shown = list(features)[-1]
    served = predict_logits(model, features[shown], lexical=lexical.get(shown))
    if eval_features is not None:
        report.eval_metrics = COMPUTE_METRICS[problem_type]((served, np.asarray(evaluation.labels)))
        if problem_type == "single_label_classification":
            report.confusion_matrix = confusion_matrix(evaluation.labels, served.argmax(-1), len(names))
    if problem_type == "regression":
        report.scatter = scatter_points(served[:, 0], gold[shown], shown, training.seed)
    report.timings = {"load_backbones_s": loaded - started, "extract_s": extracted - loaded,
                      "train_s": trained - extracted, "total_s": time.perf_counter() - started}
    folder = output.publish(lambda staging: save_with_card(model, staging, report, Path(output.output_dir).name))
    if push_to_hub:
        model.push_to_hub(push_to_hub)
    logger.info(f"Saved the head, tokenizer, code, card and report in {folder}.")
    return model, report


__all__ = ["blend_similarity", "calibrate", "check_model_matches", "check_pairs_match", "choose_lexical_view",
           "fit_head", "fold_heads_help", "head_config", "predict_logits", "split_features", "threshold_fold_rows",
           "threshold_folds", "train_fold_heads", "train_head", "tune_thresholds"]
