# Self-contained (torch + transformers only): this file is uploaded with every head as remote code.
"""One tokenizer over every backbone of an LLMEmbed head, usable wherever transformers expects a tokenizer."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from typing import Any, Sequence

from transformers import AutoTokenizer, BatchEncoding, PretrainedConfig
from transformers.utils import logging

from .configuration_llmembed import BackboneSpec, hub_revision, normalize_pair_encoding

logger = logging.get_logger(__name__)

TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
#: Characters per token no tokenizer exceeds in practice (sub-word pieces are a few characters; whole words rarely
#: 30): a text is cut to ``max_length * CHARS_PER_TOKEN_BOUND`` characters before tokenising, which leaves its first
#: ``max_length`` tokens as they are and spares tokenising the rest of a long document.
CHARS_PER_TOKEN_BOUND = 64
SUBFOLDER = "tokenizers"
#: Texts appended to a prompt to find which of its tokens every text keeps (`LLMEmbedTokenizer.prompt_ids`): a
#: prompt's last piece can merge with the text's first one (Gemma's ``"query: "`` ends in a lone ``▁`` that joins
#: the next word), and such a piece belongs to the text.
_PROMPT_PROBES = ("a", "The 1", "hello")
#: Words as scikit-learn's ``TfidfVectorizer`` finds them by default: runs of two or more word characters.
_WORD = re.compile(r"(?u)\b\w\w+\b")
#: Characters of a text the lexical view reads (a bound on its cost for very long documents).
LEXICAL_MAX_CHARS = 100_000


def ngram_hash(ngram: str) -> int:
    """A 63-bit id of an n-gram, the same in every process and on every machine (blake2b; Python's ``hash`` is
    salted per process): the lexical view's vocabulary is the sorted ids of the n-grams it kept."""
    return int.from_bytes(hashlib.blake2b(ngram.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def lexical_ngram_counts(text: str) -> dict[int, int]:
    """How often each lower-cased word unigram and bigram occurs in ``text``, keyed by `ngram_hash`: the input of a
    head's lexical view (`LLMEmbedLexicalView`), what ``TfidfVectorizer(ngram_range=(1, 2))`` counts."""
    words = _WORD.findall(text[:LEXICAL_MAX_CHARS].lower())
    return dict(Counter(ngram_hash(gram) for gram in [*words, *(f"{a} {b}" for a, b in zip(words, words[1:]))]))


def lexical_rows(texts: Sequence[str]) -> dict[str, list[list[int]]]:
    """Unpadded ``lexical_ids`` and ``lexical_counts`` rows of ``texts`` (`lexical_ngram_counts`); a text without a
    word gets one slot of count 0 (padding), so every row has a column."""
    counts = [lexical_ngram_counts(text) for text in texts]
    return {"lexical_ids": [list(c) or [0] for c in counts],
            "lexical_counts": [list(c.values()) or [0] for c in counts]}


def ensure_pad_token(tokenizer: Any) -> int:
    """Give ``tokenizer`` a pad token if it has none and return the pad token id.

    Decoder tokenizers often ship without one (Llama's), but batching needs one. An existing token is reused (EOS,
    else UNK, else BOS), which keeps the vocabulary and the embedding matrix unchanged; the attention mask hides
    every padded position, so which token it is never changes a result.
    """
    if tokenizer.pad_token_id is None:
        for candidate in ("eos_token", "unk_token", "bos_token"):
            if getattr(tokenizer, candidate, None) is not None:
                tokenizer.pad_token = getattr(tokenizer, candidate)
                logger.info(f"The tokenizer has no pad token; padding with its {candidate} {tokenizer.pad_token!r}.")
                break
        else:
            raise ValueError(
                f"the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no pad, EOS, UNK or BOS token to pad "
                "with; set tokenizer.pad_token first."
            )
    return tokenizer.pad_token_id


def _check_unicode(item: str, where: str) -> None:
    """Raise a ValueError if ``item`` is not valid Unicode text (it holds a lone surrogate, e.g. from
    ``json.loads('"\\ud800"')`` or undecodable command-line bytes): no tokenizer can encode it."""
    if item.isascii():
        return
    try:
        item.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{where} is not valid Unicode: it holds the lone surrogate {item[error.start]!r} at position "
            f"{error.start} ({item!r:.50}). Decode its source with errors='replace', or drop it."
        ) from None


def _check_texts(text: Any, what: str = "text") -> tuple[list[str], bool]:
    """Return ``(texts, is_batch)``; raise a TypeError naming the first item that is not a string, a ValueError for
    an empty list or a text that is not valid Unicode. ``what`` names the argument in messages (``text_pair``)."""
    if isinstance(text, str):
        _check_unicode(text, what)
        return [text], False
    if isinstance(text, (list, tuple)):
        for index, item in enumerate(text):
            if not isinstance(item, str):
                raise TypeError(
                    f"{what}[{index}] is {type(item).__name__} ({item!r:.50}); every text must be a str. "
                    "Convert or drop it before tokenising."
                )
            _check_unicode(item, f"{what}[{index}]")
        if not text:
            raise ValueError(f"{what} is an empty list; pass at least one string to tokenise.")
        return list(text), True
    raise TypeError(f"{what} must be a str or a list of str, got {type(text).__name__} ({text!r:.50}).")


def _check_pairs(texts: list[str], is_batch: bool, text_pair: Any, pair_encoding: dict[str, str] | None,
                 what: str = "text_pair") -> list[str] | None:
    """The second texts of pairs, checked like ``text`` and against it (one per text), or None for single texts;
    a ValueError when a head of pairs gets single texts or a head of single texts gets pairs. ``what`` names the
    argument in messages (``text_pairs`` of `llmembed_hf.extract_features`)."""
    if pair_encoding is None:
        if text_pair is not None:
            raise ValueError(f"{what} was given, but this head classifies single texts (it was not trained on text "
                             "pairs). Pass text only, or train a head on pair data (a text_pair column).")
        return None
    if text_pair is None:
        raise ValueError(f'this head classifies text pairs: pass {what}= too (with pipeline, inputs like {{"text": '
                         '..., "text_pair": ...}).')
    pairs, pair_is_batch = _check_texts(text_pair, what)
    if pair_is_batch != is_batch or len(pairs) != len(texts):
        raise ValueError(f"{what} must match text: one str for one str, or a list of the same length (got "
                         f"{len(texts)} text(s) and {len(pairs)} {what}(s)).")
    return pairs


class LLMEmbedTokenizer:
    """Tokenises text for every backbone at once.

    One call returns ``<name>_input_ids`` and ``<name>_attention_mask`` for each backbone, truncated to that
    backbone's ``max_length`` and padded (right, with 0: every pooled position is masked, so the pad id never
    matters), which is exactly what `LLMEmbedForSequenceClassification.forward` and `pipeline` batching expect.
    A text that a backbone turns into no token at all (an empty string for a tokenizer without BOS) gets one
    special token so every view is defined. A backbone's ``prompt`` is prepended to each of its texts (as
    sentence-transformers does, one string) and the text is truncated on the right, so the prompt always stays.

    The tokenizer of a pair head (``pair_encoding``, as in its config) takes ``text_pair`` too: a ``joint``
    backbone gets its own tokenizer's pair encoding of (prompt + text, text_pair), truncated ``longest_first``; a
    ``siamese`` backbone gets each side alone (each with the prompt), the second under ``<name>_pair_input_ids`` /
    ``<name>_pair_attention_mask``.

    The tokenizer of a head with a lexical view (``lexical_view``, as ``config.lexical_vocab_size > 0``) also
    returns each text's word n-grams (`lexical_ngram_counts`) as ``lexical_ids`` and ``lexical_counts``, padded with
    count 0.
    """

    model_input_names = ["input_ids", "attention_mask"]
    _auto_class: str | None = None
    padding_side = "right"
    pad_token_id = 0
    pad_token = None

    def __init__(self, tokenizers: dict[str, Any], specs: Sequence[BackboneSpec | dict[str, Any]],
                 pair_encoding: str | dict[str, str] | None = None, lexical_view: bool = False) -> None:
        self.specs = [BackboneSpec.from_dict(s) for s in specs]
        self.pair_encoding = normalize_pair_encoding(pair_encoding)
        self.lexical_view = lexical_view
        names = [spec.name for spec in self.specs]
        if sorted(tokenizers) != sorted(names):
            raise ValueError(f"LLMEmbedTokenizer: tokenizers for {sorted(tokenizers)} given, backbones are {names}.")
        self.tokenizers = {name: tokenizers[name] for name in names}
        for tokenizer in self.tokenizers.values():
            ensure_pad_token(tokenizer)  # so each backbone's own tokenizer batches too (`pad` here pads with 0)
        self.model_max_length = max(spec.max_length for spec in self.specs)
        #: Per prompted backbone: (the ids every row starts with, the tokens the prompt takes alone with specials).
        self._prompts: dict[str, tuple[list[int], int]] = {}
        for spec in self.specs:
            if spec.prompt is not None:
                self._prompts[spec.name] = self._measure_prompt(spec)
                self._check_prompt_room(spec, spec.max_length, "max_length")

    def _measure_prompt(self, spec: BackboneSpec) -> tuple[list[int], int]:
        tokenizer = self.tokenizers[spec.name]
        if getattr(tokenizer, "truncation_side", "right") != "right":
            logger.info(f"backbones[{spec.name!r}]: truncating on the right, so that its prompt is never cut.")
            tokenizer.truncation_side = "right"
        alone = tokenizer(spec.prompt)["input_ids"]
        prefix = list(alone)
        for probe in _PROMPT_PROBES:
            joined = tokenizer(spec.prompt + probe)["input_ids"]
            common = next((i for i, (a, b) in enumerate(zip(prefix, joined)) if a != b), min(len(prefix), len(joined)))
            prefix = prefix[:common]
        return prefix, len(alone)

    def _check_prompt_room(self, spec: BackboneSpec, limit: int, what: str) -> None:
        count = self._prompts[spec.name][1]
        if count >= limit:
            raise ValueError(
                f"backbones[{spec.name!r}].prompt={spec.prompt!r} takes {count} tokens (special tokens included), "
                f"which leaves no room for the text under {what}={limit}; shorten the prompt, or raise {what} to "
                f"more than {count}."
            )

    def prompt_ids(self, name: str) -> list[int]:
        """The token ids every row of backbone ``name`` starts with: the special tokens put before a text (BOS,
        CLS) and the prompt's own tokens, less a last piece that merges with the text; ``[]`` without a prompt.
        These are the positions ``pool_prompt=False`` leaves out of pooling (as sentence-transformers'
        ``include_prompt=False`` does, which leaves out the leading special tokens too)."""
        return list(self._prompts[name][0]) if name in self._prompts else []

    def __repr__(self) -> str:
        parts = ", ".join(f"{s.name}={type(self.tokenizers[s.name]).__name__}(max_length={s.max_length})" for s in self.specs)
        return f"LLMEmbedTokenizer({parts})"

    def _fallback_token(self, name: str) -> int:
        tokenizer = self.tokenizers[name]
        for token_id in (tokenizer.bos_token_id, tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id):
            if token_id is not None:
                return token_id
        raise ValueError(f"backbone {name!r}: its tokenizer produced no token and has no special token to use.")

    def backbone_ids(self, name: str, texts: list[str], text_pairs: list[str] | None = None,
                     max_length: int | None = None) -> list[list[int]]:
        """One backbone's token ids of checked ``texts`` (or of the pairs ``(texts[i], text_pairs[i])``, in that
        backbone tokenizer's own pair encoding), truncated to its ``max_length`` (capped by ``max_length``)."""
        spec = next(spec for spec in self.specs if spec.name == name)
        tokenizer = self.tokenizers[name]
        limit = min(spec.max_length, max_length) if max_length else spec.max_length
        prompt = spec.prompt or ""
        if prompt and limit < spec.max_length:
            self._check_prompt_room(spec, limit, "the call's max_length")
        # Only the first `limit` tokens of a text (of each side of a pair) can be kept: characters far past them never
        # need tokenising.
        cut = limit * CHARS_PER_TOKEN_BOUND
        pairs = None if text_pairs is None else [t[:cut] for t in text_pairs]
        ids = tokenizer([prompt + t[:cut] for t in texts], pairs, truncation="longest_first", max_length=limit,
                        padding=False)["input_ids"]
        return [row if row else [self._fallback_token(name)] for row in ids]

    def __call__(
        self,
        text: str | list[str],
        text_pair: str | list[str] | None = None,
        padding: bool | str = True,
        truncation: bool | str = True,
        max_length: int | None = None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> BatchEncoding:
        """Tokenise ``text`` (a str or a list of str), with ``text_pair`` (the same shape) for a pair head, for every
        backbone.

        ``max_length`` caps every backbone's own limit; ``truncation`` is always applied (a backbone cannot see
        more than its limit). Unknown keyword arguments from callers such as `pipeline` are ignored.
        """
        texts, is_batch = _check_texts(text)
        pairs = _check_pairs(texts, is_batch, text_pair, self.pair_encoding)
        encoded: dict[str, Any] = {}
        for spec in self.specs:
            mode = None if pairs is None else self.pair_encoding[spec.role]
            joint = pairs if mode == "joint" else None
            encoded[f"{spec.name}_input_ids"] = self.backbone_ids(spec.name, texts, joint, max_length)
            if mode == "siamese":
                encoded[f"{spec.name}_pair_input_ids"] = self.backbone_ids(spec.name, pairs, None, max_length)
        if self.lexical_view:
            if pairs is not None:
                raise ValueError("a lexical view reads single texts; this tokenizer got text_pair.")
            encoded.update(lexical_rows(texts))
        if return_tensors is not None or (padding and is_batch):
            encoded = self.pad(encoded, return_tensors=return_tensors)
            return encoded
        for key in [key for key in encoded if key.endswith("_input_ids")]:
            encoded[key[: -len("_input_ids")] + "_attention_mask"] = [[1] * len(row) for row in encoded[key]]
        if not is_batch:
            encoded = {key: rows[0] for key, rows in encoded.items()}
        return BatchEncoding(encoded)

    def pad(
        self,
        encoded: dict[str, list[list[int]]],
        return_tensors: str | None = None,
        backbones: Sequence[str] | None = None,
    ) -> BatchEncoding:
        """Right-pad ragged ``<name>_input_ids`` rows (e.g. a length-sorted batch), and a siamese backbone's
        ``<name>_pair_input_ids``, and build their masks; ``lexical_ids``/``lexical_counts`` rows are padded with 0.

        ``backbones`` restricts this to some backbones' rows (default: all of them).
        """
        names = [spec.name for spec in self.specs]
        if backbones is not None:
            if unknown := sorted(set(backbones) - set(names)):
                raise ValueError(f"pad: unknown backbones {unknown}; this tokenizer has {names}.")
            names = list(backbones)
        padded: dict[str, Any] = {}
        for prefix in [p for name in names for p in (name, f"{name}_pair") if f"{p}_input_ids" in encoded]:
            ids = encoded[f"{prefix}_input_ids"]
            width = max((len(row) for row in ids), default=0)
            padded[f"{prefix}_input_ids"] = [list(row) + [self.pad_token_id] * (width - len(row)) for row in ids]
            padded[f"{prefix}_attention_mask"] = [[1] * len(row) + [0] * (width - len(row)) for row in ids]
        for key in ("lexical_ids", "lexical_counts"):
            if key in encoded:
                width = max(len(row) for row in encoded[key])
                padded[key] = [list(row) + [0] * (width - len(row)) for row in encoded[key]]
        return BatchEncoding(padded, tensor_type=return_tensors)

    # -- persistence -----------------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> tuple[str, ...]:
        """Write ``tokenizer_config.json`` and each backbone's tokenizer under ``tokenizers/<name>/``."""
        os.makedirs(save_directory, exist_ok=True)
        files = []
        for spec in self.specs:
            files += list(self.tokenizers[spec.name].save_pretrained(os.path.join(save_directory, SUBFOLDER, spec.name)))
        config = {
            "tokenizer_class": type(self).__name__,
            "backbones": [spec.to_dict() for spec in self.specs],
            **({"pair_encoding": self.pair_encoding} if self.pair_encoding is not None else {}),
            **({"lexical_view": True} if self.lexical_view else {}),
            "auto_map": {"AutoTokenizer": ["tokenization_llmembed.LLMEmbedTokenizer", None]},
        }
        path = os.path.join(save_directory, TOKENIZER_CONFIG_FILE)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2)
        return (path, *files)

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoTokenizer") -> None:
        """Called by transformers when loading as remote code; `save_pretrained` always writes the auto_map."""
        cls._auto_class = auto_class

    @staticmethod
    def backbone_tokenizer_loader(spec: BackboneSpec) -> Any:
        """A backbone's own tokenizer by its spec (`llmembed_hf` replaces this with its resolver's lookup); a Hub id
        at the spec's ``revision``, else its `HUB_REVISIONS` pin."""
        revision = spec.revision if os.path.isdir(spec.model_id) else hub_revision(spec.model_id, spec.revision)
        kwargs = {"revision": revision, **({"gguf_file": spec.gguf_file} if spec.gguf_file else {})}
        return AutoTokenizer.from_pretrained(spec.model_id, **kwargs)

    @classmethod
    def from_backbone_specs(cls, specs: Sequence[BackboneSpec | dict[str, Any]],
                            pair_encoding: str | dict[str, str] | None = None) -> LLMEmbedTokenizer:
        """Build the composite tokenizer from each backbone's own tokenizer."""
        specs = [BackboneSpec.from_dict(s) for s in specs]
        return cls({spec.name: cls.backbone_tokenizer_loader(spec) for spec in specs}, specs, pair_encoding)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any) -> LLMEmbedTokenizer:
        """Load from a folder or Hub repo written by `save_pretrained`.

        A repo without tokenizer files falls back, with a warning, to the backbones' own tokenizers named in its
        config.json.
        """
        hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
        from transformers.utils import cached_file

        config_path = cached_file(pretrained_model_name_or_path, TOKENIZER_CONFIG_FILE,
                                  _raise_exceptions_for_missing_entries=False, **hub_kwargs)
        config = {}
        if config_path is not None:
            with open(config_path, encoding="utf-8") as handle:
                config = json.load(handle)
        if "backbones" not in config:
            from .configuration_llmembed import LLMEmbedConfig

            logger.warning(
                f"{pretrained_model_name_or_path} has no LLMEmbedTokenizer files ({TOKENIZER_CONFIG_FILE} with "
                "'backbones'); falling back to the backbones' own tokenizers from its config.json."
            )
            model_config = LLMEmbedConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
            tokenizer = cls.from_backbone_specs(model_config.backbone_specs, model_config.pair_encoding)
            tokenizer.lexical_view = model_config.lexical_vocab_size > 0
            return tokenizer
        specs = [BackboneSpec.from_dict(b) for b in config["backbones"]]
        pair_encoding = normalize_pair_encoding(config.get("pair_encoding"))
        lexical_view = bool(config.get("lexical_view", False))
        _check_specs_agree(pretrained_model_name_or_path, specs, pair_encoding, lexical_view, hub_kwargs)
        # config=PretrainedConfig(): the subfolders hold tokenizer files only; without it AutoTokenizer looks for
        # a config.json there, which offline (HF_HUB_OFFLINE=1) fails instead of being skipped.
        tokenizers = {
            spec.name: AutoTokenizer.from_pretrained(
                pretrained_model_name_or_path, subfolder=f"{SUBFOLDER}/{spec.name}", config=PretrainedConfig(),
                **hub_kwargs,
            )
            for spec in specs
        }
        return cls(tokenizers, specs, pair_encoding, lexical_view)


#: Spec fields that decide how a backbone tokenises: the tokenizer's copy must equal the model config's.
_TOKENIZATION_FIELDS = ("name", "model_id", "revision", "gguf_file", "max_length", "prompt")


def _check_specs_agree(source: str | os.PathLike, specs: list[BackboneSpec], pair_encoding: dict[str, str] | None,
                       lexical_view: bool, hub_kwargs: dict[str, Any]) -> None:
    """Refuse tokenizer files whose backbones, pair encoding or lexical view disagree with the ``config.json`` beside
    them (an edited or mixed-up repo would tokenise for one model and run another)."""
    from transformers.utils import CONFIG_NAME, cached_file

    config_path = cached_file(source, CONFIG_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    if config_path is None:
        return
    with open(config_path, encoding="utf-8") as handle:
        model_config = json.load(handle)
    model_backbones = model_config.get("backbones")
    if model_backbones is None:  # not an LLMEmbed head's config
        return
    model_pair_encoding = normalize_pair_encoding(model_config.get("pair_encoding"))
    if pair_encoding != model_pair_encoding:
        raise ValueError(
            f"{source}: {TOKENIZER_CONFIG_FILE} disagrees with config.json on pair_encoding ({pair_encoding!r} vs "
            f"{model_pair_encoding!r}); the tokenizer would prepare other inputs than the model reads. Save the head "
            "again with save_pretrained, or fix the files so both say the same."
        )
    if lexical_view != (model_config.get("lexical_vocab_size", 0) > 0):
        raise ValueError(
            f"{source}: {TOKENIZER_CONFIG_FILE} says lexical_view={lexical_view} but config.json's "
            f"lexical_vocab_size is {model_config.get('lexical_vocab_size', 0)}; the tokenizer would prepare other "
            "inputs than the model reads. Save the head again with save_pretrained."
        )
    model_specs = [BackboneSpec.from_dict(b) for b in model_backbones]
    ours = [{k: getattr(spec, k) for k in _TOKENIZATION_FIELDS} for spec in specs]
    theirs = [{k: getattr(spec, k) for k in _TOKENIZATION_FIELDS} for spec in model_specs]
    if ours != theirs:
        field, mine, model = next(
            ((f"backbones[{i}].{k}", a.get(k), b.get(k)) for i, (a, b) in enumerate(zip(ours, theirs)) for k in a
             if a.get(k) != b.get(k)),
            ("backbones", [s["name"] for s in ours], [s["name"] for s in theirs]),
        )
        raise ValueError(
            f"{source}: {TOKENIZER_CONFIG_FILE} disagrees with config.json on {field} ({mine!r} vs {model!r}); the "
            "tokenizer would prepare text for other backbones than the model runs. Save the head again with "
            "save_pretrained, or fix the files so both list the same backbones."
        )
