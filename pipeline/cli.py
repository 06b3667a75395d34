"""The ``neurofusion`` command.

Every sub-command exits 0 only on success; errors print one line naming the file, row or key at fault
(``--debug`` shows the traceback). Sub-commands live in ``pipeline.commands``, one module per command and named after
it (``study`` holds the study commands ``experiment``, ``variants``, ``report`` and ``demo``), each with
``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

COMMAND_MODULES = (
    "pipeline.commands.synth",
    "pipeline.commands.manifest",
    "pipeline.commands.split",
    "pipeline.commands.roi",
    "pipeline.commands.preprocess",
    "pipeline.commands.study",
    "pipeline.commands.bench",
    "pipeline.commands.export",
    "pipeline.commands.predict",
)


# --- entry point ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neurofusion",
        description="Classify CN / MCI / AD from structural MRI and resting-state fMRI with MONAI bundles: "
        "synthesise or check data, run cross-validated studies, and report them.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("neurofusion: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one clear line unless --debug
        if args.debug:
            raise
        print(f"neurofusion {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 1


#: how MONAI's config parser (expressions, components built from the YAML) and transform chains wrap an error
_WRAPPERS = ("Failed to evaluate", "Failed to instantiate component", "applying transform")


def _one_line(err: BaseException) -> str:
    # MONAI wraps errors raised inside config expressions and transform chains; the root cause is what users need
    while err.__cause__ is not None and str(err).startswith(_WRAPPERS):
        err = err.__cause__
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
