"""Refusals of bad input as one line under ``python -m monai.bundle run``, as the ``neurofusion`` command prints them.

MONAI wraps an error raised in a config expression (``Failed to evaluate ...``) and Python prints the whole chain: a
user who passed a wrong key reads forty lines of traceback to find the one that matters. When the bundle runs as
``python -m monai.bundle`` (or under ``torchrun``), an uncaught error whose chain holds a refusal
(:class:`BundleRefusal`, a bad bundle key or manifest) prints that refusal's first line only; every other error, and
every error with ``NEUROFUSION_DEBUG=1``, keeps Python's traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import TracebackType

from pipeline.errors import BundleKeyError, ManifestError


class BundleRefusal(Exception):
    """An input the user must fix (a key, a file, a folder): the message says what is wrong and what to do."""


_REFUSALS = (BundleRefusal, BundleKeyError, ManifestError)


def refusal_in(err: BaseException | None) -> BaseException | None:
    """The refusal in ``err``'s chain of causes (None: none)."""
    while err is not None:
        if isinstance(err, _REFUSALS):
            return err
        err = err.__cause__ or err.__context__
    return None


def _one_line_hook(kind: type[BaseException], err: BaseException, tb: TracebackType | None) -> None:
    refusal = refusal_in(err)
    if refusal is None or os.environ.get("NEUROFUSION_DEBUG"):
        sys.__excepthook__(kind, err, tb)
        return
    lines = str(refusal).strip().splitlines() or [type(refusal).__name__]
    print(f"error: {lines[0]}", file=sys.stderr)


def install_one_line_refusals() -> None:
    """Print refusals as one line when this process is ``python -m monai.bundle`` (nothing changes otherwise)."""
    main = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if main is not None and main.name == "__main__.py" and main.parent.name == "bundle":
        sys.excepthook = _one_line_hook
