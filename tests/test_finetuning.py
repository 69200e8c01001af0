"""Single-task fine-tuning (LoRA and full) of any backbone (`llmembed_hf.finetuning`), on conftest's tiny random
backbones; ``llmembed finetune`` is tested in test_cli.py.

Every run trains a real (tiny) model with `Trainer`; the assertions compare logits, files and parameter sets, so a
model that trained the wrong weights, saved the base model or pooled the wrong token fails them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub.utils import HFValidationError
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from helpers import (
    FINETUNE_NAMES as NAMES,
    finetune_keyword_rows as keyword_rows,
    install_fake_hub,
    interrupted_after,
    write_dataset,
)
from llmembed_hf import FinetuneArguments, finetune, load_finetuned, push_finetuned
from llmembed_hf.finetuning import load_classifier
from llmembed_hf.modeling.tokenization_llmembed import ensure_pad_token

TEXTS = ["the good film", "a very bad movie on the mat", "cat", "the cat sat on the mat very very good"]


@dataclass
class Run:
    model: Any
    tokenizer: Any
    report: Any
    output: Path

    def logits(self, model: Any = None, texts: list[str] = TEXTS) -> torch.Tensor:
        model = model or self.model
        model.eval()
        batch = self.tokenizer(texts, padding=True, return_tensors="pt")
        with torch.inference_mode():
            return model(**batch).logits


def run_finetune(backbone: str, data: Path, output: Path, **args: Any) -> Run:
    values = dict(epochs=2, batch_size=8, learning_rate=5e-3, lora_r=4, lora_alpha=8, lora_dropout=0.0) | args
    model, tokenizer, report = finetune(backbone, data, output, FinetuneArguments(**values))
    return Run(model, tokenizer, report, output)


@pytest.fixture(scope="module")
def lora_llama(tiny_backbones, finetune_data, tmp_path_factory) -> Run:
    return run_finetune(tiny_backbones["llama"], finetune_data, tmp_path_factory.mktemp("lora") / "out")


@pytest.fixture(scope="module")
def full_bert(tiny_backbones, finetune_data, tmp_path_factory) -> Run:
    return run_finetune(tiny_backbones["bert"], finetune_data, tmp_path_factory.mktemp("full") / "out",
                        method="full", learning_rate=2e-3, epochs=10)


def folder_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def safetensors_keys(path: Path) -> list[str]:
    with safe_open(str(path), "pt") as handle:
        return list(handle.keys())


# ----------------------------------------------------------------------------------------------------------------------
# LoRA
# ----------------------------------------------------------------------------------------------------------------------


def test_lora_trains_only_adapters_and_the_head(lora_llama, tiny_backbones):
    trainable = [name for name, p in lora_llama.model.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in trainable) and any("lora_B" in n for n in trainable)
    assert any("modules_to_save" in n and "score" in n for n in trainable)
    assert all("lora_" in n or "modules_to_save" in n for n in trainable), trainable
    # PEFT's defaults for Llama: q_proj and v_proj of every layer
    assert {n.split(".")[-4] for n in trainable if "lora_A" in n} == {"q_proj", "v_proj"}
    assert lora_llama.report.parameters["trainable"] == sum(
        p.numel() for p in lora_llama.model.parameters() if p.requires_grad)
    assert lora_llama.report.parameters["trainable"] < lora_llama.report.parameters["total"] / 5
    # the frozen base weights are exactly the checkpoint's
    base = AutoModelForSequenceClassification.from_pretrained(tiny_backbones["llama"], num_labels=3)
    tuned = lora_llama.model.get_base_model()
    assert torch.equal(tuned.model.layers[0].self_attn.q_proj.base_layer.weight,
                       base.model.layers[0].self_attn.q_proj.weight)
    assert torch.equal(tuned.model.embed_tokens.weight, base.model.embed_tokens.weight)
    # ... while the adapter did move (LoRA B starts at zero)
    assert tuned.model.layers[0].self_attn.q_proj.lora_B["default"].weight.abs().sum() > 0


def test_lora_saves_only_the_adapter(lora_llama, tiny_backbones):
    files = folder_files(lora_llama.output)
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
            "README.md", "training_report.json"} <= files
    assert not {"model.safetensors", "config.json", "checkpoints"} & files
    assert not any(name.endswith(".bin") for name in files)
    keys = safetensors_keys(lora_llama.output / "adapter_model.safetensors")
    assert keys and all("lora_" in k or "score" in k for k in keys), keys
    adapter = (lora_llama.output / "adapter_model.safetensors").stat().st_size
    full = (Path(tiny_backbones["llama"]) / "model.safetensors").stat().st_size
    assert adapter < full / 5
    assert lora_llama.report.parameters["saved_bytes"] == adapter
    config = json.loads((lora_llama.output / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and config["r"] == 4
    assert config["base_model_name_or_path"] == tiny_backbones["llama"]
    assert "score" in config["modules_to_save"] or config["modules_to_save"] is None  # PEFT adds it at load


def test_lora_reloads_and_merges_to_the_same_logits(lora_llama):
    expected = lora_llama.logits()
    loaded, tokenizer = load_finetuned(lora_llama.output)
    assert type(loaded).__name__ == "PeftModelForSequenceClassification"
    assert tokenizer.pad_token_id == lora_llama.report.pad_token_id
    torch.testing.assert_close(lora_llama.logits(loaded), expected, atol=1e-5, rtol=1e-5)
    merged = loaded.merge_and_unload()
    assert type(merged).__name__ == "LlamaForSequenceClassification"
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(lora_llama.logits(merged), expected, atol=1e-5, rtol=1e-4)


def test_lora_round_trip_with_auto_peft_model(lora_llama):
    from peft import AutoPeftModelForSequenceClassification

    report = lora_llama.report
    id2label = {int(k): v for k, v in report.id2label.items()}
    model = AutoPeftModelForSequenceClassification.from_pretrained(
        lora_llama.output, num_labels=len(id2label), id2label=id2label,
        label2id={v: k for k, v in id2label.items()}, pad_token_id=report.pad_token_id,
    )
    torch.testing.assert_close(lora_llama.logits(model), lora_llama.logits(), atol=1e-5, rtol=1e-5)
    assert model.config.id2label == id2label


def test_lora_in_pipeline(lora_llama):
    logits = lora_llama.logits()
    loaded, tokenizer = load_finetuned(lora_llama.output)
    classifier = pipeline("text-classification", model=loaded, tokenizer=tokenizer, device="cpu")
    outputs = classifier(TEXTS)
    assert [o["label"] for o in outputs] == [NAMES[i] for i in logits.argmax(-1).tolist()]
    assert [o["score"] for o in outputs] == pytest.approx(logits.softmax(-1).max(-1).values.tolist(), abs=1e-5)


def test_lora_report_and_card(lora_llama):
    report = json.loads((lora_llama.output / "training_report.json").read_text())
    assert report["method"] == "lora" and report["num_train"] == 54 and report["num_validation"] == 6
    assert report["num_eval"] == 15 and set(report["eval_metrics"]) >= {"accuracy", "macro_f1"}
    assert [e["epoch"] for e in report["log_history"] if "eval_accuracy" in e] == [1.0, 2.0]
    assert report["id2label"] == {"0": "bad", "1": "good", "2": "pet"}
    card = (lora_llama.output / "README.md").read_text()
    assert "library_name: peft" in card and "pipeline_tag: text-classification" in card
    assert "base_model:" not in card  # a local folder is no Hub id
    assert f"{report['parameters']['trainable']:,}" in card
    assert f"{report['eval_metrics']['accuracy']:.4f}" in card


# ----------------------------------------------------------------------------------------------------------------------
# Full fine-tuning
# ----------------------------------------------------------------------------------------------------------------------


def test_full_finetune_saves_the_whole_model_and_reloads(full_bert, tiny_backbones):
    files = folder_files(full_bert.output)
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "training_report.json"} <= files
    assert not {"adapter_model.safetensors", "adapter_config.json", "checkpoints"} & files
    assert full_bert.report.parameters["trainable"] == full_bert.report.parameters["total"]
    keys = safetensors_keys(full_bert.output / "model.safetensors")
    assert len(keys) == len(full_bert.model.state_dict())
    # every weight trained, not only the head
    base = AutoModelForSequenceClassification.from_pretrained(tiny_backbones["bert"], num_labels=3)
    assert not torch.equal(full_bert.model.bert.embeddings.word_embeddings.weight,
                           base.bert.embeddings.word_embeddings.weight)
    reloaded = AutoModelForSequenceClassification.from_pretrained(full_bert.output)
    torch.testing.assert_close(full_bert.logits(reloaded), full_bert.logits(), atol=1e-6, rtol=1e-6)
    outputs = pipeline("text-classification", model=str(full_bert.output), device="cpu")(TEXTS)
    assert [o["label"] for o in outputs] == [NAMES[i] for i in full_bert.logits().argmax(-1).tolist()]
    assert "library_name: transformers" in (full_bert.output / "README.md").read_text()


def test_full_finetune_learns_the_keywords(full_bert):
    assert full_bert.report.eval_metrics["accuracy"] > 0.6  # chance is 1/3


def test_full_finetune_with_frozen_embeddings_trains_everything_else(full_bert, tiny_backbones, finetune_data,
                                                                     tmp_path):
    run = run_finetune(tiny_backbones["bert"], finetune_data, tmp_path, method="full", learning_rate=2e-3, epochs=2,
                       freeze_embeddings=True)
    embeddings = run.model.get_input_embeddings().weight
    assert not embeddings.requires_grad
    assert run.report.parameters["trainable"] == full_bert.report.parameters["total"] - embeddings.numel()
    assert run.report.hyperparameters["freeze_embeddings"] is True
    base = AutoModelForSequenceClassification.from_pretrained(tiny_backbones["bert"], num_labels=3)
    assert torch.equal(embeddings, base.bert.embeddings.word_embeddings.weight)
    # the position embeddings and the layers still train
    assert not torch.equal(run.model.bert.embeddings.position_embeddings.weight,
                           base.bert.embeddings.position_embeddings.weight)
    assert not torch.equal(run.model.bert.encoder.layer[0].attention.self.query.weight,
                           base.bert.encoder.layer[0].attention.self.query.weight)
    # saved whole, like any full fine-tune
    reloaded = AutoModelForSequenceClassification.from_pretrained(run.output)
    torch.testing.assert_close(run.logits(reloaded), run.logits(), atol=1e-6, rtol=1e-6)


def test_training_only_the_seen_embedding_rows_gives_the_same_model(full_bert, tiny_backbones, finetune_data,
                                                                    tmp_path):
    """Rows of tokens absent from the training texts get no gradient, so leaving them out changes nothing."""
    run = run_finetune(tiny_backbones["bert"], finetune_data, tmp_path / "out", method="full", learning_rate=2e-3,
                       epochs=10, seen_embeddings_only=True)
    assert isinstance(run.model.get_input_embeddings(), torch.nn.Embedding)  # merged back before saving
    assert run.report.parameters["trainable"] < full_bert.report.parameters["trainable"]
    whole = dict(full_bert.model.named_parameters())
    seen = dict(run.model.named_parameters())
    assert whole.keys() == seen.keys()
    for name, value in whole.items():
        torch.testing.assert_close(seen[name], value, atol=1e-5, rtol=1e-4, msg=name)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_backbones["bert"], num_labels=3)
    trained_rows = (run.model.get_input_embeddings().weight != base.get_input_embeddings().weight).any(-1)
    assert 0 < trained_rows.sum() < len(trained_rows)
    reloaded = AutoModelForSequenceClassification.from_pretrained(run.output)
    torch.testing.assert_close(run.logits(reloaded), full_bert.logits(), atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------------------------------
# Decoder pooling on the last non-pad token
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["right", "left"])
def test_decoder_pools_the_last_non_pad_token(tiny_backbones, side):
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbones["llama"])
    assert tokenizer.pad_token is None
    pad_token_id = ensure_pad_token(tokenizer)
    assert tokenizer.pad_token == tokenizer.eos_token
    torch.manual_seed(0)
    model, new_modules = load_classifier(tiny_backbones["llama"], dict(enumerate(NAMES)), pad_token_id)
    assert new_modules == ["score"] and model.config.pad_token_id == pad_token_id
    model.eval()
    tokenizer.padding_side = side
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()
    with torch.inference_mode():
        logits = model(**batch).logits
        alone = torch.cat([model(**tokenizer(t, return_tensors="pt")).logits for t in TEXTS])
        hidden = model.model(**batch).last_hidden_state
    torch.testing.assert_close(logits, alone, atol=1e-5, rtol=1e-4)
    last = batch["attention_mask"].shape[1] - 1 if side == "left" else batch["attention_mask"].sum(-1) - 1
    last = torch.as_tensor(last).expand(len(TEXTS))
    torch.testing.assert_close(logits, model.score(hidden[torch.arange(len(TEXTS)), last]), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# Pushing
# ----------------------------------------------------------------------------------------------------------------------


def test_push_uploads_exactly_the_saved_files(lora_llama, monkeypatch):
    hub = install_fake_hub(monkeypatch)
    push_finetuned(lora_llama.output, "org/tiny-lora", commit_message="adapter", private=True, revision="dev")
    push_finetuned(lora_llama.output, "org/tiny-lora", create_pr=True)
    commit, pr = hub.commits
    assert set(commit.files) == {p.name for p in lora_llama.output.iterdir() if p.is_file()}
    assert (commit.commit_message, commit.revision, commit.create_pr) == ("adapter", "dev", False)
    assert pr.create_pr and pr.commit_message == "Upload lora fine-tuned model"
    assert hub.repos[0]["private"] is True
    assert commit.files["adapter_model.safetensors"] == (lora_llama.output / "adapter_model.safetensors").read_bytes()
    assert "org/tiny-lora" in commit.files["README.md"].decode()


def test_push_names_the_canonical_base_model(lora_llama, tmp_path, monkeypatch):
    """A backbone known by a Hub id (here: a report naming one) is the pushed adapter's base model, not a path."""
    folder = tmp_path / "copy"
    folder.mkdir()
    for path in lora_llama.output.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    report = json.loads((folder / "training_report.json").read_text())
    report["backbone"]["model_id"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    (folder / "training_report.json").write_text(json.dumps(report))
    hub = install_fake_hub(monkeypatch)
    push_finetuned(folder, "org/tiny-lora")
    files = hub.commits[0].files
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] != report["backbone"][
        "model_id"]  # the local folder keeps a base that loads here
    card = files["README.md"].decode()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "base_model_relation: adapter" in card


def test_invalid_repo_id_fails_before_training(tiny_backbones, finetune_data, tmp_path, monkeypatch):
    hub = install_fake_hub(monkeypatch)
    with pytest.raises(HFValidationError):
        finetune(tiny_backbones["bert"], finetune_data, tmp_path / "out", push_to_hub="not a/valid//id")
    assert not (tmp_path / "out").exists() and not hub.commits


# ----------------------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------------------


def test_missing_column(tiny_backbones, finetune_data, tmp_path):
    with pytest.raises(ValueError, match="column 'sentence' not found"):
        finetune(tiny_backbones["bert"], finetune_data, tmp_path / "out", text_column="sentence")


def test_labels_out_of_range(tiny_backbones, tmp_path):
    rows = keyword_rows(12, 0) + [{"text": "the cat", "label": 7}]
    data = write_dataset(tmp_path / "data", rows, keyword_rows(6, 1))
    with pytest.raises(ValueError, match=r"label id\(s\) \[7\] outside 0..2"):
        finetune(tiny_backbones["bert"], data, tmp_path / "out")


def test_multi_label_or_regression_data_points_at_llmembed_train(tiny_backbones, multi_label_data, regression_data,
                                                                 tmp_path):
    for data, kind in ((multi_label_data, "multi_label_classification"), (regression_data, "regression")):
        with pytest.raises(ValueError, match=rf"are {kind}, but fine-tuning trains single-label classifiers only.*"
                                             "llmembed train"):
            finetune(tiny_backbones["bert"], data, tmp_path / "out")


def test_unknown_backbone(finetune_data, tmp_path):
    with pytest.raises(OSError, match="could not find weights for 'no-such-org/no-such-model'"):
        finetune("no-such-org/no-such-model", finetune_data, tmp_path / "out")


@pytest.mark.parametrize("method", ["lora", "full-seen-embeddings"])
def test_resumed_finetune_gives_the_same_weights(tiny_backbones, finetune_data, tmp_path, monkeypatch, method):
    """A fine-tune killed after its first epoch and resumed ends with the weights of an uninterrupted run: the LoRA
    adapter, or the full model whose checkpoints hold the seen embedding rows apart."""
    import llmembed_hf.finetuning as finetuning_module
    from llmembed_hf.finetuning import weight_files
    from llmembed_hf.training_args import OutputArguments

    method_args = (dict(lora_r=4, lora_alpha=8, lora_dropout=0.0) if method == "lora"
                   else dict(method="full", seen_embeddings_only=True))
    args = FinetuneArguments(epochs=3, batch_size=8, learning_rate=5e-3, **method_args)
    finetune(tiny_backbones["llama"], finetune_data, tmp_path / "whole", args)

    output = OutputArguments(str(tmp_path / "resumed"), resume=True)
    with monkeypatch.context() as patch:
        patch.setattr(finetuning_module, "Trainer", interrupted_after(finetuning_module.Trainer, epoch=1))
        with pytest.raises(KeyboardInterrupt):
            finetune(tiny_backbones["llama"], finetune_data, output, args)
    finetune(tiny_backbones["llama"], finetune_data, output, args)

    def weights(folder: Path) -> dict[str, torch.Tensor]:
        [path] = weight_files(folder)
        with safe_open(path, "pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}

    whole, resumed = weights(tmp_path / "whole"), weights(tmp_path / "resumed")
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[key], resumed[key]) for key in whole)


def test_a_pair_split_is_tokenised_as_pairs(tiny_backbones):
    """Fine-tuning reads detected pairs too: each row is the backbone tokenizer's own pair encoding."""
    from llmembed_hf.data import LabelledTexts
    from llmembed_hf.finetuning import tokenize_split

    tokenizer = AutoTokenizer.from_pretrained(tiny_backbones["bert"])
    split = LabelledTexts(["the cat", "a dog sat"], [0, 1], ["good film", "bad"])
    rows = tokenize_split(split, tokenizer, 16)
    assert rows["input_ids"] == tokenizer(split.texts, split.pairs, truncation=True, max_length=16)["input_ids"]
    assert rows["input_ids"] != tokenize_split(LabelledTexts(split.texts, split.labels), tokenizer, 16)["input_ids"]


# ----------------------------------------------------------------------------------------------------------------------
# Length-grouped batches
# ----------------------------------------------------------------------------------------------------------------------


def test_group_by_length_batches_texts_of_similar_length(tiny_backbones, finetune_data, tmp_path, monkeypatch):
    """With group_by_length the Trainer draws batches with transformers' LengthGroupedSampler, so a batch holds
    fewer pads than the random batches of the default; both runs train to a model."""
    import llmembed_hf.finetuning as finetuning_module
    from transformers.trainer_pt_utils import LengthGroupedSampler

    padding: dict[bool, list[float]] = {True: [], False: []}

    class Recording(finetuning_module.Trainer):
        def training_step(self, model, inputs, *args, **kwargs):
            mask = inputs["attention_mask"]
            padding[self.args.train_sampling_strategy == "group_by_length"].append(1 - mask.float().mean().item())
            return super().training_step(model, inputs, *args, **kwargs)

    monkeypatch.setattr(finetuning_module, "Trainer", Recording)
    samplers = []
    real_sampler = Recording._get_train_sampler
    monkeypatch.setattr(Recording, "_get_train_sampler",
                        lambda self, *a, **k: samplers.append(real_sampler(self, *a, **k)) or samplers[-1])
    for grouped in (False, True):
        run_finetune(tiny_backbones["bert"], finetune_data, tmp_path / str(grouped), method="full", epochs=2,
                     batch_size=4, group_by_length=grouped)
    assert [isinstance(s, LengthGroupedSampler) for s in samplers] == [False, True]
    assert sum(padding[True]) / len(padding[True]) < sum(padding[False]) / len(padding[False])


def test_group_by_length_scores_the_test_split_against_its_own_labels(tiny_backbones, finetune_data, tmp_path):
    """transformers groups the evaluation loader by length too, so predictions come back out of the split's order: the
    report's test accuracy and confusion matrix must equal the returned model's predictions text by text."""
    import numpy as np

    from llmembed_hf.data import load_classification_splits
    from llmembed_hf.training_args import DataArguments

    run = run_finetune(tiny_backbones["bert"], finetune_data, tmp_path, method="full", epochs=10, batch_size=4,
                       learning_rate=2e-3, group_by_length=True)
    splits = load_classification_splits(DataArguments(str(finetune_data)))
    predictions = run.logits(texts=splits.evaluation.texts).argmax(-1).numpy()
    labels = np.asarray(splits.evaluation.labels)
    assert len(set(len(ids) for ids in run.tokenizer(splits.evaluation.texts)["input_ids"])) > 1  # lengths differ
    assert len(set(predictions.tolist())) > 1  # a model that learned: an order mix-up would show
    assert run.report.eval_metrics["accuracy"] == pytest.approx(float((predictions == labels).mean()))
    expected = np.zeros((len(splits.names), len(splits.names)), dtype=int)
    np.add.at(expected, (labels, predictions), 1)
    assert np.asarray(run.report.confusion_matrix).tolist() == expected.tolist()


def test_padding_a_fixed_batch_further_changes_no_loss(tiny_backbones):
    """Length grouping changes which rows share a batch and how much they are padded; on a fixed batch the loss does
    not depend on the padding beyond float tolerance (pads are masked out)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbones["bert"])
    model, _ = load_classifier(tiny_backbones["bert"], {0: "a", 1: "b"}, ensure_pad_token(tokenizer))
    model.eval()
    labels = torch.tensor([0, 1, 0, 1])
    tight = tokenizer(TEXTS, padding=True, return_tensors="pt")
    loose = tokenizer(TEXTS, padding="max_length", max_length=tight["input_ids"].shape[1] + 12, return_tensors="pt")
    assert loose["input_ids"].shape[1] > tight["input_ids"].shape[1]
    with torch.no_grad():
        losses = [model(**batch, labels=labels).loss for batch in (tight, loose)]
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=1e-5)
