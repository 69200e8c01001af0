"""The head's config and backbone specs (`configuration_llmembed`): validation errors, old specs, layer indices, and a
bad pulled config that names where it came from."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForSequenceClassification

from llmembed_hf import BackboneSpec, LLMEmbedConfig


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(backbones=[]), r"backbones is empty"),
        (dict(enc={"name": "llm"}), r"duplicate name\(s\) \['llm'\]"),
        (dict(llm={"pooling": "max"}), r"backbones\['llm'\]\.pooling='max' is unknown"),
        (dict(llm={"layers": []}), r"backbones\['llm'\]\.layers=\[\] is empty"),
        (dict(sigma=0), r"sigma=0 must be > 0"),
        (dict(sigma=-0.5), r"sigma=-0\.5 must be > 0"),
        (dict(num_labels=3, id2label={0: "neg", 1: "pos"}), r"num_labels=3 disagrees with id2label, which has 2"),
        (dict(enc={"pooling": "pooler", "layers": [-2]}),
         r"backbones\['enc'\]: pooling='pooler'.*layers must be \[-1\], got \[-2\]"),
        (dict(enc={"name": "Enc-1"}), r"name 'Enc-1' is not valid"),
        (dict(enc={"widht": 32}), r"unknown field\(s\) \['widht'\] in spec 'enc'"),
        (dict(enc={"normalize": "false"}), r"backbones\['enc'\]\.normalize='false' must be true or false"),
        (dict(num_labels=3, problem_type="multi_label_classification", decision_thresholds=[0.5, 0.5]),
         r"decision_thresholds=\[0\.5, 0\.5\] must list one threshold per label \(3 labels\)"),
        (dict(problem_type="multi_label_classification", decision_thresholds=[0.5, 1.0]),
         r"decision_thresholds\[1\]=1\.0 \(label 'LABEL_1'\) must be a probability strictly between 0 and 1"),
        (dict(problem_type="multi_label_classification", decision_thresholds=[0.5, "0.3"]),
         r"decision_thresholds\[1\]='0\.3'"),
        (dict(problem_type="single_label_classification", decision_thresholds=[0.5, 0.5]),
         r"decision_thresholds are set but problem_type='single_label_classification'.*multi_label_classification"),
    ],
    ids=["no_backbones", "duplicate_name", "pooling", "empty_layers", "sigma_zero", "sigma_negative", "id2label",
         "pooler_layers", "bad_name", "unknown_field", "normalize_string", "thresholds_length", "threshold_one",
         "threshold_string", "thresholds_single_label"],
)
def test_config_validation_errors(tiny_config, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**kwargs)


def test_old_spec_with_padding_side_loads(tiny_backbones):
    """Configs and tokenizer configs saved before ``padding_side`` was removed still load (the field is dropped)."""
    old = dict(name="enc", model_id=tiny_backbones["bert"], layers=[-1], pooling="cls", hidden_size=32,
               padding_side="left")
    spec = BackboneSpec.from_dict(old)
    assert "padding_side" not in spec.to_dict() and spec.layers == [-1] and old["padding_side"] == "left"
    config = LLMEmbedConfig.from_dict({"backbones": [old], "num_labels": 2})
    assert config.backbones == [spec.to_dict()]
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['padding'\]"):
        BackboneSpec.from_dict(dict(old, padding="left"))


def test_hidden_state_indices():
    spec = BackboneSpec(name="llm", model_id="x", layers=[-5, -1, 0, 3])
    assert spec.hidden_state_indices(19) == [14, 18, 0, 3]
    with pytest.raises(ValueError, match=r"layer -5 is out of range .* 4 hidden states"):
        spec.hidden_state_indices(4)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.update(backbones=[]), r"backbones is empty"),
        (lambda c: c["backbones"][1].update(pooling="avg"), r"backbones\['enc'\]\.pooling='avg' is unknown.*'mean'"),
        (lambda c: c["backbones"][0].update(layer=[-1]), r"unknown field\(s\) \['layer'\] in spec 'llm'"),
    ],
    ids=["no-backbones", "unknown-pooling", "unknown-field"],
)
def test_pulled_config_with_a_bad_field_names_it(saved_head, edit, message):
    _, folder = saved_head
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message) as error:
        AutoModelForSequenceClassification.from_pretrained(folder)
    assert str(error.value).startswith(f"{folder}/config.json: ")  # names where the bad config came from
