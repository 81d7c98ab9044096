"""``retinaserve bench`` / ``retinaserve plan`` before they are wired into the CLI (same arguments).

python benchmarks/engine.py bench --photos ../shared/images --json out/bench.json --plot out/bench.png
python benchmarks/engine.py bench --parity --photos ../shared/images
python benchmarks/engine.py plan --gpu-mem 16GiB
"""

from __future__ import annotations

import argparse
import logging

from retinaserve.engine.cli import add_bench_parser, add_plan_parser


def main() -> int:
    parser = argparse.ArgumentParser(prog="engine", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    add_bench_parser(sub)
    add_plan_parser(sub)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
