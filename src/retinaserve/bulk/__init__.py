"""Bulk detection over many photos (``retinaserve batch``): the images of a folder, glob or list file, one row each
in a Parquet or JSONL file that a rerun resumes; in this process, or on Ray Data (:mod:`retinaserve.ray.data`)."""

from .results import ChunkedWriter, ResultsFile, open_results
from .runner import DetectorOptions, ImageDecoder, run_in_process
from .sources import list_images

__all__ = [
    "ChunkedWriter",
    "DetectorOptions",
    "ImageDecoder",
    "ResultsFile",
    "list_images",
    "open_results",
    "run_in_process",
]
