"""The cache format of converted weights: ``model.safetensors`` + ``meta.json`` (provenance, conversion version,
the safetensors' sha256, what the conversion read from the source), written atomically and verified on load.

Used by every conversion (the RetinaFace-MobileNetV2 TF graph, the MediaPipe face mesh ``.tflite``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import WeightsIntegrityError, WeightsNotFoundError

__all__ = ["META_FILENAME", "MODEL_FILENAME", "read_converted", "write_atomically", "write_converted"]

log = logging.getLogger(__name__)

MODEL_FILENAME = "model.safetensors"
META_FILENAME = "meta.json"


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step (a reader never sees half a file); mode 0644."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache is meant to be copied and shared
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_converted(
    directory: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    *,
    model: str,
    conversion_version: int,
    source: Mapping[str, Any],
    details: Mapping[str, Any],
) -> Path:
    """Write ``model.safetensors`` and ``meta.json`` (``details`` under ``"graph"``); returns the safetensors path."""
    from safetensors.torch import save

    from . import sha256_file

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / MODEL_FILENAME
    tensors = {key: value.contiguous() for key, value in sorted(state_dict.items())}
    write_atomically(model_path, save(tensors, metadata={"format": "pt"}))
    meta = {
        "model": model,
        "conversion_version": conversion_version,
        "source": dict(source),
        "model_file": MODEL_FILENAME,
        "model_sha256": sha256_file(model_path),
        "graph": dict(details),
    }
    write_atomically(folder / META_FILENAME, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    log.info("wrote %s and %s", model_path, folder / META_FILENAME)
    return model_path


def read_converted(
    directory: str | Path, *, model: str, conversion_version: int, hint: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read back what :func:`write_converted` wrote, checking the conversion version and the recorded sha256;
    ``hint`` says how to provision the weights again."""
    from safetensors.torch import load_file

    from . import sha256_file

    folder = Path(directory)
    meta_path, model_path = folder / META_FILENAME, folder / MODEL_FILENAME
    if not meta_path.is_file() or not model_path.is_file():
        raise WeightsNotFoundError(f"no converted {model} weights in {folder}; {hint}")
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise WeightsIntegrityError(f"{meta_path} cannot be read ({exc}); delete {folder} and {hint}") from exc
    if meta.get("conversion_version") != conversion_version:
        raise WeightsIntegrityError(
            f"{folder} holds a {model} conversion of version {meta.get('conversion_version')}, this retinaserve "
            f"needs version {conversion_version}: delete {folder} and {hint}"
        )
    actual = sha256_file(model_path)
    if actual != meta.get("model_sha256"):
        raise WeightsIntegrityError(
            f"{model_path} has sha256 {actual}, meta.json records {meta.get('model_sha256')}; the cache is "
            f"damaged: delete {folder} and {hint}"
        )
    return load_file(str(model_path)), meta
