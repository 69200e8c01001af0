"""The argument dataclasses (`llmembed_hf.training_args`): invalid values are refused when the arguments are built."""

from __future__ import annotations

import pytest

from llmembed_hf import FinetuneArguments
from llmembed_hf.training_args import DataArguments


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(method="qlora"), "method='qlora' is unknown"),
        (dict(lora_r=0), "lora_r=0 must be a positive integer"),
        (dict(lora_dropout=1.0), "lora_dropout"),
        (dict(fp16=True, bf16=True), "exclusive"),
        (dict(method="lora", freeze_embeddings=True), "applies to method='full'"),
        (dict(method="lora", seen_embeddings_only=True), "applies to method='full'"),
        (dict(method="full", freeze_embeddings=True, seen_embeddings_only=True), "are exclusive"),
    ],
)
def test_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        FinetuneArguments(**args)


@pytest.mark.parametrize("mode", ["frozen", "lora"])
def test_intent_slot_trains_seen_embedding_rows_only_in_full_mode(mode):
    from llmembed_hf.intent_slot import IntentSlotArguments

    with pytest.raises(ValueError, match=f"applies to mode='full'; with mode='{mode}'"):
        IntentSlotArguments(mode=mode, seen_embeddings_only=True)
    assert IntentSlotArguments(mode="full", seen_embeddings_only=True).seen_embeddings_only


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_bad_validation_fraction(fraction):
    with pytest.raises(ValueError, match="validation_fraction"):
        DataArguments("data", validation_fraction=fraction)


@pytest.mark.parametrize("cls", ["HeadTrainingArguments", "FinetuneArguments", "IntentSlotArguments"])
@pytest.mark.parametrize("field, value", [("epochs", 0), ("batch_size", 0), ("learning_rate", 0.0),
                                          ("warmup_ratio", 1.0)])
def test_every_line_refuses_settings_that_train_nothing(cls, field, value):
    """epochs=0 used to train nothing and still write the card of a trained head."""
    import llmembed_hf

    with pytest.raises(ValueError, match=field):
        getattr(llmembed_hf, cls)(**{field: value})


def test_output_arguments_need_a_folder():
    from llmembed_hf.training_args import OutputArguments

    with pytest.raises(ValueError, match="output_dir is missing"):
        OutputArguments()
