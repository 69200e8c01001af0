"""Files on disk: the cache root, sha256 of files, and writes that readers never see half done.

Every cache llmembed-hf keeps (sha256 memo, GGUF conversions, PyPI joins, feature shards and datasets) is written
through these helpers: a file or folder is built under a temporary name beside its target and renamed into place,
so an interrupted run leaves the old content or none, never a torn one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

CACHE_ENV = "LLMEMBED_CACHE"


def cache_dir() -> Path:
    """Root of llmembed-hf's caches: ``$LLMEMBED_CACHE``, else ``$XDG_CACHE_HOME/llmembed_hf`` (``~/.cache``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "llmembed_hf"


# ----------------------------------------------------------------------------------------------------------------------
# Hashing
# ----------------------------------------------------------------------------------------------------------------------


def sha256_of_file(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's content, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """`sha256_of_file`, memoised on (path, size, mtime) in the cache so big weights are hashed once."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
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


__all__ = [
    "CACHE_ENV",
    "atomic_save",
    "atomic_write_text",
    "build_folder_atomically",
    "cache_dir",
    "file_sha256",
    "sha256_of_file",
]
