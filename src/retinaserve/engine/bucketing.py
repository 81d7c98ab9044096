"""Letterbox images of any size into a few bucketed input shapes, so that batches, compiled graphs and TensorRT
profiles are shared; results map back to original pixels through each image's own scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..detection import ResizePolicy

__all__ = ["BucketedResize", "PaddedResize", "choose_bucket", "common_shape", "default_buckets"]

Size = tuple[int, int]
"""(width, height) in pixels."""


def default_buckets(long_side: int = 640, multiple: int = 32) -> tuple[Size, ...]:
    """Square, landscape 4:3 and 16:9, portrait 3:4 and 9:16 shapes with this long side, rounded to ``multiple``."""

    def short(ratio: float) -> int:
        return max(multiple, math.ceil(long_side * ratio / multiple) * multiple)

    side = math.ceil(long_side / multiple) * multiple
    return ((side, side), (side, short(3 / 4)), (short(3 / 4), side), (side, short(9 / 16)), (short(9 / 16), side))


def choose_bucket(height: int, width: int, buckets: Sequence[Size]) -> Size:
    """The bucket (W, H) where the letterboxed image is largest; among equals, the one with the least padding."""
    if not buckets:
        raise ValueError("no buckets given")

    def rank(bucket: Size) -> tuple[float, int]:
        scale = min(bucket[0] / width, bucket[1] / height)
        return (-round(scale, 6), bucket[0] * bucket[1])

    return min(buckets, key=rank)


@dataclass(frozen=True)
class BucketedResize(ResizePolicy):
    """Letterbox each image into the best of a few fixed (W, H) shapes (:func:`choose_bucket`), padded bottom/right.

    Images whose buckets agree are batched together; each keeps its own scale, so results are in its own pixels.
    """

    buckets: tuple[Size, ...] = default_buckets()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.long_side is not None or self.det_size is not None:
            raise ValueError("BucketedResize takes buckets only, not long_side or det_size")
        if not self.buckets or min(min(b) for b in self.buckets) < 16:
            raise ValueError(f"buckets must be non-empty and at least 16x16, got {self.buckets}")

    @classmethod
    def with_long_side(cls, long_side: int, multiple: int = 32) -> BucketedResize:
        """The :func:`default_buckets` for ``long_side``."""
        return cls(buckets=default_buckets(long_side, multiple))

    def scaled_size(self, height: int, width: int) -> tuple[int, int]:
        bucket_w, bucket_h = choose_bucket(height, width, self.buckets)
        scale = min(bucket_w / width, bucket_h / height)
        return min(bucket_h, max(1, round(height * scale))), min(bucket_w, max(1, round(width * scale)))

    def padded_size(self, height: int, width: int, multiple: int = 1) -> tuple[int, int]:
        bucket_w, bucket_h = choose_bucket(height, width, self.buckets)
        return math.ceil(bucket_h / multiple) * multiple, math.ceil(bucket_w / multiple) * multiple

    def __str__(self) -> str:
        return "buckets " + ", ".join(f"{w}x{h}" for w, h in self.buckets)


@dataclass(frozen=True)
class PaddedResize(ResizePolicy):
    """Scale as ``long_side`` (and the model's rule) say, then pad bottom/right to one fixed (W, H) ``shape``.

    Images of different aspect ratios get one input shape and batch together, each at exactly the scale it has
    alone; only the zero padding differs. An image whose scaled size exceeds ``shape`` keeps its own padded size.
    """

    shape: Size = (640, 640)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.long_side is None or self.det_size is not None:
            raise ValueError("PaddedResize pads a long_side policy; det_size already gives one shape")

    def padded_size(self, height: int, width: int, multiple: int = 1) -> tuple[int, int]:
        own_h, own_w = super().padded_size(height, width, multiple)
        return max(own_h, math.ceil(self.shape[1] / multiple) * multiple), max(
            own_w, math.ceil(self.shape[0] / multiple) * multiple
        )

    def __str__(self) -> str:
        return f"long side {self.long_side}, padded to {self.shape[0]}x{self.shape[1]}"


def common_shape(
    policy: ResizePolicy, sizes: Sequence[Size], multiple: int = 1, *, max_padding: float = 0.35
) -> PaddedResize | None:
    """A :class:`PaddedResize` that gives images of these (W, H) sizes one input shape, where ``policy`` sizes
    by long side, the sizes need more than one shape, and the padding it adds is at most ``max_padding`` of the
    inputs' own pixels (4:3 with 16:9 at one long side adds 25 %); else None."""
    if policy.long_side is None or policy.det_size is not None or len(sizes) < 2:
        return None
    padded = [policy.padded_size(h, w, multiple) for w, h in sizes]
    if len(set(padded)) < 2:
        return None
    shape_h, shape_w = max(h for h, _ in padded), max(w for _, w in padded)
    own = sum(h * w for h, w in padded)
    if shape_h * shape_w * len(padded) > (1 + max_padding) * own:
        return None
    return PaddedResize(long_side=policy.long_side, rule=policy.rule, shape=(shape_w, shape_h))
