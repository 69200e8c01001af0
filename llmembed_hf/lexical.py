"""Fitting a head's lexical view (`LLMEmbedLexicalView`): TF-IDF of word n-grams and logistic regression (one-vs-rest
for multi-label heads, multinomial for single-label ones), in torch (no scikit-learn), on the training texts."""

from __future__ import annotations

import warnings
from collections import Counter
from functools import partial
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from transformers.utils import logging

from .modeling.modeling_llmembed import LLMEmbedLexicalView
from .modeling.tokenization_llmembed import lexical_rows

logger = logging.get_logger(__name__)

#: Rows per chunk when texts are turned into TF-IDF values (bounds the padded (rows, n-grams) tensors).
CHUNK_ROWS = 2048


def lexical_inputs(texts: Sequence[str]) -> dict[str, torch.Tensor]:
    """``lexical_ids`` and ``lexical_counts`` of ``texts``, padded: what the composite tokenizer of a head with a
    lexical view returns for them, without its backbones' tokens."""
    return {key: pad_sequence([torch.tensor(row, dtype=torch.long) for row in rows], batch_first=True)
            for key, rows in lexical_rows(texts).items()}


def tfidf_matrix(view: LLMEmbedLexicalView, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The (rows, vocabulary) sparse (CSR) TF-IDF matrix of padded lexical ``inputs``, as ``view`` computes it."""
    rows, columns, values = [], [], []
    for start in range(0, len(inputs["lexical_ids"]), CHUNK_ROWS):
        index, value = view.tfidf(inputs["lexical_ids"][start:start + CHUNK_ROWS],
                                  inputs["lexical_counts"][start:start + CHUNK_ROWS])
        row, slot = value.nonzero(as_tuple=True)
        rows.append(row + start)
        columns.append(index[row, slot])
        values.append(value[row, slot])
    indices = torch.stack([torch.cat(rows), torch.cat(columns)])
    matrix = torch.sparse_coo_tensor(indices, torch.cat(values), (len(inputs["lexical_ids"]), len(view.idf)),
                                     check_invariants=True).coalesce()
    with warnings.catch_warnings():  # CSR is "beta" in torch; its product is what the fit needs
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return matrix.to_sparse_csr()


def lexical_logits(view: LLMEmbedLexicalView, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    """``view``'s logits of padded lexical ``inputs`` (`lexical_inputs`), by chunks."""
    with torch.inference_mode():
        return torch.cat([view(inputs["lexical_ids"][start:start + CHUNK_ROWS],
                               inputs["lexical_counts"][start:start + CHUNK_ROWS])
                          for start in range(0, len(inputs["lexical_ids"]), CHUNK_ROWS)]).numpy()


def select_rows(inputs: dict[str, torch.Tensor], rows: np.ndarray) -> dict[str, torch.Tensor]:
    """Some rows of padded lexical ``inputs`` (a fold's), without hashing their texts again."""
    rows = torch.as_tensor(rows, dtype=torch.long)
    return {key: value[rows] for key, value in inputs.items()}


def fit_lexical_view(inputs: dict[str, torch.Tensor], labels: np.ndarray, c: float = 10.0, min_df: int = 2,
                     max_iter: int = 150, num_labels: int | None = None) -> LLMEmbedLexicalView | None:
    """A lexical view fitted on the training texts' padded lexical ``inputs`` (`lexical_inputs`) and their
    ``labels``: multi-label rows x labels of 0/1, a logistic regression per label; or single-label class ids (of
    ``num_labels`` classes), one multinomial logistic regression. The n-grams in at least ``min_df`` texts,
    smoothed idf (``log((1 + n) / (1 + df)) + 1``), and weights minimising ``c * sum(log loss) + |w|^2 / 2``
    (scikit-learn's ``C``; the bias is not penalised) by full-batch L-BFGS. None, with a warning, if no n-gram occurs
    in ``min_df`` texts."""
    labels = np.asarray(labels)
    multi_label = labels.ndim == 2
    if not multi_label and num_labels is None:
        raise ValueError("single-label class ids need num_labels, the number of classes.")
    num_texts = len(labels)
    document_frequency = Counter(int(h) for row, count in zip(inputs["lexical_ids"], inputs["lexical_counts"])
                                 for h in row[count > 0].tolist())
    kept = sorted(h for h, df in document_frequency.items() if df >= min_df)
    if not kept:
        logger.warning(f"No word n-gram occurs in {min_df} of the {num_texts} training texts: no lexical view.")
        return None
    view = LLMEmbedLexicalView(len(kept), labels.shape[1] if multi_label else num_labels)
    view.ngram_hashes.copy_(torch.tensor(kept, dtype=torch.long))
    frequency = torch.tensor([document_frequency[h] for h in kept], dtype=torch.float32)
    view.idf.copy_(torch.log((1 + num_texts) / (1 + frequency)) + 1)
    features = tfidf_matrix(view, inputs)
    smoothing = 1 / (num_texts + 1)
    if multi_label:
        targets = torch.as_tensor(labels, dtype=torch.float32)
        prior = targets.mean(0).clamp(smoothing, 1 - smoothing)
        bias = torch.logit(prior)
        log_loss = partial(F.binary_cross_entropy_with_logits, target=targets, reduction="sum")
    else:
        targets = torch.as_tensor(labels, dtype=torch.long)
        prior = torch.bincount(targets, minlength=num_labels).float() / num_texts
        bias = torch.log(prior.clamp(min=smoothing))
        log_loss = partial(F.cross_entropy, target=targets, reduction="sum")
    weight = torch.zeros_like(view.weight, requires_grad=True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-6, tolerance_change=1e-9, history_size=20)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = log_loss(torch.sparse.mm(features, weight) + bias) + weight.pow(2).sum() / (2 * c)
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        view.weight.copy_(weight)
        view.bias.copy_(bias)
    logger.info(f"Lexical view: {len(kept)} n-grams, {'one-vs-rest' if multi_label else 'multinomial'} logistic "
                f"regression (C={c}) on {num_texts} texts.")
    return view


__all__ = ["fit_lexical_view", "lexical_inputs", "lexical_logits", "select_rows", "tfidf_matrix"]
