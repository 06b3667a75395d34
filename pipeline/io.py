"""Atomic file writes: a reader never sees a half-written CSV, JSON, checkpoint or report."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml


class NumberLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads numbers as YAML 1.2 does: ``1e-3`` is a float (YAML 1.1 reads it as text)."""


NumberLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text safely (no Python objects), numbers as YAML 1.2 reads them (:class:`NumberLoader`)."""
    return yaml.load(text, Loader=NumberLoader)  # a SafeLoader: builds no Python objects


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename.

    On an exception the temporary file is removed and ``path`` is left as it was.

    Args:
        path: the file to write.
        suffix: ending of the temporary name (e.g. ``.nii.gz`` for a writer that picks the format from it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a shared run folder needs the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf8")


def atomic_write_json(path: str | Path, payload: Any) -> None:
    """Write JSON (indented, keys in insertion order) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def same_file(a: str | Path, b: str | Path) -> bool:
    """``a`` and ``b`` are one file (resolved paths, hard or symbolic links included); False when ``a`` is absent."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def check_not_input(out: str | Path, inputs: Mapping[str, str | Path | None], flag: str = "--out") -> None:
    """Refuse an output that is one of the command's inputs (:func:`same_file`), before anything is read or written.

    Args:
        out: the file a command is about to write.
        inputs: what each input is (``"the BOLD run"``) -> its path (None or ``""``: not given).
        flag: the option that named ``out``, for the message.

    Raises:
        ValueError: naming the output, the input it is and what to do.
    """
    for what, path in inputs.items():
        if path and same_file(out, path):
            raise ValueError(f"{flag} {out}: the output is {what} ({path}); choose another {flag}")
