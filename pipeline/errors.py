"""Refusals shared across the package: each names the file, row or key at fault in its first line.

They live below every layer that raises or catches them, so a lower layer (data, engine) never imports a higher one
(commands) for an exception class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["BundleKeyError", "CommandError", "ManifestError", "key_problem"]


class CommandError(Exception):
    """A user-facing failure of a ``neurofusion`` command: printed as one line, exit status 1."""


class ManifestError(ValueError):
    """A manifest failed validation; ``problems`` lists one message per problem."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(self.problems[0] + more if self.problems else "invalid manifest")


class BundleKeyError(ValueError):
    """A bundle key has a value of the wrong type or range; the message names the key."""


def key_problem(key: str, expected: str, value: Any, hint: str = "") -> str:
    """The one line naming bundle key ``key``, what it must be and the ``value`` it got."""
    return f"bundle key '{key}' must be {expected}, got {value!r}{hint}"
