"""One subject through a trained bundle: QC, the bundle's own chain and network, explanations, outputs.

Per subject, a folder with ``prediction.json`` (probabilities, predicted class, model and weights, input hashes, QC
findings and warnings, timings), ``saliency.nii.gz`` (in the input MRI's space) and ``report.html``. A DICOM series
given as the MRI is converted first and kept there as ``mri_from_dicom.nii.gz``.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import list_data_collate
from monai.transforms import Compose, EnsureTyped, LoadImaged

import pipeline
from pipeline.data.atlas import load_atlas
from pipeline.data.timing import resolve_tr
from pipeline.engine.model_inputs import inputs_record
from pipeline.inference import explain, report
from pipeline.inference.bundle import InferenceBundle, file_sha256
from pipeline.inference.dicom import dicom_series_to_nifti
from pipeline.inference.qc import (
    FAIL,
    REGISTRATION_CHECK,
    Finding,
    QCError,
    data_checks,
    header_checks,
    raise_on_failure,
    registration_finding,
    warnings_of,
)
from pipeline.io import atomic_path, atomic_write_json, atomic_write_text
from pipeline.transforms.checks import CheckImageFiled, CheckImageValuesd
from pipeline.transforms.fmri_registration import BOLDRegistrationError
from pipeline.transforms.registration import SIMILARITY, RegistrationError, subject_affine

CONVERTED_MRI = "mri_from_dicom.nii.gz"
PREDICTION, SALIENCY, REPORT = "prediction.json", "saliency.nii.gz", "report.html"
#: every file :meth:`Predictor.predict` writes in a subject folder (what ``--force`` may replace)
OUTPUT_FILES = (PREDICTION, SALIENCY, REPORT, CONVERTED_MRI)
EMPTY_SALIENCY = "MRI saliency map is empty: no positive evidence for the predicted class"
MISSING_FMRI = "fMRI missing: MRI-only prediction of the fused model (--allow-missing-fmri)"
NO_INPUTS_RECORD = (
    "the weights have no record of the keys they were trained with ({name}): predicted with the bundle config's "
    "input keys, which may not be the model's"
)


@dataclass(frozen=True)
class Subject:
    """The inputs of one subject-session.

    Attributes:
        name: output folder name.
        mri: T1 NIfTI or DICOM series folder (None: none).
        fmri: 4D BOLD NIfTI (None: none).
        tr: TR in seconds (None: sidecar or header).
        tr_source: where ``tr`` came from, for messages (``"--tr"`` or ``"the manifest"``).
        confounds: fMRIPrep-style confounds TSV regressed from the ROI series (None: none).
        subject_id: the manifest's subject id.
        session_id: the manifest's session id.
    """

    name: str
    mri: Path | None = None
    fmri: Path | None = None
    tr: float | str | None = None
    tr_source: str = "the manifest"
    confounds: Path | None = None
    subject_id: str = ""
    session_id: str = ""

    def given(self) -> dict[str, Path]:
        """The images given, per modality."""
        return {m: Path(p) for m, p in (("mri", self.mri), ("fmri", self.fmri)) if p}


class Timer:
    """Wall time of named stages, in seconds."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started


def folder_sha256(folder: Path) -> str:
    """Hash of a folder's files (names and contents, in name order): the identity of a DICOM series."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):  # dcm2niix reads subfolders too
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + bytes.fromhex(file_sha256(path)))
    return digest.hexdigest()


#: chain steps that QC stands in for: the header and voxel checks of :mod:`pipeline.data.images` run as QC findings
_CHECKS = (CheckImageFiled, CheckImageValuesd)


def _load(chain: Compose, item: dict, sources: dict[str, str]) -> dict:
    """Apply the chain's loading steps: every image is read once, before QC looks at its voxels.

    Args:
        chain: the bundle's preprocessing.
        item: data key -> file.
        sources: data key -> the file (or DICOM folder) the user gave, for messages.
    """
    for step in chain.transforms:
        if isinstance(step, LoadImaged):
            try:
                item = step(item)
            except Exception as err:  # a header that parsed, a body that does not (truncated, corrupt)
                source = sources[step.keys[0]]
                raise QCError(f"{source}: refused by QC: file: {str(err).strip().splitlines()[-1]}") from None
    return item


def _finish(chain: Compose, loaded: dict) -> tuple[dict, dict]:
    """The rest of the chain after :func:`_load` and QC: the item with metadata (the MRI's grid affine) and the model
    input.

    The runs of steps between the loading and checking steps run in order, each as one ``Compose`` call, so the lazy
    spatial steps still resample once; the final ``EnsureTyped`` (plain tensors) is applied to a copy.
    """
    steps = chain.transforms
    if not isinstance(steps[-1], EnsureTyped):
        raise ValueError("the bundle's preprocessing must end with EnsureTyped (pipeline.transforms chains do)")
    item, start = loaded, 0
    for index, step in enumerate([*steps[:-1], None]):
        if step is None or isinstance(step, (LoadImaged, *_CHECKS)):
            if index > start:
                item = chain(item, start=start, end=index)
            start = index + 1
    return item, steps[-1](dict(item))


class Predictor:
    """Predict subjects with one bundle: weights loaded once, one subject at a time.

    Args:
        bundle: the loaded bundle.
        allow_missing_fmri: let the fused bundle predict from the MRI alone (flagged in every output).
    """

    def __init__(self, bundle: InferenceBundle, allow_missing_fmri: bool = False) -> None:
        self.bundle = bundle
        self.allow_missing_fmri = allow_missing_fmri

    def modalities(self, subject: Subject) -> list[str]:
        """The modalities used for ``subject``: the bundle's, or MRI alone for the fused bundle when allowed.

        Raises:
            ValueError: an input the bundle does not read, or one it needs is missing.
        """
        needed, given = self.bundle.modalities, subject.given()
        extra = sorted(set(given) - set(needed))
        if extra:
            raise ValueError(
                f"{subject.name}: bundle {self.bundle.root.name} does not read {extra[0]} (it reads "
                f"{', '.join(needed)})"
            )
        missing = [m for m in needed if m not in given]
        if missing == ["fmri"] and "mri" in needed:
            if not self.allow_missing_fmri:
                raise ValueError(
                    f"{subject.name}: no fMRI; the fused bundle predicts from the MRI alone only with "
                    "--allow-missing-fmri (accuracy cost: see the bundle's docs/README.md)"
                )
            return ["mri"]
        if missing:
            raise ValueError(f"{subject.name}: bundle {self.bundle.root.name} needs {missing[0]}")
        return list(needed)

    def check_headers(self, subject: Subject) -> list[Finding]:
        """Header QC of a subject's NIfTI inputs (cheap: run it over a batch before predicting any); a DICOM folder
        is checked once converted, by :meth:`predict`.

        Raises:
            QCError: a hard failure, naming the file.
        """
        used, given = self.modalities(subject), subject.given()
        nifti = [m for m in used if not given[m].is_dir()]
        findings = [
            f for m in nifti for f in header_checks(m, given[m], self.bundle.qc[m], subject.tr, subject.tr_source)
        ]
        raise_on_failure(findings, {m: str(p) for m, p in given.items()})
        return findings

    def predict(self, subject: Subject, folder: Path) -> dict:
        """Write ``prediction.json``, ``saliency.nii.gz`` (MRI) and ``report.html`` of ``subject`` into ``folder``
        (created) and return the prediction record.

        Raises:
            QCError: the inputs fail QC (nothing is predicted).
            ValueError: inputs the bundle cannot use.
        """
        timer = Timer()
        folder.mkdir(parents=True, exist_ok=True)
        used = self.modalities(subject)
        sources = {m: str(p) for m, p in subject.given().items()}
        with timer("convert"):
            paths = self._nifti_inputs(subject, folder)
        with timer("qc"):
            findings = [
                f for m in used for f in header_checks(m, paths[m], self.bundle.qc[m], subject.tr, subject.tr_source)
            ]
            raise_on_failure(findings, sources)
        chain = self.bundle.chain(used)
        item = self._item(subject, paths, used)
        with timer("load"):
            loaded = _load(chain, item, {self.bundle.keys[m]: sources[m] for m in used})
        with timer("qc"):
            findings += self._data_checks(loaded, used, sources)
            raise_on_failure(findings, sources)
        with timer("preprocess"):
            with_meta, model_input = self._preprocess(chain, loaded, sources)
        findings += self._registration_checks(with_meta, used)
        with timer("predict"):
            probabilities = self._probabilities(model_input, used)
        predicted = int(np.argmax(probabilities))
        with timer("saliency"):
            saliency = self._saliency(model_input, with_meta, used, predicted, loaded)
        with timer("roi importance"):
            rois = self._roi_importance(model_input, used, predicted)
        with timer("hash"):
            record = self._record(subject, item, used, findings, probabilities, rois)
        if saliency is not None and not saliency[0].any():
            record["warnings"].append(f"{EMPTY_SALIENCY} ({self.bundle.saliency_method})")
        figure = self._write_saliency(folder, record, saliency, timer)
        record["timings_seconds"] = {k: round(v, 4) for k, v in timer.seconds.items()}
        atomic_write_text(folder / REPORT, report.render(record, figure))
        atomic_write_json(folder / PREDICTION, record)
        return record

    # --- steps ------------------------------------------------------------------------------------------

    @staticmethod
    def _nifti_inputs(subject: Subject, folder: Path) -> dict[str, Path]:
        paths = subject.given()
        if "mri" in paths and paths["mri"].is_dir():
            paths["mri"] = dicom_series_to_nifti(paths["mri"], folder / CONVERTED_MRI)
        return paths

    def _item(self, subject: Subject, paths: dict[str, Path], used: list[str]) -> dict:
        item = {self.bundle.keys[m]: str(paths[m]) for m in used}
        if "fmri" in used:
            item["tr"] = resolve_tr(paths["fmri"], subject.tr, subject.tr_source)
            item["confounds"] = str(subject.confounds or "")
        return item

    def _data_checks(self, loaded: dict, used: list[str], sources: dict[str, str]) -> list[Finding]:
        atlas = self.bundle.setting("atlas", "AAL")
        findings = []
        for m in used:
            image = loaded[self.bundle.keys[m]]
            array = image.numpy()[0] if m == "mri" else image.numpy()
            findings += data_checks(m, array, image.affine.numpy(), self.bundle.qc[m], atlas, sources[m])
        return findings

    def _preprocess(self, chain: Compose, loaded: dict, sources: dict[str, str]) -> tuple[dict, dict]:
        """:func:`_finish`, a T1 that cannot be registered refused as QC refuses."""
        try:
            return _finish(chain, loaded)
        except Exception as err:
            failure = RegistrationError.within(err)
            if failure is None:
                raise
            modality = "fmri" if isinstance(failure, BOLDRegistrationError) else "mri"
            limit = "" if modality == "fmri" else " (mri_registration_min_similarity)"
            raise QCError(f"{sources[modality]}: refused by QC: {failure.reason}{limit}") from None

    def _registration_checks(self, with_meta: dict, used: list[str]) -> list[Finding]:
        if "mri" not in used:
            return []
        similarity = with_meta[self.bundle.keys["mri"]].meta.get(SIMILARITY)
        return [] if similarity is None else [registration_finding(float(similarity), self.bundle.qc["mri"])]

    def _probabilities(self, model_input: dict, used: list[str]) -> np.ndarray:
        """The bundle's prepare_batch, inferer and post-processing, as its evaluator applies them."""
        bundle, batch = self.bundle, list_data_collate([model_input])
        with torch.no_grad():
            if used == bundle.modalities:
                prepared = bundle.prepare_batch(batch, bundle.device)
                args, kwargs = prepared[2:4] if len(prepared) == 4 else ((), {})
                logits = bundle.inferer(prepared[0], bundle.network, *args, **kwargs)
            else:  # the fused network's MRI-only path
                logits = bundle.inferer(batch[bundle.keys["mri"]].to(bundle.device), bundle.network)
        return bundle.postprocessing({"pred": logits[0]})["pred"].detach().cpu().numpy()

    def _saliency(self, model_input: dict, with_meta: dict, used: list[str], predicted: int, loaded: dict):
        """The saliency map on the input MRI's grid and that MRI as loaded (for the report), or None."""
        if "mri" not in used:
            return None
        key, device = self.bundle.keys["mri"], self.bundle.device
        series = model_input[self.bundle.keys["fmri"]].to(device) if len(used) == 2 else None
        image, method = model_input[key].to(device), self.bundle.saliency_method
        grid = explain.mri_saliency(self.bundle.network, image, predicted, series, method)
        mri = loaded[key]  # the chain's transforms returned new tensors: this is the scan as read
        affine = mri.affine.numpy()
        model_affine = subject_affine(with_meta[key])  # a registered grid lies in template space: back to the T1's
        return explain.to_input_space(grid, model_affine, affine, mri.shape[1:]), mri.numpy()[0], affine

    def _roi_importance(self, model_input: dict, used: list[str], predicted: int) -> list[dict] | str:
        """ROI importance sorted from the most supportive ROI, or why there is none."""
        if "fmri" not in used:
            return "No fMRI input: no ROI importance."
        atlas = load_atlas(str(self.bundle.setting("atlas", "AAL")))
        sequence = self.bundle.setting("fmri_sequence", "roi")
        rows = explain.roi_rows(sequence, len(atlas.names))
        if rows is None:
            return f"fMRI sequence '{sequence}' has no ROIs: no ROI importance."
        device, network = self.bundle.device, self.bundle.network
        image = model_input[self.bundle.keys["mri"]].to(device) if "mri" in used else None
        classify = explain.series_classifier(network, image)
        series = model_input[self.bundle.keys["fmri"]].to(device)
        drops = explain.roi_importance(classify, series, rows, predicted)
        return [{"roi": atlas.names[i], "importance": float(drops[i])} for i in np.argsort(-drops, kind="stable")]

    def _record(self, subject, item, used, findings, probabilities, rois) -> dict:
        bundle = self.bundle
        missing = [m for m in bundle.modalities if m not in used]
        flags = [MISSING_FMRI] if missing else []
        if bundle.model_inputs_record is None:
            flags.append(NO_INPUTS_RECORD.format(name=inputs_record(bundle.weights).name))
        return {
            "subject": subject.name,
            "subject_id": subject.subject_id or subject.name,
            "session_id": subject.session_id,
            "predicted_class": bundle.class_names[int(np.argmax(probabilities))],
            "probabilities": {name: float(p) for name, p in zip(bundle.class_names, probabilities)},
            "missing_modalities": missing,
            "warnings": flags + warnings_of(findings),
            "model": {
                "name": bundle.name,
                "bundle": str(bundle.root),
                "bundle_version": bundle.version,
                "weights": str(bundle.weights.resolve()),
                "weights_sha256": bundle.weights_sha256,
                "inputs": bundle.model_inputs,
                "inputs_record": str(bundle.model_inputs_record) if bundle.model_inputs_record else None,
            },
            "inputs": self._inputs(subject, item.get("tr")),
            "qc": {"passed": all(f.status != FAIL for f in findings), "findings": [f.as_dict() for f in findings]},
            "registration": self._registration(findings, used),
            "saliency": SALIENCY if "mri" in used else None,
            "saliency_method": bundle.saliency_method if "mri" in used else None,
            "saliency_description": explain.SALIENCY_METHODS[bundle.saliency_method] if "mri" in used else None,
            "fmri_roi_importance": rois if isinstance(rois, list) else [],
            "fmri_roi_importance_note": rois
            if isinstance(rois, str)
            else f"occlusion: {explain.OCCLUSION_FILL[self.bundle.setting('fmri_sequence', 'roi')]}",
            "research_use_only": report.RESEARCH_ONLY,
            "neurofusion_version": pipeline.__version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def _registration(self, findings: list[Finding], used: list[str]) -> dict | None:
        """How the T1 reached the model grid: the method, the template and the similarity to it."""
        if "mri" not in used:
            return None
        method = self.bundle.setting("mri_registration", "none")
        similarity = next((f.value for f in findings if f.check == REGISTRATION_CHECK), None)
        template = "MNI152 2009 (nilearn), ANTs affine after N4" if method == "affine" else None
        return {"method": method, "template": template, "similarity": float(similarity) if similarity else None}

    @staticmethod
    def _inputs(subject: Subject, tr: float | None) -> dict:
        inputs = {}
        for m, given in subject.given().items():
            entry = {"path": str(given.resolve())}
            if given.is_dir():
                entry.update(format="DICOM series", sha256=folder_sha256(given), converted=CONVERTED_MRI)
            else:
                entry.update(format="NIfTI", sha256=file_sha256(given))
            if m == "fmri":
                entry["tr_seconds"] = tr
                if subject.confounds:
                    entry["confounds"] = str(Path(subject.confounds).resolve())
            inputs[m] = entry
        return inputs

    @staticmethod
    def _write_saliency(folder: Path, record: dict, saliency: tuple | None, timer: Timer) -> bytes | None:
        """Write ``saliency.nii.gz`` and return the report's slice figure (PNG), or None without an MRI."""
        if saliency is None:
            return None
        grid, mri, affine = saliency
        with timer("saliency file"):
            image = nib.Nifti1Image(np.rint(grid * 255).astype(np.uint8), affine)
            image.header.set_slope_inter(1 / 255, 0)  # [0, 1] in 8 bits: a quarter of float32's size and time
            image.header.set_xyzt_units("mm")
            note = "; fMRI missing" if record["missing_modalities"] else ""
            image.header["descrip"] = f"neurofusion saliency, class {record['predicted_class']}{note}".encode()[:80]
            with atomic_path(folder / SALIENCY, suffix=".nii.gz") as tmp:
                nib.save(image, str(tmp))
        with timer("report figure"):
            return report.slices_png(mri, affine, grid)
