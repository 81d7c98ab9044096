"""Scale-out on Ray (the ``retinaserve[ray]`` extra): the HTTP service as a Ray Serve application
(:mod:`.serve_app`) and bulk detection on Ray Data (:mod:`.data`), replicas sized by the memory planner
(:mod:`.sizing`).

``serve run retinaserve.ray:app`` serves the settings of the ``RETINASERVE_*`` environment variables, with
``RETINASERVE_RAY_REPLICAS=N`` or ``RETINASERVE_RAY_AUTOSCALE=MIN:MAX``; ``serve run retinaserve.ray:build
model=... replicas=N`` takes them as arguments. Importing this package imports nothing from Ray.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["app", "build"]


def __getattr__(name: str) -> Any:
    """``app`` (built from the environment when first read) and ``build`` without importing Ray up front."""
    if name == "build":
        from .serve_app import build

        return build
    if name == "app":
        from ..serve.settings import ServeSettings
        from .serve_app import build_application, parse_autoscale

        replicas = os.environ.get("RETINASERVE_RAY_REPLICAS")
        autoscale = os.environ.get("RETINASERVE_RAY_AUTOSCALE")
        return build_application(
            ServeSettings.from_env(),
            replicas=int(replicas) if replicas else None,
            autoscale=parse_autoscale(autoscale) if autoscale else None,
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
