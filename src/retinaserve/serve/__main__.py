"""``python -m retinaserve.serve [flags]``: the ``serve`` subcommand on its own (the flags of ``retinaserve serve``)."""

from __future__ import annotations

import argparse
import sys

from ..errors import RetinaServeError
from .cli import add_serve_parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retinaserve.serve")
    sub = parser.add_subparsers(dest="command")
    serve = add_serve_parser(sub)
    args = serve.parse_args(argv)
    try:
        return int(args.func(args))
    except (RetinaServeError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
