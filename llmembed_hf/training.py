"""Train an LLMEmbed head with `Trainer` on cached features, evaluated with `evaluate` metrics that load offline."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from transformers import EarlyStoppingCallback, Trainer, TrainingArguments, set_seed
from transformers.utils import logging

from .data import LabelledTexts, load_classification_splits
from .features import ExtractionConfig, extract_features
from .modeling.configuration_llmembed import LLMEmbedConfig
from .modeling.modeling_llmembed import LLMEmbedForSequenceClassification

logger = logging.get_logger(__name__)

METRICS_DIR = Path(__file__).parent / "metrics"


def load_metric(name: str = "classification"):
    """An `evaluate` metric module shipped with the package (accuracy + macro-F1): no Hub access needed."""
    import evaluate

    return evaluate.load(str(METRICS_DIR / name))


def compute_classification_metrics(eval_pred) -> dict[str, float]:
    """`Trainer` ``compute_metrics``: accuracy and macro-F1 of the arg-max predictions."""
    logits, labels = eval_pred
    predictions = np.asarray(logits).argmax(axis=-1)
    return load_metric().compute(predictions=predictions, references=labels)


@dataclass
class HeadTrainingArguments:
    """Hyper-parameters of head training (the head trains in seconds on cached features). The defaults won one
    seeded search on sst2, massive_en and r8 validation data (`benchmarks/bench_head_defaults.py`)."""

    epochs: int = 10
    learning_rate: float = 1e-3
    batch_size: int = 128
    weight_decay: float = 0.0
    seed: int = 42
    early_stopping_patience: int | None = None


def epoch_training_arguments(
    output_dir: str | os.PathLike,
    *,
    epochs: int,
    learning_rate: float,
    weight_decay: float,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    has_eval: bool,
    **overrides: Any,
) -> TrainingArguments:
    """`TrainingArguments` shared by head training and fine-tuning: evaluate and checkpoint every epoch, keep the
    one with the best validation accuracy, seeded data order, CPU unless a GPU is there, no external loggers."""
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=eval_batch_size,
        eval_strategy="epoch" if has_eval else "no",
        save_strategy="epoch" if has_eval else "no",
        logging_strategy="epoch",
        load_best_model_at_end=has_eval,
        metric_for_best_model="accuracy" if has_eval else None,
        save_total_limit=1,
        seed=seed,
        data_seed=seed,
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=False,
        **overrides,
    )


def fit_head(
    model: LLMEmbedForSequenceClassification,
    train_features: Dataset,
    eval_features: Dataset | None,
    output_dir: str | os.PathLike,
    args: HeadTrainingArguments | None = None,
) -> Trainer:
    """Train ``model``'s head with `Trainer` on ``pooled_features``/``labels`` datasets; keeps the best epoch.

    Evaluates every epoch on ``eval_features`` (accuracy, macro-F1) and reloads the checkpoint with the best
    accuracy at the end. Returns the trainer (its ``state.log_history`` holds the curves).
    """
    args = args or HeadTrainingArguments()
    set_seed(args.seed)
    if model.config.standardize_features:
        model.head.set_feature_statistics(train_features[:]["pooled_features"])
    has_eval = eval_features is not None
    training_args = epoch_training_arguments(
        output_dir, epochs=args.epochs, learning_rate=args.learning_rate, weight_decay=args.weight_decay,
        batch_size=args.batch_size, eval_batch_size=max(args.batch_size, 256), seed=args.seed, has_eval=has_eval,
    )
    callbacks = []
    if has_eval and args.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=args.early_stopping_patience))
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_features,
        eval_dataset=eval_features,
        compute_metrics=compute_classification_metrics,
        callbacks=callbacks,
    )
    trainer.train()
    return trainer


@dataclass
class TrainingReport:
    """What happened in one `train_head` run; the model card is written from it."""

    dataset: str
    preset: str
    text_column: str
    label_column: str
    train_split: str
    eval_split: str | None
    validation: str
    num_train: int
    num_validation: int
    num_eval: int
    hyperparameters: dict[str, Any]
    eval_metrics: dict[str, float] = field(default_factory=dict)
    validation_metrics: dict[str, float] = field(default_factory=dict)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    confusion_matrix: list[list[int]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)

    def save(self, folder: str | os.PathLike) -> None:
        Path(folder, "training_report.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainingReport:
        return cls(**json.loads(Path(path).read_text()))

    @classmethod
    def untrained(cls) -> TrainingReport:
        """The report of a head that was never trained (its card carries a warning)."""
        return cls(dataset="none", preset="custom", text_column="", label_column="", train_split="",
                   eval_split=None, validation="none", num_train=0, num_validation=0, num_eval=0,
                   hyperparameters={}, environment=environment())


def environment() -> dict[str, str]:
    import datasets
    import transformers

    from . import __version__

    return {
        "llmembed_hf": __version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "datasets": datasets.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
    }


def _features(model, split: LabelledTexts, extraction: ExtractionConfig) -> Dataset:
    return extract_features(model, split.texts, extra_columns={"labels": split.labels}, config=extraction)


def confusion_matrix(labels: list[int], predictions: np.ndarray, num_labels: int) -> list[list[int]]:
    """Counts of (true class, predicted class) pairs, rows = true class, as the model cards plot them."""
    matrix = np.zeros((num_labels, num_labels), dtype=int)
    np.add.at(matrix, (np.asarray(labels), predictions), 1)
    return matrix.tolist()


def predict_logits(model: LLMEmbedForSequenceClassification, features: Dataset, batch_size: int = 1024) -> np.ndarray:
    """Logits of the head on a ``pooled_features`` dataset."""
    model.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(features), batch_size):
            batch = features[start : start + batch_size]["pooled_features"].to(model.device)
            outputs.append(model(pooled_features=batch).logits.float().cpu().numpy())
    return np.concatenate(outputs)


def train_head(
    dataset: str | os.PathLike | DatasetDict,
    output_dir: str | os.PathLike,
    preset: str = "small",
    text_column: str = "text",
    label_column: str = "label",
    train_split: str = "train",
    eval_split: str | None = "test",
    validation_split: str | None = None,
    validation_fraction: float = 0.1,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    sigma: float | None = None,
    training: HeadTrainingArguments | None = None,
    extraction: ExtractionConfig | None = None,
    model: LLMEmbedForSequenceClassification | None = None,
    push_to_hub: str | None = None,
) -> tuple[LLMEmbedForSequenceClassification, TrainingReport]:
    """Extract (cached), train the head with `Trainer`, evaluate, and write a ready Hub-style folder.

    The checkpoint is chosen on a validation split (``validation_split`` if given, else ``validation_fraction`` of
    the training subset), never on ``eval_split``, which is only scored at the end. ``output_dir`` receives
    config.json, model.safetensors (head only), the composite tokenizer, the remote-code files, a model card and
    ``training_report.json``; pass ``push_to_hub="org/name"`` to upload that folder.
    """
    training = training or HeadTrainingArguments()
    extraction = extraction or ExtractionConfig()
    started = time.perf_counter()
    splits = load_classification_splits(dataset, text_column, label_column, train_split, eval_split, validation_split,
                                        validation_fraction, max_train_samples, max_eval_samples, training.seed)
    train, validation, evaluation, names = splits.train, splits.validation, splits.evaluation, splits.names
    validation_name = splits.validation_name

    id2label = dict(enumerate(names))
    if model is None:
        overrides = {"sigma": sigma} if sigma is not None else {}
        config = LLMEmbedConfig.from_preset(preset, id2label=id2label, label2id={v: k for k, v in id2label.items()},
                                            **overrides)
        set_seed(training.seed)  # the head's initial weights too, not only the training order, follow the seed
        model = LLMEmbedForSequenceClassification.from_backbones(config)
    elif [model.config.id2label[i] for i in range(model.config.num_labels)] != names:
        raise ValueError(
            f"the model's labels {model.config.id2label} differ from the data's classes {dict(id2label)}; "
            "build the model with id2label matching the data."
        )
    loaded = time.perf_counter()

    train_features = _features(model, train, extraction)
    validation_features = _features(model, validation, extraction)
    eval_features = _features(model, evaluation, extraction) if evaluation is not None else None
    extracted = time.perf_counter()

    trainer = fit_head(model, train_features, validation_features, Path(output_dir) / "checkpoints", training)
    trained = time.perf_counter()
    report = TrainingReport(
        dataset=str(dataset) if not isinstance(dataset, DatasetDict) else "in-memory DatasetDict",
        preset=preset, text_column=text_column, label_column=label_column, train_split=train_split,
        eval_split=eval_split, validation=validation_name, num_train=len(train.texts),
        num_validation=len(validation.texts), num_eval=len(evaluation.texts) if evaluation else 0,
        hyperparameters={**asdict(training), "sigma": model.config.sigma,
                         "projection_dim": model.config.projection_dim, "dropout": model.config.dropout,
                         "mlp_hidden_sizes": model.config.mlp_hidden_sizes, "feature_dtype": extraction.dtype},
        log_history=list(trainer.state.log_history),  # before the final evaluate() appends to it
        validation_metrics={k: v for k, v in trainer.evaluate().items() if k.startswith("eval_")},
        environment=environment(),
    )
    if eval_features is not None:
        logits = predict_logits(model, eval_features)
        predictions = logits.argmax(-1)
        report.eval_metrics = compute_classification_metrics((logits, np.asarray(evaluation.labels)))
        report.confusion_matrix = confusion_matrix(evaluation.labels, predictions, len(names))
    report.timings = {"load_backbones_s": loaded - started, "extract_s": extracted - loaded,
                      "train_s": trained - extracted, "total_s": time.perf_counter() - started}
    model.training_report = report
    save_trained_head(model, output_dir)
    if push_to_hub:
        model.push_to_hub(push_to_hub)
    return model, report


def save_trained_head(model: LLMEmbedForSequenceClassification, output_dir: str | os.PathLike) -> None:
    """Write the Hub-style folder: head, config, tokenizer, code, training report and model card."""
    from .hub import write_card_for_push

    model.save_pretrained(output_dir)
    write_card_for_push(output_dir, model, f"<your-org>/{Path(output_dir).resolve().name}")
