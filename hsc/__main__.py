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
    # An application (and its extra's packages: matplotlib, scikit-learn, ...) is imported only
    # when asked for.
    if argv and argv[0] == "gan":
        _application("gan").add_arguments(gan)
    if argv and argv[0] == "style":
        _application("style").add_arguments(style)
    args = parser.parse_args(argv)
    if args.command == "info":
        import hsc

        hsc.info()
    elif args.command in ("gan", "style"):
        return _application(args.command).main(args)
    return 0


def _application(name: str):
    """hsc.gan.cli or hsc.style.cli; a missing package of the application's extra is named."""
    import importlib

    try:
        return importlib.import_module(f"hsc.{name}.cli")
    except ImportError as err:
        raise SystemExit(f"hsc {name} needs the [{name}] extra: pip install 'hsc[{name}]' "
                         f"(missing: {err.name or err})") from err


if __name__ == "__main__":
    sys.exit(main())
