"""``python -m retinaserve ...``: the ``retinaserve`` command (the same subcommands and flags)."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
