"""Heads on the same backbones: one loaded copy per backbone (the registry), one backbone pass (MultiHeadClassifier),
and lazy loading that is safe under concurrent first calls."""

from __future__ import annotations

import gc
import threading

import pytest
import torch

from helpers import ID2LABEL
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


def test_one_pass_for_every_head_equals_each_head_alone(tiny_config, monkeypatch):
    three = heads(tiny_config, 3)
    alone = []
    for head in three:
        batch = head.tokenizer(TEXTS, padding=True, return_tensors="pt")
        with torch.inference_mode():
            probabilities = head(**batch).logits.softmax(-1)
        alone.append([(ID2LABEL[int(p.argmax())], float(p.max())) for p in probabilities])

    passes: list[tuple[str, int]] = []
    original = LLMEmbedForSequenceClassification.encode_backbones

    def counted(self, names, input_ids, attention_mask, **kwargs):
        passes.extend((name, input_ids.shape[0]) for name in names)
        return original(self, names, input_ids, attention_mask, **kwargs)

    monkeypatch.setattr(LLMEmbedForSequenceClassification, "encode_backbones", counted)
    together = MultiHeadClassifier(three, names=["a", "b", "c"])(TEXTS)
    assert sorted(passes) == [("enc", 4), ("llm", 4)]  # each backbone ran once for all three heads
    for name, expected in zip("abc", alone):
        got = [(row[name]["label"], row[name]["score"]) for row in together]
        assert [label for label, _ in got] == [label for label, _ in expected]
        assert [score for _, score in got] == pytest.approx([score for _, score in expected], abs=1e-6)


@pytest.mark.parametrize("enc, message", [
    ({"max_length": 16}, r"max_length=16 differs from head 'a': 32"),
    ({"prompt": "the film, "}, r"prompt='the film, ' differs from head 'a': None"),
    ({"quantization": "int8"}, r"quantization='int8' differs from head 'a': None"),
])
def test_heads_over_other_backbones_are_refused_with_the_differing_field(tiny_config, enc, message):
    torch.manual_seed(0)
    first = LLMEmbedForSequenceClassification.from_backbones(tiny_config())
    other = LLMEmbedForSequenceClassification.from_backbones(tiny_config(enc=enc))
    with pytest.raises(ValueError, match=r"head 'b': backbones\['enc'\]\." + message):
        MultiHeadClassifier([first, other], names=["a", "b"])


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
