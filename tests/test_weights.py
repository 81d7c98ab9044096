"""Weight resolution (argument, env var, cache, opt-in download), integrity checks and clear errors."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from retinaserve import WeightsIntegrityError, WeightsNotFoundError
from retinaserve.errors import WeightsDownloadError
from retinaserve.registry import get_model_spec
from retinaserve.weights import ENV_VAR, cache_dir, fetch_weights, load_network, resolve_weights

from .conftest import WEIGHTS

EDGE = get_model_spec("retinaface-mnet025-edge")
SLIM = get_model_spec("ultralight-slim")


def test_order_argument_env_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_dir = tmp_path / "env"
    (env_dir / SLIM.name).mkdir(parents=True)
    monkeypatch.setenv(ENV_VAR, str(env_dir))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "retinaserve"
    cached = cache_dir() / SLIM.name / SLIM.weights.filename
    cached.parent.mkdir(parents=True)
    shutil.copy(WEIGHTS / SLIM.weights.filename, cached)
    assert resolve_weights(SLIM) == type(resolve_weights(SLIM))(cached, "cache")
    flat = env_dir / SLIM.weights.filename
    shutil.copy(WEIGHTS / SLIM.weights.filename, flat)
    assert resolve_weights(SLIM).path == flat and resolve_weights(SLIM).origin == "env"
    per_model = env_dir / SLIM.name / SLIM.weights.filename
    shutil.copy(WEIGHTS / SLIM.weights.filename, per_model)
    assert resolve_weights(SLIM).path == per_model
    explicit = tmp_path / "mine.pth"
    shutil.copy(WEIGHTS / SLIM.weights.filename, explicit)
    assert resolve_weights(SLIM, explicit).origin == "argument"


def test_not_found_names_every_place(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights(get_model_spec("retinaface-r50"))
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "retinaface-r50" / "Resnet50_Final.pth") in message
    assert str(tmp_path / "nowhere" / "Resnet50_Final.pth") in message
    assert str(tmp_path / "xdg" / "retinaserve" / "retinaface-r50" / "Resnet50_Final.pth") in message
    assert "Pytorch_Retinaface" in message and "--weights" in message
    monkeypatch.delenv(ENV_VAR)
    with pytest.raises(WeightsNotFoundError, match=rf"\${ENV_VAR} is not set.*retinaserve weights fetch"):
        resolve_weights(SLIM)
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        resolve_weights(SLIM, tmp_path / "missing.pth")


def test_corrupt_file_names_file_and_expected_hash(tmp_path: Path) -> None:
    damaged = tmp_path / SLIM.weights.filename
    data = (WEIGHTS / SLIM.weights.filename).read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsIntegrityError) as info:
        load_network(SLIM, damaged)
    assert str(damaged) in str(info.value) and SLIM.weights.sha256 in str(info.value)


def test_unhashed_model_refuses_garbage_and_other_models_checkpoints(tmp_path: Path) -> None:
    spec = get_model_spec("retinaface-mnet025")
    garbage = tmp_path / spec.weights.filename
    garbage.write_bytes(b"\x80\x02 definitely not a checkpoint")
    with pytest.raises(WeightsIntegrityError, match="cannot be read"):
        load_network(spec, garbage)
    with pytest.raises(WeightsIntegrityError, match="checkpoint of retinaface-mnet025-edge"):
        load_network(spec, WEIGHTS / EDGE.weights.filename)


@pytest.fixture()
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on loopback serving ``tmp_path/www``."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def test_download_is_verified_and_cached(file_server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import dataclasses

    url, root = file_server
    shutil.copy(WEIGHTS / SLIM.weights.filename, root / SLIM.weights.filename)
    spec = dataclasses.replace(SLIM, weights=dataclasses.replace(SLIM.weights, url=f"{url}/{SLIM.weights.filename}"))
    monkeypatch.delenv(ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with pytest.raises(WeightsNotFoundError):
        resolve_weights(spec)  # no download unless asked
    resolved = resolve_weights(spec, download=True)
    assert resolved.origin == "download" and resolved.path.parent == cache_dir() / spec.name
    assert resolve_weights(spec).origin == "cache"
    load_network(spec)


def test_download_with_wrong_hash_leaves_nothing(file_server, tmp_path: Path) -> None:
    import dataclasses

    url, root = file_server
    (root / "slim_Final.pth").write_bytes(b"tampered")
    spec = dataclasses.replace(SLIM, weights=dataclasses.replace(SLIM.weights, url=f"{url}/slim_Final.pth"))
    dest = tmp_path / "dest"
    with pytest.raises(WeightsDownloadError, match=f"expected {SLIM.weights.sha256}"):
        fetch_weights(spec, dest)
    assert not list(dest.iterdir())


def test_offline_download_says_what_to_do(tmp_path: Path) -> None:
    import dataclasses

    spec = dataclasses.replace(SLIM, weights=dataclasses.replace(SLIM.weights, url="http://127.0.0.1:9/slim.pth"))
    with pytest.raises(WeightsDownloadError, match=f"could not download.*copy the file to.*{ENV_VAR}"):
        fetch_weights(spec, tmp_path)
    no_url = get_model_spec("retinaface-r50")
    with pytest.raises(WeightsDownloadError, match="no direct download address"):
        fetch_weights(no_url, tmp_path)
