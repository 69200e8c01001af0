"""The multi-task intent + slot model (`modeling_llmembed_intent_slot`): trainable parameters per tuning mode, task
weights, the joint loss, and save/load through the Auto classes (tiny random backbones)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel

from helpers import CODE_FILES, INTENTS, SLOTS
from llmembed_hf import LLMEmbedForIntentAndSlotFilling, LLMEmbedIntentSlotConfig
from llmembed_hf.intent_slot.slots import IGNORE_INDEX


def batch(model: LLMEmbedForIntentAndSlotFilling, texts: list[str]) -> dict[str, torch.Tensor]:
    return model.tokenizer(texts, padding=True, return_tensors="pt", return_token_type_ids=False)


TEXTS = ["the cat sat on the mat", "good movie", "not bad at all , very good"]


@pytest.mark.parametrize("backbone,mode", [("bert", "frozen"), ("llama", "lora"), ("bert", "lora"), ("llama", "full")])
def test_only_the_expected_parameters_train(make_model, backbone, mode):
    model = make_model(backbone, mode)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    heads = {f"{head}.{p}" for head in ("intent_classifier", "slot_classifier") for p in ("weight", "bias")}
    backbone_names = {name for name, _ in model.named_parameters() if name.startswith("backbone.")}
    if mode == "frozen":
        assert trainable == heads
    elif mode == "lora":
        lora = {name for name in backbone_names if "lora_" in name}
        assert lora and trainable == heads | lora
        expected_targets = ["query", "value"] if backbone == "bert" else ["q_proj", "v_proj"]
        assert model.config.lora["target_modules"] == expected_targets
    else:
        assert trainable == heads | backbone_names
    assert model.num_trainable_parameters() == sum(p.numel() for p in model.parameters() if p.requires_grad)
    expected_pooling = "mean" if backbone == "bert" else "last_token"
    assert model.config.pooling == expected_pooling


def test_a_task_with_weight_zero_is_switched_off(make_model):
    model = make_model("bert", "frozen", intent_loss_weight=0.0)
    assert not any(p.requires_grad for p in model.intent_classifier.parameters())
    assert all(p.requires_grad for p in model.slot_classifier.parameters())
    with pytest.raises(ValueError, match="at least one > 0"):
        make_model("bert", "frozen", intent_loss_weight=0.0, slot_loss_weight=0.0)


def test_joint_loss_is_the_weighted_sum_and_never_nan(make_model):
    model = make_model("bert", "full", intent_loss_weight=0.3, slot_loss_weight=2.0).eval()
    inputs = batch(model, TEXTS[:2])
    labels = torch.tensor([0, 2])
    slot_labels = torch.full_like(inputs["input_ids"], IGNORE_INDEX)
    slot_labels[:, 1] = torch.tensor([1, 3])
    slot_labels[0, 2] = 2
    out = model(**inputs, labels=labels, slot_labels=slot_labels)
    intent_ce = F.cross_entropy(out.intent_logits, labels)
    slot_ce = F.cross_entropy(out.slot_logits.reshape(-1, len(SLOTS)), slot_labels.reshape(-1), ignore_index=-100)
    assert out.loss.item() == pytest.approx((0.3 * intent_ce + 2.0 * slot_ce).item(), rel=1e-5)
    no_slots = model(**inputs, labels=labels, slot_labels=torch.full_like(slot_labels, IGNORE_INDEX)).loss
    assert no_slots.item() == pytest.approx(0.3 * intent_ce.item(), rel=1e-5)
    assert model(**inputs).loss is None
    model.config.intent_loss_weight = 0.0
    assert model(**inputs, labels=labels, slot_labels=slot_labels).loss.item() == pytest.approx(2.0 * slot_ce.item(),
                                                                                                rel=1e-5)


@pytest.mark.parametrize("backbone,mode", [("bert", "frozen"), ("llama", "lora"), ("bert", "full")])
def test_save_and_load_through_the_auto_classes_gives_the_same_logits(make_model, tmp_path, backbone, mode):
    model = make_model(backbone, mode)
    with torch.no_grad():  # trained-looking weights, so a load that dropped them would show
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    model.eval()
    inputs = batch(model, TEXTS)
    expected = model(**inputs)
    model.save_pretrained(tmp_path)

    saved = load_file(tmp_path / "model.safetensors")
    assert set(saved) == {name for name, p in model.named_parameters() if p.requires_grad} | (
        set() if mode != "full" else set(model.state_dict()))
    assert not any(name.startswith("backbone.") and "lora_" not in name for name in saved) or mode == "full"
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "llmembed-intent-slot" and config["tuning_mode"] == mode
    assert config["auto_map"] == {
        "AutoConfig": "configuration_llmembed_intent_slot.LLMEmbedIntentSlotConfig",
        "AutoModel": "modeling_llmembed_intent_slot.LLMEmbedForIntentAndSlotFilling",
    }
    assert all((tmp_path / name).is_file() for name in CODE_FILES)
    assert config["backbone_spec"]["weights_sha256"]  # the backbone trained on is recorded

    assert isinstance(AutoConfig.from_pretrained(tmp_path), LLMEmbedIntentSlotConfig)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is LLMEmbedForIntentAndSlotFilling and not loaded.training
    actual = loaded(**inputs)
    torch.testing.assert_close(actual.intent_logits, expected.intent_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(actual.slot_logits, expected.slot_logits, rtol=1e-5, atol=1e-5)
    assert loaded.config.slot_labels == SLOTS and loaded.config.intent_labels == INTENTS
    assert loaded.num_trainable_parameters() == model.num_trainable_parameters()


def test_loading_refuses_other_backbone_weights_and_weights_that_do_not_fit(make_model, tmp_path):
    from safetensors.torch import save_file

    make_model("bert", "frozen").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["backbone_spec"]["weights_sha256"] = "0" * 64
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="allow_backbone_mismatch"):
        AutoModel.from_pretrained(tmp_path)
    assert isinstance(AutoModel.from_pretrained(tmp_path, allow_backbone_mismatch=True), LLMEmbedForIntentAndSlotFilling)
    save_file({"intent_classifier.weight": torch.zeros(3, 32)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing \['intent_classifier.bias'"):
        AutoModel.from_pretrained(tmp_path, allow_backbone_mismatch=True)
