"""The HTTP service: FastAPI app, dynamic batching, beautify and the web page (``retinaserve serve``).

``create_app`` is imported lazily, so that the CLI can add the ``serve`` parser without importing FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .settings import ServeSettings

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
