"""Train the multi-task intent + slot model with `Trainer` (frozen, LoRA or full), keeping its best epoch.

`finetune_intent_slot` is what ``llmembed finetune-intent-slot`` runs; its report (`IntentSlotReport`) holds the
metrics, wall times and parameter counts, so single-task and multi-task runs compare on cost and accuracy.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import DatasetDict
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import Trainer, TrainerCallback, set_seed
from transformers.utils import logging

from ..backbones import locate_backbone
from ..data import describe_source, validation_cut
from ..file_utils import atomic_save
from ..finetuning import SeenTokenEmbedding
from ..metrics import load_metric
from ..model_card import IntentSlotReport, environment, save_with_card
from ..modeling.modeling_llmembed_intent_slot import LLMEmbedForIntentAndSlotFilling
from ..training_args import OutputArguments, data_arguments, output_arguments
from .data import IntentSlotCollator, encode_intent_slot, load_intent_slot_split, slot_label_names
from .slots import IGNORE_INDEX
from .training_args import IntentSlotArguments, IntentSlotDataArguments

logger = logging.get_logger(__name__)


def frames_from_outputs(
    intent_logits: np.ndarray, slot_logits: np.ndarray, slot_label_ids: np.ndarray, intent_names: list[str],
    slot_names: list[str],
) -> list[dict[str, Any]]:
    """Predicted frames ``{"intent", "slots"}``: word tags read at the labelled (first sub-token) positions."""
    frames = []
    for intent, logits, labels in zip(intent_logits.argmax(-1), slot_logits, slot_label_ids):
        positions = labels != IGNORE_INDEX
        frames.append({"intent": intent_names[int(intent)],
                       "slots": [slot_names[int(t)] for t in logits[positions].argmax(-1)]})
    return frames


def reference_frames(intent_ids: np.ndarray, slot_label_ids: np.ndarray, intent_names: list[str],
                     slot_names: list[str]) -> list[dict[str, Any]]:
    """Reference frames from the aligned labels (the word tags sit at the first sub-tokens)."""
    return [{"intent": intent_names[int(intent)], "slots": [slot_names[int(t)] for t in labels[labels != IGNORE_INDEX]]}
            for intent, labels in zip(intent_ids, slot_label_ids)]


def intent_slot_metrics_fn(intent_names: list[str], slot_names: list[str]):
    """`Trainer` ``compute_metrics``: intent accuracy, slot span micro-F1 and exact-match frame accuracy."""
    metric = load_metric("intent_slot")

    def compute(eval_pred) -> dict[str, float]:
        intent_logits, slot_logits = eval_pred.predictions[:2]
        intent_ids, slot_label_ids = eval_pred.label_ids
        return metric.compute(
            predictions=frames_from_outputs(intent_logits, slot_logits, slot_label_ids, intent_names, slot_names),
            references=reference_frames(intent_ids, slot_label_ids, intent_names, slot_names),
        )

    return compute


def selection_metric(intent_loss_weight: float, slot_loss_weight: float) -> str:
    """The validation metric that picks the best epoch: that of the task trained, frame accuracy for both."""
    if slot_loss_weight == 0:
        return "intent_accuracy"
    if intent_loss_weight == 0:
        return "slot_f1"
    return "exact_match"


class KeepBestCallback(TrainerCallback):
    """Keep the trained weights of the best evaluation and restore them when training ends.

    Trainer's ``load_best_model_at_end`` reloads a whole checkpoint non-strictly, warning about every backbone weight
    a frozen/LoRA checkpoint leaves out; this copies only `trained_state_dict`. With a ``folder`` (the run's
    checkpoint folder) the best weights are also written there (`BEST_FILE`, atomically) at every new best, and read
    back when the callback is built, so a run resumed from its last epoch checkpoint still knows its best epoch.
    """

    BEST_FILE = "best-epoch.safetensors"

    def __init__(self, metric: str, folder: str | os.PathLike | None = None) -> None:
        self.metric = f"eval_{metric}"
        self.best: float | None = None
        self.best_epoch: float | None = None
        self.state_dict: dict[str, torch.Tensor] | None = None
        self.path = Path(folder) / self.BEST_FILE if folder is not None else None
        if self.path is not None and self.path.is_file():
            with safe_open(self.path, "pt") as handle:
                meta = handle.metadata()
                if meta.get("metric") == self.metric:
                    self.state_dict = {key: handle.get_tensor(key) for key in handle.keys()}
                    self.best, self.best_epoch = float(meta["best"]), float(meta["epoch"])

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs) -> None:
        value = (metrics or {}).get(self.metric)
        if value is not None and model is not None and (self.best is None or value > self.best):
            self.best, self.best_epoch = value, state.epoch
            self.state_dict = {k: v.detach().to("cpu", copy=True) for k, v in model.trained_state_dict().items()}
            if self.path is not None:
                meta = {"metric": self.metric, "best": repr(float(value)), "epoch": repr(float(state.epoch))}
                tensors = {k: v.contiguous() for k, v in self.state_dict.items()}
                atomic_save(self.path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    def on_train_end(self, args, state, control, model=None, **kwargs) -> None:
        if self.state_dict is not None and model is not None:
            logger.info(f"Restoring the best epoch ({self.best_epoch}: {self.metric}={self.best:.4f}).")
            model.load_trained_state_dict(self.state_dict, source="best epoch")


def _peak_memory_mb() -> float:
    """Peak accelerator memory of this process, else its peak resident memory (Linux reports KiB)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024




def finetune_intent_slot(
    backbone: Any,
    data: IntentSlotDataArguments | str | os.PathLike | DatasetDict,
    output_dir: str | os.PathLike | OutputArguments,
    args: IntentSlotArguments | None = None,
    push_to_hub: str | None = None,
    **data_fields: Any,
) -> tuple[LLMEmbedForIntentAndSlotFilling, IntentSlotReport]:
    """Train an intent + slot model with `Trainer`, keep its best epoch on the validation split, score the
    evaluation split.

    ``backbone``: a preset backbone name (``minilm`` of the ``small`` preset is fastest on CPUs), a local folder, a
    Hub id or a `BackboneSpec`. ``data``: `IntentSlotDataArguments`, or a dataset source with any of its fields as
    keywords; ``max_eval_samples`` subsets both the validation and the evaluation split (seeded); without a
    validation split, ``validation_fraction`` of the training subset chooses the epoch. ``output_dir`` receives the
    model (only the weights that trained), tokenizer, code, ``training_report.json`` and a model card;
    ``push_to_hub="org/name"`` uploads that folder in one commit.
    """
    args = args or IntentSlotArguments()
    data = data_arguments(data, IntentSlotDataArguments, **data_fields)
    output = output_arguments(output_dir)
    output.check()
    started = time.perf_counter()
    set_seed(args.seed)
    source, seed = data.dataset, args.seed
    train_raw, train_intents, intent_names = load_intent_slot_split(source, data.train_split, data,
                                                                    max_samples=data.max_train_samples, seed=seed)
    slot_names = slot_label_names(source, train_raw, data.tags_column)
    if data.validation_split is not None:
        validation_raw, validation_intents, _ = load_intent_slot_split(source, data.validation_split, data,
                                                                       intent_names, data.max_eval_samples, seed)
        validation_name = f"split {data.validation_split!r}"
    else:
        keep, held_out = validation_cut(len(train_raw), data.validation_fraction, seed)
        validation_raw, validation_intents = train_raw.select(held_out), [train_intents[i] for i in held_out]
        train_raw, train_intents = train_raw.select(keep), [train_intents[i] for i in keep]
        validation_name = f"{data.validation_fraction:.0%} of the training subset (seed {seed})"
    evaluation = None
    if data.eval_split is not None:
        evaluation = load_intent_slot_split(source, data.eval_split, data, intent_names, data.max_eval_samples, seed)

    spec = locate_backbone(backbone)[0] if isinstance(backbone, (str, os.PathLike)) else backbone
    model = LLMEmbedForIntentAndSlotFilling.from_backbone(
        spec, intent_labels=intent_names, slot_labels=slot_names, tuning_mode=args.mode, pooling=args.pooling,
        lora=args.lora_settings() if args.mode == "lora" else None, intent_loss_weight=args.intent_loss_weight,
        slot_loss_weight=args.slot_loss_weight, classifier_dropout=args.classifier_dropout,
    )
    tokenizer = model.tokenizer
    encode = lambda raw, intents: encode_intent_slot(tokenizer, raw, intents, data, slot_names, args.max_length)  # noqa: E731
    train_data = encode(train_raw, train_intents)
    if args.seen_embeddings_only:
        embeddings = model.backbone.get_input_embeddings()
        model.backbone.set_input_embeddings(SeenTokenEmbedding.of_texts(embeddings, train_data["input_ids"]))
    validation_data = encode(validation_raw, validation_intents)
    eval_data = encode(*evaluation[:2]) if evaluation is not None else None
    loaded = time.perf_counter()

    metric = selection_metric(args.intent_loss_weight, args.slot_loss_weight)
    resume_from_checkpoint = output.resume_from_checkpoint()  # a fresh run clears the folder first
    keep_best = KeepBestCallback(metric, output.checkpoint_dir)
    trainer = Trainer(
        model=model,
        args=args.to_training_arguments(output.checkpoint_dir, has_eval=True, keep_best_checkpoint=False,
                                        label_names=["labels", "slot_labels"]),
        train_dataset=train_data,
        eval_dataset=validation_data,
        data_collator=IntentSlotCollator(tokenizer.pad_token_id, tokenizer.padding_side),
        compute_metrics=intent_slot_metrics_fn(intent_names, slot_names),
        callbacks=[keep_best],
    )
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    if args.seen_embeddings_only:
        model.backbone.set_input_embeddings(model.backbone.get_input_embeddings().merged())
    trained = time.perf_counter()
    log_history = list(trainer.state.log_history)
    speed = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
    strip = lambda metrics: {k[len("eval_"):]: v for k, v in metrics.items()  # noqa: E731
                             if k.startswith("eval_") and k not in speed}
    validation_metrics = strip(trainer.evaluate(validation_data))
    eval_metrics = strip(trainer.evaluate(eval_data)) if eval_data is not None else {}
    evaluated = time.perf_counter()

    report = IntentSlotReport(
        dataset=describe_source(source), text_column=data.text_column, tags_column=data.tags_column,
        label_column=data.label_column, train_split=data.train_split, eval_split=data.eval_split,
        validation=validation_name, num_train=len(train_data), num_validation=len(validation_data),
        num_eval=len(eval_data) if eval_data is not None else 0,
        hyperparameters={**asdict(args), "learning_rate": args.lr, "pooling": model.config.pooling,
                         "target_modules": (model.config.lora or {}).get("target_modules")},
        validation_metrics=validation_metrics, eval_metrics=eval_metrics, log_history=log_history,
        backbone=model.config.backbone_spec, selection_metric=metric, best_epoch=keep_best.best_epoch,
        parameters={"trainable": model.num_trainable_parameters(), "total": sum(p.numel() for p in model.parameters()),
                    "saved": sum(v.numel() for v in model.trained_state_dict().values())},
        peak_memory_mb=_peak_memory_mb(), environment=environment(),
        timings={"load_s": loaded - started, "train_s": trained - loaded, "evaluate_s": evaluated - trained},
    )
    report.timings["total_s"] = time.perf_counter() - started
    output.publish(lambda staging: save_with_card(model, staging, report, Path(output.output_dir).name))
    if push_to_hub:
        model.push_to_hub(push_to_hub)
    return model, report


__all__ = [
    "KeepBestCallback",
    "finetune_intent_slot",
    "intent_slot_metrics_fn",
    "selection_metric",
]
