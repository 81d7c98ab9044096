"""Anchor (prior box) generation for single-shot detectors, cached per input shape."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch

__all__ = ["PriorCache", "make_priors"]


def make_priors(
    height: int,
    width: int,
    min_sizes: Sequence[Sequence[int]],
    steps: Sequence[int],
    *,
    clip: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Anchors for an input of ``height`` x ``width``: (A, 4) as (cx, cy, w, h) normalised by the input size.

    Per level a ceil(H/step) x ceil(W/step) grid, row-major, with ``len(min_sizes[level])`` square anchors
    per cell in the given order (the order the heads predict them in).
    """
    levels = []
    for sizes, step in zip(min_sizes, steps):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        cy = (torch.arange(rows, dtype=torch.float64) + 0.5) * step / height
        cx = (torch.arange(cols, dtype=torch.float64) + 0.5) * step / width
        grid_y, grid_x = torch.meshgrid(cy, cx, indexing="ij")
        size = torch.tensor(sizes, dtype=torch.float64)
        shape = (rows, cols, len(sizes))
        level = torch.stack(
            [
                grid_x[..., None].expand(shape),
                grid_y[..., None].expand(shape),
                (size / width).expand(shape),
                (size / height).expand(shape),
            ],
            dim=-1,
        )
        levels.append(level.reshape(-1, 4))
    priors = torch.cat(levels).to(torch.float32)
    if clip:
        priors.clamp_(0.0, 1.0)
    return priors.to(device) if device is not None else priors


class PriorCache:
    """Priors per (height, width, device) for one anchor layout, kept for the ``capacity`` latest shapes."""

    def __init__(
        self, min_sizes: Sequence[Sequence[int]], steps: Sequence[int], *, clip: bool = False, capacity: int = 64
    ) -> None:
        self.min_sizes = tuple(tuple(s) for s in min_sizes)
        self.steps = tuple(steps)
        self.clip = clip
        self.capacity = capacity
        self._cache: OrderedDict[tuple[int, int, str], torch.Tensor] = OrderedDict()

    def get(self, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(A, 4) priors for an input of ``height`` x ``width`` on ``device``."""
        key = (height, width, str(device))
        priors = self._cache.get(key)
        if priors is None:
            priors = make_priors(height, width, self.min_sizes, self.steps, clip=self.clip, device=device)
            self._cache[key] = priors
            if len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return priors
