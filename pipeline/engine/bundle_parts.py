"""The parts the three bundles share, derived from one of them so that the copies cannot drift apart.

Each bundle stays a self-contained MONAI bundle folder (the model-zoo contract), so the shared parts are copies:
``LICENSE``, ``configs/logging.conf``, ``configs/multi_gpu_train.yaml``, ``configs/evaluate.yaml``, the "shared
keys" blocks of ``train.yaml`` and ``inference.yaml`` and, in those two files, the keys passed to
:func:`~pipeline.engine.keys.check_bundle_keys`. :func:`expected_parts` derives every copy from :data:`REFERENCE`
(the fused bundle, which has every shared key) and the bundle's own ``train.yaml``:

- a shared-keys block holds the reference's entries for the keys the bundle has (its ``bundle_root`` naming it); in
  ``inference.yaml`` a key of the bundle's ``model_inputs`` reads the trained model's record
  (``trained_input(@model_file, key, <train.yaml value>)``), any other key is the ``train.yaml`` line;
- ``evaluate.yaml`` reads each of the bundle's ``model_inputs`` from the record, defaulting to its ``train.yaml``
  value; ``multi_gpu_train.yaml`` wraps the MRI encoder's start weights only in a bundle with that key;
- ``check_bundle_keys`` gets every key of :data:`~pipeline.engine.keys.BUNDLE_KEY_TYPES` the file defines.

``python tools/bundles.py --check`` lists what drifted; ``--write`` rewrites it.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping
from pathlib import Path

import yaml

from pipeline.engine.keys import BUNDLE_KEY_TYPES
from pipeline.io import atomic_write_text

__all__ = ["BUNDLES", "REFERENCE", "drifted", "expected_parts", "write_parts"]

BUNDLES = ("mri_cnn3d", "fmri_lstm", "mri_fmri_fusion")
REFERENCE = "mri_fmri_fusion"
COPIED = ("LICENSE", "configs/logging.conf")
SHARED_START = "# --- shared keys (the same in every neurofusion bundle) ---\n"
SHARED_END = "# --- this bundle ---\n"
#: the network of ``multi_gpu_train.yaml`` in a bundle without an MRI encoder to start from
PLAIN_NETWORK = "network: $pipeline.engine.distributed_network(@network_def, @device)\n"
_ENTRY = re.compile(r"^([A-Za-z_][\w#]*):")
_TRAINED = "\"$pipeline.engine.trained_input(@model_file, '{key}', {default!r})\""
_CALL = re.compile(r"check_bundle_keys\(([^)]*)\)")


def _entries(block: str) -> dict[str, str]:
    """Top-level entries of a YAML text: key -> its lines (comment lines above it and continuation lines below)."""
    entries: dict[str, str] = {}
    pending, key = "", None
    for line in block.splitlines(keepends=True):
        match = _ENTRY.match(line)
        if match:
            key = match.group(1)
            entries[key], pending = pending + line, ""
        elif line.startswith("#") or key is None:
            pending += line
        else:
            entries[key] += line
    return entries


def _split(text: str, path: Path) -> tuple[str, str, str]:
    """(before, shared keys block, after) of a train.yaml or inference.yaml."""
    if text.count(SHARED_START) != 1 or SHARED_END not in text.split(SHARED_START)[1]:
        raise ValueError(f"{path}: needs one {SHARED_START.strip()!r} line followed by {SHARED_END.strip()!r}")
    before, rest = text.split(SHARED_START)
    block, after = rest.split(SHARED_END, 1)
    return before + SHARED_START, block, SHARED_END + after


def _trained(entry: str, key: str, value) -> str:
    """A ``train.yaml`` entry as its ``inference.yaml`` twin reading the trained model's record."""
    comment = entry.partition("  # ")[2].strip()
    return (f"# {key}: {comment}\n" if comment else "") + f"{key}: {_TRAINED.format(key=key, default=value)}\n"


class _Bundle:
    """What the derivation reads of one bundle: its files, ``train.yaml`` values, model inputs and blocks."""

    def __init__(self, bundles_dir: Path, name: str, train_text: str | None = None) -> None:
        self.name = name
        self.root = bundles_dir / name
        self.train_text = self.file("configs/train.yaml").read_text() if train_text is None else train_text
        self.values = yaml.safe_load(self.train_text)
        self.model_inputs = list(self.values.get("model_inputs") or {})
        self.texts = {"train": self.train_text, "inference": self.file("configs/inference.yaml").read_text()}
        self.blocks = {
            config: _entries(_split(text, self.file(f"configs/{config}.yaml"))[1])
            for config, text in self.texts.items()
        }

    def file(self, part: str) -> Path:
        return self.root / part


def _block(reference: _Bundle, bundle: _Bundle, config: str) -> str:
    """The shared-keys block ``config`` (``train`` or ``inference``) of ``bundle``, derived from the reference."""
    own, source = bundle.blocks[config], reference.blocks[config]
    strangers = [key for key in own if key not in source]
    if strangers:
        raise ValueError(f"{bundle.file(f'configs/{config}.yaml')}: shared keys not in {REFERENCE}'s: {strangers}")
    lines = []
    for key, entry in source.items():
        if key not in own:
            continue
        if key == "bundle_root":
            entry = entry.replace(f"'{REFERENCE}'", f"'{bundle.name}'")
        elif config == "inference" and key in bundle.model_inputs:
            entry = _trained(bundle.blocks["train"][key], key, bundle.values[key])
        elif config == "inference" and key in reference.model_inputs:
            entry = bundle.blocks["train"][key]
        lines.append(entry)
    return "".join(lines)


def _config(reference: _Bundle, bundle: _Bundle, config: str) -> str:
    """``bundle``'s ``config`` (``train`` or ``inference``) with its shared block and key checks derived."""
    path = bundle.file(f"configs/{config}.yaml")
    before, _, after = _split(bundle.texts[config], path)
    return _with_key_checks(before + _block(reference, bundle, config) + after, path)


def _with_key_checks(text: str, path: Path) -> str:
    """``text`` whose ``check_bundle_keys(...)`` call passes every declared bundle key the file defines."""
    match = _CALL.search(text)
    if match is None:
        raise ValueError(f"{path}: no check_bundle_keys(...) call")
    defined = _entries(text)
    arguments = ", ".join(f"{key}=@{key}" for key in BUNDLE_KEY_TYPES if key in defined)
    line_start = text.rfind("\n", 0, match.start()) + 1
    indent = " " * (len(text[line_start : match.start()]) - len(text[line_start : match.start()].lstrip()))
    first = text[line_start : match.start()] + "check_bundle_keys("
    wrapped = textwrap.fill(arguments + ")", width=120, initial_indent=first, subsequent_indent=indent)
    return text[:line_start] + wrapped + text[match.end() :]


def _evaluate(reference: _Bundle, bundle: _Bundle) -> str:
    """The reference's ``evaluate.yaml`` reading the bundle's model inputs (the lines before ``run_check``)."""
    lines = reference.file("configs/evaluate.yaml").read_text().splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if "trained_input(" in line)
    last = next(i for i, line in enumerate(lines) if line.startswith("run_check:"))
    reads = [f"{k}: {_TRAINED.format(key=k, default=bundle.values[k])}\n" for k in bundle.model_inputs]
    return "".join(lines[:first] + reads + lines[last:])


def _multi_gpu(reference: _Bundle, bundle: _Bundle) -> str:
    """The reference's ``multi_gpu_train.yaml``, its network plain in a bundle without MRI encoder weights."""
    text = reference.file("configs/multi_gpu_train.yaml").read_text()
    if "mri_encoder_weights" in bundle.values:
        return text
    network = _entries(text)["network"]
    return text.replace(network, PLAIN_NETWORK)


def expected_parts(bundles_dir: str | Path) -> dict[Path, str]:
    """Every shared part of every bundle as it should read, by file.

    Raises:
        ValueError: a bundle file lacks the markers or the call the derivation needs, or has a shared key the
            reference lacks (named).
    """
    bundles_dir = Path(bundles_dir)
    on_disk = {name: _Bundle(bundles_dir, name) for name in BUNDLES}
    # every other part follows the train.yaml each bundle should have, so one --write reaches every copy
    bundles = {name: _Bundle(bundles_dir, name, _config(on_disk[REFERENCE], b, "train")) for name, b in on_disk.items()}
    reference = bundles[REFERENCE]
    parts: dict[Path, str] = {}
    for bundle in bundles.values():
        for part in COPIED:
            parts[bundle.file(part)] = reference.file(part).read_text()
        parts[bundle.file("configs/train.yaml")] = bundle.train_text
        parts[bundle.file("configs/inference.yaml")] = _config(reference, bundle, "inference")
        parts[bundle.file("configs/evaluate.yaml")] = _evaluate(reference, bundle)
        parts[bundle.file("configs/multi_gpu_train.yaml")] = _multi_gpu(reference, bundle)
    return parts


def drifted(parts: Mapping[Path, str]) -> list[str]:
    """One line per file that differs from its expected text, naming its first differing line."""
    problems = []
    for path, expected in parts.items():
        actual = path.read_text() if path.is_file() else ""
        if actual != expected:
            ours, theirs = actual.splitlines(), expected.splitlines()
            line = next((i for i, (a, e) in enumerate(zip(ours, theirs), 1) if a != e), min(len(ours), len(theirs)) + 1)
            found, wanted = (lines[line - 1] if line <= len(lines) else "" for lines in (ours, theirs))
            problems.append(f"{path}:{line}: reads {found[:60]!r} where the shared part gives {wanted[:60]!r}")
    return problems


def write_parts(parts: Mapping[Path, str]) -> list[Path]:
    """Rewrite the files that differ from their expected text; returns them."""
    changed = [path for path, text in parts.items() if not path.is_file() or path.read_text() != text]
    for path in changed:
        atomic_write_text(path, parts[path])
    return changed
