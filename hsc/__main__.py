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
        app = _application(args.command)
        try:
            return app.main(args)
        except ModuleNotFoundError as err:  # a package the application imports while it runs
            if err.name and err.name.split(".")[0] in EXTRA_PACKAGES[args.command]:
                raise SystemExit(_missing_extra(args.command, err.name)) from err
            raise
    return 0


# The top-level modules each application's extra installs (pyproject.toml).
EXTRA_PACKAGES = {"gan": ("matplotlib", "tqdm", "sklearn", "mlxtend", "torchmetrics", "CGDs"),
                  "style": ("matplotlib", "tqdm", "skimage", "sklearn")}


def _missing_extra(name: str, missing) -> str:
    return f"hsc {name} needs the [{name}] extra: pip install 'hsc[{name}]' (missing: {missing})"


def _application(name: str):
    """hsc.gan.cli or hsc.style.cli; a missing package of the application's extra is named."""
    import importlib

    try:
        return importlib.import_module(f"hsc.{name}.cli")
    except ImportError as err:
        raise SystemExit(_missing_extra(name, err.name or err)) from err


if __name__ == "__main__":
    sys.exit(main())
