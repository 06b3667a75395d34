"""A bundle loaded for clinical-style inference: network, weights, chain and QC thresholds, all from its own
``configs/inference.yaml`` through MONAI's ``ConfigParser``, so ``neurofusion predict`` computes what
``python -m monai.bundle run --config_file configs/inference.yaml`` computes."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from pipeline.engine.keys import check_bundle_keys
from pipeline.engine.model_inputs import check_model_inputs, inputs_record
from pipeline.errors import BundleKeyError
from pipeline.inference import explain
from pipeline.inference.qc import thresholds_of

CONFIG = "inference.yaml"


def file_sha256(path: str | Path) -> str:
    """Content hash of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class InferenceBundle:
    """A trained bundle ready to predict one subject at a time.

    Args:
        bundle_dir: the bundle folder (``configs/inference.yaml``, ``configs/metadata.json``).
        ckpt: weights (default ``<bundle_dir>/models/model.pt``), loaded with ``torch.load(weights_only=True)``.
        overrides: config ids and values applied after reading the config (``{"mri_pixdim": [6, 6, 6]}``), as
            ``python -m monai.bundle run --key value`` applies them.

    The bundle key ``saliency_method`` (default ``vanilla_grad``) picks the MRI explanation
    (:data:`pipeline.inference.explain.SALIENCY_METHODS`). The keys that define the model's input
    (``model_inputs``) are those recorded beside the weights when they were trained (``<stem>_inputs.json``,
    :mod:`pipeline.engine.model_inputs`); ``model_inputs_record`` is that file, or None for weights without one
    (the config's values are then used, and every prediction says so).

    Raises:
        FileNotFoundError: no bundle config or no weights.
        ValueError: an override of the wrong type (:func:`pipeline.engine.keys.check_bundle_keys`) or one that
            contradicts the trained value (:func:`pipeline.engine.model_inputs.check_model_inputs`); an unknown
            ``saliency_method``; weights that are not a plain state dict of the network.
    """

    def __init__(
        self, bundle_dir: str | Path, ckpt: str | Path | None = None, overrides: Mapping[str, Any] | None = None
    ) -> None:
        self.root = Path(bundle_dir).resolve()
        self.config = self.root / "configs" / CONFIG
        if not self.config.is_file():
            raise FileNotFoundError(f"{bundle_dir}: not a bundle folder (no configs/{CONFIG})")
        self.overrides = dict(overrides or {})
        try:
            check_bundle_keys(**self.overrides)
        except BundleKeyError as err:
            raise ValueError(f"--set: {err}") from None
        self.weights = Path(ckpt) if ckpt else self.root / "models" / "model.pt"
        if not self.weights.is_file():
            raise FileNotFoundError(f"{self.weights}: no weights; train the bundle first or give --ckpt")
        self.parser = self._parser()
        self.model_inputs: dict[str, Any] = dict(self.setting("model_inputs", {}))
        recorded = check_model_inputs(self.weights, self.model_inputs)
        self.model_inputs_record = inputs_record(self.weights) if recorded is not None else None
        self.saliency_method: str = self.setting("saliency_method", "vanilla_grad")
        problem = explain.saliency_method_problem(self.saliency_method)
        if problem:
            raise ValueError(f"{self.config}: {problem}")
        self.meta = self.parser.get("_meta_")
        self.modalities: list[str] = list(self.parser.get_parsed_content("modalities"))
        self.keys: dict[str, str] = {"mri": "image", "fmri": "series", **self.parser.get_parsed_content("data_keys")}
        self.class_names: list[str] = list(self.parser.get_parsed_content("class_names"))
        self.device = torch.device(self.parser.get_parsed_content("device"))
        self.network = self._network()
        self.weights_sha256 = file_sha256(self.weights)
        self.prepare_batch = self.parser.get_parsed_content("prepare_batch")
        self.inferer = self.parser.get_parsed_content("inferer")
        self.postprocessing = self.parser.get_parsed_content("postprocessing")
        qc = self.parser.get_parsed_content("qc") if "qc" in self.parser else {}
        self.qc = {m: thresholds_of(qc, m, str(self.config)) for m in self.modalities}
        self._chains: dict[tuple[str, ...], Compose] = {}

    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.root.name))

    @property
    def version(self) -> str:
        return str(self.meta.get("version", ""))

    def setting(self, key: str, default: Any = None) -> Any:
        """A top-level config value (``atlas``, ``fmri_sequence``), or ``default`` when the bundle has none."""
        return self.parser.get_parsed_content(key) if key in self.parser else default

    def _parser(self, **extra: Any) -> ConfigParser:
        parser = ConfigParser()
        parser.read_config(str(self.config))
        parser.read_meta(str(self.root / "configs" / "metadata.json"))
        parser["bundle_root"] = str(self.root)
        if "model_file" in parser:  # the input keys are read from the record of these weights
            parser["model_file"] = str(self.weights)
        for key, value in self.overrides.items():
            if key not in parser:  # MONAI would add it silently: a typo must not run with the defaults
                raise ValueError(f"--set {key}: {self.config} has no such key")
            parser[key] = value
        for key, value in extra.items():
            parser[key] = value
        return parser

    def _network(self) -> torch.nn.Module:
        network = self.parser.get_parsed_content("network")
        try:  # tensors and plain containers only: a pickle that would import or call anything is refused
            state = torch.load(self.weights, map_location=self.device, weights_only=True)
        except pickle.UnpicklingError as err:
            reason = next((line.strip() for line in str(err).splitlines() if "unsupported" in line.lower()), "")
            raise ValueError(
                f"{self.weights}: refused: not a plain state dict of tensors (torch.load weights_only=True"
                + (f"; {reason}" if reason else "")
                + ")"
            ) from None
        if not isinstance(state, Mapping):
            raise ValueError(f"{self.weights}: not a state dict (holds a {type(state).__name__})")
        try:
            network.load_state_dict(state)
        except RuntimeError as err:
            detail = " ".join(str(err).split())
            raise ValueError(f"{self.weights}: weights do not fit the bundle's network: {detail[:300]}") from None
        return network.eval()

    def chain(self, modalities: Sequence[str]) -> Compose:
        """The bundle's ``preprocessing`` for the given modalities (its own ``modalities`` or a subset of them)."""
        key = tuple(modalities)
        if key not in self._chains:
            parser = self.parser if key == tuple(self.modalities) else self._parser(modalities=list(key))
            self._chains[key] = parser.get_parsed_content("preprocessing")
        return self._chains[key]
