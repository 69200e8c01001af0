"""The LLMEmbed head (`modeling_llmembed`): the paper preset's shape, the text and feature paths, pooling and padding,
training and saving only the head, losses, Trainer, loading with other labels, errors, prompts left out of pooling,
int8 backbones and the compute dtype, on tiny random local backbones."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForSequenceClassification

from llmembed_hf import BackboneSpec, LLMEmbedConfig, LLMEmbedForSequenceClassification, LLMEmbedTokenizer
from llmembed_hf.modeling.modeling_llmembed import (
    ALLOW_MISMATCH_ENV,
    LLMEmbedFusionHead,
    backbone_quantization,
    check_backbone_sha256,
    first_token_pool,
    last_token_pool,
    mean_pool,
    native_bf16_supported,
    quantize_backbone,
    siamese_cosines,
)

from helpers import middle_layer_spec, tiny_specs

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


def test_specs_of_one_model_pool_their_views_from_one_forward(text_model, tiny_backbones):
    """Two specs of the tiny Llama (its last three states; its block 1, loaded with 2 of 3 blocks) differ only in what
    they pool: `encode` runs the deeper copy once for both, and each gets exactly the views its own copy gives."""
    model = text_model(backbones=tiny_specs(tiny_backbones) + [middle_layer_spec(tiny_backbones)])
    assert len(model.backbones["mid"].layers) == 2 and len(model.backbones["llm"].layers) == 3
    assert model.pass_groups(["mid", "enc", "llm"]) == [["llm", "mid"], ["enc"]]  # the runner first
    calls = {name: 0 for name in model.backbones}

    def count(name: str) -> Any:
        return lambda module, args: calls.__setitem__(name, calls[name] + 1)

    handles = [backbone.register_forward_pre_hook(count(name)) for name, backbone in model.backbones.items()]
    batch = model.tokenizer(TEXTS + [LONG_TEXT], return_tensors="pt")
    try:
        features = model.encode(**batch)
        assert calls == {"llm": 1, "enc": 1, "mid": 0}
        alone = model.encode_backbone("mid", batch["mid_input_ids"], batch["mid_attention_mask"])
        assert calls["mid"] == 1  # alone, it runs its own two blocks
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(features[:, -48:], alone, atol=1e-6, rtol=0)
    both = model.encode_backbones(["llm", "mid"], batch["llm_input_ids"], batch["llm_attention_mask"])
    torch.testing.assert_close(both["mid"], alone, atol=1e-6, rtol=0)
    torch.testing.assert_close(both["llm"], features[:, : 3 * 48], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"\['llm', 'enc'\] do not share one forward pass"):
        model.encode_backbones(["llm", "enc"], batch["llm_input_ids"], batch["llm_attention_mask"])


def test_a_padded_batch_runs_in_length_sorted_sub_batches_cut_to_their_longest_row(text_model):
    """A pipeline batch pads every text to its longest; the backbone sees rows of similar length, trimmed, within the
    token budget, and each row's features equal the row encoded alone."""
    model = text_model()
    texts = [TEXTS[2], LONG_TEXT, TEXTS[1], LONG_TEXT + " again", TEXTS[0]]
    batch = model.tokenizer(texts, return_tensors="pt")
    ids, mask = batch["enc_input_ids"], batch["enc_attention_mask"]
    lengths = mask.sum(1).tolist()
    shapes: list[tuple[int, int]] = []
    handle = model.backbones["enc"].register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        budget = 2 * max(lengths)  # the two long texts fit one sub-batch, the three short ones another
        split = model.encode_backbone("enc", ids, mask, token_budget=budget)
        assert shapes == [(2, max(lengths)), (3, sorted(lengths)[2])]
        shapes.clear()
        whole = model.encode_backbone("enc", ids, mask, token_budget=len(texts) * ids.shape[1])
        assert shapes == [(len(texts), ids.shape[1])]  # the batch fits the budget: one forward
    finally:
        handle.remove()
    alone = torch.cat([model.encode(**model.tokenizer([t], return_tensors="pt"))[:, -split.shape[1] :] for t in texts])
    torch.testing.assert_close(split, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(whole, alone, atol=1e-5, rtol=0)


def test_a_batch_without_pads_reaches_the_backbone_without_a_mask(text_model):
    """One text (or rows of one length) has nothing to mask: the backbone builds no mask, and the features are those
    of the same text padded in a batch (test_features_do_not_depend_on_padding checks that for every pooling)."""
    model = text_model()
    masks: list[Any] = []
    handle = model.backbones["enc"].register_forward_pre_hook(
        lambda module, args, kwargs: masks.append(kwargs["attention_mask"]), with_kwargs=True)
    try:
        model.encode(**model.tokenizer([TEXTS[0]], return_tensors="pt"))
        model.encode(**model.tokenizer([TEXTS[2], LONG_TEXT], return_tensors="pt"))
    finally:
        handle.remove()
    assert masks[0] is None and masks[1] is not None and not bool(masks[1].all())


def test_a_left_padded_batch_runs_whole(text_model):
    model = text_model()
    batch = model.tokenizer([TEXTS[2], LONG_TEXT], return_tensors="pt")
    ids, mask = batch["enc_input_ids"], batch["enc_attention_mask"]
    width = ids.shape[1]
    short = int(mask[0].sum())
    left_ids = torch.stack([torch.cat([ids[0, short:], ids[0, :short]]), ids[1]])
    left_mask = torch.stack([torch.cat([mask[0, short:], mask[0, :short]]), mask[1]])
    shapes: list[tuple[int, int]] = []
    handle = model.backbones["enc"].register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        model.encode_backbone("enc", left_ids, left_mask, token_budget=width)
    finally:
        handle.remove()
    assert shapes == [(2, width)]  # cutting columns would drop real tokens: one forward, as given


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


def test_fold_heads_average_their_logits_and_round_trip_through_save_and_load(tiny_config, tmp_path):
    """With ``num_fold_heads`` the logits (and the loss) are the mean of the head's and the fold heads' logits; the
    fold heads are saved and loaded with the head, and a model without them saves the keys it always saved."""
    torch.manual_seed(0)
    single = LLMEmbedForSequenceClassification(multi_label_config(tiny_config)).eval()
    assert not any(key.startswith("fold_heads.") for key in single.state_dict())
    members = [LLMEmbedFusionHead(single.config).eval() for _ in range(2)]
    features, labels = random_features(), torch.randint(0, 2, (4, 3)).float()
    alone = single(pooled_features=features).logits
    single.add_fold_heads(members)
    assert single.config.num_fold_heads == 2 and list(single.fusion_heads) == [single.head, *members]
    expected = torch.stack([alone, *(head(features) for head in members)]).mean(0)
    torch.testing.assert_close(single(pooled_features=features).logits, expected)
    torch.testing.assert_close(single(pooled_features=features, labels=labels).loss,
                               F.binary_cross_entropy_with_logits(expected, labels))
    single.config.decision_thresholds = [0.2, 0.5, 0.9]
    single.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["num_fold_heads"] == 2
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert len(loaded.fold_heads) == 2
    torch.testing.assert_close(loaded(pooled_features=features).logits, single(pooled_features=features).logits)
    other = LLMEmbedFusionHead(tiny_config(num_labels=5))
    with pytest.raises(ValueError, match="fold head 0 does not have this model's head shape"):
        loaded.add_fold_heads([other])


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_num_fold_heads_must_be_a_count(tiny_config, value):
    with pytest.raises(ValueError, match=r"num_fold_heads=.* must be an integer >= 0"):
        tiny_config(num_fold_heads=value)


def pair_regression_config(tiny_config, **kwargs) -> LLMEmbedConfig:
    """Regression on pairs, the encoder siamese ([u, v, |u-v|, u*v] of its 32 wide view), the LLM joint."""
    return tiny_config(num_labels=1, problem_type="regression", pair_encoding="llm=joint,encoder=siamese", **kwargs)


def test_siamese_cosines_read_each_side_of_the_pair(tiny_config):
    config = pair_regression_config(tiny_config)
    features = torch.randn(5, config.feature_size, generator=torch.Generator().manual_seed(0))
    start = config.backbone_columns["enc"].start
    u, v = features[:, start:start + 32], features[:, start + 32:start + 64]
    expected = (u * v).sum(-1) / u.norm(dim=-1) / v.norm(dim=-1)
    torch.testing.assert_close(siamese_cosines(config, features), expected[:, None])


def test_similarity_blend_applies_at_inference_only(tiny_config, tmp_path):
    """Inference returns head * w0 + cosine * w1 + bias; the loss, `Trainer` evaluation (labels given) and
    training see the head alone; the blend round-trips through save and load."""
    torch.manual_seed(0)
    model = LLMEmbedForSequenceClassification(pair_regression_config(tiny_config)).eval()
    features = torch.randn(6, model.config.feature_size, generator=torch.Generator().manual_seed(1))
    labels = torch.rand(6) * 5
    raw = model(pooled_features=features).logits
    raw_loss = model(pooled_features=features, labels=labels).loss
    model.config.similarity_blend = [0.5, 3.0, -1.0]
    blended = model(pooled_features=features).logits
    torch.testing.assert_close(blended, 0.5 * raw + 3.0 * siamese_cosines(model.config, features) - 1.0)
    assert torch.equal(model(pooled_features=features, labels=labels).loss, raw_loss)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.similarity_blend == [0.5, 3.0, -1.0]
    torch.testing.assert_close(loaded(pooled_features=features).logits, blended)


@pytest.mark.parametrize("kwargs, message", [
    (dict(similarity_blend=[1.0, 0.0]), "must be 3 finite numbers"),
    (dict(similarity_blend=[1.0, float("nan"), 0.0]), "must be 3 finite numbers"),
    (dict(similarity_blend=[1.0, 0.0, 0.0], pair_encoding="joint"), "not a regression head of text pairs"),
])
def test_a_bad_similarity_blend_is_refused(tiny_config, kwargs, message):
    values = dict(num_labels=1, problem_type="regression", pair_encoding="llm=joint,encoder=siamese") | kwargs
    with pytest.raises(ValueError, match=message):
        tiny_config(**values)


def test_a_similarity_blend_on_a_classifier_is_refused(tiny_config):
    with pytest.raises(ValueError, match="not a regression head of text pairs"):
        tiny_config(pair_encoding="siamese", similarity_blend=[1.0, 0.0, 0.0, 0.0])


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


# ----------------------------------------------------------------------------------------------------------------------
# Text pairs: the same features in training (feature store) and serving (pipeline), transformers' output format
# ----------------------------------------------------------------------------------------------------------------------

PAIRS = [("the cat sat on the mat", "a dog sat on a mat"), ("a very good movie!", "bad film"),
         ("bad film", "a very good movie!"), ("the film", "the film")]


@pytest.mark.parametrize("pair_encoding", ["siamese", "default", "joint"])
def test_pair_features_of_training_and_serving_give_the_same_logits(text_model, tmp_path, pair_encoding):
    """A head fitted on store features, saved, and served by pipeline(folder) on {"text", "text_pair"} inputs scores
    every pair as the training features do: the feature order ([u, v, |u-v|, u*v] per siamese view) is one."""
    from transformers import pipeline

    from llmembed_hf import HeadTrainingArguments, extract_features, fit_head

    model = text_model(pair_encoding=pair_encoding, num_labels=2, id2label={0: "no", 1: "yes"})
    firsts, seconds = [a for a, _ in PAIRS], [b for _, b in PAIRS]
    features = extract_features(model, firsts * 4, text_pairs=seconds * 4, extra_columns={"labels": [0, 1, 1, 0] * 4},
                                cache_folder=tmp_path / "store", show_progress=False)
    fit_head(model, features, None, tmp_path / "fit", HeadTrainingArguments(epochs=2, batch_size=4,
                                                                            learning_rate=1e-2))
    model.save_pretrained(tmp_path / "head")
    model.eval()
    with torch.inference_mode():
        trained = model(pooled_features=features[:4]["pooled_features"]).logits.softmax(-1)
    classifier = pipeline("text-classification", model=str(tmp_path / "head"), device="cpu")
    served = classifier([{"text": a, "text_pair": b} for a, b in PAIRS], top_k=None, batch_size=3)
    for row, scores in zip(trained, served):
        assert {s["label"]: s["score"] for s in scores} == pytest.approx({"no": float(row[0]), "yes": float(row[1])},
                                                                          abs=1e-5)
    assert not torch.allclose(trained[1], trained[2])  # (a, b) and (b, a) are different inputs


def test_a_pair_pipeline_returns_the_stock_format(text_model, tiny_backbones):
    """pipeline("text-classification") on {"text", "text_pair"} returns what it returns for a stock
    AutoModelForSequenceClassification: a dict for one pair, a list of dicts for a list, every label with top_k=None."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, pipeline

    id2label = {0: "no", 1: "yes"}
    ours = text_model(pair_encoding="default", num_labels=2, id2label=id2label)
    torch.manual_seed(0)
    stock = BertForSequenceClassification(BertConfig.from_pretrained(tiny_backbones["bert"], num_labels=2,
                                                                     id2label=id2label)).eval()
    pipes = [pipeline("text-classification", model=ours, tokenizer=ours.tokenizer, device="cpu"),
             pipeline("text-classification", model=stock, tokenizer=AutoTokenizer.from_pretrained(
                 tiny_backbones["bert"]), device="cpu")]

    def form(value):
        if isinstance(value, dict):
            return {key: (type(item).__name__ if key != "label" else item in id2label.values())
                    for key, item in value.items()}
        return [form(item) for item in value]

    one = {"text": PAIRS[0][0], "text_pair": PAIRS[0][1]}
    many = [{"text": a, "text_pair": b} for a, b in PAIRS]
    for inputs, kwargs in ((one, {}), (many, {}), (one, {"top_k": None}), (many, {"top_k": None}),
                           (many, {"top_k": 1, "batch_size": 2})):
        ours_out, stock_out = (pipe(inputs, **kwargs) for pipe in pipes)
        assert form(ours_out) == form(stock_out), (inputs, kwargs)
    assert isinstance(pipes[0](one), dict) and len(pipes[0](many, top_k=None)[0]) == 2


def test_forward_names_the_pair_inputs_a_siamese_backbone_lacks(text_model):
    model = text_model(pair_encoding="siamese")
    inputs = dict(model.tokenizer(["a cat"], text_pair=["a dog"], return_tensors="pt"))
    del inputs["enc_pair_input_ids"]
    with pytest.raises(TypeError, match=r"lacks \['enc_pair_input_ids'\].*a head of text pairs"):
        model(**inputs)


# Per-backbone prompts: pooled with or without the prompt's positions
# ----------------------------------------------------------------------------------------------------------------------

#: A prompt in the tiny vocabularies (see test_tokenization_llmembed.py): 3 tokens after [CLS] / <s>.
PROMPT = "the film, "


def hand_pooled(model, name: str, texts: list[str], skip: int) -> torch.Tensor:
    """The last hidden state of ``name`` averaged over real tokens, its first ``skip`` positions left out."""
    encoded = model.tokenizer(texts, return_tensors="pt")
    ids, mask = encoded[f"{name}_input_ids"], encoded[f"{name}_attention_mask"]
    with torch.inference_mode():
        hidden = model.backbones[name](input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    kept = mask.clone()
    kept[:, :skip] = 0
    return (hidden * kept.unsqueeze(-1)).sum(1) / kept.sum(1, keepdim=True)


@pytest.mark.parametrize("name, special", [("enc", "[CLS]"), ("llm", "<s>")])
def test_pool_prompt_false_leaves_the_prompt_and_leading_special_token_out(text_model, name, special):
    spec = {"prompt": PROMPT, "pooling": "mean", "pool_prompt": False}
    model = text_model(**{name: spec})
    tokenizer = model.tokenizer.tokenizers[name]
    assert model.tokenizer.prompt_ids(name) == tokenizer.convert_tokens_to_ids([special, "the", "film", ","])
    columns = model.config.backbone_columns[name]
    features = model.encode(**model.tokenizer(TEXTS + [LONG_TEXT], return_tensors="pt"))[:, columns]
    width = model.config.backbone_specs[0 if name == "llm" else 1].hidden_size
    expected = hand_pooled(model, name, TEXTS + [LONG_TEXT], skip=4)  # [CLS]/<s> + 3 prompt tokens
    torch.testing.assert_close(features[:, -width:], expected, atol=1e-5, rtol=0)
    pooled_with_prompt = text_model(**{name: dict(spec, pool_prompt=True)})
    with_prompt = pooled_with_prompt.encode(**pooled_with_prompt.tokenizer(TEXTS, return_tensors="pt"))[:, columns]
    torch.testing.assert_close(with_prompt[:, -width:], hand_pooled(model, name, TEXTS, skip=0), atol=1e-5, rtol=0)
    assert not torch.allclose(with_prompt[:, -width:], features[: len(TEXTS), -width:])


def test_pool_prompt_false_refuses_inputs_without_the_prompt(text_model):
    model = text_model(enc={"prompt": PROMPT, "pooling": "mean", "pool_prompt": False})
    plain = text_model().tokenizer(TEXTS, return_tensors="pt")
    with pytest.raises(ValueError, match=r"backbones\['enc'\]: with pool_prompt=False every row must start with the "
                                         r"prompt's 4 tokens"):
        model.encode(**plain)


# ----------------------------------------------------------------------------------------------------------------------
# int8 backbones and the compute dtype
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wide_backbones(tiny_backbones, tmp_path_factory) -> dict[str, str]:
    """Seeded random BERT and Gemma-3 backbones 128 wide (FFN 512), with initial weights large enough (std 0.2) that
    their blocks move the vectors far from the embeddings, so int8 closeness means something; the tiny tokenizers."""
    from transformers import AutoTokenizer, BertConfig, BertModel, Gemma3TextConfig, Gemma3TextModel

    root = tmp_path_factory.mktemp("wide_backbones")
    folders = {}
    for kind, source in (("bert", "bert"), ("gemma", "llama")):
        tokenizer = AutoTokenizer.from_pretrained(tiny_backbones[source])
        torch.manual_seed(0)
        if kind == "bert":
            model = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, intermediate_size=512, max_position_embeddings=64,
                                         pad_token_id=tokenizer.pad_token_id, initializer_range=0.2))
        else:
            model = Gemma3TextModel(Gemma3TextConfig(
                vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=32, intermediate_size=512, max_position_embeddings=64,
                initializer_range=0.2, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.eos_token_id))
        folders[kind] = str(root / kind)
        model.save_pretrained(folders[kind])
        tokenizer.save_pretrained(folders[kind])
    return folders


def wide_head(folder: str, **spec: Any) -> LLMEmbedForSequenceClassification:
    """A head over one wide backbone (mean of the last layer), its spec updated with ``spec``."""
    torch.manual_seed(0)
    backbone = dict(name="wide", model_id=folder, layers=[-1], pooling="mean", max_length=32, hidden_size=128) | spec
    config = LLMEmbedConfig(backbones=[backbone], projection_dim=16, mlp_hidden_sizes=[16], num_labels=2)
    return LLMEmbedForSequenceClassification.from_backbones(config).eval()


#: The Linear layers quantization="int8" leaves in float in each wide backbone (the projection after the activation).
FLOAT_IN_INT8 = {"bert": ["encoder.layer.0.output.dense", "encoder.layer.1.output.dense"],
                 "gemma": ["layers.0.mlp.down_proj", "layers.1.mlp.down_proj"]}


@pytest.mark.parametrize("kind", ["bert", "gemma"])
def test_int8_keeps_pooled_vectors_within_cosine_0_99_of_float32(wide_backbones, kind):
    fp32, int8 = wide_head(wide_backbones[kind]), wide_head(wide_backbones[kind], quantization="int8")
    batch = fp32.tokenizer(TEXTS + [LONG_TEXT], return_tensors="pt")
    reference, quantised = fp32.encode(**batch), int8.encode(**batch)
    assert quantised.dtype == torch.float32
    assert F.cosine_similarity(quantised, reference).min() > 0.99
    assert not torch.allclose(quantised, reference, atol=1e-3)  # int8 really computed them
    # Meaningful: the blocks (whose Linear layers are int8) move the vectors far from the embeddings they start from.
    ids, mask = batch["wide_input_ids"], batch["wide_attention_mask"]
    with torch.inference_mode():
        outputs = fp32.backbones["wide"](input_ids=ids, attention_mask=mask, output_hidden_states=True)
    embeddings = outputs.hidden_states[0]
    assert F.cosine_similarity(mean_pool(embeddings, mask), reference).max() < 0.9


@pytest.mark.parametrize("kind", ["bert", "gemma"])
@pytest.mark.parametrize("quantization", ["int8", "int8-all"])
def test_a_quantised_backbone_holds_int8_linear_layers_except_the_skipped_ones(wide_backbones, kind, quantization):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    fp32, int8 = wide_head(wide_backbones[kind]), wide_head(wide_backbones[kind], quantization=quantization)
    linears = [name for name, module in fp32.backbones["wide"].named_modules() if isinstance(module, nn.Linear)]
    modules = dict(int8.backbones["wide"].named_modules())
    kept = FLOAT_IN_INT8[kind] if quantization == "int8" else []
    assert [name for name in linears if type(modules[name]) is nn.Linear] == kept
    assert all(isinstance(modules[name], DynamicInt8Linear) for name in linears if name not in kept)
    assert backbone_quantization(int8.backbones["wide"]) == quantization
    assert backbone_quantization(fp32.backbones["wide"]) is None


def test_the_registry_keeps_float32_and_int8_copies_apart(wide_backbones):
    fp32, int8 = wide_head(wide_backbones["bert"]), wide_head(wide_backbones["bert"], quantization="int8")
    assert fp32.backbones["wide"] is not int8.backbones["wide"]
    assert wide_head(wide_backbones["bert"], quantization="int8").backbones["wide"] is int8.backbones["wide"]
    assert wide_head(wide_backbones["bert"], quantization="int8-all").backbones["wide"] is not int8.backbones["wide"]
    assert wide_head(wide_backbones["bert"]).backbones["wide"] is fp32.backbones["wide"]


@pytest.mark.parametrize("trained, served", [(None, "int8"), ("int8", None), ("int8", "int8-all")])
def test_backbones_quantised_otherwise_than_the_head_was_trained_on_are_refused(wide_backbones, trained, served,
                                                                                caplog):
    head = wide_head(wide_backbones["bert"], quantization=trained)
    other = wide_head(wide_backbones["bert"], quantization=served).backbones
    with pytest.raises(ValueError) as raised:
        head.attach_backbones(other)
    message = str(raised.value)
    assert f"trained on features of quantization={trained!r}" in message
    assert f"the backbone is quantization={served!r}" in message and "allow_quantization_mismatch=True" in message
    with caplog.at_level(logging.WARNING):
        head.attach_backbones(other, allow_quantization_mismatch=True)
    assert head.backbones["wide"] is other["wide"]
    assert any(f"quantization={served!r}" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_serving_a_float32_head_with_int8_backbones_needs_the_flag(wide_backbones, monkeypatch):
    trained = wide_head(wide_backbones["bert"])
    loads = []
    loader = LLMEmbedForSequenceClassification.backbone_loader
    monkeypatch.setattr(LLMEmbedForSequenceClassification, "backbone_loader",
                        staticmethod(lambda spec, **kwargs: loads.append(spec.quantization) or loader(spec, **kwargs)))
    head = LLMEmbedForSequenceClassification(trained.config)
    with pytest.raises(ValueError, match=r"trained on features of quantization=None \(float weights\), but the "
                                         r"backbone is quantization='int8'"):
        head.load_backbones(quantization="int8")
    assert loads == [] and head.backbones == {}  # refused before loading anything
    head.load_backbones(quantization="int8", allow_quantization_mismatch=True)
    assert backbone_quantization(head.backbones["wide"]) == "int8"
    assert head.config.backbone_specs[0].quantization is None  # the config still says what it was trained on
    with pytest.raises(ValueError, match=r"quantization='int4' is unknown; choose one of \(None, 'int8', 'int8-all'\)"):
        head.load_backbones(quantization="int4", allow_quantization_mismatch=True)


@pytest.mark.parametrize("device", ["meta", "cuda"])
def test_int8_on_another_device_than_the_cpu_is_refused(tiny_config, device, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("nothing may load")

    monkeypatch.setattr(LLMEmbedForSequenceClassification, "backbone_loader", staticmethod(no_loading))
    with pytest.raises(ValueError, match=rf"backbones\['enc'\]\.quantization='int8' runs on the CPU only .* device "
                                         rf"'{device}' was asked for"):
        LLMEmbedForSequenceClassification.from_backbones(tiny_config(enc={"quantization": "int8"}), device=device)


def test_int8_backbones_are_not_moved_off_the_cpu(tiny_config):
    model = LLMEmbedForSequenceClassification.from_backbones(tiny_config(enc={"quantization": "int8"}))
    with pytest.raises(ValueError, match=r"backbones\['enc'\] is quantised \(int8\), which runs on the CPU only"):
        model.attach_backbones(model.backbones, device="cuda")
    assert model.device.type == "cpu"


def test_what_int8_cannot_quantise_is_refused():
    spec = BackboneSpec(name="odd", model_id="odd/model", quantization="int8")
    with pytest.raises(ValueError, match=r"backbones\['odd'\]\.quantization='int8': odd/model has no nn.Linear layer"):
        quantize_backbone(nn.Sequential(nn.Embedding(10, 4)), spec)
    # An architecture without a recognised post-activation projection: "int8" would quantise everything, so say so.
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    with pytest.raises(ValueError, match=r"has no layer named like .* use 'int8-all'"):
        quantize_backbone(mlp, spec)
    assert quantize_backbone(mlp, BackboneSpec(name="odd", model_id="odd/model", quantization="int8-all")) == ["0", "2"]
    assert backbone_quantization(mlp) == "int8-all"


def test_the_deprecation_of_quantize_dynamic_is_logged_once_not_warned(monkeypatch, caplog, recwarn):
    from llmembed_hf.modeling import modeling_llmembed

    monkeypatch.setattr(modeling_llmembed, "_DEPRECATION_LOGGED", False)
    spec = BackboneSpec(name="mlp", model_id="mlp", quantization="int8-all")
    with caplog.at_level(logging.INFO):
        for _ in range(2):
            quantize_backbone(nn.Sequential(nn.Linear(4, 4)), spec)
    assert not [w for w in recwarn if "deprecated" in str(w.message)]
    assert len([r for r in caplog.records if "quantize_dynamic, which torch" in r.getMessage()]) == 1


@pytest.mark.parametrize("native", [True, False])
def test_dtype_auto_follows_native_bf16_support(tiny_config, monkeypatch, caplog, native):
    from llmembed_hf.modeling import modeling_llmembed

    monkeypatch.setattr(modeling_llmembed, "native_bf16_supported", lambda device=None: native)
    with caplog.at_level(logging.INFO):
        model = LLMEmbedForSequenceClassification.from_backbones(tiny_config(enc={"dtype": "auto"}))
    expected = torch.bfloat16 if native else torch.float32
    assert model.backbones["enc"].dtype == expected and model.backbones["llm"].dtype == torch.float32
    assert any(f"dtype='auto' -> {str(expected)[6:]}" in r.getMessage() for r in caplog.records)
    features = model.encode(**model.tokenizer(TEXTS, return_tensors="pt"))
    assert features.dtype == torch.float32  # pooled outputs are float32 whatever the compute dtype


def test_dtype_auto_stays_float32_with_int8(tiny_config, monkeypatch):
    from llmembed_hf.modeling import modeling_llmembed

    monkeypatch.setattr(modeling_llmembed, "native_bf16_supported", lambda device=None: True)
    model = LLMEmbedForSequenceClassification.from_backbones(tiny_config(enc={"dtype": "auto", "quantization": "int8"}))
    assert model.backbones["enc"].dtype == torch.float32 and backbone_quantization(model.backbones["enc"]) == "int8"


def test_native_bf16_detection_reads_the_cpu_flags(monkeypatch):
    from llmembed_hf.modeling import modeling_llmembed

    for flags, expected in (({"avx512_bf16"}, True), ({"amx_bf16", "avx2"}, True), ({"avx512f", "avx2"}, False)):
        monkeypatch.setattr(modeling_llmembed, "_cpu_flags", lambda flags=flags: frozenset(flags))
        assert native_bf16_supported("cpu") is expected and native_bf16_supported() is expected
    assert native_bf16_supported("meta") is False


def test_explicit_bfloat16_on_a_cpu_without_native_support_warns(tiny_config, monkeypatch, caplog):
    from llmembed_hf.modeling import modeling_llmembed

    monkeypatch.setattr(modeling_llmembed, "_cpu_flags", lambda: frozenset({"avx2"}))
    with caplog.at_level(logging.WARNING):
        model = LLMEmbedForSequenceClassification.from_backbones(tiny_config(enc={"dtype": "bfloat16"}))
    assert model.backbones["enc"].dtype == torch.bfloat16
    assert any("dtype='bfloat16' on a CPU without native bf16" in r.getMessage() and "runs slower" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)


def test_prompt_quantization_and_dtype_round_trip_through_save_and_load(tiny_config, tmp_path):
    views = {"enc": {"prompt": PROMPT, "pooling": "mean", "pool_prompt": False, "quantization": "int8"},
             "llm": {"prompt": PROMPT, "dtype": "bfloat16"}}
    torch.manual_seed(0)
    model = LLMEmbedForSequenceClassification.from_backbones(tiny_config(**views)).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    specs = {spec.name: spec for spec in loaded.config.backbone_specs}
    for name, values in views.items():
        assert {key: getattr(specs[name], key) for key in values} == values
    tokenizer = LLMEmbedTokenizer.from_pretrained(tmp_path)
    batch = tokenizer(TEXTS, return_tensors="pt")
    features = loaded.encode(**batch)  # loads its backbones as the config says
    assert backbone_quantization(loaded.backbones["enc"]) == "int8" and loaded.backbones["llm"].dtype == torch.bfloat16
    assert torch.equal(features, model.encode(**model.tokenizer(TEXTS, return_tensors="pt")))


@pytest.mark.parametrize("loader", ["resolver", "remote_code"])
def test_both_loaders_get_dtype_and_int8_from_the_spec(tiny_config, monkeypatch, loader):
    """The package's resolver and the remote-code loader go through one place (`shared_backbone`)."""
    from llmembed_hf.modeling.modeling_llmembed import default_backbone_loader

    if loader == "remote_code":
        monkeypatch.setattr(LLMEmbedForSequenceClassification, "backbone_loader",
                            staticmethod(default_backbone_loader))
    model = LLMEmbedForSequenceClassification.from_backbones(
        tiny_config(enc={"quantization": "int8"}, llm={"dtype": "bfloat16"}))
    assert backbone_quantization(model.backbones["enc"]) == "int8" and model.backbones["llm"].dtype == torch.bfloat16


# ----------------------------------------------------------------------------------------------------------------------
# sentence-transformers Dense modules (a model's own sentence embedding)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dense_backbone(tiny_backbones, tmp_path_factory) -> str:
    """The tiny BERT as a sentence-transformers folder: Transformer, Pooling, Dense 32 -> 64 (no bias, Identity),
    Dense 64 -> 24 (bias, Tanh), Normalize."""
    import shutil

    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("dense") / "bert-st"
    shutil.copytree(tiny_backbones["bert"], folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    torch.manual_seed(3)
    for index, (path, width_in, width_out, bias, activation) in enumerate(
            [("2_Dense", 32, 64, False, "torch.nn.modules.linear.Identity"),
             ("3_Dense", 64, 24, True, "torch.nn.modules.activation.Tanh")], start=2):
        (folder / path).mkdir()
        (folder / path / "config.json").write_text(json.dumps(
            {"in_features": width_in, "out_features": width_out, "bias": bias, "activation_function": activation}))
        state = {"linear.weight": torch.randn(width_out, width_in) * 0.3}
        if bias:
            state["linear.bias"] = torch.randn(width_out) * 0.1
        save_file(state, folder / path / "model.safetensors")
        modules.append({"idx": index, "name": str(index), "path": path,
                        "type": "sentence_transformers.models.Dense"})
    modules.append({"idx": 4, "name": "4", "path": "4_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    return str(folder)


def dense_head(folder: str, **spec: Any) -> LLMEmbedForSequenceClassification:
    torch.manual_seed(0)
    backbone = dict(name="st", model_id=folder, layers=[-1], pooling="mean", max_length=32, dense_modules=True,
                    normalize=True) | spec
    config = LLMEmbedConfig(backbones=[backbone], projection_dim=16, mlp_hidden_sizes=[16], num_labels=2)
    return LLMEmbedForSequenceClassification.from_backbones(config).eval()


def sentence_embedding_by_hand(folder: str, model: LLMEmbedForSequenceClassification, texts: list[str]) -> torch.Tensor:
    """mean pool -> Linear -> Linear + bias -> tanh -> L2 norm, from the files themselves."""
    from safetensors.torch import load_file

    first, second = (load_file(f"{folder}/{path}/model.safetensors") for path in ("2_Dense", "3_Dense"))
    batch = model.tokenizer(texts, return_tensors="pt")
    ids, mask = batch["st_input_ids"], batch["st_attention_mask"]
    with torch.inference_mode():
        hidden = model.backbones["st"](input_ids=ids, attention_mask=mask).last_hidden_state
    vector = mean_pool(hidden, mask) @ first["linear.weight"].T
    vector = torch.tanh(vector @ second["linear.weight"].T + second["linear.bias"])
    return F.normalize(vector, dim=-1)


@pytest.mark.parametrize("loader", ["resolver", "remote_code"])
def test_dense_modules_give_the_sentence_embedding_of_the_folders_own_modules(dense_backbone, monkeypatch, loader):
    from llmembed_hf.modeling.modeling_llmembed import default_backbone_loader

    if loader == "remote_code":
        monkeypatch.setattr(LLMEmbedForSequenceClassification, "backbone_loader",
                            staticmethod(default_backbone_loader))
    model = dense_head(dense_backbone)
    assert model.config.backbone_specs[0].hidden_size == 24  # the last Dense module's width, read at load
    features = model.encode(**model.tokenizer(TEXTS + [LONG_TEXT], return_tensors="pt"))
    expected = sentence_embedding_by_hand(dense_backbone, model, TEXTS + [LONG_TEXT])
    assert features.shape == (4, 24)
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)


def test_dense_modules_round_trip_and_a_wrong_width_is_refused(dense_backbone, tmp_path):
    model = dense_head(dense_backbone)
    model.save_pretrained(tmp_path / "head")
    loaded = LLMEmbedForSequenceClassification.from_pretrained(tmp_path / "head").eval()
    batch = model.tokenizer(TEXTS, return_tensors="pt")
    assert loaded.config.backbone_specs[0].dense_modules is True
    torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)
    with pytest.raises(ValueError, match="gives views of width 24"):
        dense_head(dense_backbone, hidden_size=32)


def test_the_registry_keeps_copies_with_and_without_dense_modules_apart(dense_backbone):
    with_dense, without = dense_head(dense_backbone), dense_head(dense_backbone, dense_modules=False)
    assert with_dense.backbones["st"] is not without.backbones["st"]
    assert without.config.backbone_specs[0].hidden_size == 32
    batch = without.tokenizer(TEXTS, return_tensors="pt")
    assert without.encode(**batch).shape == (3, 32)


def test_dense_modules_bad_input(tiny_backbones):
    with pytest.raises(ValueError, match=r"no sentence-transformers Dense modules \(no modules.json\)"):
        dense_head(tiny_backbones["bert"])
    for spec, message in [({"layers": [-2]}, "layers must be \\[-1\\]"), ({"pooling": "pooler"}, "layers must be"),
                          ({"dense_modules": "yes"}, "must be true or false")]:
        with pytest.raises(ValueError, match=message):
            BackboneSpec.from_dict(dict(name="st", model_id="x", dense_modules=True) | spec).validate(False)


def test_a_siamese_pair_head_with_dense_modules_gives_the_same_features_stored_and_served(dense_backbone, tmp_path):
    """Each side is stored as its pooled state, mapped by the Dense modules, then combined ([u, v, |u-v|, u*v])."""
    from llmembed_hf import extract_features

    torch.manual_seed(0)
    backbone = dict(name="st", model_id=dense_backbone, layers=[-1], pooling="mean", max_length=32, dense_modules=True,
                    normalize=True)
    config = LLMEmbedConfig(backbones=[backbone], projection_dim=16, mlp_hidden_sizes=[16], num_labels=2,
                            pair_encoding="siamese")
    model = LLMEmbedForSequenceClassification.from_backbones(config).eval()
    firsts, seconds = [a for a, _ in PAIRS], [b for _, b in PAIRS]
    stored = extract_features(model, firsts, text_pairs=seconds, cache_folder=tmp_path, show_progress=False)
    served = model.encode(**model.tokenizer(firsts, seconds, return_tensors="pt"))
    assert served.shape == (len(PAIRS), 4 * 24)
    torch.testing.assert_close(stored[:]["pooled_features"], served, atol=1e-5, rtol=1e-5)
    u = served[:, :24]
    torch.testing.assert_close(u, sentence_embedding_by_hand(dense_backbone, dense_head(dense_backbone), firsts),
                               atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# Compiled backbones (serving)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_compiled_backbones_give_the_eager_features_for_every_length(tiny_backbones, tmp_path):
    """One dynamic graph serves texts of other lengths and padded batches; the vectors are the eager ones. (A copy of
    the tiny BERT: compiling is in place, and no other test's head may share the compiled backbone.)"""
    import shutil

    folder = shutil.copytree(tiny_backbones["bert"], tmp_path / "bert")
    eager = dense_head(str(folder), dense_modules=False, normalize=False)
    inputs = [eager.tokenizer([text], return_tensors="pt") for text in TEXTS + [LONG_TEXT]]
    inputs.append(eager.tokenizer(TEXTS + [LONG_TEXT], return_tensors="pt"))
    with torch.inference_mode():
        expected = [eager.encode(**batch) for batch in inputs]
    compiled = eager.compile_backbones()
    assert getattr(compiled.backbones["st"], "_compiled_call_impl", None) is not None
    for batch, reference in zip(inputs, expected):
        with torch.inference_mode():
            torch.testing.assert_close(compiled.encode(**batch), reference, atol=1e-4, rtol=1e-4)
