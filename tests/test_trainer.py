"""The fusion-head line (`llmembed_hf.trainer`): `fit_head` on pooled features, `train_head` end to end and the
Hub-style folder it saves, on tiny random backbones."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset

from helpers import (
    FILLER,
    MULTI_LABEL_NAMES,
    NAMES,
    TRAINED_EPOCHS,
    interrupted_after,
    multi_label_keyword_rows,
    regression_keyword_rows,
    write_split,
)
from llmembed_hf import HeadTrainingArguments, LLMEmbedForSequenceClassification, fit_head, train_head
from llmembed_hf.data import load_labelled
from llmembed_hf.features import FEATURES_COLUMN
from llmembed_hf.trainer import predict_logits
from llmembed_hf.training_args import OutputArguments

FEATURE_SIZE = 3 * 48 + 32


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


def test_epoch_checkpoints_hold_the_head_only_and_the_final_save_the_tokenizer(tiny_config, tmp_path):
    """Per-epoch checkpoints need only the weights (a Gemma vocabulary is tens of MB each); a later save_pretrained
    writes the tokenizer beside the head as usual."""
    model = LLMEmbedForSequenceClassification.from_backbones(tiny_config())
    assert model.tokenizer is not None
    fit_head(model, separable_features(64, seed=1), separable_features(32, seed=2), tmp_path / "checkpoints",
             HeadTrainingArguments(epochs=2, batch_size=32))
    checkpoints = sorted((tmp_path / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and all((c / "model.safetensors").is_file() for c in checkpoints)
    assert not [c for c in checkpoints if (c / "tokenizer_config.json").exists()]
    model.save_pretrained(tmp_path / "final")
    assert (tmp_path / "final" / "tokenizer_config.json").is_file()


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


def test_train_head_on_pairs_learns_from_the_second_text(tiny_preset, pair_data, tmp_path):
    """The label of pair_data depends on the second text only: a head that reads the pairs scores well above chance
    (siamese here, set through HeadArguments: each side's vector is a single text's, which the tiny random backbones
    separate as they do single keyword texts; joint features are checked for equality with a direct forward in
    test_feature_store.py)."""
    from llmembed_hf import HeadArguments

    model, report = train_head(pair_data, tmp_path / "out", preset=tiny_preset,
                               head=HeadArguments(pair_encoding="siamese"),
                               training=HeadTrainingArguments(epochs=TRAINED_EPOCHS, batch_size=16,
                                                              learning_rate=3e-3))
    assert model.config.pair_encoding == {"llm": "siamese", "encoder": "siamese"}
    assert report.text_pair_column == "text_pair" and report.hyperparameters["pair_encoding"]
    assert report.eval_metrics["accuracy"] >= 0.8


def test_train_head_refuses_a_head_and_data_of_different_kinds(tiny_config, pair_data, keyword_data, tmp_path):
    names = dict(enumerate(NAMES))
    single = LLMEmbedForSequenceClassification.from_backbones(tiny_config(id2label=names))
    with pytest.raises(ValueError, match=r"the data are text pairs but the model classifies single texts"):
        train_head(pair_data, tmp_path / "a", model=single)
    paired = LLMEmbedForSequenceClassification.from_backbones(tiny_config(id2label=names, pair_encoding="joint"))
    with pytest.raises(ValueError, match=r"the head classifies text pairs .* but the data have no pair column"):
        train_head(keyword_data, tmp_path / "b", model=paired)
    with pytest.raises(ValueError, match=r"the data have no pair column"):
        train_head(pair_data, tmp_path / "c", model=paired, text_pair_column="none")


# ----------------------------------------------------------------------------------------------------------------------
# The output folder: no pickles, replaced whole, refused when it is not ours, resumable
# ----------------------------------------------------------------------------------------------------------------------

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle")


def _head(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "model.safetensors")


def test_output_folder_holds_no_pickle_and_no_checkpoint(tiny_preset, keyword_data, tmp_path):
    output = OutputArguments(str(tmp_path / "runs" / "head"))
    train_head(keyword_data, output, preset=tiny_preset, training=HeadTrainingArguments(epochs=2, batch_size=16))
    files = [p for p in (tmp_path / "runs" / "head").rglob("*") if p.is_file()]
    assert files and not [p for p in files if p.suffix in PICKLE_SUFFIXES], files
    assert not (tmp_path / "runs" / "head" / "checkpoints").exists()
    assert not output.checkpoint_dir.exists()  # removed at the end unless keep_checkpoints
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["head"]  # no staging or previous folder left


def test_a_folder_no_llmembed_run_wrote_is_refused_unless_overwrite(tiny_preset, keyword_data, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    training = HeadTrainingArguments(epochs=1, batch_size=16)
    with pytest.raises(ValueError, match=r"not empty and no llmembed run wrote it .*overwrite=True"):
        train_head(keyword_data, folder, preset=tiny_preset, training=training)
    assert (folder / "notes.txt").read_text() == "my notes"
    train_head(keyword_data, OutputArguments(str(folder), overwrite=True), preset=tiny_preset, training=training)
    assert not (folder / "notes.txt").exists() and (folder / "training_report.json").is_file()


def test_a_rerun_replaces_the_folder_whole(tiny_preset, keyword_data, tmp_path):
    """An earlier run's files (here a stale one) never survive into the next run's folder."""
    training = HeadTrainingArguments(epochs=1, batch_size=16)
    train_head(keyword_data, tmp_path / "head", preset=tiny_preset, training=training)
    (tmp_path / "head" / "stale.png").write_bytes(b"old plot")
    train_head(keyword_data, tmp_path / "head", preset=tiny_preset, training=training)
    assert not (tmp_path / "head" / "stale.png").exists()


def test_resume_continues_an_interrupted_run_to_the_same_head(tiny_preset, keyword_data, tmp_path, monkeypatch):
    import llmembed_hf.trainer as trainer_module

    training = HeadTrainingArguments(epochs=4, batch_size=16, seed=3)
    train_head(keyword_data, tmp_path / "whole", preset=tiny_preset, training=training)

    output = OutputArguments(str(tmp_path / "resumed"), resume=True)
    with monkeypatch.context() as patch:
        patch.setattr(trainer_module, "Trainer", interrupted_after(trainer_module.Trainer, epoch=2))
        with pytest.raises(KeyboardInterrupt):
            train_head(keyword_data, output, preset=tiny_preset, training=training)
    assert not (tmp_path / "resumed").exists()  # nothing published by the interrupted run
    assert sorted(p.name for p in output.checkpoint_dir.iterdir() if p.name.startswith("checkpoint-"))

    _, report = train_head(keyword_data, output, preset=tiny_preset, training=training)
    whole, resumed = _head(tmp_path / "whole"), _head(tmp_path / "resumed")
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert [e["epoch"] for e in report.log_history if "eval_accuracy" in e] == [1.0, 2.0, 3.0, 4.0]


def test_calibration_lowers_the_nll_of_an_overconfident_head(tiny_config):
    """`calibrate` on a deliberately over-confident toy head: validation NLL drops, predictions stay the same."""
    from llmembed_hf.trainer import calibrate

    model = fresh_head(tiny_config)
    validation = separable_features(256, seed=2)
    with torch.no_grad():
        for layer in model.head.classifier:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.mul_(6.0)  # sharper logits, same ranking
    before = predict_logits(model, validation)
    labels = validation[:]["labels"].tolist()
    result = calibrate(model, {"validation": (before, labels)})
    split = result["splits"]["validation"]
    assert model.config.calibration_temperature == result["temperature"] > 1.0
    assert split["nll_after"] < split["nll_before"] and split["ece_after"] < split["ece_before"]
    after = predict_logits(model, validation)
    assert np.array_equal(after.argmax(-1), before.argmax(-1))
    assert np.allclose(after, before / result["temperature"], atol=1e-5)


def test_train_head_stores_the_temperature_and_shows_calibration(trained):
    output, model, report = trained
    config = json.loads((output / "config.json").read_text())
    assert config["calibration_temperature"] == pytest.approx(report.calibration["temperature"]) == model.config.calibration_temperature
    assert set(report.calibration["splits"]) == {"validation", "test"}
    card = (output / "README.md").read_text()
    assert "ECE before" in card and "reliability_diagram.png" in card and (output / "reliability_diagram.png").is_file()


# ----------------------------------------------------------------------------------------------------------------------
# Multi-label and regression heads
# ----------------------------------------------------------------------------------------------------------------------


def test_train_head_multi_label_end_to_end(trained_multi_label, multi_label_data):
    """A `labels` list column: BCE, thresholds tuned on validation and stored in the config, scores at them, and
    the saved folder's pipeline deciding as the scores say."""
    from transformers import pipeline

    from llmembed_hf.metrics import compute_multi_label_metrics

    output, model, report = trained_multi_label
    config = json.loads((output / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification" and report.problem_type == config["problem_type"]
    assert config["id2label"] == {"0": "praise", "1": "complaint", "2": "pet"}
    thresholds = config["decision_thresholds"]
    assert len(thresholds) == 3 and all(0 < t < 1 for t in thresholds)
    assert report.label_column == "labels" and not report.calibration and not report.confusion_matrix
    assert list(report.thresholds["thresholds"].values()) == thresholds
    assert set(report.thresholds["splits"]) == {"validation", "test"}
    assert set(report.eval_metrics) == {"micro_f1", "macro_f1", "samples_f1", "subset_accuracy"}
    assert report.eval_metrics["macro_f1"] == pytest.approx(report.thresholds["splits"]["test"]["macro_f1_after"])
    assert report.eval_metrics["micro_f1"] >= 0.8  # the keywords decide the labels (chance: about 0.5)
    # Epochs were chosen on validation macro-F1 (at thresholds tuned on it).
    evals = [e["eval_macro_f1"] for e in report.log_history if "eval_macro_f1" in e]
    assert len(evals) == TRAINED_EPOCHS and report.validation_metrics["eval_macro_f1"] == pytest.approx(max(evals))

    test = load_labelled(multi_label_data, "test", label_column="labels",
                         problem_type="multi_label_classification")[0]
    classifier = pipeline("text-classification", model=str(output), device="cpu")
    results = classifier(test.texts, top_k=None)
    assert all(len(r) == 3 for r in results)
    names = ["praise", "complaint", "pet"]
    decided = np.array([[next(e["score"] for e in r if e["label"] == name) >= 0.5 for name in names] for r in results])
    from llmembed_hf.metrics import multi_label_scores

    assert multi_label_scores(decided, np.array(test.labels)) == pytest.approx(report.eval_metrics)
    logits = np.log(1 / np.array([[e["score"] for e in sorted(r, key=lambda e: names.index(e["label"]))]
                                  for r in results]) - 1) * -1
    raw = logits + np.log(np.array(thresholds) / (1 - np.array(thresholds)))  # undo the folded-in thresholds
    assert compute_multi_label_metrics((raw, np.array(test.labels)), thresholds) == pytest.approx(report.eval_metrics)
    for png in ("per_label_f1.png", "training_curves.png"):
        assert (output / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert not (output / "confusion_matrix.png").exists() and not (output / "reliability_diagram.png").exists()


def test_multi_label_thresholds_are_tuned_on_validation_and_out_of_fold_training_rows(trained_multi_label,
                                                                                       multi_label_data):
    """By default (`threshold_folds=5`) each label's threshold is `fit_thresholds` on the head's validation logits
    together with the training rows' out-of-fold logits; the card says so."""
    from llmembed_hf.data import load_classification_splits
    from llmembed_hf.features import ExtractionConfig
    from llmembed_hf.metrics import fit_thresholds, sigmoid
    from llmembed_hf.trainer import split_features, train_fold_heads
    from llmembed_hf.training_args import DataArguments

    output, model, report = trained_multi_label
    splits = load_classification_splits(DataArguments(str(multi_label_data)), seed=42)
    assert report.thresholds["folds"] == HeadTrainingArguments().threshold_folds == 5
    assert report.thresholds["fitted_rows"] == len(splits.validation.texts) + len(splits.train.texts) == 160
    features = {name: split_features(model, split, ExtractionConfig())
                for name, split in (("train", splits.train), ("validation", splits.validation))}
    raw = LLMEmbedForSequenceClassification(model.config.__class__.from_dict(model.config.to_dict()))
    raw.load_state_dict(model.state_dict())
    raw.config.decision_thresholds = None
    training = HeadTrainingArguments(**{key: report.hyperparameters[key] for key in
                                        ("epochs", "batch_size", "learning_rate", "seed", "threshold_folds")})
    _, out_of_fold = train_fold_heads(model, features["train"], features["validation"], training)
    logits = np.concatenate([predict_logits(raw, features["validation"]), out_of_fold])
    labels = np.concatenate([np.asarray(splits.validation.labels), np.asarray(splits.train.labels)])
    expected = fit_thresholds(sigmoid(logits), labels)
    assert model.config.decision_thresholds == pytest.approx(expected, abs=1e-6)
    assert fit_thresholds(sigmoid(logits[:16]), labels[:16]) != pytest.approx(expected, abs=1e-6)
    assert "out-of-fold scores of the training rows (5 folds" in (output / "README.md").read_text()


def test_fold_heads_never_saw_the_rows_they_score(tiny_config, monkeypatch):
    """Every training row is scored once, by the head of the one fold that left it out; that head is returned."""
    import llmembed_hf.trainer as trainer_module

    model = LLMEmbedForSequenceClassification(tiny_config(num_labels=3, problem_type="multi_label_classification"))
    generator = torch.Generator().manual_seed(0)
    rows = Dataset.from_dict({FEATURES_COLUMN: torch.randn(50, FEATURE_SIZE, generator=generator).tolist(),
                              "labels": torch.randint(0, 2, (50, 3), generator=generator).float().tolist(),
                              "row": list(range(50))}).with_format("torch")
    validation = rows.select(range(10))
    trained_on, scored = [], []
    fit_head, predict = trainer_module.fit_head, trainer_module.predict_logits
    monkeypatch.setattr(trainer_module, "fit_head", lambda m, train, *a, **k: (
        trained_on.append({int(r) for r in train[:]["row"]}), fit_head(m, train, *a, **k))[1])
    monkeypatch.setattr(trainer_module, "predict_logits", lambda m, features: (
        scored.append({int(r) for r in features[:]["row"]}), predict(m, features))[1])
    heads, logits = trainer_module.train_fold_heads(model, rows, validation, HeadTrainingArguments(
        epochs=1, batch_size=16, threshold_folds=4))
    assert logits.shape == (50, 3) and len(trained_on) == len(scored) == len(heads) == 4
    assert sorted(row for fold in scored for row in fold) == list(range(50))
    assert all(not (train & held_out) and train | held_out == set(range(50))
               for train, held_out in zip(trained_on, scored))
    features = rows[:][FEATURES_COLUMN]
    for head, held_out in zip(heads, scored):
        held_out = sorted(held_out)
        torch.testing.assert_close(head.eval()(features[held_out]), torch.from_numpy(logits[held_out]))


def test_fold_heads_are_kept_when_they_lower_the_validation_loss(trained_multi_label):
    """The threshold folds' heads stay in the model exactly when their mean with the head has no higher validation
    loss than the head alone (`fold_heads_help`, recorded in the report)."""
    _, model, report = trained_multi_label
    losses = report.thresholds["fold_heads_validation_loss"]
    assert set(losses) == {"head_alone", "with_fold_heads"} and all(v > 0 for v in losses.values())
    kept = 5 if losses["with_fold_heads"] <= losses["head_alone"] else 0
    assert model.config.num_fold_heads == report.thresholds["fold_heads"] == len(model.fold_heads) == kept


def test_fold_heads_help_compares_validation_losses(tiny_config):
    import torch.nn.functional as F

    from llmembed_hf.modeling.modeling_llmembed import LLMEmbedFusionHead
    from llmembed_hf.trainer import fold_heads_help

    torch.manual_seed(0)
    config = tiny_config(num_labels=3, problem_type="multi_label_classification")
    model = LLMEmbedForSequenceClassification(config).eval()
    heads = [LLMEmbedFusionHead(config).eval() for _ in range(2)]
    generator = torch.Generator().manual_seed(1)
    validation = Dataset.from_dict({FEATURES_COLUMN: torch.randn(40, config.feature_size, generator=generator).numpy(),
                                    "labels": torch.randint(0, 2, (40, 3), generator=generator).float().numpy()}
                                   ).with_format("torch")
    features, labels = validation[:][FEATURES_COLUMN], validation[:]["labels"]
    with torch.no_grad():
        alone = model(pooled_features=features).logits
        model.add_fold_heads(heads)
        together = model(pooled_features=features).logits
    model.fold_heads = torch.nn.ModuleList()
    losses = fold_heads_help(model, heads, validation, labels.tolist())
    assert losses == pytest.approx({"head_alone": F.binary_cross_entropy_with_logits(alone, labels).item(),
                                    "with_fold_heads": F.binary_cross_entropy_with_logits(together, labels).item()})
    assert not model.fold_heads  # it compares; keeping them is `train_head`'s decision


@pytest.mark.parametrize("with_fold_heads, kept", [(0.1, 5), (0.9, 0)])
def test_train_head_keeps_the_fold_heads_as_validation_says(multi_label_data, tiny_preset, tmp_path, monkeypatch,
                                                            with_fold_heads, kept):
    """Kept: the model scores with the mean of the six heads' logits (saved, loaded, in the card); dropped, or
    ``keep_fold_heads=False``: the same head alone, thresholds still tuned on the folds' scores."""
    from transformers import AutoModelForSequenceClassification

    import llmembed_hf.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "fold_heads_help", lambda *args: {"head_alone": 0.5,
                                                                          "with_fold_heads": with_fold_heads})
    training = dict(epochs=3, batch_size=16, learning_rate=3e-3, lexical_view=False)
    model, report = train_head(multi_label_data, tmp_path / "head", preset=tiny_preset,
                               training=HeadTrainingArguments(**training))
    assert model.config.num_fold_heads == report.thresholds["fold_heads"] == len(model.fold_heads) == kept
    card = (tmp_path / "head" / "README.md").read_text()
    assert ("in 6 fusion heads whose logits are averaged" in card) == ("the model keeps those heads" in card) == bool(kept)
    assert ("those heads were not kept (validation loss 0.90000 with them, 0.50000" in card) == (not kept)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "head").eval()
    features = torch.randn(4, model.config.feature_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mean = torch.stack([head.eval()(features) for head in loaded.fusion_heads]).mean(0)
        thresholds = torch.logit(torch.tensor(loaded.config.decision_thresholds))
        torch.testing.assert_close(loaded(pooled_features=features).logits, mean - thresholds)
    assert len(loaded.fusion_heads) == 1 + kept

    monkeypatch.setattr(trainer_module, "fold_heads_help", lambda *args: pytest.fail("not asked"))
    single, single_report = train_head(multi_label_data, tmp_path / "single", preset=tiny_preset,
                                       training=HeadTrainingArguments(**training, keep_fold_heads=False))
    assert single.config.num_fold_heads == single_report.thresholds["fold_heads"] == 0
    assert single_report.thresholds["folds"] == 5
    for name, value in single.head.state_dict().items():  # the same head: the folds train apart from it
        torch.testing.assert_close(value, model.head.state_dict()[name])


@pytest.mark.parametrize("folds", [1, -2, 2.5, True])
def test_threshold_folds_must_be_zero_or_at_least_two(folds):
    with pytest.raises(ValueError, match=r"threshold_folds=.* must be 0 .* or an integer >= 2"):
        HeadTrainingArguments(threshold_folds=folds)


def test_train_head_regression_end_to_end(trained_regression, regression_data):
    """Non-integer scores: one output, MSE, Pearson/Spearman/MSE, no temperature; the pipeline returns the score."""
    from transformers import pipeline

    output, model, report = trained_regression
    config = json.loads((output / "config.json").read_text())
    assert config["problem_type"] == "regression" and config["id2label"] == {"0": "LABEL_0"}
    assert config["calibration_temperature"] == 1.0 and config.get("decision_thresholds") is None
    assert not report.calibration and not report.thresholds and not report.confusion_matrix
    assert set(report.eval_metrics) == {"pearson", "spearman", "mse"}
    assert report.eval_metrics["spearman"] >= 0.7  # the count of "good" decides the score
    assert len(report.scatter["gold"]) == report.scatter["num_rows"] == 24 and report.scatter["split"] == "test"
    evals = [e["eval_spearman"] for e in report.log_history if "eval_spearman" in e]
    assert len(evals) == TRAINED_EPOCHS and report.validation_metrics["eval_spearman"] == pytest.approx(max(evals))

    test = load_labelled(regression_data, "test")[0]
    results = pipeline("text-classification", model=str(output), device="cpu")(test.texts)
    assert {r["label"] for r in results} == {"LABEL_0"}
    from llmembed_hf.metrics import regression_scores

    predicted = [r["score"] for r in results]
    assert predicted == pytest.approx(report.scatter["predicted"], abs=1e-5)
    assert regression_scores(predicted, test.labels) == pytest.approx(report.eval_metrics, abs=1e-5)
    assert (output / "predicted_vs_gold.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (output / "reliability_diagram.png").exists()


def test_a_model_with_one_output_reads_whole_numbers_as_regression(tiny_config, keyword_data, tmp_path):
    """``num_labels=1`` means regression (as in transformers), even for labels that look like class ids."""
    torch.manual_seed(0)
    model = LLMEmbedForSequenceClassification.from_backbones(tiny_config(num_labels=1))
    model, report = train_head(keyword_data, tmp_path / "out", model=model,
                               training=HeadTrainingArguments(epochs=2, batch_size=16))
    assert model.config.problem_type == report.problem_type == "regression"
    assert set(report.eval_metrics) == {"pearson", "spearman", "mse"}


def test_train_head_rejects_a_model_of_another_problem_type(tiny_config, multi_label_data, tmp_path):
    model = LLMEmbedForSequenceClassification.from_backbones(
        tiny_config(num_labels=3, id2label=dict(enumerate(["praise", "complaint", "pet"])),
                    problem_type="single_label_classification"))
    with pytest.raises(ValueError, match=r"row \d+: the label \[.*\] is a list.*'multi_label_classification'"):
        train_head(multi_label_data, tmp_path / "out", model=model)


# ----------------------------------------------------------------------------------------------------------------------
# Problem types with text pairs
# ----------------------------------------------------------------------------------------------------------------------


def second_text_rows(rows: list[dict], seed: int) -> list[dict]:
    """``rows`` as pairs whose second text is the row's text and whose first is filler words: the labels then depend
    on the second text only, so a head scoring well above chance reads the pairs."""
    rng = random.Random(seed)
    return [{"text": " ".join(rng.choice(FILLER) for _ in range(rng.randint(2, 5))), "text_pair": row["text"],
             **{k: v for k, v in row.items() if k != "text"}} for row in rows]


def test_train_head_regression_on_text_pairs_end_to_end(tiny_preset, tmp_path):
    """STS-B's layout (text, text_pair, a float label): detected as regression on pairs; trained, scored with
    Pearson/Spearman, saved with its pair encoding, and served by the pipeline from {"text", "text_pair"} inputs with
    the scores the run reported."""
    from transformers import pipeline

    from llmembed_hf import HeadArguments
    from llmembed_hf.metrics import regression_scores

    data = tmp_path / "stsb"
    write_split(data, "train", second_text_rows(regression_keyword_rows(80, seed=0), seed=0))
    write_split(data, "test", second_text_rows(regression_keyword_rows(24, seed=1), seed=1))
    output = tmp_path / "out"
    model, report = train_head(data, output, preset=tiny_preset, head=HeadArguments(pair_encoding="siamese"),
                               training=HeadTrainingArguments(epochs=TRAINED_EPOCHS, batch_size=16,
                                                              learning_rate=3e-3))
    config = json.loads((output / "config.json").read_text())
    assert config["problem_type"] == report.problem_type == "regression" and config["id2label"] == {"0": "LABEL_0"}
    assert config["pair_encoding"] == {"llm": "siamese", "encoder": "siamese"}
    assert report.text_pair_column == "text_pair" and report.label_column == "label"
    assert set(report.eval_metrics) == {"pearson", "spearman", "mse"}
    assert report.eval_metrics["spearman"] >= 0.7  # the count of "good" in the second text decides the score
    # both backbones siamese: the head's score and two cosines blended, fitted on validation by least squares, so
    # no worse there in squared error than the head alone (weights [1, 0, 0, 0])
    assert len(config["similarity_blend"]) == 4 and list(report.similarity_blend["weights"]) == [
        "head", "llm cosine", "enc cosine", "bias"]
    fitted = report.similarity_blend["splits"]["validation"]
    assert fitted["mse_after"] <= fitted["mse_before"] + 1e-9
    # the tiny encoder's cosines barely vary: left out (weight 0) rather than fitted with a huge weight and bias that
    # make the served score depend on float noise (a weight of -120,696 once, scores 1/128 apart from the report's)
    assert config["similarity_blend"][2] == 0.0 and max(abs(w) for w in config["similarity_blend"]) < 100
    assert report.similarity_blend["splits"]["test"]["spearman_after"] == pytest.approx(report.eval_metrics["spearman"])

    test = load_labelled(data, "test", text_pair_column="auto")[0]
    assert test.problem_type == "regression" and test.pairs is not None
    results = pipeline("text-classification", model=str(output), device="cpu")(
        [{"text": a, "text_pair": b} for a, b in zip(test.texts, test.pairs)])
    predicted = [r["score"] for r in results]
    assert predicted == pytest.approx(report.scatter["predicted"], abs=1e-5)
    assert regression_scores(predicted, test.labels) == pytest.approx(report.eval_metrics, abs=1e-5)
    card = (output / "README.md").read_text()
    assert "paired with the column `text_pair`" in card and "spearmanr" in card and "function_to_apply" in card
    assert "blends the head's score with each siamese backbone's cosine" in card

    unblended, plain = train_head(data, tmp_path / "plain", preset=tiny_preset,
                                  head=HeadArguments(pair_encoding="siamese"),
                                  training=HeadTrainingArguments(epochs=TRAINED_EPOCHS, batch_size=16,
                                                                 learning_rate=3e-3, blend_similarity=False))
    assert unblended.config.similarity_blend is None and not plain.similarity_blend
    assert plain.eval_metrics["spearman"] == pytest.approx(report.similarity_blend["splits"]["test"]["spearman_before"])


def test_train_head_multi_label_on_text_pairs(tiny_preset, tmp_path):
    """A `labels` list per pair: multi-label on pairs, thresholds tuned, the pipeline deciding as the scores say."""
    from transformers import pipeline

    from llmembed_hf import HeadArguments
    from llmembed_hf.metrics import multi_label_scores

    data = tmp_path / "pairs"
    write_split(data, "train", second_text_rows(multi_label_keyword_rows(160, seed=0), seed=0))
    write_split(data, "test", second_text_rows(multi_label_keyword_rows(24, seed=1), seed=1))
    (data / "labels.json").write_text(json.dumps(MULTI_LABEL_NAMES))
    output = tmp_path / "out"
    model, report = train_head(data, output, preset=tiny_preset, head=HeadArguments(pair_encoding="siamese"),
                               training=HeadTrainingArguments(epochs=TRAINED_EPOCHS, batch_size=16,
                                                              learning_rate=3e-3))
    assert model.config.problem_type == "multi_label_classification" and model.config.pair_encoding is not None
    assert len(model.config.decision_thresholds) == len(MULTI_LABEL_NAMES)
    assert report.eval_metrics["micro_f1"] >= 0.8

    test = load_labelled(data, "test", text_pair_column="auto")[0]
    results = pipeline("text-classification", model=str(output), device="cpu")(
        [{"text": a, "text_pair": b} for a, b in zip(test.texts, test.pairs)], top_k=None)
    decided = np.array([[next(e["score"] for e in r if e["label"] == name) >= 0.5 for name in MULTI_LABEL_NAMES]
                        for r in results])
    assert multi_label_scores(decided, np.array(test.labels)) == pytest.approx(report.eval_metrics)
