"""The rows of a ``retinaserve batch`` results file, and writing them so that a run can crash and resume.

One row per image: ``path`` (absolute), ``width``/``height`` (null on error), ``faces`` (``Face.to_dict()`` each;
null on error), ``num_faces`` (null on error), ``timings_ms`` ``{decode, detect}``, ``model``, ``error`` (null or
one line); with ``--reconstruct`` also ``meshes`` (see :mod:`.meshes`; null on error) and ``timings_ms``
``reconstruct``. Rows are written in chunks as they come (every :data:`FLUSH_ROWS` rows or :data:`FLUSH_SECONDS`):

- JSONL: lines appended and flushed; a line cut by a crash is dropped on resume;
- Parquet (one file cannot be appended to): each chunk is a complete part file,
  ``<out>.parts/part-NNNNN.parquet`` (written to a temporary name, then renamed), and the end of the run (also
  after Ctrl-C) merges the old file and the parts into ``<out>`` (a temporary file, then ``os.replace``) and
  removes the folder.

What a resumed run skips is read from the file and any parts left: the last row of a path wins, and a path is done
unless its last row is an error and ``--retry-errors`` is given. Finishing keeps one row per path, the last. A
file with meshes is resumed only with ``--reconstruct``, and one without only without it (a ValueError says so):
rows with and without meshes never mix in one file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..detection.results import LANDMARK_NAMES, ImageResult
from .sources import require_pyarrow

__all__ = [
    "FLUSH_ROWS",
    "FLUSH_SECONDS",
    "MESH_FIELD",
    "RESULT_FIELDS",
    "ChunkedWriter",
    "JsonlResults",
    "ParquetResults",
    "ResultsFile",
    "Resume",
    "Row",
    "error_row",
    "image_row",
    "open_results",
    "parquet_schema",
    "result_fields",
]

log = logging.getLogger(__name__)

RESULT_FIELDS = ("path", "width", "height", "faces", "num_faces", "timings_ms", "model", "error")
"""The columns of a results file, in order."""
MESH_FIELD = "meshes"
"""The column ``--reconstruct`` adds after them."""
FLUSH_ROWS = 64
FLUSH_SECONDS = 10.0
"""Rows are made durable at least this often, so a crash loses at most this much work."""

Row = dict[str, Any]


def image_row(path: str, model: str, result: ImageResult, decode_ms: float, detect_ms: float) -> Row:
    """The row of an image that was detected."""
    return {
        "path": path,
        "width": result.width,
        "height": result.height,
        "faces": [face.to_dict() for face in result.faces],
        "num_faces": len(result.faces),
        "timings_ms": {"decode": decode_ms, "detect": detect_ms},
        "model": model,
        "error": None,
    }


def error_row(path: str, model: str, error: str, decode_ms: float, detect_ms: float | None = None) -> Row:
    """The row of an image that could not be decoded or detected."""
    return {
        "path": path,
        "width": None,
        "height": None,
        "faces": None,
        "num_faces": None,
        "timings_ms": {"decode": decode_ms, "detect": detect_ms},
        "model": model,
        "error": error,
    }


def result_fields(meshes: bool = False) -> tuple[str, ...]:
    """The columns of a results file, with ``meshes`` last where the run reconstructs."""
    return (*RESULT_FIELDS, MESH_FIELD) if meshes else RESULT_FIELDS


def parquet_schema(meshes: bool = False) -> Any:
    """The fixed Arrow schema of a Parquet results file (explicit, so that an image without faces or a chunk of
    errors never changes a column's type): a face is ``{box: [x1, y1, x2, y2], score, landmarks: {name: [x, y]}}``,
    as ``Face.to_dict()`` gives it. With ``meshes``, a ``meshes`` column holds each row's list of mesh entries as
    one JSON string (the JSONL row's list, ``json.loads`` gives it back): an entry is deep (68 x 3 landmarks, pose)
    and its keys vary by 3D model (``extras``) and by run (``files``), which a fixed struct would have to freeze."""
    require_pyarrow()
    import pyarrow as pa

    point = pa.list_(pa.float64(), 2)
    face = pa.struct(
        [
            ("box", pa.list_(pa.float64(), 4)),
            ("score", pa.float64()),
            ("landmarks", pa.struct([(name, point) for name in LANDMARK_NAMES])),
        ]
    )
    timings = ["decode", "detect", "reconstruct"] if meshes else ["decode", "detect"]
    return pa.schema(
        [
            pa.field("path", pa.string(), nullable=False),
            ("width", pa.int64()),
            ("height", pa.int64()),
            ("faces", pa.list_(face)),
            ("num_faces", pa.int64()),
            ("timings_ms", pa.struct([(name, pa.float64()) for name in timings])),
            ("model", pa.string()),
            ("error", pa.string()),
            *([(MESH_FIELD, pa.string())] if meshes else []),
        ]
    )


@dataclass(frozen=True)
class Resume:
    """The images a run still has to do, and how many it skips as done (of which with an error row)."""

    todo: list[str]
    skipped: int
    skipped_errors: int


class ResultsFile(ABC):
    """A results file being resumed and appended to; :func:`open_results` picks the format by suffix."""

    def __init__(self, path: Path, *, meshes: bool = False) -> None:
        self.path = path
        self.meshes = meshes
        """Whether the rows carry ``meshes`` (``--reconstruct``)."""
        self._rewrite = False
        """Set when this run wrote a path the file already had (a retried error): finishing keeps the last row."""
        self._known: set[str] = set()

    def state(self) -> dict[str, str | None]:
        """Path -> the error of its last row (None: done without error), over everything written so far."""
        state: dict[str, str | None] = {}
        for row in self._read_rows():
            state[row["path"]] = row.get("error")
        self._known = set(state)
        return state

    def resume(self, paths: Sequence[str], *, retry_errors: bool = False) -> Resume:
        """What a run over ``paths`` has left to do: a path already written is skipped, unless its last row is an
        error and ``retry_errors`` is set."""
        state = self.state()
        todo = [path for path in paths if path not in state or (retry_errors and state[path] is not None)]
        skipped_errors = 0 if retry_errors else sum(1 for path in paths if state.get(path, None) is not None)
        return Resume(todo, len(paths) - len(todo), skipped_errors)

    def append(self, rows: Sequence[Row]) -> None:
        """Write ``rows`` durably (a flushed chunk)."""
        if not rows:
            return
        if any(row["path"] in self._known for row in rows):
            self._rewrite = True
        self._known.update(row["path"] for row in rows)
        self._append(rows)

    def _check_meshes(self, source: Path, has_meshes: bool) -> None:
        """A file written with ``--reconstruct`` resumes only with it, and one written without only without it."""
        if has_meshes == self.meshes:
            return
        if self.meshes:
            raise ValueError(
                f"{source} was written without --reconstruct (its rows have no meshes): rerun without --reconstruct "
                "to resume it, or give a new --out for the meshes"
            )
        raise ValueError(
            f"{source} was written with --reconstruct (its rows have meshes): add --reconstruct to resume it, or "
            "give a new --out"
        )

    @abstractmethod
    def _read_rows(self) -> Iterable[Row]:
        """Every row written so far, in writing order (only ``path`` and ``error`` are needed)."""

    @abstractmethod
    def _append(self, rows: Sequence[Row]) -> None: ...

    @abstractmethod
    def finish(self) -> None:
        """Make ``path`` the one complete file: one row per image (the last), nothing left beside it."""


class JsonlResults(ResultsFile):
    """One JSON object per line, appended and flushed chunk by chunk."""

    def _read_rows(self) -> Iterable[Row]:
        if not self.path.is_file():
            return []
        rows: list[Row] = []
        lines = self.path.read_bytes().split(b"\n")
        complete, last = lines[:-1], lines[-1]  # `last` is b"" when the file ends with a newline
        for number, line in enumerate(complete, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(
                    f"{self.path} line {number} is not JSON: not a `retinaserve batch` results file?"
                ) from None
            if not isinstance(row, dict) or "path" not in row:
                raise ValueError(f"{self.path} line {number} has no 'path': not a batch results file?")
            if not rows:
                self._check_meshes(self.path, MESH_FIELD in row)
            rows.append(row)
        if last.strip():
            log.warning("%s: its last line was cut short (a crash?); that image is run again", self.path)
        return rows

    def _truncate_cut_line(self) -> None:
        """Drop a last line without its newline (a write cut by a crash), so that appends start on a new line."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.path.open("r+b") as file:
                file.truncate(data.rfind(b"\n") + 1)

    def _append(self, rows: Sequence[Row]) -> None:
        self._truncate_cut_line()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(row) + "\n" for row in rows)
        with self.path.open("a", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())

    def finish(self) -> None:
        if not self._rewrite:
            return
        last: dict[str, str] = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                last[json.loads(line)["path"]] = line
        _replace_atomically(self.path, lambda tmp: tmp.write_text("".join(v + "\n" for v in last.values())))
        self._rewrite = False


class ParquetResults(ResultsFile):
    """``path`` plus part files in ``<path>.parts/``, merged into ``path`` by :meth:`finish`."""

    def __init__(self, path: Path, *, meshes: bool = False) -> None:
        require_pyarrow()
        super().__init__(path, meshes=meshes)
        self.parts = path.with_name(path.name + ".parts")

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet")) if self.parts.is_dir() else []

    def _read_rows(self) -> Iterable[Row]:
        import pyarrow.parquet as pq

        rows: list[Row] = []
        for file in ([self.path] if self.path.is_file() else []) + self._part_files():
            names = pq.read_schema(file).names
            if "path" not in names or "error" not in names:
                raise ValueError(f"{file} has no 'path' and 'error' columns: not a `retinaserve batch` results file?")
            self._check_meshes(file, MESH_FIELD in names)
            rows.extend(pq.read_table(file, columns=["path", "error"]).to_pylist())
        if self._part_files():
            log.info("%s: resuming with %d part files left by an unfinished run", self.path, len(self._part_files()))
        return rows

    def _append(self, rows: Sequence[Row]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.parts.mkdir(parents=True, exist_ok=True)
        existing = self._part_files()
        number = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
        if self.meshes:  # a JSON string each (see parquet_schema)
            rows = [{**row, MESH_FIELD: _json_or_none(row[MESH_FIELD])} for row in rows]
        table = pa.Table.from_pylist(list(rows), schema=parquet_schema(self.meshes))
        target = self.parts / f"part-{number:05d}.parquet"
        _replace_atomically(target, lambda tmp: pq.write_table(table, tmp))

    def finish(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        parts = self._part_files()
        if not parts:
            if self.parts.is_dir():
                shutil.rmtree(self.parts)
            return
        schema = parquet_schema(self.meshes)
        files = ([self.path] if self.path.is_file() else []) + parts
        fields = list(result_fields(self.meshes))
        table = pa.concat_tables(pq.read_table(file).select(fields).cast(schema) for file in files)
        last: dict[str, int] = {}
        for index, path in enumerate(table.column("path").to_pylist()):
            last[path] = index  # the last row of a path wins; dicts keep first-insertion order
        if len(last) < table.num_rows:
            table = table.take(sorted(last.values()))
        _replace_atomically(self.path, lambda tmp: pq.write_table(table, tmp))
        shutil.rmtree(self.parts)


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _replace_atomically(target: Path, write: Any) -> None:
    """``write(tmp)`` beside ``target``, then rename over it: readers see the old file or the new, never half."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def open_results(path: Path, *, meshes: bool = False) -> ResultsFile:
    """The results file at ``path``, by suffix: ``.parquet`` or ``.jsonl``; anything else is a ValueError.
    ``meshes``: its rows carry ``meshes`` (``--reconstruct``)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return ParquetResults(path, meshes=meshes)
    if suffix == ".jsonl":
        return JsonlResults(path, meshes=meshes)
    raise ValueError(f"--out must end in .parquet or .jsonl (the format is chosen by suffix), got {path}")


class ChunkedWriter:
    """Buffers rows and hands them to a :class:`ResultsFile` every ``every_rows`` rows or ``every_s`` seconds;
    ``close`` writes the rest and finishes the file (call it in a ``finally``: after Ctrl-C too)."""

    def __init__(self, results: ResultsFile, *, every_rows: int = FLUSH_ROWS, every_s: float = FLUSH_SECONDS) -> None:
        self.results = results
        self.every_rows = every_rows
        self.every_s = every_s
        self._pending: list[Row] = []
        self._last_flush = time.monotonic()
        self.written = 0

    def write(self, row: Row) -> None:
        """Buffer one row; hand the buffer over when it is full or old enough."""
        self._pending.append(row)
        if len(self._pending) >= self.every_rows or time.monotonic() - self._last_flush >= self.every_s:
            self.flush()

    def flush(self) -> None:
        """Make the buffered rows durable now."""
        self.results.append(self._pending)
        self.written += len(self._pending)
        self._pending = []
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Write what is buffered and finish the file (Parquet: merge the parts)."""
        try:
            self.flush()
        finally:
            self.results.finish()
