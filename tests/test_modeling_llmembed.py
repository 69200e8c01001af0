"""The LLMEmbed head (`modeling_llmembed`): the paper preset's shape, the text and feature paths, pooling and padding,
training and saving only the head, losses, Trainer, loading with other labels, and errors, on tiny random local
backbones."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForSequenceClassification

from llmembed_hf import LLMEmbedConfig, LLMEmbedForSequenceClassification, LLMEmbedTokenizer
from llmembed_hf.modeling.modeling_llmembed import (
    ALLOW_MISMATCH_ENV,
    check_backbone_sha256,
    first_token_pool,
    last_token_pool,
    mean_pool,
)

TEXTS = ["the cat sat on the mat", "a very good movie!", "bad film"]
LONG_TEXT = "the dog sat on a mat and the cat sat on the dog " * 3
FEATURE_SIZE = 3 * 48 + 32  # tiny_config: three Llama views and one BERT view


@pytest.fixture
def head_only(tiny_config):
    """Factory: a head without backbones (eval mode) for ``tiny_config(**kwargs)``."""

    def make(**kwargs) -> LLMEmbedForSequenceClassification:
        torch.manual_seed(0)
        return LLMEmbedForSequenceClassification(tiny_config(**kwargs)).eval()

    return make


@pytest.fixture
def text_model(tiny_config):
    """Factory: a fresh head with the tiny backbones loaded through the resolver (eval mode)."""

    def make(**kwargs) -> LLMEmbedForSequenceClassification:
        torch.manual_seed(0)
        return LLMEmbedForSequenceClassification.from_backbones(tiny_config(**kwargs)).eval()

    return make


def random_features(batch: int = 4, width: int = FEATURE_SIZE) -> torch.Tensor:
    return torch.randn(batch, width, generator=torch.Generator().manual_seed(1)) * 3


# ----------------------------------------------------------------------------------------------------------------------
# 1. Paper preset
# ----------------------------------------------------------------------------------------------------------------------


def test_paper_preset_head_matches_reference(monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("building a head from a config must not load backbones")

    monkeypatch.setattr(LLMEmbedForSequenceClassification, "backbone_loader", staticmethod(no_loading))
    model = LLMEmbedForSequenceClassification(LLMEmbedConfig.from_preset("paper", num_labels=2))

    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 25_485_058
    assert model.backbones == {}
    projections = list(model.head.projections)
    assert len(projections) == 7
    for projection in projections[:5]:  # the five Llama-2 layers
        linear = projection[0]
        assert isinstance(linear, nn.Linear) and (linear.in_features, linear.out_features) == (4096, 1024)
    assert all(isinstance(p, nn.Identity) for p in projections[5:])  # BERT-large and RoBERTa-large, already 1024
    linears = [m for m in model.head.classifier if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4145, 1024), (1024, 256), (256, 2)]


# ----------------------------------------------------------------------------------------------------------------------
# 2-3. Text path, pooling and padding
# ----------------------------------------------------------------------------------------------------------------------


def test_text_path_equals_feature_path(text_model):
    model = text_model()
    encoded = model.tokenizer(TEXTS, return_tensors="pt")
    assert sorted(encoded) == ["enc_attention_mask", "enc_input_ids", "llm_attention_mask", "llm_input_ids"]
    features = model.encode(**encoded)
    assert features.shape == (len(TEXTS), FEATURE_SIZE) and features.dtype == torch.float32
    assert torch.equal(model(**encoded).logits, model(pooled_features=features).logits)


@pytest.mark.parametrize("pooling", ["mean", "cls", "last_token"])
def test_features_do_not_depend_on_padding(text_model, pooling):
    model = text_model(llm={"pooling": pooling}, enc={"pooling": pooling})
    alone = model.tokenizer([TEXTS[2]], return_tensors="pt")
    batched = model.tokenizer([TEXTS[2], LONG_TEXT], return_tensors="pt")
    for name in ("llm", "enc"):  # the short text really is padded in the batch
        assert batched[f"{name}_attention_mask"][0].sum() < batched[f"{name}_attention_mask"].shape[1]
    torch.testing.assert_close(model.encode(**batched)[0], model.encode(**alone)[0], atol=1e-5, rtol=0)


def test_one_backbone_padded_and_encoded_alone_matches_its_share_of_the_features(text_model):
    model = text_model()
    ragged = model.tokenizer(TEXTS[:3], padding=False)
    padded = model.tokenizer.pad({"enc_input_ids": ragged["enc_input_ids"]}, return_tensors="pt", backbones=["enc"])
    assert sorted(padded) == ["enc_attention_mask", "enc_input_ids"]
    view = model.encode_backbone("enc", padded["enc_input_ids"], padded["enc_attention_mask"])
    full = model.encode(**model.tokenizer(TEXTS[:3], return_tensors="pt"))
    torch.testing.assert_close(view, full[:, -view.shape[1] :], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"unknown backbones \['bert'\]; this tokenizer has \['llm', 'enc'\]"):
        model.tokenizer.pad(ragged, backbones=["bert"])


PADDING_MASKS = {
    "right": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]),
    "left": torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]]),
}


@pytest.mark.parametrize("side", sorted(PADDING_MASKS))
@pytest.mark.parametrize(
    ("pool", "reference"),
    [(mean_pool, lambda real: real.mean(0)), (first_token_pool, lambda real: real[0]),
     (last_token_pool, lambda real: real[-1])],
    ids=["mean", "first", "last"],
)
def test_pooling_functions_use_only_real_tokens(side, pool, reference):
    mask = PADDING_MASKS[side]
    hidden = torch.randn(*mask.shape, 4, dtype=torch.bfloat16)
    expected = torch.stack([reference(hidden[row, mask[row].bool()].float()) for row in range(mask.shape[0])])
    pooled = pool(hidden, mask)
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, expected)


# ----------------------------------------------------------------------------------------------------------------------
# 4-5. Training only the head, saving only the head
# ----------------------------------------------------------------------------------------------------------------------


def test_gradients_reach_only_the_head(text_model):
    model = text_model()
    model.train()
    output = model(**model.tokenizer(TEXTS, return_tensors="pt"), labels=torch.tensor([0, 1, 1]))
    output.loss.backward()

    head_parameters = dict(model.head.named_parameters())
    assert head_parameters and all(p.grad is not None for p in head_parameters.values())
    assert set(model.backbones) == {"llm", "enc"}
    for backbone in model.backbones.values():
        assert not any(module.training for module in backbone.modules())
        assert all(not p.requires_grad and p.grad is None for p in backbone.parameters())
    assert all(key.startswith("head.") for key in model.state_dict())


def test_save_and_load_round_trip(text_model, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    model = text_model()
    model.save_pretrained(tmp_path)

    config = json.loads((tmp_path / "config.json").read_text())
    assert {"AutoConfig", "AutoModel", "AutoModelForSequenceClassification"} <= set(config["auto_map"])
    assert (tmp_path / "configuration_llmembed.py").is_file() and (tmp_path / "modeling_llmembed.py").is_file()

    head_values = sum(t.numel() for t in model.state_dict().values())  # parameters and standardisation buffers
    with safe_open(tmp_path / "model.safetensors", "pt") as weights:
        assert all(key.startswith("head.") for key in weights.keys())
    header = (tmp_path / "model.safetensors").stat().st_size - 4 * head_values
    assert 0 < header < 8192, f"model.safetensors holds more than the head ({header} extra bytes)"

    features = random_features()
    expected = model(pooled_features=features).logits
    for auto in (AutoModel, AutoModelForSequenceClassification):
        loaded = auto.from_pretrained(tmp_path).eval()
        assert type(loaded) is LLMEmbedForSequenceClassification
        assert torch.equal(loaded(pooled_features=features).logits, expected)

    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(tokenizer, LLMEmbedTokenizer)
    original, reloaded = model.tokenizer(TEXTS, return_tensors="pt"), tokenizer(TEXTS, return_tensors="pt")
    assert sorted(original) == sorted(reloaded)
    assert all(torch.equal(original[key], reloaded[key]) for key in original)


# ----------------------------------------------------------------------------------------------------------------------
# 6-7. Losses and Trainer
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_labels", "labels", "reference", "problem_type"),
    [
        (2, torch.tensor([0, 1, 1, 0]), F.cross_entropy, "single_label_classification"),
        (3, torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]]).float(), F.binary_cross_entropy_with_logits,
         "multi_label_classification"),
        (1, torch.tensor([0.5, -1.0, 2.0, 0.0]), lambda logits, y: F.mse_loss(logits.squeeze(-1), y), "regression"),
    ],
    ids=["single_label", "multi_label", "regression"],
)
def test_loss_follows_problem_type(head_only, num_labels, labels, reference, problem_type):
    model = head_only(num_labels=num_labels)
    output = model(pooled_features=random_features(), labels=labels)
    assert output.logits.shape == (4, num_labels)
    assert model.config.problem_type == problem_type
    torch.testing.assert_close(output.loss, reference(output.logits, labels))


def test_logits_are_raw_scores(head_only):
    logits = head_only(num_labels=3)(pooled_features=random_features()).logits
    assert not torch.allclose(logits.sum(-1), torch.ones(len(logits)))
    assert not torch.allclose(logits, logits.softmax(-1))


def test_trainer_learns_separable_features(head_only, tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    def gaussians(n: int, seed: int) -> Dataset:
        generator = torch.Generator().manual_seed(seed)
        labels = torch.arange(n) % 2
        features = torch.randn(n, FEATURE_SIZE, generator=generator) + (labels[:, None] * 2 - 1) * 0.5
        return Dataset.from_dict({"pooled_features": features.tolist(), "labels": labels.tolist()})

    model = head_only()
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=40, per_device_train_batch_size=16, learning_rate=1e-3, logging_steps=5,
        use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True, seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=gaussians(256, seed=0))
    trainer.train()

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) >= 4 and losses[-1] < losses[0] - 0.1, losses
    prediction = trainer.predict(gaussians(128, seed=1))
    accuracy = (prediction.predictions.argmax(-1) == prediction.label_ids).mean()
    assert accuracy > 0.9, accuracy


# ----------------------------------------------------------------------------------------------------------------------
# 8. Loading with other labels
# ----------------------------------------------------------------------------------------------------------------------


def test_other_num_labels_points_at_ignore_mismatched_sizes(saved_head):
    _, folder = saved_head
    with pytest.raises(Exception, match="ignore_mismatched_sizes"):
        AutoModelForSequenceClassification.from_pretrained(folder, num_labels=5)


def test_ignore_mismatched_sizes_gives_a_new_classifier(saved_head):
    model, folder = saved_head
    loaded = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=5, ignore_mismatched_sizes=True)
    assert loaded.config.num_labels == 5
    assert loaded.head.classifier[-1].out_features == 5
    assert torch.equal(loaded.head.classifier[0].weight, model.head.classifier[0].weight)


# ----------------------------------------------------------------------------------------------------------------------
# 9-10. Errors
# ----------------------------------------------------------------------------------------------------------------------


def test_head_only_model_needs_hidden_size(tiny_config):
    config = tiny_config(enc={"hidden_size": None})  # a valid config: from_backbones can read the width
    with pytest.raises(ValueError, match=r"backbones\['enc'\]\.hidden_size is missing"):
        LLMEmbedForSequenceClassification(config)


def test_from_backbones_reads_missing_widths(tiny_config):
    model = LLMEmbedForSequenceClassification.from_backbones(tiny_config(enc={"hidden_size": None}))
    assert model.config.backbones[1]["hidden_size"] == 32
    assert model.config.feature_size == 3 * 48 + 32


@pytest.mark.parametrize("how", ["from_backbones", "load_backbones"])
def test_device_asked_for_places_backbones_and_head(tiny_config, how):
    """`device=` puts the backbones there and the head follows (attaching must not move them back to the CPU).

    The meta device stands in for a GPU: moving there and back is observable without one.
    """
    config = tiny_config()
    if how == "from_backbones":
        model = LLMEmbedForSequenceClassification.from_backbones(config, device="meta")
    else:
        model = LLMEmbedForSequenceClassification(config).load_backbones(device="meta")
    assert model.device.type == "meta"
    assert {p.device.type for backbone in model.backbones.values() for p in backbone.parameters()} == {"meta"}


def test_forward_rejects_wrong_feature_width(head_only):
    with pytest.raises(ValueError, match=rf"\(2, {FEATURE_SIZE - 1}\); expected \(batch, {FEATURE_SIZE}\)"):
        head_only()(pooled_features=torch.zeros(2, FEATURE_SIZE - 1))


def test_forward_rejects_unknown_tokenised_keys(head_only):
    model = head_only()
    ids = torch.ones(1, 3, dtype=torch.long)
    expected = ["enc_attention_mask", "enc_input_ids", "llm_attention_mask", "llm_input_ids"]
    with pytest.raises(TypeError, match=r"\['bert_input_ids'\].*" + re.escape(str(expected))):
        model(bert_input_ids=ids, llm_input_ids=ids, llm_attention_mask=ids)
    assert model.backbones == {}  # rejected before any backbone was loaded


def test_backbone_sha256_mismatch(tiny_config, monkeypatch, caplog):
    monkeypatch.delenv(ALLOW_MISMATCH_ENV, raising=False)
    wrong = "0" * 64
    model = LLMEmbedForSequenceClassification(tiny_config(llm={"weights_sha256": wrong}))

    with pytest.raises(ValueError, match=rf"sha256 {wrong}.*allow_backbone_mismatch=True"):
        model.load_backbones()
    assert model.backbones == {}

    with caplog.at_level(logging.WARNING):
        model.load_backbones(allow_backbone_mismatch=True)
    assert set(model.backbones) == {"llm", "enc"}
    assert any(wrong in record.getMessage() and record.levelno == logging.WARNING for record in caplog.records)


def test_check_backbone_sha256(monkeypatch, caplog):
    monkeypatch.delenv(ALLOW_MISMATCH_ENV, raising=False)
    recorded, loaded = "a" * 64, "b" * 64
    for same_or_unrecorded in ((recorded, recorded), (None, loaded), (None, None)):
        check_backbone_sha256(*same_or_unrecorded, what="backbones['llm']", allow=False)  # nothing to refuse
    with pytest.raises(ValueError) as raised:
        check_backbone_sha256(recorded, loaded, what="backbones['llm'] (tiny/llama)")
    for needle in (recorded, loaded, "backbones['llm'] (tiny/llama)", "allow_backbone_mismatch=True", ALLOW_MISMATCH_ENV):
        assert needle in str(raised.value)
    with caplog.at_level(logging.WARNING):
        check_backbone_sha256(recorded, loaded, what="llm", allow=True)
    assert loaded in caplog.text
    monkeypatch.setenv(ALLOW_MISMATCH_ENV, "1")
    check_backbone_sha256(recorded, loaded, what="llm")  # the environment allows it
    with pytest.raises(ValueError):
        check_backbone_sha256(recorded, loaded, what="llm", allow=False)  # an explicit False wins


def test_a_recorded_sha256_that_cannot_be_verified_is_refused(monkeypatch, caplog):
    """A loader that reports no sha256 (it found nothing to hash) cannot vouch for the weights: refused by default."""
    monkeypatch.delenv(ALLOW_MISMATCH_ENV, raising=False)
    recorded = "a" * 64
    with pytest.raises(ValueError) as raised:
        check_backbone_sha256(recorded, None, what="backbones['llm'] (tiny/llama)")
    for needle in (recorded, "could not be verified", "backbones['llm'] (tiny/llama)", "allow_backbone_mismatch=True",
                   ALLOW_MISMATCH_ENV):
        assert needle in str(raised.value)
    with caplog.at_level(logging.WARNING):
        check_backbone_sha256(recorded, None, what="llm", allow=True)  # allowed by the flag: a warning
    assert "could not be verified" in caplog.text
    monkeypatch.setenv(ALLOW_MISMATCH_ENV, "1")
    check_backbone_sha256(recorded, None, what="llm")  # allowed by the environment
    with pytest.raises(ValueError, match="could not be verified"):
        check_backbone_sha256(recorded, None, what="llm", allow=False)


def test_load_backbones_refuses_a_loader_that_reports_no_sha256(tiny_config, monkeypatch):
    """The classifier with a loader that hashes nothing (as the remote-code loader did): a recorded hash is refused."""
    from llmembed_hf.modeling.modeling_llmembed import default_backbone_loader

    monkeypatch.delenv(ALLOW_MISMATCH_ENV, raising=False)
    config = tiny_config(llm={"weights_sha256": "a" * 64})

    def unhashed(spec, **kwargs):
        return (*default_backbone_loader(spec, **kwargs)[:2], None)

    monkeypatch.setattr(LLMEmbedForSequenceClassification, "backbone_loader", staticmethod(unhashed))
    head = LLMEmbedForSequenceClassification(config)
    with pytest.raises(ValueError, match="could not be verified"):
        head.load_backbones()
    assert head.backbones == {}
    head.load_backbones(allow_backbone_mismatch=True)
    assert set(head.backbones) == {"llm", "enc"}
    monkeypatch.setenv(ALLOW_MISMATCH_ENV, "1")
    assert set(LLMEmbedForSequenceClassification(config).load_backbones().backbones) == {"llm", "enc"}


@pytest.mark.parametrize("enc, message", [
    ({"layers": [-4]}, r"layers \[-4\].*3 hidden states|-4"),
    ({"max_length": 100}, r"backbones\['enc'\]\.max_length=100 exceeds the 64 positions .*at most 64"),
])
def test_a_spec_the_backbone_cannot_serve_is_refused_at_load(tiny_config, enc, message):
    """Layers the model lacks used to wrap silently, and a max_length over its positions crashed inside torch."""
    with pytest.raises(ValueError, match=message):
        LLMEmbedForSequenceClassification.from_backbones(tiny_config(enc=enc))


def test_temperature_scales_inference_scores_only(tiny_config):
    """Calibrated scores at inference; the arg-max, the training loss and evaluation with labels are unchanged."""
    torch.manual_seed(0)
    model = LLMEmbedForSequenceClassification(tiny_config(num_labels=3)).eval()
    features, labels = torch.randn(8, FEATURE_SIZE), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    raw = model(pooled_features=features).logits
    raw_loss = model(pooled_features=features, labels=labels).loss
    model.config.calibration_temperature = 4.0
    scaled = model(pooled_features=features).logits
    assert torch.allclose(scaled, raw / 4.0) and torch.equal(scaled.argmax(-1), raw.argmax(-1))
    assert torch.equal(model(pooled_features=features, labels=labels).loss, raw_loss)
    model.train()
    torch.manual_seed(1)
    train_logits = model(pooled_features=features).logits
    model.config.calibration_temperature = 1.0
    torch.manual_seed(1)
    assert torch.equal(model(pooled_features=features).logits, train_logits)  # training mode: never scaled


@pytest.mark.parametrize("value", [0, -1.0, True, "2"])
def test_a_bad_temperature_is_refused(tiny_config, value):
    with pytest.raises(ValueError, match="calibration_temperature="):
        tiny_config(calibration_temperature=value)


# ----------------------------------------------------------------------------------------------------------------------
# 10. Multi-label thresholds and regression at inference; the pipeline's output as a stock model's
# ----------------------------------------------------------------------------------------------------------------------

MULTI_LABELS = {0: "anger", 1: "joy", 2: "fear"}


def multi_label_config(tiny_config, **kwargs) -> LLMEmbedConfig:
    return tiny_config(num_labels=3, id2label=MULTI_LABELS, problem_type="multi_label_classification", **kwargs)


def test_decision_thresholds_shift_inference_logits_only(tiny_config):
    """At inference sigmoid(logit) >= 0.5 exactly where the raw probability reaches the label's threshold; the
    loss, `Trainer` evaluation (labels given) and training see the raw logits."""
    torch.manual_seed(0)
    model = LLMEmbedForSequenceClassification(multi_label_config(tiny_config)).eval()
    features, labels = random_features(8), torch.randint(0, 2, (8, 3)).float()
    raw = model(pooled_features=features).logits
    raw_loss = model(pooled_features=features, labels=labels).loss
    torch.testing.assert_close(raw_loss, F.binary_cross_entropy_with_logits(raw, labels))
    thresholds = [0.2, 0.5, 0.9]
    model.config.decision_thresholds = thresholds
    shifted = model(pooled_features=features).logits
    torch.testing.assert_close(shifted, raw - torch.logit(torch.tensor(thresholds)))
    assert torch.equal(shifted.sigmoid() >= 0.5, raw.sigmoid() >= torch.tensor(thresholds))
    assert torch.equal(model(pooled_features=features, labels=labels).loss, raw_loss)
    model.config.calibration_temperature = 3.0  # single-label only: ignored here
    torch.testing.assert_close(model(pooled_features=features).logits, shifted)


def test_decision_thresholds_round_trip_through_save_and_load(tiny_config, tmp_path):
    torch.manual_seed(0)
    model = LLMEmbedForSequenceClassification(multi_label_config(tiny_config, decision_thresholds=[0.2, 0.5, 0.9]))
    model.eval().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["decision_thresholds"] == [0.2, 0.5, 0.9]
    assert saved["problem_type"] == "multi_label_classification"
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.decision_thresholds == [0.2, 0.5, 0.9]
    features = random_features()
    torch.testing.assert_close(loaded(pooled_features=features).logits, model(pooled_features=features).logits)
    # Other labels: the saved thresholds go with the saved labels.
    other = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=5, ignore_mismatched_sizes=True)
    assert other.config.decision_thresholds is None and other.config.num_labels == 5


def _structure(output):
    """The pipeline output's form: nesting, keys and value types."""
    if isinstance(output, list):
        return [_structure(item) for item in output]
    if isinstance(output, dict):
        return {key: type(value).__name__ for key, value in output.items()}
    return type(output).__name__


@pytest.fixture
def stock_pipeline(tiny_backbones):
    """Factory: ``pipeline("text-classification")`` over a stock tiny `BertForSequenceClassification`."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, pipeline

    def make(**config_kwargs):
        torch.manual_seed(0)
        tokenizer = AutoTokenizer.from_pretrained(tiny_backbones["bert"])
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=37, max_position_embeddings=64, **config_kwargs)
        return pipeline("text-classification", model=BertForSequenceClassification(config).eval(),
                        tokenizer=tokenizer, device="cpu")

    return make


CALLS = {"default": {}, "top_k=None": {"top_k": None}, "top_k=2": {"top_k": 2}, "top_k=1": {"top_k": 1}}


@pytest.mark.parametrize("problem_type", ["multi_label_classification", "regression"])
def test_pipeline_output_has_the_form_of_a_stock_models(text_model, stock_pipeline, problem_type):
    from transformers import pipeline

    labels = MULTI_LABELS if problem_type == "multi_label_classification" else {0: "LABEL_0"}
    kwargs = dict(num_labels=len(labels), id2label=labels, problem_type=problem_type)
    stock = stock_pipeline(**kwargs)
    model = text_model(**kwargs, **({"decision_thresholds": [0.3, 0.5, 0.7]} if len(labels) > 1 else {}))
    ours = pipeline("text-classification", model=model, tokenizer=model.tokenizer, device="cpu")
    for name, call in CALLS.items():
        if problem_type == "regression" and name == "top_k=2":
            continue
        for texts in (TEXTS[0], TEXTS):
            expected, actual = stock(texts, **call), ours(texts, **call)
            assert _structure(actual) == _structure(expected), (name, texts)
            if name.startswith("top_k"):  # per text, labels best first
                per_text = actual if isinstance(texts, list) else [actual]
                assert all([d["score"] for d in out] == sorted((d["score"] for d in out), reverse=True)
                           for out in per_text), name
            if name == "top_k=None":
                def flat(out):
                    return sorted(d["label"] for item in out for d in (item if isinstance(item, list) else [item]))

                assert flat(actual) == flat(expected), name
    with torch.inference_mode():
        logits = model(**model.tokenizer(TEXTS, padding=True, return_tensors="pt")).logits
    if problem_type == "regression":  # the score is the raw output (function_to_apply="none")
        assert [r["score"] for r in ours(TEXTS)] == pytest.approx(logits[:, 0].tolist(), abs=1e-5)
    else:  # every label with the sigmoid of its threshold-shifted logit: >= 0.5 where it applies
        for row, result in zip(logits, ours(TEXTS, top_k=None)):
            scores = {entry["label"]: entry["score"] for entry in result}
            assert [scores[MULTI_LABELS[i]] for i in range(3)] == pytest.approx(row.sigmoid().tolist(), abs=1e-5)
