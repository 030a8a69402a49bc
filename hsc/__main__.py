"""Command line: `python -m hsc info`, `python -m hsc gan ...`, `python -m hsc style ...`,
`python -m hsc style-net train|apply ...` (also installed as `hsc`)."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="hsc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, torch version, compiled backends, threads")
    parsers = {
        "gan": sub.add_parser("gan", help="train GANs with hsc, Adam and ACGD; table, metrics.json, PNGs"),
        "style": sub.add_parser("style", help="neural style transfer with hsc, L-BFGS and Adam; image, loss PNG, "
                                              "metrics.json"),
        "style-net": sub.add_parser("style-net", help="train a stylising network with hsc and Adam (train), "
                                                      "stylise a photograph in one pass (apply)"),
    }
    if argv is None:
        argv = sys.argv[1:]
    # An application (and its extra's packages: matplotlib, scikit-learn, ...) is imported only
    # when asked for.
    if argv and argv[0] in APPLICATIONS:
        _application(argv[0]).add_arguments(parsers[argv[0]])
    args = parser.parse_args(argv)
    if args.command == "info":
        import hsc

        hsc.info()
    elif args.command in APPLICATIONS:
        app = _application(args.command)
        try:
            return app.main(args)
        except ModuleNotFoundError as err:  # a package the application imports while it runs
            extra = APPLICATIONS[args.command][1]
            if err.name and err.name.split(".")[0] in EXTRA_PACKAGES[extra]:
                raise SystemExit(_missing_extra(extra, err.name)) from err
            raise
    return 0


# The top-level modules each application's extra installs (pyproject.toml).
EXTRA_PACKAGES = {"gan": ("matplotlib", "tqdm", "sklearn", "mlxtend", "torchmetrics", "CGDs"),
                  "style": ("matplotlib", "tqdm", "skimage", "sklearn")}
# command -> (its module, its extra)
APPLICATIONS = {"gan": ("hsc.gan.cli", "gan"), "style": ("hsc.style.cli", "style"),
                "style-net": ("hsc.style.network_cli", "style")}


def _missing_extra(name: str, missing) -> str:
    return f"hsc {name} needs the [{name}] extra: pip install 'hsc[{name}]' (missing: {missing})"


def _application(command: str):
    """The command's module (APPLICATIONS); a missing package of the application's extra is named."""
    import importlib

    module, extra = APPLICATIONS[command]
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise SystemExit(_missing_extra(extra, err.name or err)) from err


if __name__ == "__main__":
    sys.exit(main())
