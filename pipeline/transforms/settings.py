"""Augmentation settings: defaults per transform, overridden key by key from the bundle YAML."""

from __future__ import annotations

from collections.abc import Mapping


def merge_settings(defaults: Mapping[str, Mapping], overrides: Mapping[str, Mapping] | None, what: str) -> dict:
    """Copy ``defaults`` and update each transform's settings from ``overrides``; unknown names are errors."""
    settings = {name: dict(values) for name, values in defaults.items()}
    for name, values in (overrides or {}).items():
        if name not in settings:
            raise KeyError(f"unknown {what} augmentation {name!r}; known: {', '.join(settings)}")
        unknown = set(values) - set(settings[name])
        if unknown:
            raise KeyError(f"{what} augmentation {name!r}: unknown setting(s) {', '.join(sorted(unknown))}")
        settings[name].update(values)
    return settings
