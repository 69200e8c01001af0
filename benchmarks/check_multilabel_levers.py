"""One-off check: do positive-class weights or a seed ensemble lift the `small` head's GoEmotions macro-F1?

Issue 21 asks for macro-F1 >= 52 on GoEmotions' test split; the `small` head reaches about 50, short on the rare
emotions. Two levers the head search (`llmembed tune`) does not try, each scored like `llmembed train` scores a head
(the epoch chosen and each label's threshold tuned on the official validation split, test read once):

- BCE with ``pos_weight = (negatives / positives) ** power`` per label, from the training rows (``--powers``): rare
  labels weigh more in the loss. The package's loss is swapped for this run only.
- The mean of the logits of the heads trained with different seeds at power 0, thresholds tuned on that mean.

Features come from the feature store (`bench_multilabel.py` fills it), so a head costs about a minute here.

    python benchmarks/check_multilabel_levers.py --seeds 42 43 44 --powers 0.5 1.0
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_common import DATASETS
from transformers import set_seed

from llmembed_hf import ExtractionConfig, HeadTrainingArguments, LLMEmbedForSequenceClassification, train_head
from llmembed_hf.data import load_classification_splits
from llmembed_hf.metrics import fit_thresholds, multi_label_scores, sigmoid
from llmembed_hf.trainer import head_config, predict_logits, split_features
from llmembed_hf.training_args import DataArguments, OutputArguments


def weighted_loss(pos_weight: torch.Tensor):
    """`LLMEmbedForSequenceClassification._loss` with BCE's ``pos_weight`` for multi-label batches."""
    package_loss = LLMEmbedForSequenceClassification._loss

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.config.problem_type != "multi_label_classification":
            return package_loss(self, logits, labels)
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.device, logits.dtype),
                                                  pos_weight=pos_weight.to(logits.device))
    return _loss


def raw_logits(data: DataArguments, seed: int, power: float, preset: str, work: Path) -> dict[str, np.ndarray]:
    """Train one head as `llmembed train` does and return its validation and test logits before thresholds."""
    splits = load_classification_splits(data, seed=seed)
    train_y = np.asarray(splits.train.labels, dtype=np.float64)
    positives = train_y.sum(0)
    pos_weight = torch.tensor(((len(train_y) - positives) / np.maximum(positives, 1)) ** power, dtype=torch.float32)
    package_loss = LLMEmbedForSequenceClassification._loss
    LLMEmbedForSequenceClassification._loss = weighted_loss(pos_weight)
    try:
        set_seed(seed)
        model = LLMEmbedForSequenceClassification.from_backbones(
            head_config(preset, None, splits.names, splits.problem_type))
        train_head(data, OutputArguments(str(work / f"head-{seed}-{power}"), overwrite=True), model=model,
                   training=HeadTrainingArguments(seed=seed))
    finally:
        LLMEmbedForSequenceClassification._loss = package_loss
    model.config.decision_thresholds = None
    extraction = ExtractionConfig()
    return {"validation": predict_logits(model, split_features(model, splits.validation, extraction)),
            "test": predict_logits(model, split_features(model, splits.evaluation, extraction)),
            "validation_y": np.asarray(splits.validation.labels), "test_y": np.asarray(splits.evaluation.labels)}


def tuned_test_scores(run: dict[str, np.ndarray]) -> dict[str, float]:
    """Test scores at each label's threshold tuned on the validation logits."""
    thresholds = np.asarray(fit_thresholds(sigmoid(run["validation"]), run["validation_y"]))
    return multi_label_scores(sigmoid(run["test"]) >= thresholds, run["test_y"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=str(DATASETS / "goemotions"))
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--powers", type=float, nargs="*", default=[0.5, 1.0])
    args = parser.parse_args()
    data = DataArguments(args.dataset, validation_split="validation", problem_type="multi_label_classification")
    rows: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as work:
        plain = [raw_logits(data, seed, 0.0, args.preset, Path(work)) for seed in args.seeds]
        rows += [(f"head, seed {seed}", tuned_test_scores(run)) for seed, run in zip(args.seeds, plain)]
        rows += [(f"head, pos_weight power {power}, seed {args.seeds[0]}",
                  tuned_test_scores(raw_logits(data, args.seeds[0], power, args.preset, Path(work))))
                 for power in args.powers]
    ensemble = {**plain[0], **{split: np.mean([run[split] for run in plain], axis=0) for split in ("validation", "test")}}
    rows.append((f"mean logits of the {len(plain)} seeds' heads", tuned_test_scores(ensemble)))
    print("| head | macro-F1 | micro-F1 |\n|---|---:|---:|")
    for name, scores in rows:
        print(f"| {name} | {100 * scores['macro_f1']:.2f} | {100 * scores['micro_f1']:.2f} |")


if __name__ == "__main__":
    main()
