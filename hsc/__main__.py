"""Command line: `python -m hsc info` and `python -m hsc gan ...` (also installed as `hsc`)."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="hsc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, torch version, compiled backends, threads")
    gan = sub.add_parser("gan", help="train GANs with hsc, Adam and ACGD; table, metrics.json, PNGs")
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "gan":  # hsc.gan (matplotlib, sklearn, ...) is imported only when asked for
        from .gan.cli import add_arguments

        add_arguments(gan)
    args = parser.parse_args(argv)
    if args.command == "info":
        import hsc

        hsc.info()
    elif args.command == "gan":
        from .gan.cli import main as gan_main

        return gan_main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
