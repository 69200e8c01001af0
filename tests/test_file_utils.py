"""Files on disk (`llmembed_hf.file_utils`): the cache root, sha256 (memoised), and atomic writes of files and
folders that leave the old content or none, never a torn one or a temporary left behind."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from llmembed_hf import file_utils
from llmembed_hf.file_utils import (
    atomic_save,
    atomic_write_text,
    build_folder_atomically,
    cache_dir,
    file_sha256,
    sha256_of_file,
)


class Boom(RuntimeError):
    pass


def fail(_: Path) -> None:
    raise Boom("interrupted")


def test_cache_dir_honours_llmembed_cache_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMEMBED_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LLMEMBED_CACHE", "~/llm")
    assert cache_dir() == tmp_path / "home" / "llm"  # "~" is expanded
    monkeypatch.setenv("LLMEMBED_CACHE", "")  # empty counts as unset
    assert cache_dir() == tmp_path / "xdg" / "llmembed_hf"
    monkeypatch.delenv("LLMEMBED_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == tmp_path / "home" / ".cache" / "llmembed_hf"


@pytest.mark.parametrize("content", [b"", b"weights \x00\xff" * 1000])
def test_sha256_of_file_equals_hashlib(tmp_path, content):
    path = tmp_path / "weights.bin"
    path.write_bytes(content)
    assert sha256_of_file(path) == hashlib.sha256(content).hexdigest()


def test_file_sha256_is_memoised_and_hashes_a_changed_file_again(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMEMBED_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"first weights")
    calls: list[Path] = []

    def spy(p):
        calls.append(Path(p))
        return sha256_of_file(p)

    monkeypatch.setattr(file_utils, "sha256_of_file", spy)
    assert file_sha256(path) == hashlib.sha256(b"first weights").hexdigest()
    assert calls == [path.resolve()]
    memo = json.loads((tmp_path / "cache" / "sha256.json").read_text())
    assert list(memo.values()) == [hashlib.sha256(b"first weights").hexdigest()]

    assert file_sha256(str(path)) == hashlib.sha256(b"first weights").hexdigest()
    assert len(calls) == 1  # the second call read the memo, not the file

    path.write_bytes(b"other weights, longer")  # a new size (and mtime): hashed again
    assert file_sha256(path) == hashlib.sha256(b"other weights, longer").hexdigest()
    assert len(calls) == 2
    assert len(json.loads((tmp_path / "cache" / "sha256.json").read_text())) == 2


def test_file_sha256_recovers_from_a_corrupt_memo(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMEMBED_CACHE", str(tmp_path))
    (tmp_path / "sha256.json").write_text("{not json")
    path = tmp_path / "w.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == hashlib.sha256(b"abc").hexdigest()
    assert list(json.loads((tmp_path / "sha256.json").read_text()).values()) == [hashlib.sha256(b"abc").hexdigest()]


def test_atomic_write_text_replaces_content_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "report.json"  # the parent is created
    atomic_write_text(path, "old")
    atomic_write_text(path, "névé ✓")
    assert path.read_bytes() == "névé ✓".encode("utf-8")
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]


def test_atomic_save_writes_through_a_temporary_beside_the_target(tmp_path):
    path = tmp_path / "data.bin"
    seen: list[Path] = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        assert tmp.parent == tmp_path and tmp != path and not path.exists()  # readers see nothing yet
        tmp.write_bytes(b"new")

    assert atomic_save(path, write) == path
    assert path.read_bytes() == b"new" and not seen[0].exists()
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_atomic_save_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"old")

    def half_write(tmp: Path) -> None:
        tmp.write_bytes(b"ne")
        raise Boom("interrupted")

    with pytest.raises(Boom):
        atomic_save(path, half_write)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_build_folder_atomically_builds_once_then_returns_the_cached_folder(tmp_path):
    target = tmp_path / "cache" / "model"
    builds: list[Path] = []

    def build(folder: Path) -> None:
        builds.append(folder)
        assert folder.parent == target.parent and folder != target and not target.exists()
        (folder / "weights.bin").write_bytes(b"w")

    assert build_folder_atomically(target, build) == target
    assert (target / "weights.bin").read_bytes() == b"w" and len(builds) == 1
    assert build_folder_atomically(target, fail) == target  # a cache hit: build is not called
    assert len(builds) == 1
    assert [p.name for p in target.parent.iterdir()] == ["model"]


def test_build_folder_atomically_leaves_nothing_when_build_fails(tmp_path):
    target = tmp_path / "model"

    def half_build(folder: Path) -> None:
        (folder / "part.bin").write_bytes(b"half")
        raise Boom("interrupted")

    with pytest.raises(Boom):
        build_folder_atomically(target, half_build)
    assert list(tmp_path.iterdir()) == []  # no target, no temporary folder
    build_folder_atomically(target, lambda folder: (folder / "ok").write_text("1"))  # a retry builds it
    assert (target / "ok").read_text() == "1"


def test_build_folder_atomically_keeps_the_copy_of_a_process_that_finished_first(tmp_path):
    target = tmp_path / "model"

    def race(folder: Path) -> None:
        (folder / "mine").write_text("mine")
        target.mkdir()  # another process renames its copy into place meanwhile
        (target / "theirs").write_text("theirs")

    assert build_folder_atomically(target, race) == target
    assert [p.name for p in target.iterdir()] == ["theirs"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
