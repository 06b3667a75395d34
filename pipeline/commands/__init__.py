"""Sub-commands of ``neurofusion``: each module registers its parsers with ``register(subparsers)``."""

from __future__ import annotations


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""
