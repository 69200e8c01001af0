"""The lexical view: word n-gram counts, TF-IDF, its logistic regression, and a head that blends it, end to end."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from helpers import MULTI_LABEL_NAMES, TRAINED_EPOCHS
from safetensors.torch import load_file

from llmembed_hf import HeadTrainingArguments, LLMEmbedForSequenceClassification, train_head
from llmembed_hf.data import load_labelled
from llmembed_hf.lexical import fit_lexical_view, lexical_inputs, lexical_logits, select_rows, tfidf_matrix
from llmembed_hf.metrics import multi_label_scores
from llmembed_hf.modeling.modeling_llmembed import LLMEmbedLexicalView, blend_lexical
from llmembed_hf.modeling.tokenization_llmembed import lexical_ngram_counts, ngram_hash


def test_ngram_counts_are_lowercased_words_and_bigrams_by_a_stable_hash():
    counts = lexical_ngram_counts("Good cat, good CAT! a")  # "a": one character, not a word (as scikit-learn)
    expected = {"good": 2, "cat": 2, "good cat": 2, "cat good": 1}
    assert counts == {ngram_hash(gram): n for gram, n in expected.items()}
    # blake2b, not Python's per-process salted hash(): saved vocabularies stay valid in every process.
    assert ngram_hash("good cat") == int.from_bytes(hashlib.blake2b(b"good cat", digest_size=8).digest(), "little") >> 1
    assert lexical_ngram_counts("") == {} and lexical_ngram_counts("a ! ?") == {}


def test_tfidf_is_sublinear_idf_weighted_and_unit_norm():
    view = LLMEmbedLexicalView(3, 1)
    view.ngram_hashes.copy_(torch.tensor(sorted(ngram_hash(g) for g in ("good", "cat", "good cat"))))
    idf = {h: float(i + 1) for i, h in enumerate(view.ngram_hashes.tolist())}
    view.idf.copy_(torch.tensor([idf[h] for h in view.ngram_hashes.tolist()]))
    inputs = lexical_inputs(["good good cat dog", "", "dog"])
    dense = tfidf_matrix(view, inputs).to_dense()
    raw = {ngram_hash("good"): (1 + math.log(2)) * idf[ngram_hash("good")],
           ngram_hash("cat"): idf[ngram_hash("cat")], ngram_hash("good cat"): idf[ngram_hash("good cat")]}
    norm = math.sqrt(sum(v * v for v in raw.values()))  # "good good", "cat dog", "dog": not in the vocabulary
    for column, h in enumerate(view.ngram_hashes.tolist()):
        assert dense[0, column].item() == pytest.approx(raw[h] / norm)
    assert dense[1:].abs().sum() == 0  # no word, or no known n-gram: an all-zero row, not NaN


def test_fit_lexical_view_separates_keyword_labels_and_matches_its_module():
    texts = ["good day here", "bad day here", "good cat", "bad cat", "a cat today", "good news", "bad news", "cat"]
    labels = np.array([[1, 0], [0, 1], [1, 0], [0, 1], [0, 0], [1, 0], [0, 1], [0, 0]])
    view = fit_lexical_view(lexical_inputs(texts), labels, c=100.0)
    assert view is not None and len(view.idf) == len(view.ngram_hashes)
    kept = set(view.ngram_hashes.tolist())
    assert ngram_hash("good") in kept and ngram_hash("today") not in kept  # min_df=2
    assert view.ngram_hashes.tolist() == sorted(kept)
    inputs = lexical_inputs(["good morning", "bad morning", "nothing"])
    probabilities = 1 / (1 + np.exp(-lexical_logits(view, inputs)))
    assert probabilities[0, 0] > 0.5 > probabilities[0, 1] and probabilities[1, 1] > 0.5 > probabilities[1, 0]
    with torch.no_grad():  # the module's forward is the sparse product the fit optimised
        dense = tfidf_matrix(view, inputs).to_dense() @ view.weight + view.bias
    np.testing.assert_allclose(lexical_logits(view, inputs), dense.numpy(), rtol=1e-5, atol=1e-6)
    assert fit_lexical_view(lexical_inputs(["one", "two"]), np.array([[1], [0]])) is None  # no n-gram in two texts
    # A fold's rows, selected from the inputs of all texts, fit the view their own texts fit.
    fold = fit_lexical_view(select_rows(lexical_inputs(texts), np.arange(6)), labels[:6], c=100.0)
    alone = fit_lexical_view(lexical_inputs(texts[:6]), labels[:6], c=100.0)
    for name, value in alone.state_dict().items():
        torch.testing.assert_close(fold.state_dict()[name], value)


def test_blend_is_a_probability_mix_in_logit_space():
    head, lexical = torch.tensor([[0.0, 3.0]]), torch.tensor([[2.0, -3.0]])
    blended = blend_lexical(head, lexical, 0.25)
    expected = 0.75 * torch.sigmoid(head) + 0.25 * torch.sigmoid(lexical)
    torch.testing.assert_close(torch.sigmoid(blended), expected)
    torch.testing.assert_close(blend_lexical(head, lexical, 0.0), head)


def test_single_label_blend_is_a_geometric_mix_of_softmaxes():
    head, lexical = torch.tensor([[0.0, 3.0, 1.0]]), torch.tensor([[2.0, -3.0, 0.5]])
    blended = blend_lexical(head, lexical, 0.25, multi_label=False)
    mix = torch.softmax(head, -1) ** 0.75 * torch.softmax(lexical, -1) ** 0.25
    torch.testing.assert_close(torch.softmax(blended, -1), mix / mix.sum())
    torch.testing.assert_close(blend_lexical(head, lexical, 0.0, multi_label=False), head)


def test_single_label_fit_is_the_multinomial_optimum():
    """The fitted weights and bias zero the gradient of ``c * cross-entropy + |w|^2 / 2``: it is the minimum of the
    objective the docstring names (a convex one), not a few steps towards it."""
    texts = ["good day here", "bad day here", "good cat", "bad cat", "a cat today", "the cat", "good news", "bad news"]
    labels = np.array([0, 1, 0, 1, 2, 2, 0, 1])
    inputs = lexical_inputs(texts)
    view = fit_lexical_view(inputs, labels, c=1.0, num_labels=4)  # class 3 has no row: it still gets a column
    assert view.weight.shape == (len(view.idf), 4)
    features = tfidf_matrix(view, inputs).to_dense()
    weight, bias = view.weight.detach().clone().requires_grad_(), view.bias.detach().clone().requires_grad_()
    loss = torch.nn.functional.cross_entropy(features @ weight + bias, torch.tensor(labels), reduction="sum")
    (loss + weight.pow(2).sum() / 2).backward()
    assert weight.grad.abs().max() < 1e-3 and bias.grad[:3].abs().max() < 1e-3  # float32 L-BFGS
    predicted = lexical_logits(view, lexical_inputs(["good morning", "bad morning", "cat morning"])).argmax(-1)
    assert predicted.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="need num_labels"):
        fit_lexical_view(inputs, labels)


def test_tokenizer_returns_lexical_inputs_only_for_a_head_with_a_view(tiny_config):
    from llmembed_hf.modeling.tokenization_llmembed import LLMEmbedTokenizer

    config = tiny_config(num_labels=3, problem_type="multi_label_classification")
    tokenizer = LLMEmbedTokenizer.from_backbone_specs(config.backbone_specs)
    assert not any(key.startswith("lexical") for key in tokenizer(["good cat"]))
    tokenizer.lexical_view = True
    batch = tokenizer(["good cat", ""], return_tensors="pt")
    expected = lexical_inputs(["good cat", ""])
    torch.testing.assert_close(batch["lexical_ids"], expected["lexical_ids"])
    torch.testing.assert_close(batch["lexical_counts"], expected["lexical_counts"])
    single = tokenizer("good cat")
    assert sorted(single["lexical_ids"]) == sorted(lexical_ngram_counts("good cat"))
    pair_tokenizer = LLMEmbedTokenizer.from_backbone_specs(config.backbone_specs, "joint")
    pair_tokenizer.lexical_view = True
    with pytest.raises(ValueError, match="lexical view reads single texts"):
        pair_tokenizer("a", text_pair="b")


@pytest.fixture(scope="module")
def trained_lexical(tiny_backbones, multi_label_data, tmp_path_factory):
    from helpers import tiny_head_config

    folder = tmp_path_factory.mktemp("lexical")
    tiny_head_config(tiny_backbones).save_pretrained(folder / "preset")
    training = HeadTrainingArguments(epochs=TRAINED_EPOCHS, batch_size=16, learning_rate=3e-3)  # on by default
    model, report = train_head(multi_label_data, folder / "head", preset=str(folder / "preset" / "config.json"),
                               training=training)
    return folder / "head", model, report


def test_train_head_blends_a_lexical_view_end_to_end(trained_lexical, multi_label_data):
    """The keywords decide the labels: the view is kept, raises macro-F1, is saved (safetensors, config, tokenizer)
    and the saved folder's pipeline decides exactly as the report's scores say."""
    from transformers import AutoModelForSequenceClassification, pipeline

    output, model, report = trained_lexical
    lexical = report.lexical_view
    assert lexical["kept"] and 0 < lexical["weight"] < 1 and lexical["vocab_size"] > 0
    assert lexical["criterion"] == "macro_f1"
    assert set(lexical["candidates"]) == {str(w) for w in np.round(np.arange(0, 0.91, 0.1), 1)}
    assert lexical["candidates"][str(lexical["weight"])] == max(lexical["candidates"].values())
    assert lexical["fitted_rows"] == report.num_validation + report.num_train  # validation + out-of-fold rows
    test = lexical["splits"]["test"]
    assert test["macro_f1_with"] >= test["macro_f1_without"] and test["macro_f1_with"] > 0.9
    config = json.loads((output / "config.json").read_text())
    assert config["lexical_vocab_size"] == lexical["vocab_size"] and config["lexical_blend"] == lexical["weight"]
    assert json.loads((output / "tokenizer_config.json").read_text())["lexical_view"] is True
    weights = load_file(output / "model.safetensors")
    assert weights["lexical_view.ngram_hashes"].dtype == torch.int64
    assert weights["lexical_view.weight"].shape == (lexical["vocab_size"], 3)

    texts = load_labelled(multi_label_data, "test", label_column="labels",
                          problem_type="multi_label_classification")[0]
    results = pipeline("text-classification", model=str(output), device="cpu")(texts.texts, top_k=None)
    decided = np.array([[next(e["score"] for e in r if e["label"] == name) >= 0.5 for name in MULTI_LABEL_NAMES]
                        for r in results])
    assert multi_label_scores(decided, np.array(texts.labels)) == pytest.approx(report.eval_metrics)
    assert report.eval_metrics["macro_f1"] == pytest.approx(test["macro_f1_with"])

    loaded = AutoModelForSequenceClassification.from_pretrained(output).eval()
    torch.testing.assert_close(loaded.lexical_view.weight, model.lexical_view.weight)
    features = torch.randn(2, loaded.config.feature_size)
    with pytest.raises(ValueError, match="blends a lexical view"):
        loaded(pooled_features=features)
    with torch.no_grad():
        served = loaded(pooled_features=features, **lexical_inputs(["good", "cat bad"])).logits
        head = torch.stack([h(features) for h in loaded.fusion_heads]).mean(0)
        view = loaded.lexical_view(**lexical_inputs(["good", "cat bad"]))
    expected = blend_lexical(head, view, loaded.config.lexical_blend) - torch.logit(
        torch.tensor(loaded.config.decision_thresholds))
    torch.testing.assert_close(served, expected)
    assert "lexical view" in (output / "README.md").read_text()


def test_train_head_blends_a_single_label_lexical_view(tiny_backbones, finetune_data, tmp_path):
    """Asked for (off by default for single-label heads), the view is fitted multinomially, chosen on validation
    accuracy before the temperature, saved, and the saved folder's pipeline returns softmax(blend / temperature)."""
    from helpers import FINETUNE_NAMES, tiny_head_config
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    tiny_head_config(tiny_backbones).save_pretrained(tmp_path / "preset")
    preset = str(tmp_path / "preset" / "config.json")
    _, default = train_head(finetune_data, tmp_path / "default", preset=preset,
                            training=HeadTrainingArguments(epochs=2, batch_size=16))
    assert default.lexical_view == {} and default.eval_metrics["accuracy"] < 1.0  # off by default; a weak head
    model, report = train_head(finetune_data, tmp_path / "head", preset=preset,
                               training=HeadTrainingArguments(epochs=2, batch_size=16, lexical_view=True))
    lexical = report.lexical_view
    assert lexical["criterion"] == "accuracy" and lexical["kept"] and lexical["fitted_rows"] == report.num_validation
    assert lexical["candidates"][str(lexical["weight"])] == max(lexical["candidates"].values())
    test = lexical["splits"]["test"]
    assert test["accuracy_without"] == default.eval_metrics["accuracy"]  # the same head, before the view
    # Every weight > 0 is right on the 6 validation rows; the log-loss breaks the tie (the view is sure of keywords).
    assert set(list(lexical["candidates"].values())[1:]) == {1.0} and lexical["weight"] == 0.9
    assert report.eval_metrics["accuracy"] == test["accuracy_with"] == 1.0  # the keywords decide the classes
    output = tmp_path / "head"
    assert json.loads((output / "config.json").read_text())["lexical_blend"] == lexical["weight"]
    assert json.loads((output / "tokenizer_config.json").read_text())["lexical_view"] is True
    assert "multinomial logistic regression" in (output / "README.md").read_text()

    loaded = AutoModelForSequenceClassification.from_pretrained(output).eval()
    texts = ["a bad film", "the good mat", "cat on the mat"]
    tokenizer = AutoTokenizer.from_pretrained(output)
    with torch.no_grad():
        features = loaded.encode(**{k: v for k, v in tokenizer(texts, return_tensors="pt").items()
                                    if not k.startswith("lexical")})
        head = loaded.head(features)
        view = loaded.lexical_view(**lexical_inputs(texts))
    weight, temperature = loaded.config.lexical_blend, loaded.config.calibration_temperature
    assert temperature != 1.0  # fitted on the blend
    expected = torch.softmax(((1 - weight) * head + weight * view) / temperature, -1)
    results = pipeline("text-classification", model=str(output), device="cpu")(texts, top_k=None)
    served = torch.tensor([[next(e["score"] for e in r if e["label"] == name) for name in FINETUNE_NAMES]
                           for r in results])
    torch.testing.assert_close(served, expected.float(), rtol=1e-4, atol=1e-5)
    assert served.argmax(-1).tolist() == [0, 1, 2]


def test_lexical_view_refuses_other_problem_types(tiny_backbones, pair_data, regression_data, tmp_path, tiny_config):
    from helpers import tiny_head_config

    tiny_head_config(tiny_backbones).save_pretrained(tmp_path / "preset")
    for data in (pair_data, regression_data):
        with pytest.raises(ValueError, match="lexical_view serves classifiers of single texts"):
            train_head(data, tmp_path / "head", preset=str(tmp_path / "preset" / "config.json"),
                       training=HeadTrainingArguments(epochs=1, lexical_view=True))
    with pytest.raises(ValueError, match="not a classifier of single texts"):
        tiny_config(num_labels=1, problem_type="regression", lexical_vocab_size=5)
    with pytest.raises(ValueError, match="no lexical view"):
        tiny_config(num_labels=3, problem_type="multi_label_classification", lexical_blend=0.3)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        tiny_config(num_labels=3, problem_type="multi_label_classification", lexical_vocab_size=5, lexical_blend=1.0)
    model = LLMEmbedForSequenceClassification(tiny_config(num_labels=3, problem_type="multi_label_classification"))
    with pytest.raises(TypeError, match="without a lexical view"):
        model(pooled_features=torch.zeros(1, model.config.feature_size), **lexical_inputs(["x y"]))


def test_cli_trains_evaluates_and_predicts_with_a_lexical_view(tiny_preset, multi_label_data, tmp_path, capsys):
    """``llmembed train --lexical-view``; ``evaluate`` and ``predict`` (one head, and several in one pass) read the
    view as the pipeline does."""
    from helpers import parse_json_output

    from llmembed_hf.cli import main
    from llmembed_hf.multi_head import MultiHeadClassifier

    output = tmp_path / "head"
    assert main(["train", "--dataset", str(multi_label_data), "--preset", tiny_preset, "--output-dir", str(output),
                 "--epochs", "5", "--batch-size", "16", "--lr", "3e-3", "--lexical-view", "true"]) == 0
    result = parse_json_output(capsys.readouterr().out)
    assert json.loads((output / "config.json").read_text())["lexical_blend"] is not None
    assert main(["evaluate", "--model", str(output), "--dataset", str(multi_label_data), "--split", "test"]) == 0
    scores = parse_json_output(capsys.readouterr().out)
    assert {k: scores[k] for k in result["test"]} == pytest.approx(result["test"])  # blend and thresholds applied

    texts = ["a good cat", "bad bad day", "the mat"]
    assert main(["predict", "--model", str(output), *(f"--text={t}" for t in texts), "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    together = MultiHeadClassifier([str(output)], names=["emotion"])(texts)
    assert [row["labels"] for row in rows] == [row["emotion"]["labels"] for row in together]
    for row, joint in zip(rows, together):
        alone = {e["label"]: e["score"] for e in row["scores"]}
        assert {e["label"]: e["score"] for e in joint["emotion"]["scores"]} == pytest.approx(alone, abs=1e-5)


@pytest.mark.integration
@pytest.mark.parametrize("dataset, options, problem_type, criterion", [
    ("goemotions", [], "multi_label_classification", "macro_f1"),  # on by default for multi-label heads
    ("r8", ["--lexical-view", "true"], "single_label_classification", "accuracy"),
])
def test_llmembed_train_small_preset_keeps_a_lexical_view(tmp_path, dataset, options, problem_type, criterion):
    """The default `small` preset on a slice of real data through the installed CLI: the lexical view is fitted
    (by default on GoEmotions, asked for on R8) and kept (chosen on the 100 validation rows, and for multi-label the
    900 out-of-fold rows too), and `llmembed evaluate` on the saved folder scores the test rows exactly as training
    reported."""
    import subprocess

    from conftest import require
    from helpers import SHARED_DATASETS, cache_reusing_weights, parse_json_output
    from test_cli import BIN, subprocess_env

    data = SHARED_DATASETS / dataset
    require((data / "train.jsonl.gz").is_file(), f"shared dataset {data}")
    output = tmp_path / f"{dataset}-small"
    env = subprocess_env(str(cache_reusing_weights(tmp_path)))
    trained = subprocess.run(
        [str(BIN / "llmembed"), "train", "--dataset", str(data), "--output-dir", str(output),
         "--max-train-samples", "1000", "--max-eval-samples", "200", *options],
        capture_output=True, text=True, env=env, timeout=1800)
    assert trained.returncode == 0, trained.stderr[-4000:]
    printed = parse_json_output(trained.stdout)
    report = json.loads((output / "training_report.json").read_text())
    lexical = report["lexical_view"]
    assert report["problem_type"] == problem_type and lexical["criterion"] == criterion and lexical["kept"], lexical
    config = json.loads((output / "config.json").read_text())
    assert config["lexical_blend"] == lexical["weight"] and config["lexical_vocab_size"] == lexical["vocab_size"]
    evaluated = subprocess.run(
        [str(BIN / "llmembed"), "evaluate", "--model", str(output), "--dataset", str(data), "--split", "test",
         "--max-samples", "200"], capture_output=True, text=True, env=env, timeout=1800)
    assert evaluated.returncode == 0, evaluated.stderr[-4000:]
    scores = parse_json_output(evaluated.stdout)
    assert {key: scores[key] for key in printed["test"]} == pytest.approx(printed["test"])
