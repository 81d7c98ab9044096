"""Exception classes: each says what went wrong and what the user can do about it."""

from __future__ import annotations

__all__ = [
    "InvalidImageError",
    "RetinaServeError",
    "UnknownModelError",
    "WeightsDownloadError",
    "WeightsError",
    "WeightsIntegrityError",
    "WeightsNotFoundError",
]


class RetinaServeError(Exception):
    """Base class of every error this package raises on purpose."""


class UnknownModelError(RetinaServeError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidImageError(RetinaServeError, ValueError):
    """Input that is not a decodable image (empty, truncated, unknown type, too large, wrong array shape)."""


class WeightsError(RetinaServeError):
    """Base class of weight resolution and loading errors."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """No weights file in any of the places looked; the message lists them and how to provision one."""


class WeightsIntegrityError(WeightsError):
    """A weights file that is corrupt, truncated or not the registered checkpoint (hash or layout mismatch)."""


class WeightsDownloadError(WeightsError):
    """An explicit download that failed (offline, HTTP error, or a checksum mismatch)."""
