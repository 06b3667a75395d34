"""Values of the bundle keys users set (``--epochs 5``, a study's ``overrides``), checked before a workflow runs.

A value of the wrong type would otherwise surface deep inside MONAI or ignite (``'<' not supported between
instances of 'str' and 'int'``) after output folders were created; :func:`check_bundle_keys` names the key instead.
The bundles call it first in ``initialize`` (train and evaluate); :func:`pipeline.study.spec.load_study` checks a
study's and each cohort's ``overrides`` the same way, before a run folder exists.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

from pipeline.data.manifest import CLASS_NAMES_RULE, valid_class_names
from pipeline.errors import BundleKeyError, key_problem

_SWITCH_TEXT = {"true", "false", "yes", "no", "on", "off", "1", "0", "none", "null", ""}


def _integer(value: Any, low: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low


def _number(value: Any, low: float, high: float = float("inf"), open_low: bool = False) -> bool:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    return (value > low if open_low else value >= low) and value <= high


def _triple(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, (list, tuple)) and len(value) == 3 and all(test(v) for v in value)


def _encoder_weights(value: Any) -> bool:
    """Null, or a checkpoint holding an MRI encoder (:func:`pipeline.networks.pretrained.encoder_state`)."""
    from pipeline.networks.pretrained import EncoderWeightsError, encoder_state, weights_path

    if value is not None and not isinstance(value, (str, bytes)) and not hasattr(value, "__fspath__"):
        return False
    path = weights_path(value)
    try:
        return path is None or bool(encoder_state(path))
    except EncoderWeightsError:
        return False


def _switch(value: Any) -> bool:
    return isinstance(value, bool) or value in (0, 1) or (isinstance(value, str) and value.lower() in _SWITCH_TEXT)


_POSITIVE_INT = (lambda v: _integer(v, 1), "a positive integer")
_COUNT = (lambda v: _integer(v, 0), "an integer >= 0")
_POSITIVE = (lambda v: _number(v, 0.0, open_low=True), "a positive number")
_NON_NEGATIVE = (lambda v: _number(v, 0.0), "a number >= 0")
_SWITCH = (_switch, "true or false")

#: key -> (test, what it must be)
BUNDLE_KEY_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": _POSITIVE_INT,
    "batch_size": _POSITIVE_INT,
    "learning_rate": _NON_NEGATIVE,  # 0 freezes the weights (a baseline, or a test of early stopping)
    "weight_decay": _NON_NEGATIVE,
    "num_workers": _COUNT,
    "cache_rate": (lambda v: _number(v, 0.0, 1.0), "a number from 0 to 1"),
    "seed": _COUNT,
    "mri_spatial_size": (_triple(_POSITIVE_INT[0]), "three positive integers, e.g. [48, 56, 48]"),
    "mri_pixdim": (_triple(_POSITIVE[0]), "three positive numbers (mm), e.g. [3.0, 3.0, 3.0]"),
    "mri_registration": (lambda v: v in ("affine", "none"), "affine or none"),
    "mri_registration_mm": _POSITIVE,
    "mri_registration_min_similarity": (lambda v: _number(v, -1.0, 1.0), "a number from -1 to 1"),
    "mri_brain_mask": _SWITCH,
    "fmri_timepoints": _POSITIVE_INT,
    "fmri_registration": (lambda v: v in ("auto", "none"), "auto or none"),
    "val_interval": _POSITIVE_INT,
    "early_stop_patience": _COUNT,
    "augment": _SWITCH,
    "bn_recalibration": _SWITCH,
    "bn_recalibration_batches": (lambda v: v is None or _integer(v, 1), "null or a positive integer"),
    "resume": _SWITCH,
    "amp": _SWITCH,
    "compile": _SWITCH,
    "progress": _SWITCH,
    "tensorboard": _SWITCH,
    "mri_encoder_weights": (
        _encoder_weights,
        "null or an existing model.pt of mri_cnn3d or mri_fmri_fusion (a PyTorch checkpoint with an MRI encoder)",
    ),
    "mri_encoder_freeze": _SWITCH,
    "class_names": (valid_class_names, CLASS_NAMES_RULE),
}


def bundle_key_problem(key: str, value: Any) -> str | None:
    """What is wrong with ``value`` for bundle key ``key`` (None: fine, or a key without a declared type)."""
    if key not in BUNDLE_KEY_TYPES:
        return None
    test, expected = BUNDLE_KEY_TYPES[key]
    if test(value):
        return None
    hint = ""
    if isinstance(value, str) and _parses_as_number(value):
        hint = " (a number given as text; in YAML write exponents with a dot, e.g. 1.0e-3)"
    return key_problem(key, expected, value, hint)


def _parses_as_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_bundle_keys(**values: Any) -> None:
    """Refuse the first key whose value has the wrong type or range (see :data:`BUNDLE_KEY_TYPES`).

    Raises:
        BundleKeyError: naming the key, what it must be and what it got.
    """
    for key, value in values.items():
        problem = bundle_key_problem(key, value)
        if problem:
            raise BundleKeyError(problem)
