"""``retinaserve eval widerface | faces``: thin argument parsing over :mod:`retinaserve.evaluation`."""

from __future__ import annotations

import argparse
from typing import Any


def add_eval_parser(sub: Any) -> None:
    """Adds ``eval`` with its two protocols to the top-level subcommands."""
    from .cli_faces import add_faces_parser
    from .cli_widerface import add_widerface_parser

    parser: argparse.ArgumentParser = sub.add_parser(
        "eval", help="measure accuracy: WIDER FACE val, or any annotated folder"
    )
    protocols = parser.add_subparsers(dest="eval_command", required=True)
    add_widerface_parser(protocols)
    add_faces_parser(protocols)
