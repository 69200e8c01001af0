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
    ],
)
def test_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        FinetuneArguments(**args)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_bad_validation_fraction(fraction):
    with pytest.raises(ValueError, match="validation_fraction"):
        DataArguments("data", validation_fraction=fraction)
