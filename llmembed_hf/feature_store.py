"""The per-view feature store: each backbone's pooled views, content-addressed by (backbone fingerprint, text sha256).

A vector is computed once per (backbone, text) and reused by every later request that needs it: a superset or
another subset of texts, another preset sharing the backbone, a second head. `llmembed_hf.features.extract_features`
decides what to compute; this module owns the files. Layout under the store root (``<llmembed cache>/features``)::

    v2/                                    format version: older caches beside it (``<32 hex>/``) are never read
      locks/<fingerprint>.lock             flock'ed briefly to claim work (kept when a backbone is pruned)
      <fingerprint>/                       one folder per backbone fingerprint (sha256 of its description, 32 hex)
        backbone.json                      the description: model_id, layers, pooling, weights sha256, tokenizer, ...
        last_used                          touched by every request (``cache_prune(older_than_days=...)`` reads it)
        segments/seg-<id>.safetensors      immutable: ``vectors`` (n, width) + ``text_sha256`` uint8 (n, 32) (a text's
                                           `text_sha256`, or a jointly encoded pair's `pair_sha256`), with the
                                           sha256 of both tensors' bytes in the safetensors metadata; written to a
                                           temporary name and renamed, so a reader sees a whole segment or none
        segments/seg-<id>.safetensors.corrupt   a segment that failed its checks, set aside (never read again)
        claims/<id>.claim                  the text hashes a live process is computing; it holds an flock on the file

Guarantees (one machine, a local file system where ``fcntl.flock`` works):

* a segment is used only if its checksums, shapes, dtype and fingerprint match and every value is finite;
  otherwise it is set aside with a warning and its texts are computed again;
* processes that share the store never compute the same (backbone, text) at the same time: a process claims the
  texts it is about to compute under the backbone's lock, after re-reading the segments and the live claims; others
  skip claimed texts and wait for their segment. A claim dies with its process (the kernel drops the flock), so texts
  of a killed process are claimed again by whoever still needs them; its claim and temporary files are removed
  by the next request that opens the store;
* an interruption loses at most the segments being computed (``shard_size`` texts per process and backbone).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save
from transformers.utils import logging

from .file_utils import atomic_save, atomic_write_text, cache_dir

try:  # POSIX only; elsewhere the store works for one process at a time
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

logger = logging.get_logger(__name__)

STORE_VERSION = "v2"
SEGMENT_FORMAT = "llmembed-feature-segment"
STORAGE_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}
HASH_BYTES = 32
#: Seconds between looks at the store while waiting for texts another process has claimed.
POLL_SECONDS = 0.1


def default_store_root() -> Path:
    """``<llmembed cache>/features``."""
    return cache_dir() / "features"


def text_sha256(text: str) -> bytes:
    """The key of a text in the store: sha256 of its UTF-8 bytes (lone surrogates kept as they are)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


#: Starts the hashed bytes of a pair: 0xFF never occurs in UTF-8 (nor in lone surrogates' bytes), so what a pair key
#: hashes is never what a text key hashes.
_PAIR_PREFIX = b"\xffllmembed-pair\x00"


def pair_sha256(text: str, text_pair: str) -> bytes:
    """The key of a pair encoded jointly: sha256 of `_PAIR_PREFIX`, the first text's UTF-8 byte count (8 bytes, big
    endian) and both texts' bytes. The length prefix makes it unambiguous (("ab", "c") and ("a", "bc") differ), the
    prefix keeps it apart from every text key; a siamese pair needs no key of its own (each side is a text)."""
    first, second = (t.encode("utf-8", "surrogatepass") for t in (text, text_pair))
    return hashlib.sha256(_PAIR_PREFIX + len(first).to_bytes(8, "big") + first + second).digest()


def fingerprint_of(description: dict[str, Any]) -> str:
    """32 hex characters of the sha256 of a backbone description (canonical JSON)."""
    canonical = json.dumps(description, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _tensor_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


class SegmentError(ValueError):
    """A segment failed a check (checksum, shape, dtype, fingerprint, non-finite values)."""


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if missing) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _is_locked(path: Path) -> bool:
    """Whether some open file description holds an flock on ``path`` (False if the file is gone)."""
    if fcntl is None:  # no locks to tell a live claim from a dead one: never wait on one (work may be duplicated)
        return False
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


class Claim:
    """Texts this process is computing for one backbone: a claim file it holds an flock on until `release`."""

    def __init__(self, path: Path, hashes: list[bytes]) -> None:
        self.path = path
        self.id = path.stem
        self.hashes = hashes
        self._handle = open(path, "w+b")
        if fcntl is not None:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._handle.write(b"".join(hashes))
        self._handle.flush()

    def release(self) -> None:
        """Remove the claim file, then drop the lock (idempotent)."""
        if self._handle.closed:
            return
        self.path.unlink(missing_ok=True)
        self._handle.close()


class BackboneStore:
    """The segments of one backbone fingerprint: an index of the text hashes they hold, reads, claims and writes."""

    def __init__(self, root: str | os.PathLike, description: dict[str, Any], width: int, dtype: str,
                 name: str | None = None) -> None:
        """``description``: everything that changes a vector (its fingerprint); ``name``: a label for people
        (``cache_info``), not part of the fingerprint, so specs named differently share their vectors."""
        if dtype not in STORAGE_NUMPY_DTYPES:
            raise ValueError(f"dtype={dtype!r} is not supported; choose one of {sorted(STORAGE_NUMPY_DTYPES)}.")
        self.root = Path(root)
        self.description = {**description, "width": int(width), "dtype": dtype, "version": STORE_VERSION}
        self.fingerprint = fingerprint_of(self.description)
        self.width = int(width)
        self.dtype = dtype
        self.name = name
        self.folder = self.root / STORE_VERSION / self.fingerprint
        self.segments = self.folder / "segments"
        self.claims = self.folder / "claims"
        self.lock_path = self.root / STORE_VERSION / "locks" / f"{self.fingerprint}.lock"
        #: text sha256 -> (segment file name, row); the first readable segment holding a text wins
        self.index: dict[bytes, tuple[str, int]] = {}
        self._seen: set[str] = set()

    # -- layout ----------------------------------------------------------------------------------------------------

    def open(self) -> BackboneStore:
        """Create the folders and ``backbone.json`` if needed, mark the store used now, remove what dead processes left
        (claims, temporary segments), read the index."""
        self.segments.mkdir(parents=True, exist_ok=True)
        self.claims.mkdir(parents=True, exist_ok=True)
        meta = self.folder / "backbone.json"
        if not meta.is_file():
            record = {"fingerprint": self.fingerprint, "name": self.name, "created": _now(), **self.description}
            atomic_write_text(meta, json.dumps(record, indent=1, sort_keys=True, default=str))
        (self.folder / "last_used").touch()
        if any(self.claims.glob("*.claim")) or any(self.segments.glob(".seg-*")):
            # A killed process's claim or torn temporary segment: removed here, since a request that finds all its
            # texts stored (e.g. the killed process renamed its last segment but never released its claim) never
            # claims anything, so would never look at the claims.
            with self.lock():
                self.live_claims()
        self.refresh()
        return self

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The backbone's lock: held while claiming work and while pruning (never while computing)."""
        with _flock(self.lock_path):
            yield

    def segment_files(self) -> list[Path]:
        return sorted(self.segments.glob("seg-*.safetensors"))

    # -- reading ---------------------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Add segments written since the last look to the index (their headers and text hashes only)."""
        for path in self.segment_files():
            if path.name in self._seen:
                continue
            self._seen.add(path.name)
            try:
                hashes = self._read_hashes(path)
            except FileNotFoundError:
                continue
            except (OSError, SegmentError, SafetensorError, KeyError, ValueError) as error:
                self._set_aside(path, error)
                continue
            for row, key in enumerate(map(bytes, hashes)):
                self.index.setdefault(key, (path.name, row))

    def _check_metadata(self, path: Path, meta: dict[str, str] | None) -> dict[str, str]:
        if not meta or meta.get("format") != SEGMENT_FORMAT:
            raise SegmentError("not a feature segment")
        if meta.get("fingerprint") != self.fingerprint:
            raise SegmentError(f"fingerprint {meta.get('fingerprint')} != {self.fingerprint}")
        if meta.get("dtype") != self.dtype or int(meta.get("width", -1)) != self.width:
            raise SegmentError(f"dtype/width {meta.get('dtype')}/{meta.get('width')} != {self.dtype}/{self.width}")
        return meta

    def _read_checked(self, path: Path, name: str, width: int, dtype: type, checksum_key: str) -> np.ndarray:
        """One tensor of a segment, after its metadata, shape ``(rows, width)``, dtype and checksum are checked."""
        with safe_open(str(path), framework="numpy") as handle:
            meta = self._check_metadata(path, handle.metadata())
            tensor = handle.get_tensor(name)
        expected = (int(meta["rows"]), width)
        if tensor.shape != expected or tensor.dtype != dtype:
            raise SegmentError(f"{name} has shape {tensor.shape} {tensor.dtype}, expected {expected} "
                               f"{np.dtype(dtype).name}")
        if _tensor_sha256(tensor) != meta[checksum_key]:
            raise SegmentError(f"{name} checksum mismatch")
        return tensor

    def _read_hashes(self, path: Path) -> np.ndarray:
        return self._read_checked(path, "text_sha256", HASH_BYTES, np.uint8, "text_sha256_sha256")

    def _read_vectors(self, path: Path) -> np.ndarray:
        vectors = self._read_checked(path, "vectors", self.width, STORAGE_NUMPY_DTYPES[self.dtype], "vectors_sha256")
        if not np.isfinite(vectors).all():
            raise SegmentError("non-finite values")
        return vectors

    def read_into(self, wanted: dict[bytes, int], out: np.ndarray) -> list[bytes]:
        """Copy the stored vectors of ``wanted`` (text hash -> row of ``out``) that the index has; return the hashes
        filled. A segment that fails its checks is set aside (its texts leave the index) and fills nothing."""
        by_segment: dict[str, list[tuple[bytes, int]]] = {}
        for key in wanted:
            if key in self.index:
                name, row = self.index[key]
                by_segment.setdefault(name, []).append((key, row))
        filled: list[bytes] = []
        for name, entries in by_segment.items():
            path = self.segments / name
            try:
                vectors = self._read_vectors(path)
            except (OSError, SegmentError, SafetensorError, KeyError, ValueError) as error:
                if not isinstance(error, FileNotFoundError):
                    self._set_aside(path, error)
                self._forget(name)
                continue
            out[[wanted[key] for key, _ in entries]] = vectors[[row for _, row in entries]]
            filled += [key for key, _ in entries]
        return filled

    def _forget(self, name: str) -> None:
        for key in [key for key, (segment, _) in self.index.items() if segment == name]:
            del self.index[key]

    def _set_aside(self, path: Path, error: BaseException) -> None:
        logger.warning(f"Feature store: segment {path} is unusable ({error}); it is set aside and its texts are "
                       "computed again.")
        with contextlib.suppress(OSError):
            os.replace(path, path.with_name(path.name + ".corrupt"))
        self._forget(path.name)

    # -- claiming and writing --------------------------------------------------------------------------------------

    def live_claims(self) -> set[bytes]:
        """Text hashes claimed by live processes. Call under `lock`: claims of dead processes and their temporary
        segment files are removed here."""
        claimed: set[bytes] = set()
        live_ids = set()
        for path in sorted(self.claims.glob("*.claim")):
            if _is_locked(path):
                with contextlib.suppress(FileNotFoundError):
                    raw = path.read_bytes()
                    claimed.update(raw[i : i + HASH_BYTES] for i in range(0, len(raw) - HASH_BYTES + 1, HASH_BYTES))
                    live_ids.add(path.stem)
            else:
                logger.info(f"Feature store: removing the claim {path.name} of a process that is gone.")
                path.unlink(missing_ok=True)
        for temp in self.segments.glob(".seg-*"):
            if temp.name[len(".seg-"):].split(".safetensors", 1)[0] not in live_ids:
                temp.unlink(missing_ok=True)
        return claimed

    def claim(self, hashes: list[bytes]) -> Claim:
        """Claim ``hashes`` for this process (call under `lock`, after `live_claims` and `refresh`)."""
        claim_id = f"{time.time_ns():x}-{os.getpid()}-{secrets.token_hex(3)}"
        self.claims.mkdir(parents=True, exist_ok=True)
        return Claim(self.claims / f"{claim_id}.claim", hashes)

    def write_segment(self, claim: Claim, vectors: np.ndarray) -> Path:
        """Write the claimed texts' vectors as a new segment (atomically), then release the claim."""
        hashes = np.frombuffer(b"".join(claim.hashes), dtype=np.uint8).reshape(len(claim.hashes), HASH_BYTES)
        vectors = np.ascontiguousarray(vectors, dtype=STORAGE_NUMPY_DTYPES[self.dtype])
        if vectors.shape != (len(hashes), self.width):
            raise ValueError(f"vectors of shape {vectors.shape} for {len(hashes)} texts of width {self.width}")
        if not np.isfinite(vectors).all():
            raise FloatingPointError("refusing to store non-finite features")
        meta = {"format": SEGMENT_FORMAT, "fingerprint": self.fingerprint, "rows": str(len(hashes)),
                "width": str(self.width), "dtype": self.dtype, "vectors_sha256": _tensor_sha256(vectors),
                "text_sha256_sha256": _tensor_sha256(hashes)}
        path = self.segments / f"seg-{claim.id}.safetensors"
        self.segments.mkdir(parents=True, exist_ok=True)
        atomic_save(path, lambda tmp: _write_segment_file(tmp, {"vectors": vectors, "text_sha256": hashes}, meta))
        claim.release()
        return path


def _write_segment_file(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Serialise a segment in memory and write it to ``path`` (`atomic_save`'s temporary file, which a killed process's
    successor removes). Not safetensors' ``save_file``: it writes through a ``.tmpXXXXXX`` file of its own beside
    ``path``, which a process killed mid-write leaves in the store for good."""
    path.write_bytes(save(tensors, metadata=metadata))


# ----------------------------------------------------------------------------------------------------------------------
# cache info / prune
# ----------------------------------------------------------------------------------------------------------------------


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _last_used(folder: Path) -> float:
    times = [p.stat().st_mtime for p in (folder / "last_used", folder / "backbone.json") if p.exists()]
    times += [p.stat().st_mtime for p in (folder / "segments").glob("seg-*.safetensors")]
    return max(times, default=folder.stat().st_mtime)


def _backbone_folders(root: Path) -> Iterable[Path]:
    base = root / STORE_VERSION
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and p.name != "locks")


def _legacy_folders(root: Path) -> list[Path]:
    """Caches of the first format (``<root>/<32 hex>/{shards,dataset}``): never read any more."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and len(p.name) == 32
                  and all(c in "0123456789abcdef" for c in p.name))


def _describe_folder(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / "backbone.json").read_text())
    except (OSError, ValueError):
        meta = {}
    hashes: set[bytes] = set()
    segments = corrupt = 0
    for path in sorted((folder / "segments").glob("seg-*")):
        if path.name.endswith(".corrupt"):
            corrupt += 1
            continue
        if not path.name.endswith(".safetensors"):
            continue
        segments += 1
        try:
            with safe_open(str(path), framework="numpy") as handle:
                hashes.update(map(bytes, handle.get_tensor("text_sha256")))
        except (OSError, SafetensorError, KeyError, ValueError):
            corrupt += 1
    last = _last_used(folder)
    return {
        "fingerprint": folder.name,
        "name": meta.get("name"),
        "model_id": meta.get("model_id"),
        "gguf_file": meta.get("gguf_file"),
        "layers": meta.get("layers"),
        "pooling": meta.get("pooling"),
        "dtype": meta.get("dtype"),
        "width": meta.get("width"),
        "vectors": len(hashes),
        "segments": segments,
        "corrupt_segments": corrupt,
        "bytes": _folder_bytes(folder),
        "last_used": _dt.datetime.fromtimestamp(last, _dt.timezone.utc).isoformat(timespec="seconds"),
        "path": str(folder),
    }


def cache_info(store_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """What the feature store holds, per backbone fingerprint.

    Returns ``{"root", "version", "backbones": [{"fingerprint", "name", "model_id", "gguf_file", "layers",
    "pooling", "dtype", "width", "vectors", "segments", "corrupt_segments", "bytes", "last_used", "path"}, ...],
    "total_vectors", "total_bytes", "legacy": {"folders", "bytes"}}``; ``legacy`` counts caches of the first format,
    which are not read any more (``cache_prune(backbone="legacy")`` removes them).
    """
    root = Path(store_root) if store_root is not None else default_store_root()
    backbones = [_describe_folder(folder) for folder in _backbone_folders(root)]
    legacy = _legacy_folders(root)
    return {
        "root": str(root),
        "version": STORE_VERSION,
        "backbones": backbones,
        "total_vectors": sum(b["vectors"] for b in backbones),
        "total_bytes": sum(b["bytes"] for b in backbones),
        "legacy": {"folders": len(legacy), "bytes": sum(_folder_bytes(p) for p in legacy)},
    }


def _matches(entry: dict[str, Any], backbone: str) -> bool:
    return (entry["fingerprint"].startswith(backbone) or backbone in (entry["name"], entry["model_id"]))


def cache_prune(
    store_root: str | os.PathLike | None = None,
    older_than_days: float | None = None,
    backbone: str | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Remove whole backbone folders from the feature store.

    A folder is removed when it matches every filter given: ``older_than_days`` (not used by any request for that
    many days; ``0`` matches all) and ``backbone`` (a fingerprint or its prefix, a spec name such as ``minilm``, or a
    model_id). ``backbone="legacy"`` selects the caches of the first format, as does ``older_than_days`` by their
    age. At least one filter is required. ``dry_run`` only reports.

    Returns ``{"root", "dry_run", "removed": [{"fingerprint", "name", "model_id", "layers", "vectors", "bytes"}],
    "freed_bytes", "kept"}`` (legacy folders appear with ``"name": "legacy"``).
    """
    if older_than_days is None and backbone is None:
        raise ValueError("cache_prune: give older_than_days and/or backbone (older_than_days=0 removes everything).")
    if older_than_days is not None and older_than_days < 0:
        raise ValueError(f"cache_prune: older_than_days={older_than_days} must be >= 0.")
    root = Path(store_root) if store_root is not None else default_store_root()
    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
    removed, kept = [], 0
    for folder in _backbone_folders(root):
        entry = _describe_folder(folder)
        if (cutoff is not None and _last_used(folder) >= cutoff) or (backbone is not None
                                                                     and not _matches(entry, backbone)):
            kept += 1
            continue
        removed.append({k: entry[k] for k in ("fingerprint", "name", "model_id", "layers", "vectors", "bytes")})
        if not dry_run:
            with _flock(root / STORE_VERSION / "locks" / f"{folder.name}.lock"):
                shutil.rmtree(folder, ignore_errors=True)
    for folder in _legacy_folders(root):
        if backbone not in (None, "legacy") or (cutoff is not None and folder.stat().st_mtime >= cutoff):
            kept += 1
            continue
        removed.append({"fingerprint": folder.name, "name": "legacy", "model_id": None, "layers": None,
                        "vectors": None, "bytes": _folder_bytes(folder)})
        if not dry_run:
            shutil.rmtree(folder, ignore_errors=True)
    return {"root": str(root), "dry_run": dry_run, "removed": removed,
            "freed_bytes": sum(r["bytes"] for r in removed), "kept": kept}


__all__ = [
    "BackboneStore",
    "Claim",
    "STORE_VERSION",
    "SegmentError",
    "cache_info",
    "cache_prune",
    "default_store_root",
    "fingerprint_of",
    "pair_sha256",
    "text_sha256",
]
