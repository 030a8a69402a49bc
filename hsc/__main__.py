"""Command line: `python -m hsc info` (also installed as `hsc info`)."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="hsc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, torch version, compiled backends, threads")
    args = parser.parse_args(argv)
    if args.command == "info":
        import hsc

        hsc.info()
    return 0


if __name__ == "__main__":
    sys.exit(main())
