"""Which images a ``retinaserve batch`` run covers: a folder, a glob pattern, a list file (.txt or .parquet) or one
image, turned into one sorted, de-duplicated list of absolute paths (the key a results file is resumed by)."""

from __future__ import annotations

import glob
from pathlib import Path

from ..images import IMAGE_SUFFIXES

__all__ = ["GLOB_CHARACTERS", "images_in_folder", "list_images", "read_list_file", "require_pyarrow"]

GLOB_CHARACTERS = frozenset("*?[")
"""A SRC holding any of these (and naming no existing file or folder) is a glob pattern."""


def require_pyarrow() -> None:
    """Fail with what to install when Parquet is asked for without pyarrow."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ValueError("Parquet needs pyarrow: pip install pyarrow (or retinaserve[ray])") from None


def images_in_folder(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, by suffix as ``detect`` expands folders), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_list_file(path: Path) -> list[Path]:
    """The paths a list file names: a .txt with one path per line (blank lines and ``#`` comments skipped) or a
    .parquet with a ``path`` column; relative paths are relative to the list file's folder."""
    if path.suffix.lower() == ".parquet":
        require_pyarrow()
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "path" not in table.column_names:
            raise ValueError(f"{path} has no 'path' column (columns: {', '.join(table.column_names)})")
        names = [str(v) for v in table.column("path").to_pylist() if v is not None and str(v).strip()]
    else:
        lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
        names = [line for line in lines if line and not line.startswith("#")]
    return [path.parent / name for name in names]  # an absolute name stays as it is


def list_images(source: str) -> list[Path]:
    """SRC -> absolute image paths in order, each once. Folder: its images, recursively, sorted; glob pattern: the
    matching image files, sorted; ``.txt``/``.parquet``: the paths listed, in the list's order (missing files are
    kept: they become error rows); an image file: itself. Raises ValueError when nothing is found."""
    path = Path(source).expanduser()
    if path.is_dir():
        found = images_in_folder(path)
    elif path.is_file() and path.suffix.lower() in (".txt", ".parquet"):
        found = read_list_file(path)
    elif path.is_file():
        found = [path]
    elif GLOB_CHARACTERS & set(source):
        matches = glob.glob(str(path), recursive=True)
        found = sorted(Path(m) for m in matches if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_SUFFIXES)
    else:
        raise ValueError(
            f"{source} is not a folder, an image, a list file (.txt or .parquet) or a glob pattern (quote it)"
        )
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise ValueError(f"no images found in {source}")
    return unique
