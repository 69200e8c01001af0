"""Heads on the same backbones: one loaded copy per backbone (the registry), one backbone pass (MultiHeadClassifier),
and lazy loading that is safe under concurrent first calls."""

from __future__ import annotations

import gc
import threading

import pytest
import torch

from helpers import ID2LABEL, middle_layer_spec, spy_passes, tiny_specs
from llmembed_hf import LLMEmbedForSequenceClassification, MultiHeadClassifier
from llmembed_hf.modeling import modeling_llmembed

TEXTS = ["a good film", "the bad movie", "not very good", "the cat sat on the mat"]


def counting_loader(monkeypatch) -> list[str]:
    """Route backbone loading through a counter; returns the list of loaded backbone names."""
    loads: list[str] = []
    original = LLMEmbedForSequenceClassification.backbone_loader

    def loader(spec, **kwargs):
        loads.append(spec.name)
        return original(spec, **kwargs)

    monkeypatch.setattr(LLMEmbedForSequenceClassification, "backbone_loader", staticmethod(loader))
    return loads


def heads(tiny_config, count: int) -> list[LLMEmbedForSequenceClassification]:
    made = []
    for seed in range(count):
        torch.manual_seed(seed)
        made.append(LLMEmbedForSequenceClassification.from_backbones(tiny_config(num_labels=2, id2label=ID2LABEL)))
    return [head.eval() for head in made]


def test_heads_on_the_same_backbones_share_one_loaded_copy(tiny_config, monkeypatch):
    loads = counting_loader(monkeypatch)
    first, second = heads(tiny_config, 2)
    assert loads == ["llm", "enc"]  # the second head loaded nothing
    assert all(first.backbones[name] is second.backbones[name] for name in ("llm", "enc"))
    keys = [key for key in modeling_llmembed._LOADED_BACKBONES.keys() if key[0] == "counting_loader.<locals>.loader"]
    assert len(keys) == 2
    del first, second
    gc.collect()
    assert not [k for k in modeling_llmembed._LOADED_BACKBONES.keys() if k[0] == "counting_loader.<locals>.loader"]


def predictions_alone(heads: list[LLMEmbedForSequenceClassification]) -> list[list[tuple[str, float]]]:
    """Each head's top label and score of every text, from its own forward (its own tokenizer and backbones)."""
    alone = []
    for head in heads:
        batch = head.tokenizer(TEXTS, padding=True, return_tensors="pt")
        with torch.inference_mode():
            probabilities = head(**batch).logits.softmax(-1)
        alone.append([(ID2LABEL[int(p.argmax())], float(p.max())) for p in probabilities])
    return alone


def assert_answers_as_alone(together: list[dict], names: list[str], alone: list[list[tuple[str, float]]]) -> None:
    for name, expected in zip(names, alone):
        got = [(row[name]["label"], row[name]["score"]) for row in together]
        assert [label for label, _ in got] == [label for label, _ in expected]
        assert [score for _, score in got] == pytest.approx([score for _, score in expected], abs=1e-6)


def test_one_pass_for_every_head_equals_each_head_alone(tiny_config, monkeypatch):
    three = heads(tiny_config, 3)
    alone = predictions_alone(three)
    classifier = MultiHeadClassifier(three, names=["a", "b", "c"])
    passes = spy_passes(classifier.encoder, monkeypatch)
    together = classifier(TEXTS)
    assert sorted(passes) == [(("enc",), 4), (("llm",), 4)]  # each backbone ran once for all three heads
    assert_answers_as_alone(together, ["a", "b", "c"], alone)


def test_heads_over_different_views_share_the_views_and_passes_they_have_in_common(tiny_config, tiny_backbones,
                                                                                     monkeypatch):
    """The tiny preset's head, one whose encoder reads 16 tokens (another view of it), and one that adds the Llama's
    block 1 (a view of the Llama's pass): every distinct view runs once, the Llama's two in one pass, and every head
    answers as it does alone."""
    torch.manual_seed(0)
    plain, short, layered = (LLMEmbedForSequenceClassification.from_backbones(config).eval() for config in (
        tiny_config(num_labels=2, id2label=ID2LABEL),
        tiny_config(enc={"max_length": 16}, num_labels=2, id2label=ID2LABEL),
        tiny_config(backbones=tiny_specs(tiny_backbones) + [middle_layer_spec(tiny_backbones)], num_labels=2,
                    id2label=ID2LABEL)))
    names = ["plain", "short", "layered"]
    alone = predictions_alone([plain, short, layered])
    classifier = MultiHeadClassifier([plain, short, layered], names=names)
    assert classifier.views == [["llm", "enc"], ["llm", "enc_2"], ["llm", "enc", "mid"]]
    passes = spy_passes(classifier.encoder, monkeypatch)
    together = classifier(TEXTS)
    assert sorted(passes) == [(("enc",), 4), (("enc_2",), 4), (("llm", "mid"), 4)]
    assert_answers_as_alone(together, names, alone)
    pairs = LLMEmbedForSequenceClassification.from_backbones(tiny_config(pair_encoding="siamese")).eval()
    with pytest.raises(ValueError, match=r"head 'pairs' has pair_encoding=.*heads share a pass only when they encode"):
        MultiHeadClassifier([plain, pairs], names=["plain", "pairs"])


def test_concurrent_first_calls_load_each_backbone_once(saved_head, monkeypatch):
    """Threads classifying with a head whose backbones are not loaded yet: one load per backbone, no error."""
    _, folder = saved_head
    loads = counting_loader(monkeypatch)
    head = LLMEmbedForSequenceClassification.from_pretrained(folder).eval()
    from transformers import AutoTokenizer

    batch = AutoTokenizer.from_pretrained(folder)(TEXTS, padding=True, return_tensors="pt")
    barrier, errors, outputs = threading.Barrier(4), [], []

    def classify() -> None:
        try:
            barrier.wait()
            with torch.inference_mode():
                outputs.append(head(**batch).logits)
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=classify) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert sorted(loads) == ["enc", "llm"]
    assert all(torch.allclose(output, outputs[0]) for output in outputs)


def test_heads_of_every_problem_type_answer_as_llmembed_predict_does(trained, trained_multi_label, trained_regression):
    """One pass for a single-label, a multi-label and a regression head; each answers as `llmembed predict` would
    for it alone (the pipeline's output through `prediction_of`)."""
    from transformers import pipeline

    from llmembed_hf.multi_head import prediction_of

    folders = {"single": trained[0], "multi": trained_multi_label[0], "regression": trained_regression[0]}
    together = MultiHeadClassifier([str(f) for f in folders.values()], names=list(folders))(TEXTS)
    for name, folder in folders.items():
        classifier = pipeline("text-classification", model=str(folder), device="cpu")
        config = classifier.model.config
        every = {"top_k": None} if name == "multi" else {}
        alone = [prediction_of(config, output) for output in classifier(TEXTS, **every)]
        got = [row[name] for row in together]
        assert [set(g) for g in got] == [set(a) for a in alone], name
        for g, a in zip(got, alone):
            if name == "multi":
                assert g["labels"] == a["labels"]
                assert [e["label"] for e in g["scores"]] == [e["label"] for e in a["scores"]]
                assert [e["score"] for e in g["scores"]] == pytest.approx([e["score"] for e in a["scores"]], abs=1e-5)
            else:
                assert g.get("label") == a.get("label") and g["score"] == pytest.approx(a["score"], abs=1e-5)
    assert set(together[0]["multi"]) == {"labels", "scores"} and set(together[0]["regression"]) == {"score"}
