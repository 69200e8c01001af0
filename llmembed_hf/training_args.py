"""Argument dataclasses of the three training lines, one home per field; the CLI is generated from them.

* `DataArguments`: where the texts and labels are and how the splits are cut (every line);
* `BaseTrainingArguments`: the optimisation fields every line shares (epochs, learning rate, batch size, weight
  decay, warm-up, seed) and the one builder of transformers' `TrainingArguments`;
* `HeadArguments`: overrides of the fusion head's hyper-parameters in a preset's `LLMEmbedConfig` (None keeps the
  preset's value); `HeadTrainingArguments` trains the head on cached features;
* `LoraArguments`: the LoRA settings, turned into peft's `LoraConfig`; `BackboneTrainingArguments` adds what training
  a backbone needs (max length, mixed precision); `FinetuneArguments` and the intent + slot line's
  `IntentSlotArguments` (in `llmembed_hf.intent_slot`) build on it.

Subclasses change a shared field's default with `default_of`, which keeps the field's help text in one place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from transformers import TrainingArguments
from transformers.utils import logging

from .file_utils import cache_dir

logger = logging.get_logger(__name__)

#: The file every llmembed training run writes into its output folder (how an earlier run's folder is recognised).
REPORT_FILE = "training_report.json"
#: transformers' problem types (``PretrainedConfig.problem_type``), the kinds of label column the data may hold.
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


def arg(default: Any = dataclasses.MISSING, help: str = "", **metadata: Any) -> Any:  # noqa: A002
    """A dataclass field with its command-line help (read by `transformers.HfArgumentParser`)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


def default_of(owner: type, name: str, default: Any, **metadata: Any) -> Any:
    """The field ``name`` of dataclass ``owner`` with another default (same help unless ``metadata`` says
    otherwise): for a subclass's own default."""
    return arg(default, **{**owner.__dataclass_fields__[name].metadata, **metadata})


def check_positive_ints(values: dict[str, Any]) -> None:
    """Raise a ValueError naming the first field whose value is not a positive integer."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer.")


def check_fraction(name: str, value: float, *, closed_low: bool = True) -> None:
    """Raise a ValueError unless ``value`` lies in [0, 1) (``closed_low``) or strictly between 0 and 1."""
    ok = (0.0 <= value < 1.0) if closed_low else (0.0 < value < 1.0)
    if not ok:
        raise ValueError(f"{name}={value!r} must lie in {'[0, 1)' if closed_low else 'strictly between 0 and 1'}.")


@dataclass
class DataArguments:
    """Where a training run's data is and how its splits are cut (the same for every line).

    The best epoch (or tuning trial) is chosen on ``validation_split`` if given, else on ``validation_fraction`` of
    the (subsetted) training rows; ``eval_split`` is scored once at the end, never used to choose anything.
    """

    dataset: str | None = arg(
        None, "a folder of <split>.jsonl[.gz] (+ labels.json), a save_to_disk folder, or a Hub dataset id",
        required=True,
    )
    text_column: str = arg("text", "column holding the text")
    label_column: str = arg("label", "column holding the label (a class id or name), the labels (a list of them: "
                                     "multi-label) or the score (regression); a data set without 'label' but with a "
                                     "'labels' column uses that one")
    problem_type: str | None = arg(None, "single_label_classification, multi_label_classification or regression "
                                         "(default: read from the training labels: lists are multi-label, numbers "
                                         "that are not all whole are regression)", choices=list(PROBLEM_TYPES))
    text_pair_column: str | None = arg("auto", "column holding the second text of each pair ('auto': 'text_pair' "
                                               "when the training split has it; 'none': single texts)")
    train_split: str = arg("train", "training split")
    validation_split: str | None = arg(None, "split for choosing the best epoch (default: carve validation_fraction "
                                             "of the training subset)")
    eval_split: str | None = arg("test", "split scored at the end ('none' to skip)")
    validation_fraction: float = arg(0.1, "fraction of the training subset held out to choose the best epoch when "
                                          "there is no validation split")
    max_train_samples: int | None = arg(None, "seeded random subset of the training split")
    max_eval_samples: int | None = arg(None, "seeded random subset of the evaluation split")

    def __post_init__(self) -> None:
        if isinstance(self.dataset, os.PathLike):
            self.dataset = os.fspath(self.dataset)
        if self.eval_split == "none":
            self.eval_split = None
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type={self.problem_type!r} is unknown; choose one of {PROBLEM_TYPES} (or "
                             "leave it unset to read it from the labels).")
        if self.text_pair_column == "none":
            self.text_pair_column = None
        check_fraction("validation_fraction", self.validation_fraction, closed_low=False)
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None:
                check_positive_ints({name: getattr(self, name)})


def data_arguments(dataset: Any, cls: type[DataArguments] = DataArguments, **fields_: Any) -> DataArguments:
    """``dataset`` as ``cls`` (`DataArguments` or a subclass): data arguments already (``fields_`` replace theirs),
    or a dataset source (a folder, a saved dataset, a Hub id or a `DatasetDict`) with any other fields."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(fields_) - names)
    if unknown:
        raise TypeError(f"unknown data argument(s) {unknown}; {cls.__name__} has {sorted(names)}.")
    if isinstance(dataset, DataArguments):
        values = {f.name: getattr(dataset, f.name) for f in fields(dataset) if f.name in names}
        return cls(**{**values, **fields_})
    if dataset is None:
        raise ValueError(f"no dataset given: pass a folder, a saved dataset, a Hub id or {cls.__name__}(dataset=...).")
    return cls(dataset=dataset, **fields_)


@dataclass
class OutputArguments:
    """Where a run writes, and how: its per-epoch checkpoints live in the llmembed cache (never in the output folder,
    which is pushed as it is), and the output folder is replaced whole at the end (`publish`), so it never mixes
    files of two runs and an interrupted run leaves the previous result intact."""

    output_dir: str | None = arg(None, "folder for the trained model, tokenizer, code, card and report",
                                 required=True)
    overwrite: bool = arg(False, "replace a non-empty output folder that no llmembed run wrote")
    resume: bool = arg(False, "continue an interrupted run of the same command from its last epoch checkpoint")
    keep_checkpoints: bool = arg(False, "keep the epoch checkpoints (in the llmembed cache) after the run")

    def __post_init__(self) -> None:
        if self.output_dir is None:
            raise ValueError("output_dir is missing: name the folder the run should write.")
        self.output_dir = os.fspath(self.output_dir)

    @property
    def checkpoint_dir(self) -> Path:
        """This output folder's checkpoints: the same folder for every run writing there, so a rerun can resume."""
        key = hashlib.sha256(str(Path(self.output_dir).resolve()).encode()).hexdigest()[:16]
        return cache_dir() / "checkpoints" / f"{Path(self.output_dir).name}-{key}"

    def check(self) -> None:
        """Refuse, before any work, an output folder that holds something no llmembed run wrote (unless
        ``overwrite``): replacing it would delete the user's files."""
        folder = Path(self.output_dir)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"output_dir {folder} is a file; name a folder.")
        if folder.is_dir() and any(folder.iterdir()) and not (folder / REPORT_FILE).is_file() and not self.overwrite:
            raise ValueError(
                f"output_dir {folder} is not empty and no llmembed run wrote it (it has no {REPORT_FILE}); choose "
                "another folder, or pass overwrite=True (--overwrite) to replace its content."
            )

    def resume_from_checkpoint(self) -> bool | None:
        """`Trainer.train`'s ``resume_from_checkpoint``: True (its latest checkpoint) when resuming and there is one;
        otherwise None, and a fresh run first clears checkpoints an earlier run left."""
        if self.resume and any(self.checkpoint_dir.glob("checkpoint-*")):
            logger.warning(f"Resuming from the last checkpoint in {self.checkpoint_dir}.")
            return True
        if self.resume:
            logger.warning(f"resume=True, but {self.checkpoint_dir} holds no checkpoint: starting from the beginning.")
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
        return None

    def publish(self, write: Callable[[Path], Any]) -> Path:
        """Run ``write(folder)`` on a staging folder beside ``output_dir``, then swap it in whole; checkpoints are
        removed afterwards unless ``keep_checkpoints``."""
        target = Path(self.output_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.staging-"))
        try:
            write(staging)
            if target.exists():
                previous = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.previous-"))
                os.replace(target, previous)  # a directory renamed over an empty one
                os.replace(staging, target)
                shutil.rmtree(previous, ignore_errors=True)
            else:
                os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if not self.keep_checkpoints:
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
        return target


def output_arguments(output: str | os.PathLike | OutputArguments) -> OutputArguments:
    """``output`` as `OutputArguments` (a plain path keeps every default)."""
    return output if isinstance(output, OutputArguments) else OutputArguments(output)


@dataclass
class BaseTrainingArguments:
    """Optimisation settings every training line shares; `to_training_arguments` is the one `TrainingArguments`
    builder (evaluate every epoch, seeded data order, CPU unless a GPU is there, no external loggers)."""

    epochs: int = arg(3, "training epochs")
    learning_rate: float | None = arg(None, "learning rate (default: the line's, see DEFAULT_LEARNING_RATES)",
                                      aliases=["--lr"])
    batch_size: int = arg(16, "training batch size")
    weight_decay: float = arg(0.0, "AdamW weight decay")
    warmup_ratio: float = arg(0.0, "linear warm-up fraction of the steps")
    seed: int = arg(42, "seed of subsetting, splitting, initialisation and training")

    #: Lines whose learning rate depends on their method name the field holding it and the default rate per method.
    METHOD_FIELD: ClassVar[str | None] = None
    DEFAULT_LEARNING_RATES: ClassVar[dict[str, float]] = {}

    def __post_init__(self) -> None:
        if self.METHOD_FIELD is not None and getattr(self, self.METHOD_FIELD) not in self.DEFAULT_LEARNING_RATES:
            raise ValueError(f"{self.METHOD_FIELD}={getattr(self, self.METHOD_FIELD)!r} is unknown; choose one of "
                             f"{tuple(self.DEFAULT_LEARNING_RATES)}.")
        check_positive_ints({"epochs": self.epochs, "batch_size": self.batch_size})
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate!r} must be positive.")
        check_fraction("warmup_ratio", self.warmup_ratio)

    @property
    def lr(self) -> float:
        """The learning rate actually used."""
        if self.learning_rate is not None:
            return self.learning_rate
        return self.DEFAULT_LEARNING_RATES[getattr(self, self.METHOD_FIELD)]

    @property
    def eval_batch_size(self) -> int:
        """Evaluation needs no gradients, so it takes bigger batches (no effect on the scores)."""
        return max(2 * self.batch_size, 64)

    def to_training_arguments(
        self, output_dir: str | os.PathLike, *, has_eval: bool, keep_best_checkpoint: bool = True,
        metric: str = "accuracy", **overrides: Any,
    ) -> TrainingArguments:
        """`TrainingArguments` of this run. Every epoch is checkpointed in ``output_dir`` (the latest is kept, so an
        interrupted run can resume); with ``keep_best_checkpoint`` (and evaluation data) the checkpoint with the best
        ``metric`` is kept too and reloaded at the end."""
        keep_best = has_eval and keep_best_checkpoint
        return TrainingArguments(
            output_dir=str(output_dir),
            num_train_epochs=self.epochs,
            learning_rate=self.lr,
            weight_decay=self.weight_decay,
            warmup_steps=self.warmup_ratio,  # a float in [0, 1) is a fraction of the steps
            per_device_train_batch_size=self.batch_size,
            per_device_eval_batch_size=self.eval_batch_size,
            eval_strategy="epoch" if has_eval else "no",
            save_strategy="epoch",
            logging_strategy="epoch",
            load_best_model_at_end=keep_best,
            metric_for_best_model=metric if keep_best else None,
            save_total_limit=1,
            seed=self.seed,
            data_seed=self.seed,
            report_to=[],
            use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0,
            disable_tqdm=False,
            **overrides,
        )


@dataclass
class HeadArguments:
    """Overrides of the fusion head's hyper-parameters in a preset's `LLMEmbedConfig` (None: the preset's value)."""

    sigma: float | None = arg(None, "power-normalisation scale of 2*sigmoid(sigma*z)-1 (default: the preset's)")
    dropout: float | None = arg(None, "dropout after projections and hidden MLP layers (default: the preset's)")
    projection_dim: int | None = arg(None, "width every view is projected to (default: the preset's)")
    mlp_hidden_sizes: list[int] | None = arg(None, "hidden widths of the classifier MLP (default: the preset's)")
    standardize_features: bool | None = arg(None, "standardise features with training statistics (default: the "
                                                  "preset's)")
    concat_encoder_views: bool | None = arg(None, "also feed the encoders' vectors to the MLP (default: the preset's)")
    pair_encoding: str | None = arg(None, "text pairs only: how each backbone role encodes a pair, joint (one pass "
                                          "over both texts) or siamese (each text alone, [u, v, |u-v|, u*v]); one "
                                          "mode for all roles and/or role=mode items, e.g. 'siamese' or "
                                          "'llm=joint,encoder=siamese' (default: the preset's, else that one)")

    def overrides(self) -> dict[str, Any]:
        """The fields that were set, as `LLMEmbedConfig` keyword arguments."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass
class HeadTrainingArguments(BaseTrainingArguments):
    """Hyper-parameters of head training (the head trains in seconds on cached features). The defaults won one
    seeded search on sst2, massive_en and r8 validation data (`benchmarks/bench_head_defaults.py`)."""

    epochs: int = default_of(BaseTrainingArguments, "epochs", 10)
    learning_rate: float = default_of(BaseTrainingArguments, "learning_rate", 1e-3)
    batch_size: int = default_of(BaseTrainingArguments, "batch_size", 128)
    early_stopping_patience: int | None = arg(None, "stop after this many epochs without a better validation "
                                                    "score (accuracy; multi-label: macro-F1; regression: Spearman)")
    calibrate: bool = arg(True, "single-label: fit a temperature on the validation split after training, so the "
                                "scores are calibrated probabilities (the predicted labels do not change)")
    tune_thresholds: bool = arg(True, "multi-label: tune each label's decision threshold on the validation split "
                                      "after training, maximising its F1 (false: 0.5 for every label)")
    threshold_folds: int = arg(5, "multi-label: also tune the thresholds on out-of-fold scores of the training rows: "
                                  "train this many extra heads, each on the training rows outside one fold and "
                                  "scoring that fold: more positive rows per label than the validation split has "
                                  "(0: the validation split alone)")
    keep_fold_heads: bool = arg(True, "multi-label with threshold_folds: keep those heads in the model, which then "
                                      "returns the mean logits of its head and them (an ensemble, at no more "
                                      "training), if that has no higher validation loss than the head alone "
                                      "(false: the one head)")
    lexical_view: bool | None = arg(None, "classifiers of single texts: after training, fit a lexical view "
                                          "(logistic regression on the TF-IDF of the training texts' word unigrams "
                                          "and bigrams) and blend its probabilities with the head's, by a weight "
                                          "chosen on validation scores (multi-label: with the thresholds, on "
                                          "validation and out-of-fold scores, by macro-F1; single-label: by "
                                          "accuracy); kept only if it scores higher there (default: on for "
                                          "multi-label single texts with tuned thresholds, off for single-label "
                                          "ones, where it helps topic tasks; true: on, an error where it does not "
                                          "apply; false: off)")
    lexical_c: float = arg(10.0, "with lexical_view: the inverse L2 strength of its logistic regression "
                                 "(scikit-learn's C)")
    blend_similarity: bool = arg(True, "regression on text pairs with siamese backbones: after training, fit on the "
                                       "validation split a least-squares blend of the head's score and each siamese "
                                       "backbone's cosine of the two sides, which serving then returns (false: the "
                                       "head's score alone)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.threshold_folds, bool) or not isinstance(self.threshold_folds, int) \
                or self.threshold_folds == 1 or self.threshold_folds < 0:
            raise ValueError(f"threshold_folds={self.threshold_folds!r} must be 0 (thresholds from the validation "
                             "split alone) or an integer >= 2 (the number of folds of the training rows).")
        if isinstance(self.lexical_c, bool) or not isinstance(self.lexical_c, (int, float)) or not self.lexical_c > 0:
            raise ValueError(f"lexical_c={self.lexical_c!r} must be a number > 0, e.g. 10.")


@dataclass
class LoraArguments:
    """LoRA settings (peft). ``target_modules=None`` lets PEFT choose per architecture (``q_proj``/``v_proj`` for
    Llama, ``query``/``value`` for BERT)."""

    lora_r: int = arg(8, "LoRA rank")
    lora_alpha: int = arg(16, "LoRA scaling alpha")
    lora_dropout: float = arg(0.1, "dropout on the LoRA input")
    target_modules: list[str] | None = arg(None, "module names to adapt, e.g. q_proj v_proj (default: PEFT's per "
                                                 "architecture)")

    def __post_init__(self) -> None:
        if self.target_modules is not None:  # "q_proj,v_proj" and ["q_proj", "v_proj"] alike
            names = [self.target_modules] if isinstance(self.target_modules, str) else self.target_modules
            self.target_modules = [m.strip() for name in names for m in name.split(",") if m.strip()]
        check_positive_ints({"lora_r": self.lora_r, "lora_alpha": self.lora_alpha})
        check_fraction("lora_dropout", self.lora_dropout)

    def lora_settings(self) -> dict[str, Any]:
        """These settings as `peft.LoraConfig` keyword arguments (what the intent + slot config stores)."""
        return {"r": self.lora_r, "lora_alpha": self.lora_alpha, "lora_dropout": self.lora_dropout,
                "target_modules": self.target_modules}

    def to_lora_config(self, **kwargs: Any):
        """peft's `LoraConfig` with these settings (``kwargs``: task type, modules to save, ...)."""
        from peft import LoraConfig

        return LoraConfig(**self.lora_settings(), **kwargs)


@dataclass
class BackboneTrainingArguments(LoraArguments, BaseTrainingArguments):
    """What training a backbone itself adds to the shared fields: LoRA, the token limit and mixed precision."""

    max_length: int = arg(256, "truncate texts to this many tokens")
    fp16: bool = arg(False, "fp16 mixed precision (CUDA GPUs only)")
    bf16: bool = arg(False, "bf16 mixed precision (GPUs, and CPUs with native bf16: AVX512-BF16 or AMX; emulated and "
                            "slow on other CPUs)")
    group_by_length: bool = arg(False, "batch training texts of similar length together (transformers' "
                                       "LengthGroupedSampler): less padding per batch, faster epochs")
    seen_embeddings_only: bool = arg(False, "full fine-tuning: train only the word-embedding rows of tokens that "
                                            "occur in the training texts. The other rows get a zero gradient at "
                                            "every step, so with weight_decay=0 (the default) the model is the "
                                            "same as when training the whole matrix, for less work per step (with "
                                            "weight decay they keep their pretrained values instead of shrinking)")

    #: Options on how the word embeddings train: only a full fine-tune trains them at all.
    FULL_ONLY_OPTIONS: ClassVar[tuple[str, ...]] = ("seen_embeddings_only",)

    def __post_init__(self) -> None:
        BaseTrainingArguments.__post_init__(self)
        LoraArguments.__post_init__(self)
        check_positive_ints({"max_length": self.max_length})
        if self.fp16 and self.bf16:
            raise ValueError("fp16 and bf16 are exclusive; choose one mixed precision.")
        if self.fp16 and not torch.cuda.is_available():
            raise ValueError("fp16=True needs a CUDA GPU; on a CPU train in fp32 (the default) or bf16.")
        method = getattr(self, self.METHOD_FIELD)
        for name in self.FULL_ONLY_OPTIONS:
            if getattr(self, name) and method != "full":
                raise ValueError(f"{name}=True applies to {self.METHOD_FIELD}='full'; with "
                                 f"{self.METHOD_FIELD}={method!r} the word embeddings are frozen already.")

    def to_training_arguments(self, output_dir: str | os.PathLike, **kwargs: Any) -> TrainingArguments:
        """`BaseTrainingArguments.to_training_arguments` plus this line's mixed precision and batch sampling; bf16
        on a CPU without native bf16 is allowed but warned about (it is emulated there, slower than fp32)."""
        if self.bf16 and not torch.cuda.is_available():
            from .modeling.modeling_llmembed import native_bf16_supported

            if not native_bf16_supported("cpu"):
                logger.warning("bf16=True on a CPU without native bf16 (AVX512-BF16 / AMX): it is emulated and "
                               "trains slower than fp32.")
        sampling = "group_by_length" if self.group_by_length else "random"
        return super().to_training_arguments(output_dir, fp16=self.fp16, bf16=self.bf16,
                                             train_sampling_strategy=sampling, **kwargs)


@dataclass
class FinetuneArguments(BackboneTrainingArguments):
    """Hyper-parameters of one fine-tuning run (``llmembed finetune``): LoRA adapters or every weight.

    ``learning_rate=None`` means 5e-4 for LoRA (its few new parameters take larger steps) and 5e-5 for full.
    """

    method: str = arg("lora", "lora: train PEFT LoRA adapters and the classifier head; full: train every weight",
                      choices=["lora", "full"])
    freeze_embeddings: bool = arg(False, "full fine-tuning: keep the input (word) embedding matrix frozen. Its "
                                         "gradient and AdamW update span the whole vocabulary while a batch uses a "
                                         "few hundred rows of it. On a CPU a MiniLM epoch on short texts ran about "
                                         "1.2x faster, at about half a point of accuracy (benchmarks/RESULTS.md, "
                                         "fine-tuning speed); seen_embeddings_only saves as much at no cost")

    METHOD_FIELD = "method"
    DEFAULT_LEARNING_RATES = {"lora": 5e-4, "full": 5e-5}
    FULL_ONLY_OPTIONS = ("freeze_embeddings", "seen_embeddings_only")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.freeze_embeddings and self.seen_embeddings_only:
            raise ValueError("freeze_embeddings=True and seen_embeddings_only=True are exclusive: the first freezes "
                             "every word-embedding row, the second trains the rows of the training texts' tokens; "
                             "choose one.")


def command_line(program: str, *arguments: Any, **options: Any) -> str:
    """The shell command that passes these argument dataclasses (fields that differ from their defaults) and
    ``options`` to ``program``; the inverse of parsing them (see `llmembed_hf.cli`)."""
    import shlex

    values: dict[str, Any] = {}
    for instance in arguments:
        for f in fields(instance):
            value = getattr(instance, f.name)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if f.init and value is not None and value != default:
                values[f.name] = value
    values.update(options)
    words = program.split()
    for name, value in values.items():
        words.append(f"--{name.replace('_', '-')}")
        items = value if isinstance(value, (list, tuple)) else [value]
        words += [str(item).lower() if isinstance(item, bool) else str(item) for item in items]
    return " ".join(shlex.quote(word) for word in words)


__all__ = [
    "PROBLEM_TYPES",
    "BackboneTrainingArguments",
    "BaseTrainingArguments",
    "DataArguments",
    "FinetuneArguments",
    "HeadArguments",
    "HeadTrainingArguments",
    "LoraArguments",
    "OutputArguments",
    "command_line",
    "data_arguments",
    "output_arguments",
]
