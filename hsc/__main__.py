"""Command line: `python -m hsc info`, `python -m hsc gan ...`, `python -m hsc style ...` (also installed as `hsc`)."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="hsc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, torch version, compiled backends, threads")
    gan = sub.add_parser("gan", help="train GANs with hsc, Adam and ACGD; table, metrics.json, PNGs")
    style = sub.add_parser("style", help="neural style transfer with hsc, L-BFGS and Adam; image, "
                                         "loss PNG, metrics.json")
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "gan":  # hsc.gan (matplotlib, sklearn, ...) is imported only when asked for
        from .gan.cli import add_arguments

        add_arguments(gan)
    if argv and argv[0] == "style":  # likewise hsc.style (scikit-image, matplotlib, ...)
        from .style.cli import add_arguments as add_style_arguments

        add_style_arguments(style)
    args = parser.parse_args(argv)
    if args.command == "info":
        import hsc

        hsc.info()
    elif args.command == "gan":
        from .gan.cli import main as gan_main

        return gan_main(args)
    elif args.command == "style":
        from .style.cli import main as style_main

        return style_main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
