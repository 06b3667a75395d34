"""Sub-commands of ``neurofusion``: each module registers its parsers with ``register(subparsers)``."""

from __future__ import annotations
