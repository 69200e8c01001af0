#!/usr/bin/env python
"""STS-B's single-encoder baseline for a trained regression head on pairs: the Spearman correlation of the cosine
between the two sides' vectors (the first backbone's first view, as the siamese features store them) on the test
split, read from the feature store the head's run filled (nothing is recomputed when it is there).

    .venv/bin/llmembed train --dataset ../shared/datasets/stsb --preset small --output-dir outputs/llmembed-stsb \
        --eval-split test
    .venv/bin/python benchmarks/check_stsb_cosine.py outputs/llmembed-stsb
"""

import sys

import numpy as np
from scipy.stats import spearmanr

from llmembed_hf import LLMEmbedForSequenceClassification, extract_features
from llmembed_hf.data import load_labelled

folder = sys.argv[1] if len(sys.argv) > 1 else "outputs/llmembed-stsb"
model = LLMEmbedForSequenceClassification.from_pretrained(folder)
width = model.config.backbone_specs[0].hidden_size
test = load_labelled("../shared/datasets/stsb", "test", problem_type="regression", text_pair_column="text_pair")[0]
features = extract_features(model, test.texts, text_pairs=test.pairs, show_progress=False)
rows = features.with_format("numpy")[:]["pooled_features"]
u, v = rows[:, :width], rows[:, width:2 * width]
cosine = (u * v).sum(1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)
print(f"{model.config.backbone_specs[0].name} cosine of the two sides, Spearman on {len(cosine)} test pairs: "
      f"{spearmanr(cosine, test.labels).statistic:.4f}")
