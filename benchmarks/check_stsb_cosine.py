#!/usr/bin/env python
"""STS-B's untrained baselines for a trained regression head on pairs, on the test split: for every siamese backbone
of the head, the Spearman correlation of the cosine between the two sides' vectors (its first view, as the siamese
features store them: [u, v, |u-v|, u*v]); the best of them is the "best single encoder measured in the same run" the
head must beat. With several backbones, also their cosines combined by least squares fit on the training split (what
fusing the cosines alone can give). Vectors are read from the feature store the head's run filled (nothing is
recomputed when it is there).

    .venv/bin/llmembed train --dataset ../shared/datasets/stsb --preset small --output-dir outputs/llmembed-stsb \
        --validation-split validation --eval-split test
    .venv/bin/python benchmarks/check_stsb_cosine.py outputs/llmembed-stsb
"""

import sys

import numpy as np
from scipy.stats import spearmanr

from llmembed_hf import LLMEmbedForSequenceClassification, extract_features
from llmembed_hf.data import load_labelled
from llmembed_hf.modeling.modeling_llmembed import siamese_cosines

folder = sys.argv[1] if len(sys.argv) > 1 else "outputs/llmembed-stsb"
model = LLMEmbedForSequenceClassification.from_pretrained(folder)
config = model.config
siamese = config.siamese_specs


def cosines(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(pairs x siamese backbones) cosines of the split's two sides, and its gold scores."""
    data = load_labelled("../shared/datasets/stsb", split, problem_type="regression", text_pair_column="text_pair")[0]
    rows = extract_features(model, data.texts, text_pairs=data.pairs, show_progress=False)
    return siamese_cosines(config, rows.with_format("torch")[:]["pooled_features"]).numpy(), np.asarray(data.labels)


test_cosines, test_gold = cosines("test")
for spec, column in zip(siamese, test_cosines.T):
    print(f"{spec.name} cosine of the two sides, Spearman on {len(column)} test pairs: "
          f"{spearmanr(column, test_gold).statistic:.4f}")
if len(siamese) > 1:
    train_cosines, train_gold = cosines("train")
    weights = np.linalg.lstsq(np.c_[train_cosines, np.ones(len(train_gold))], train_gold, rcond=None)[0]
    combined = np.c_[test_cosines, np.ones(len(test_gold))] @ weights
    print(f"their cosines combined by least squares on the training pairs: {spearmanr(combined, test_gold).statistic:.4f}")
