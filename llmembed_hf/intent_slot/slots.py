"""BIO slot tags: repair, spans, word/sub-token alignment and decoding into character spans of the text.

Words are the whitespace tokens of a text (MASSIVE's ``tokens`` are exactly ``text.split()``). A model sees
sub-tokens; the label of a word sits on its **first** sub-token, every other sub-token and every special token gets
`IGNORE_INDEX` (-100), which cross-entropy skips. Predictions are read back from the same first sub-tokens.

**Repair policy for invalid BIO.** An ``I-X`` that does not follow ``B-X`` or ``I-X`` (it follows ``O``, a tag of
another type, or starts the sequence) is read as ``B-X``: it starts a new span of type X. This is the seqeval /
conlleval convention (its default mode counts such a tag as the beginning of a chunk), so our span F1 matches
seqeval's. `repair_bio` is the single place that applies it, and it is used everywhere tags become spans: training
labels (so the model learns valid sequences), the metric (references and predictions alike) and decoding in the
pipeline.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers.utils import logging

logger = logging.get_logger(__name__)

#: Label of positions the loss and the metrics ignore (non-first sub-tokens, special tokens, padding).
IGNORE_INDEX = -100
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Span:
    """A typed slot over words ``start`` (inclusive) to ``end`` (exclusive)."""

    type: str
    start: int
    end: int


def repair_bio(tags: Sequence[str]) -> list[str]:
    """Tags with every ``I-X`` that does not continue an X span turned into ``B-X`` (see the module docstring)."""
    repaired: list[str] = []
    previous_type: str | None = None
    for tag in tags:
        if tag.startswith("I-") and previous_type != tag[2:]:
            tag = "B-" + tag[2:]
        repaired.append(tag)
        previous_type = tag[2:] if tag != "O" else None
    return repaired


def bio_to_spans(tags: Sequence[str]) -> list[Span]:
    """Typed word spans of a BIO sequence, after `repair_bio`."""
    spans: list[Span] = []
    for index, tag in enumerate(repair_bio(tags)):
        if tag.startswith("B-"):
            spans.append(Span(tag[2:], index, index + 1))
        elif tag.startswith("I-"):
            spans[-1] = Span(spans[-1].type, spans[-1].start, index + 1)
    return spans


def spans_to_bio(spans: Sequence[Span], num_words: int) -> list[str]:
    """The BIO sequence of ``num_words`` words holding non-overlapping ``spans``."""
    tags = ["O"] * num_words
    for span in spans:
        if not 0 <= span.start < span.end <= num_words:
            raise ValueError(f"span {span} does not fit in {num_words} words.")
        tags[span.start : span.end] = [f"B-{span.type}"] + [f"I-{span.type}"] * (span.end - span.start - 1)
    return tags


def word_offsets(text: str) -> list[tuple[int, int]]:
    """Character ``(start, end)`` of every whitespace-separated word of ``text``."""
    return [match.span() for match in _WORD.finditer(text)]


def align_word_labels(word_ids: Sequence[int | None], word_labels: Sequence[int]) -> list[int]:
    """Token labels: a word's label on its first sub-token, `IGNORE_INDEX` elsewhere (specials included)."""
    labels, previous = [], None
    for word_id in word_ids:
        labels.append(IGNORE_INDEX if word_id is None or word_id == previous else word_labels[word_id])
        previous = word_id
    return labels


def first_subtoken_positions(word_ids: Sequence[int | None], num_words: int) -> list[int | None]:
    """For every word, the position of its first sub-token, or None when truncation (or the tokenizer) dropped it."""
    positions: list[int | None] = [None] * num_words
    for position, word_id in enumerate(word_ids):
        if word_id is not None and positions[word_id] is None:
            positions[word_id] = position
    return positions


def tag_ids(tags: Sequence[int | str], slot_labels: Sequence[str], example: int) -> list[int]:
    """Slot tag ids of one example, from ids or tag strings, BIO-repaired; errors name the example index."""
    names = list(slot_labels)
    if all(isinstance(t, str) for t in tags):
        unknown = sorted(set(tags) - set(names))
        if unknown:
            raise ValueError(f"example {example}: unknown slot tag(s) {unknown[:5]}; known tags are {names[:10]}...")
        strings = list(tags)
    else:
        bad = [t for t in tags if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < len(names)]
        if bad:
            raise ValueError(f"example {example}: slot tag id {bad[0]!r} is not in 0..{len(names) - 1}.")
        strings = [names[t] for t in tags]
    index = {name: i for i, name in enumerate(names)}
    repaired = repair_bio(strings)
    missing = sorted({t for t in repaired if t not in index})
    if missing:
        raise ValueError(f"example {example}: repairing I- tags needs {missing}, which are not among the slot labels.")
    return [index[t] for t in repaired]


def tokenize_and_align(
    tokenizer: Any,
    words: Sequence[Sequence[str]],
    tags: Sequence[Sequence[int | str]] | None,
    slot_labels: Sequence[str],
    max_length: int = 128,
) -> dict[str, list[list[int]]]:
    """Tokenise pre-split words (a fast tokenizer's ``word_ids()``) and align their slot tags to sub-tokens.

    Returns ``input_ids``, ``attention_mask`` and, with ``tags``, ``slot_labels`` (one list per example). Raises a
    ValueError naming the example index when an example has a different number of words and tags, and warns
    how many examples lost words to truncation at ``max_length`` (their tags are not trained on).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"{type(tokenizer).__name__} is not a fast tokenizer; word alignment needs word_ids().")
    if tags is not None:
        if len(tags) != len(words):
            raise ValueError(f"{len(words)} examples of words but {len(tags)} of tags.")
        for index, (example_words, example_tags) in enumerate(zip(words, tags)):
            if len(example_words) != len(example_tags):
                raise ValueError(
                    f"example {index}: {len(example_words)} tokens but {len(example_tags)} slot tags; every word "
                    "needs exactly one tag."
                )
    encoding = tokenizer(
        [list(w) for w in words], is_split_into_words=True, truncation=True, max_length=max_length,
        return_token_type_ids=False,
    )
    result = {"input_ids": encoding["input_ids"], "attention_mask": encoding["attention_mask"]}
    truncated = 0
    if tags is not None:
        result["slot_labels"] = []
        for index, example_tags in enumerate(tags):
            word_ids = encoding.word_ids(index)
            truncated += None in first_subtoken_positions(word_ids, len(example_tags))
            result["slot_labels"].append(align_word_labels(word_ids, tag_ids(example_tags, slot_labels, index)))
    if truncated:
        logger.warning(f"{truncated} of {len(words)} examples lost words to truncation at max_length={max_length}.")
    return result


def decode_slots(
    text: str, word_tags: Sequence[str], word_scores: Sequence[float] | None = None
) -> list[dict[str, Any]]:
    """Typed character spans of ``text`` from one predicted tag per whitespace word (BIO-repaired).

    Each span is ``{"type", "start", "end", "text", "score"}`` with ``text == text[start:end]``; the score is the
    mean of the words' tag probabilities (1.0 when no scores are given).
    """
    offsets = word_offsets(text)
    if len(offsets) != len(word_tags):
        raise ValueError(f"{len(word_tags)} tags for {len(offsets)} words of {text!r}.")
    slots = []
    for span in bio_to_spans(word_tags):
        start, end = offsets[span.start][0], offsets[span.end - 1][1]
        scores = list(word_scores[span.start : span.end]) if word_scores is not None else [1.0]
        slots.append({"type": span.type, "start": start, "end": end, "text": text[start:end],
                      "score": float(sum(scores) / len(scores))})
    return slots


__all__ = [
    "IGNORE_INDEX",
    "Span",
    "align_word_labels",
    "bio_to_spans",
    "decode_slots",
    "first_subtoken_positions",
    "repair_bio",
    "spans_to_bio",
    "tag_ids",
    "tokenize_and_align",
    "word_offsets",
]
