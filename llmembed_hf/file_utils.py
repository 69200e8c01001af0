"""Files on disk: the cache root, sha256 of files, and writes that readers never see half done.

Every cache llmembed-hf keeps (sha256 memo, GGUF conversions, PyPI joins, feature shards and datasets) is written
through these helpers: a file or folder is built under a temporary name beside its target and renamed into place,
so an interrupted run leaves the old content or none, never a torn one.

Cached model folders (GGUF conversions, weights joined from PyPI parts) are built by `build_verified_folder`: under a
file lock (a second process waits, then finds the folder built), with a manifest of every file's size and sha256
written last, and checked on every use: sizes every time (cheap), sha256 on first use in a process. A folder that
fails is rebuilt with a warning; temporary folders a killed process left behind are removed at the next build, or at
the first hit once they are `STALE_TEMP_SECONDS` old.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from transformers.utils import logging

# The one reading loop; it lives with the model code, which is uploaded as remote code and must hash on its own.
from .modeling.modeling_llmembed import sha256_of_file

try:
    import fcntl
except ImportError:  # not POSIX: no lock (concurrent builds then both build; the first rename wins)
    fcntl = None  # type: ignore[assignment]

logger = logging.get_logger(__name__)

CACHE_ENV = "LLMEMBED_CACHE"


def cache_dir() -> Path:
    """Root of llmembed-hf's caches: ``$LLMEMBED_CACHE``, else ``$XDG_CACHE_HOME/llmembed_hf`` (``~/.cache``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "llmembed_hf"


# ----------------------------------------------------------------------------------------------------------------------
# Hashing
# ----------------------------------------------------------------------------------------------------------------------


def copy_hashing(source: Any, sink: Any, digest: Any) -> int:
    """Copy the binary stream ``source`` into ``sink`` in 16 MiB blocks, feeding each block to ``digest`` (a hashlib
    object): weights joined from parts are hashed as they are written. Returns the bytes copied."""
    copied = 0
    for block in iter(lambda: source.read(1 << 24), b""):
        digest.update(block)
        sink.write(block)
        copied += len(block)
    return copied


def file_sha256(path: str | os.PathLike) -> str:
    """`sha256_of_file`, memoised in the cache so big weights are hashed once.

    The memo is keyed on the path, size, mtime, inode and ctime: a file rewritten in place with the same size and its
    mtime restored (``os.utime``) still gets a new ctime, and a file replaced by another gets a new inode, so either
    is hashed again.
    """
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}:{stat.st_ctime_ns}"
    memo_path = cache_dir() / "sha256.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (FileNotFoundError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    memo[key] = sha256_of_file(path)
    atomic_write_text(memo_path, json.dumps(memo, indent=0))
    return memo[key]


def folder_tree_sha256(folder: str | os.PathLike) -> str:
    """sha256 of a whole folder's content: of the ``"<relative POSIX path>:<sha256>\\n"`` lines of every file below
    it (``__pycache__`` excluded), sorted by path. Pins an installed model folder (weights, config, tokenizer)."""
    folder = Path(folder)
    files = sorted(
        (path.relative_to(folder).as_posix(), path)
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.relative_to(folder).parts
    )
    lines = "".join(f"{name}:{file_sha256(path)}\n" for name, path in files)
    return hashlib.sha256(lines.encode()).hexdigest()


# ----------------------------------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------------------------------


def atomic_save(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Create the file ``path`` by running ``write(tmp_path)`` on a temporary file beside it, then renaming it into
    place; readers see the old file or the new one, never a torn write. The temporary file is removed on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file (UTF-8) atomically (see `atomic_save`)."""
    atomic_save(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def build_folder_atomically(target: Path, build: Callable[[Path], None]) -> Path:
    """Create the folder ``target`` by running ``build(tmp_folder)`` and renaming the result into place.

    An existing ``target`` is returned as it is (a cache hit); if another process renames its copy first, that
    copy is kept.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        build(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first; keep its copy
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ----------------------------------------------------------------------------------------------------------------------
# Verified cache folders: a manifest, a lock, stale temporaries
# ----------------------------------------------------------------------------------------------------------------------

#: The manifest inside a cached folder: every other file's size and sha256 (and what built it), written last.
MANIFEST_NAME = "llmembed_manifest.json"
#: Temporary folders (``.<name>.*``) of a build older than this, found while holding the build's lock, are removed:
#: no live process is building them (it would hold the lock), so a killed one left them.
STALE_TEMP_SECONDS = 3600
#: Folders whose files were hashed against their manifest in this process, keyed on the manifest's identity.
_VERIFIED: set[tuple[str, int, int, int]] = set()


def _manifest_key(folder: Path) -> tuple[str, int, int, int] | None:
    """Identity of a folder's manifest (path, inode, mtime, size): a rebuilt folder gets a new one."""
    try:
        stat = (folder / MANIFEST_NAME).stat()
    except FileNotFoundError:
        return None
    return str(folder.resolve()), stat.st_ino, stat.st_mtime_ns, stat.st_size


def _files_below(folder: Path) -> dict[str, Path]:
    """Every file under ``folder`` but the manifest, by its relative POSIX path."""
    return {
        path.relative_to(folder).as_posix(): path
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).as_posix() != MANIFEST_NAME
    }


def write_manifest(folder: str | os.PathLike, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``MANIFEST_NAME`` into ``folder``: the size and sha256 of every file below it, and ``info`` (what built
    it: versions, source). Called last, once the folder's content is complete."""
    folder = Path(folder)
    files = {
        name: {"size": path.stat().st_size, "sha256": sha256_of_file(path)}
        for name, path in _files_below(folder).items()
    }
    manifest = {"format": 1, "files": files, "info": info or {}}
    atomic_write_text(folder / MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def check_manifest(
    folder: str | os.PathLike, expect: dict[str, str] | None = None, full: bool | None = None
) -> str | None:
    """What is wrong with a cached folder, or None when it matches its manifest.

    Every time (cheap: a listing and a ``stat`` per file): the manifest is readable, the folder holds exactly its
    files, each with its size, and the files named in ``expect`` have those sha256 in it. ``full=None`` also hashes
    every file on the folder's first check in this process (``True``: every time; ``False``: never).
    """
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        files = {name: (int(entry["size"]), str(entry["sha256"])) for name, entry in manifest["files"].items()}
    except FileNotFoundError:
        return f"it has no {MANIFEST_NAME}"
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        return f"its {MANIFEST_NAME} is unreadable ({type(error).__name__}: {error})"
    on_disk = _files_below(folder)
    if set(on_disk) != set(files):
        missing, unexpected = sorted(set(files) - set(on_disk)), sorted(set(on_disk) - set(files))
        return f"its files differ from the manifest (missing: {missing}, not in it: {unexpected})"
    for name, (size, _) in files.items():
        actual = on_disk[name].stat().st_size
        if actual != size:
            return f"{name} has {actual:,} bytes, the manifest says {size:,}"
    for name, sha256 in (expect or {}).items():
        if name not in files or files[name][1] != sha256:
            return f"its manifest does not record {name} with the expected sha256 {sha256}"
    key = _manifest_key(folder)
    if full is False or (full is None and key in _VERIFIED):
        return None
    for name, (_, sha256) in files.items():
        actual = sha256_of_file(on_disk[name])
        if actual != sha256:
            return f"{name} has sha256 {actual}, the manifest says {sha256}"
    if key is not None:
        _VERIFIED.add(key)
    return None


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` (created if needed; never deleted, so every process locks the
    same inode); another holder makes this wait. Locks taken through separate calls exclude each other across
    processes and threads alike."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        if fcntl is None:
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of a folder's build: ``<name>.lock`` beside it."""
    target = Path(target)
    return target.parent / f"{target.name}.lock"


def clean_stale_temp_folders(target: str | os.PathLike, older_than: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Remove the temporary folders ``.<name>.*`` beside ``target`` not modified for ``older_than`` seconds; returns
    them. Call it holding ``target``'s build lock, so none of them belongs to a live build."""
    target = Path(target)
    removed = []
    now = time.time()
    for path in target.parent.glob(f".{glob.escape(target.name)}.*"):
        try:
            if path.is_dir() and not path.is_symlink() and now - path.stat().st_mtime > older_than:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        except FileNotFoundError:  # removed meanwhile
            continue
    if removed:
        logger.warning(f"Removed {len(removed)} temporary folder(s) an interrupted build left beside {target}: "
                       f"{[p.name for p in removed]}")
    return removed


def _clean_stale_temp_folders_on_hit(target: Path) -> None:
    """On a cache hit: remove the stale temporary folders beside ``target`` (a build killed less than
    `STALE_TEMP_SECONDS` before the folder was rebuilt leaves one that no later build would see, since every later
    use is a hit), if no build holds the lock right now (a hit never waits). Costs a listing when there are none."""
    now = time.time()
    try:
        stale = any(path.is_dir() and now - path.stat().st_mtime > STALE_TEMP_SECONDS
                    for path in target.parent.glob(f".{glob.escape(target.name)}.*"))
    except FileNotFoundError:  # removed meanwhile
        stale = True
    if not stale:
        return
    if fcntl is None:
        clean_stale_temp_folders(target)
        return
    with open(lock_path(target), "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a build is running; it cleans them itself
            return
        try:
            clean_stale_temp_folders(target)
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _discard_folder(folder: Path) -> None:
    """Move ``folder`` out of the way (a readers' open files stay valid) and delete it; a leftover of an interrupted
    deletion is a stale temporary folder that the next build removes."""
    aside = folder.parent / f".{folder.name}.discarded-{uuid.uuid4().hex[:8]}"
    try:
        os.replace(folder, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def build_verified_folder(
    target: str | os.PathLike,
    build: Callable[[Path], None],
    *,
    what: str,
    info: dict[str, Any] | None = None,
    expect: dict[str, str] | None = None,
) -> Path:
    """A cached folder built once by ``build(tmp_folder)``, with a manifest, and checked on every use.

    A hit returns at once when `check_manifest` passes (sizes every time, sha256 on first use in this process; the
    files in ``expect`` must have those sha256). Otherwise, holding ``<target>.lock`` (a concurrent builder waits,
    then finds the folder built): a failing folder is rebuilt with a warning naming ``what`` and the fault, stale
    temporary folders are removed, ``build`` runs into a temporary folder, the manifest (with ``info``) is written
    last and the folder is renamed into place (`build_folder_atomically`). A hit also removes stale temporary
    folders (`STALE_TEMP_SECONDS`) when no build holds the lock.
    """
    target = Path(target)
    before = _manifest_key(target)
    problem = check_manifest(target, expect) if target.is_dir() else None
    if target.is_dir() and problem is None:
        _clean_stale_temp_folders_on_hit(target)
        return target
    with file_lock(lock_path(target)):
        if target.is_dir():
            if _manifest_key(target) != before:  # another process rebuilt it meanwhile
                problem = check_manifest(target, expect)
                if problem is None:
                    return target
            logger.warning(f"{what}: the cached folder {target} failed its check ({problem}); rebuilding it.")
            _discard_folder(target)
        clean_stale_temp_folders(target)

        def build_with_manifest(tmp: Path) -> None:
            build(tmp)
            write_manifest(tmp, info)

        build_folder_atomically(target, build_with_manifest)
        key = _manifest_key(target)
        if key is not None:
            _VERIFIED.add(key)  # its files were just hashed into the manifest
    return target


__all__ = [
    "CACHE_ENV",
    "MANIFEST_NAME",
    "atomic_save",
    "atomic_write_text",
    "build_folder_atomically",
    "build_verified_folder",
    "cache_dir",
    "check_manifest",
    "copy_hashing",
    "clean_stale_temp_folders",
    "file_lock",
    "file_sha256",
    "folder_tree_sha256",
    "sha256_of_file",
    "write_manifest",
]
