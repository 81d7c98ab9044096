"""Curves as PNG: WIDER precision/recall per setting, landmark cumulative error per model.

matplotlib comes with the ``bench`` extra; without it the curves are still written as JSON and the caller says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["MatplotlibMissing", "save_curves"]


class MatplotlibMissing(RuntimeError):
    """Raised when a PNG is asked for and matplotlib is not installed."""


def save_curves(
    path: Path,
    panels: Mapping[str, Mapping[str, tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]]],
    *,
    xlabel: str,
    ylabel: str,
    xlim: tuple[float, float] = (0.0, 1.0),
    ylim: tuple[float, float] = (0.0, 1.0),
) -> Path:
    """One subplot per panel (e.g. Easy / Medium / Hard), one line per series label -> (x, y); writes ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MatplotlibMissing("PNG curves need matplotlib: pip install 'retinaserve[bench]'") from exc
    crowded = max(len(series) for series in panels.values()) > 6  # the legend goes beside the last panel
    width = 4.2 * len(panels) + (3.6 if crowded else 0.0)
    figure, axes = plt.subplots(1, len(panels), figsize=(width, 4.0), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels.items()):
        for label, (x, y) in series.items():
            ax.plot(np.asarray(x), np.asarray(y), label=label, linewidth=1.6)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        if not crowded:
            ax.legend(fontsize=8, loc="lower left" if ylabel.lower().startswith("precision") else "lower right")
    if crowded:
        axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
