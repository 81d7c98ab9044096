"""Admission by cost: what a request will cost the engine, learnt from the batches it ran, and whether the request
may queue now.

The engine is one worker in front of one model, so the wait a new request faces is the engine time of the work
already admitted (Little's law: wait = work ahead / throughput). A request is admitted while that backlog is short
(``target_wait_s``) and its own cost still fits its deadline; otherwise it is refused at once with an honest
``Retry-After`` instead of timing out later, and a request that could not finish even on an idle server is refused
for good (413). Costs are estimated before any pixel is decoded, from the header's size and the request's options.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ..detection import ResizePolicy
from .batching import QueueFullError

__all__ = [
    "LOW_THRESHOLD",
    "Backlog",
    "CostModel",
    "NeverFitsError",
    "OverCapacityError",
    "Ticket",
    "network_pixels",
]

LOW_THRESHOLD = 0.05
"""Score thresholds below this keep thousands of candidates, so decoding and NMS, not the network, dominate."""

_STRIDE = 32
_PRIOR_S_PER_PIXEL = 2e-7
"""Before anything is measured: 0.2 us per network input pixel (the default model at 640x640 is ~80 ms on a
2-core CPU). Replaced by the warm-up's measurement and then by every batch."""
_LOW_THRESHOLD_FACTOR = 2.5
"""Prior cost ratio of a low-threshold call to a normal one (measured: 83 vs 35 ms for retinaface-mnv2 at 640)."""
_EWMA = 0.2


class OverCapacityError(QueueFullError):
    """The engine's backlog is longer than a new request may wait; ``retry_after_s`` says when it will not be."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def retry_after(self) -> str:
        """Whole seconds for the ``Retry-After`` header (at least 1)."""
        return str(max(1, math.ceil(self.retry_after_s)))


class NeverFitsError(RuntimeError):
    """The request alone costs more engine time than its deadline allows: retrying cannot help (413)."""


def network_pixels(height: int, width: int, resize: ResizePolicy | None) -> int:
    """Pixels of the network input an image of ``height x width`` becomes under ``resize`` (padded to the stride);
    None: the image at its own size."""
    if resize is not None and resize.det_size is not None:
        return resize.det_size[0] * resize.det_size[1]
    if resize is not None:
        height, width = resize.scaled_size(height, width)
    return math.ceil(height / _STRIDE) * _STRIDE * math.ceil(width / _STRIDE) * _STRIDE


class CostModel:
    """Engine seconds for a model call: a fixed part per image (measured once, at start-up) plus a part per network
    input pixel, for normal and for low score thresholds; the per-pixel rates follow every measured batch as an
    exponentially weighted mean (so they track the machine's real speed, load included)."""

    def __init__(self, s_per_pixel: float = _PRIOR_S_PER_PIXEL, s_per_image: float = 0.0) -> None:
        self.s_per_image = s_per_image
        self.rates = {False: s_per_pixel, True: s_per_pixel * _LOW_THRESHOLD_FACTOR}
        self._measured = {False: False, True: False}

    def estimate(self, pixels: int, images: int = 1, *, low_threshold: bool = False) -> float:
        """Seconds of engine time for ``images`` images of ``pixels`` network input pixels in all."""
        return images * self.s_per_image + pixels * self.rates[low_threshold]

    def calibrate(self, small: tuple[int, float], large: tuple[int, float]) -> None:
        """Set both parts from two timed single-image calls, (pixels, seconds) at a small and a large input."""
        (small_px, small_s), (large_px, large_s) = small, large
        rate = max((large_s - small_s) / max(large_px - small_px, 1), 1e-10)
        self.s_per_image = max(0.0, small_s - rate * small_px)
        self.rates = {False: rate, True: rate * _LOW_THRESHOLD_FACTOR}
        self._measured[False] = True

    def observe(self, pixels: int, images: int, seconds: float, *, low_threshold: bool = False) -> None:
        """Fold in one measured model call over ``images`` images of ``pixels`` input pixels that took ``seconds``."""
        if pixels <= 0:
            return
        rate = max(seconds - images * self.s_per_image, 0.0) / pixels
        if not self._measured[low_threshold]:
            self.rates[low_threshold] = rate
            self._measured[low_threshold] = True
            if not low_threshold and not self._measured[True]:  # keep the prior ratio until low ones are measured
                self.rates[True] = rate * _LOW_THRESHOLD_FACTOR
            return
        self.rates[low_threshold] += _EWMA * (rate - self.rates[low_threshold])


class Ticket:
    """An admitted request's share of the backlog. Each image gives its part back as soon as the engine is done with
    it (:meth:`release`), and whatever is left goes back when the ``with`` block ends."""

    def __init__(self, admission: Backlog, cost_s: float) -> None:
        self.admission = admission
        self.held_s = cost_s
        self._open = True

    def release(self, seconds: float | None = None) -> None:
        """Give back ``seconds`` of the held cost (None: all of it, and the ticket is done)."""
        if not self._open:
            return
        part = self.held_s if seconds is None else min(seconds, self.held_s)
        self.held_s -= part
        self.admission.backlog_s = max(0.0, self.admission.backlog_s - part)
        if seconds is None:
            self._open = False
            self.admission.admitted -= 1

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


@dataclass
class Backlog:
    """The work admitted into one resource (the engine, the render pool) in seconds, and the rule that admits more
    (event-loop only, so no lock); ``holder`` and ``work`` name them in the refusals' messages."""

    target_wait: Callable[[], float]
    """How long an admitted request may wait for the work ahead of it, in seconds."""
    holder: str = "the engine"
    work: str = "model time"
    advice: str = "send a smaller image, fewer images or a smaller long_side / det_size"
    backlog_s: float = 0.0
    admitted: int = 0

    def check(self) -> None:
        """Raise OverCapacityError when no request could be admitted now (before its body is even read)."""
        target = self.target_wait()
        if self.admitted and self.backlog_s > target:
            raise OverCapacityError(
                f"{self.holder} has {self.backlog_s:.2f} s of work queued (a new request may wait {target:.2f} s)",
                self.backlog_s - target,
            )

    def admit(self, cost_s: float, deadline_s: float) -> Ticket:
        """A ticket for ``cost_s`` of work that must finish within ``deadline_s``: NeverFitsError when it cannot
        even alone, OverCapacityError when the work ahead is too long now."""
        if cost_s > deadline_s:
            raise NeverFitsError(
                f"the request needs about {cost_s:.1f} s of {self.work}, more than its {deadline_s:g} s deadline; "
                f"{self.advice}"
            )
        self.check()
        if self.admitted and self.backlog_s + cost_s > deadline_s:
            raise OverCapacityError(
                f"{self.holder} has {self.backlog_s:.2f} s of work queued; this request's {cost_s:.2f} s would not "
                f"finish within {deadline_s:g} s",
                self.backlog_s + cost_s - deadline_s,
            )
        self.backlog_s += cost_s
        self.admitted += 1
        return Ticket(self, cost_s)
