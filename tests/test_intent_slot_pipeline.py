"""The ``intent-slot-filling`` pipeline (`llmembed_hf.intent_slot.pipeline`): the intent and typed character spans of
the text, the same answers batched as one at a time."""

from __future__ import annotations

import pytest
import torch
from transformers import pipeline

from helpers import INTENTS, SLOTS
from llmembed_hf import LLMEmbedForIntentAndSlotFilling
from llmembed_hf.intent_slot.slots import word_offsets


def force_slot_tag(model: LLMEmbedForIntentAndSlotFilling, tag: str) -> None:
    with torch.no_grad():
        model.slot_classifier.weight.zero_()
        model.slot_classifier.bias.fill_(-10.0)
        model.slot_classifier.bias[SLOTS.index(tag)] = 10.0


@pytest.mark.parametrize("backbone", ["bert", "llama"])
def test_pipeline_returns_the_intent_and_typed_character_spans(make_model, tmp_path, backbone):
    model = make_model(backbone, "frozen")
    force_slot_tag(model, "B-date")  # every word its own date span
    model.save_pretrained(tmp_path / "begin")
    force_slot_tag(model, "I-date")  # orphan I- repaired: one span over every word
    model.save_pretrained(tmp_path / "inside")

    text = "  the cats sat,  on the mat! "
    words = word_offsets(text)
    nlu = pipeline("intent-slot-filling", model=str(tmp_path / "begin"), device="cpu")
    result = nlu(text)
    assert set(result) == {"intent", "score", "slots"}
    assert result["intent"] in INTENTS and 0 < result["score"] <= 1
    assert [(s["start"], s["end"]) for s in result["slots"]] == words
    for slot in result["slots"]:
        assert set(slot) == {"type", "start", "end", "text", "score"}
        assert slot["type"] == "date" and slot["text"] == text[slot["start"]:slot["end"]] and slot["score"] > 0.99
    assert [s["text"] for s in result["slots"]] == ["the", "cats", "sat,", "on", "the", "mat!"]

    whole = pipeline("intent-slot-filling", model=str(tmp_path / "inside"), device="cpu")(text)["slots"]
    assert [(s["type"], s["text"], s["start"]) for s in whole] == [("date", "the cats sat,  on the mat!", 2)]

    # batching (padding on either side) gives the same answers as one text at a time
    texts = ["good movie", text, "not bad at all , very good", ""]
    nlu.tokenizer.padding_side = "left" if backbone == "llama" else "right"
    one_by_one = [nlu(t) for t in texts]
    batched = nlu(texts, batch_size=3)
    assert [r["slots"] for r in batched] == [r["slots"] for r in one_by_one]
    assert [r["score"] for r in batched] == pytest.approx([r["score"] for r in one_by_one], abs=1e-5)
    assert batched[-1]["slots"] == []
