"""Files shipped with the package: one small public-domain sample photo (see README.md beside it)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["SAMPLE_PHOTO"]

SAMPLE_PHOTO = Path(__file__).with_name("grace_hopper.jpg")
"""512x600 JPEG, one frontal face: ``retinaserve detect --sample`` and ``retinaserve reconstruct --sample``."""
