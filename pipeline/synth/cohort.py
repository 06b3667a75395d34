"""Write a synthetic CN / MCI / AD cohort as a BIDS dataset plus neurofusion manifests."""

from __future__ import annotations

import csv
import functools
import json
import math
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from pipeline.synth.anatomy import aal_atlas, antialias_sigma_mm, template_space
from pipeline.synth.functional import pose_centre_mm, sample_bold_pose, sample_functional, synthesize_bold
from pipeline.synth.profiles import SynthProfile, get_profile
from pipeline.synth.structural import SITE_T1, sample_structural, synthesize_t1

DIAGNOSES = ("CN", "MCI", "AD")
SITES = tuple(SITE_T1)
MANIFEST_COLUMNS = ("subject_id", "session_id", "diagnosis", "mri", "fmri", "tr", "age", "sex", "site")

#: Age (mean, SD) in years per diagnosis: overlapping, as in ADNI.
AGE = {"CN": (72.0, 6.0), "MCI": (74.0, 6.0), "AD": (75.0, 7.0)}
#: Latent severities (mean, SD) per diagnosis: MRI mostly separates AD, fMRI mostly separates CN from MCI/AD.
STRUCTURAL_SEVERITY = {"CN": (0.05, 0.15), "MCI": (0.3, 0.2), "AD": (0.8, 0.2)}
FUNCTIONAL_SEVERITY = {"CN": (0.1, 0.2), "MCI": (0.55, 0.25), "AD": (0.75, 0.25)}

_PAIRED, _MRI_ONLY = 0, 1  # random streams: adding subjects of one kind never changes the other


@dataclass(frozen=True)
class _Subject:
    label: str
    diagnosis: str
    paired: bool
    index: int

    @property
    def participant_id(self) -> str:
        return f"sub-{self.label}"


def _plan(n_cn: int, n_mci: int, n_ad: int, n_mri_only: int) -> list[_Subject]:
    """Paired subjects ``sub-001``... in CN, MCI, AD blocks, then MRI-only ``sub-m0001``... dealt round-robin
    (CN, MCI, AD, CN, ...), so the split is as even as possible and adding subjects never relabels earlier ones."""
    paired = [d for d, n in zip(DIAGNOSES, (n_cn, n_mci, n_ad)) for _ in range(n)]
    mri_only = [DIAGNOSES[i % 3] for i in range(n_mri_only)]
    width = max(3, len(str(len(paired))))
    width_m = max(4, len(str(len(mri_only))))
    return [_Subject(f"{i + 1:0{width}d}", d, True, i) for i, d in enumerate(paired)] + [
        _Subject(f"m{i + 1:0{width_m}d}", d, False, i) for i, d in enumerate(mri_only)
    ]


def _latent(rng: np.random.Generator, table: dict, diagnosis: str, shared: float) -> float:
    mean, sd = table[diagnosis]
    return float(np.clip(mean + sd * (0.6 * shared + 0.8 * rng.standard_normal()), 0.0, 1.5))


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf8")


def _synthesize_subject(
    root: Path, subject: _Subject, seed: int, profile: SynthProfile, structural_effect: float, functional_effect: float
) -> tuple[dict, dict]:
    """Write one subject's images and sidecars; return its manifest row and ground-truth record."""
    stream = _PAIRED if subject.paired else _MRI_ONLY
    rng = np.random.default_rng([seed, stream, subject.index, 0])
    age = float(np.clip(rng.normal(*AGE[subject.diagnosis]), 55.0, 95.0))
    sex = ("F", "M")[int(rng.integers(2))]
    site = SITES[int(rng.integers(len(SITES)))]
    shared = float(rng.standard_normal())  # one disease process drives both modalities
    s_struct = _latent(rng, STRUCTURAL_SEVERITY, subject.diagnosis, shared)
    s_func = _latent(rng, FUNCTIONAL_SEVERITY, subject.diagnosis, shared)
    sid = subject.participant_id
    anat = root / sid / "anat"
    anat.mkdir(parents=True)
    structural = sample_structural(rng, s_struct, structural_effect, site)
    nib.save(synthesize_t1(structural, profile.t1_voxel_mm, rng), anat / f"{sid}_T1w.nii.gz")
    _write_json(
        anat / f"{sid}_T1w.json",
        {"MagneticFieldStrength": 3, "Manufacturer": "neurofusion.synth", "SyntheticData": True},
    )
    row = {
        "subject_id": sid,
        "session_id": "",
        "diagnosis": subject.diagnosis,
        "mri": f"{sid}/anat/{sid}_T1w.nii.gz",
        "fmri": "",
        "tr": "",
        "age": f"{age:.1f}",
        "sex": sex,
        "site": site,
    }
    truth = {
        "participant_id": sid,
        "diagnosis": subject.diagnosis,
        "paired": subject.paired,
        "structural_severity": s_struct,
        "functional_severity": s_func,
        **structural.as_record(),
    }
    if subject.paired:
        bold_rng = np.random.default_rng([seed, stream, subject.index, 1])
        functional = sample_functional(bold_rng, s_func, functional_effect, site)
        # the run's head pose: the T1's plus a small motion, from a stream of its own (the signals do not change)
        pose = sample_bold_pose(np.random.default_rng([seed, stream, subject.index, 2]), structural)
        func = root / sid / "func"
        func.mkdir()
        name = f"{sid}_task-rest_bold"
        img = synthesize_bold(functional, profile.fmri_voxel_mm, profile.n_volumes, profile.tr, bold_rng, pose)
        nib.save(img, func / f"{name}.nii.gz")
        _write_json(func / f"{name}.json", {"RepetitionTime": profile.tr, "TaskName": "rest", "SyntheticData": True})
        row.update(fmri=f"{sid}/func/{name}.nii.gz", tr=str(float(profile.tr)))
        truth.update(functional.as_record(), **pose.as_record())
    return row, truth


def _write_table(path: Path, rows: list[dict], columns, delimiter: str = ",") -> None:
    with path.open("w", newline="", encoding="utf8") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=list(columns), delimiter=delimiter, lineterminator="\n", extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(rows)


def _flatten(record: dict) -> dict:
    flat = {}
    for key, value in record.items():
        if isinstance(value, list):
            flat.update({f"{key}_{i}": round(v, 6) for i, v in enumerate(value)})
        elif isinstance(value, float):
            flat[key] = round(value, 6)
        else:
            flat[key] = value
    return flat


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("neurofusion")
    except PackageNotFoundError:
        return "unknown"


def _write_dataset_files(root: Path, rows: list[dict], truths: list[dict], settings: dict) -> None:
    """dataset_description.json, README, participants.tsv/json, .bidsignore and the ground truth table."""
    _write_json(
        root / "dataset_description.json",
        {
            "Name": f"neurofusion synthetic cohort (profile {settings['profile']}, seed {settings['seed']})",
            "BIDSVersion": "1.8.0",
            "DatasetType": "raw",
            "License": "CC0",
            "GeneratedBy": [
                {
                    "Name": "neurofusion.synth",
                    "Version": _package_version(),
                    "Description": "Synthetic T1w and resting-state BOLD from MNI152 anatomy and the AAL "
                    "atlas with known, controllable disease effects",
                }
            ],
        },
    )
    (root / "README").write_text(_README.format(**settings), encoding="utf8")
    participants = [{"participant_id": r["subject_id"], **r} for r in rows]
    _write_table(
        root / "participants.tsv", participants, ("participant_id", "diagnosis", "age", "sex", "site"), delimiter="\t"
    )
    _write_json(root / "participants.json", _PARTICIPANTS_JSON)
    (root / ".bidsignore").write_text("manifest*.csv\nsynth_truth.tsv\n", encoding="utf8")
    flat = [_flatten(t) for t in truths]
    columns = list(dict.fromkeys(key for record in flat for key in record))
    _write_table(root / "synth_truth.tsv", flat, columns, delimiter="\t")


def _write_manifests(root: Path, rows: list[dict]) -> Path:
    _write_table(root / "manifest.csv", rows, MANIFEST_COLUMNS)
    paired = [r for r in rows if r["fmri"]]
    mri_only = [r for r in rows if not r["fmri"]]
    if paired and mri_only:
        _write_table(root / "manifest_paired.csv", paired, MANIFEST_COLUMNS)
        _write_table(root / "manifest_mri_only.csv", mri_only, MANIFEST_COLUMNS)
    return root / "manifest.csv"


def _check_arguments(counts: dict[str, int], seed, structural_effect, functional_effect) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if sum(counts.values()) == 0:
        raise ValueError("the cohort is empty: ask for at least one subject")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    for name, value in (("structural_effect", structural_effect), ("functional_effect", functional_effect)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _prepare(profile: SynthProfile, paired: bool) -> None:
    """Load and cache the template arrays up front (a few seconds, once per process and resolution)."""
    template_space(antialias_sigma_mm(profile.t1_voxel_mm))
    if paired:
        template_space(antialias_sigma_mm(profile.fmri_voxel_mm))
        aal_atlas()
        pose_centre_mm()


def _for_each_subject(synthesize, subjects: list[_Subject], profile: SynthProfile, workers: int):
    """``synthesize(subject)`` of every subject, in order: here, or in ``workers`` spawned processes (each seeds
    its subjects from their own indices, so the cohort is the same)."""
    paired = any(subject.paired for subject in subjects)
    if workers <= 1 or len(subjects) < 2:
        _prepare(profile, paired)
        yield from map(synthesize, subjects)
        return
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(subjects)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_prepare,
        initargs=(profile, paired),
    )
    try:
        yield from pool.map(synthesize, subjects, chunksize=4)
    finally:  # a failure or Ctrl-C: the subjects not started yet are dropped
        pool.shutdown(cancel_futures=True)


def _check_destination(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: output folder exists and is not empty; choose a new folder or remove it")


def write_cohort(
    out_dir,
    n_cn: int = 10,
    n_mci: int = 10,
    n_ad: int = 9,
    n_mri_only: int = 0,
    seed: int = 0,
    profile: str | SynthProfile = "demo",
    structural_effect: float = 1.0,
    functional_effect: float = 1.0,
    progress: bool = True,
    workers: int = 1,
) -> Path:
    """Write a synthetic BIDS cohort with manifests and return the path of ``manifest.csv``.

    Paired subjects (``sub-001``...) get a T1w and a resting-state BOLD run; MRI-only subjects
    (``sub-m0001``...) get a T1w only and are split evenly across CN/MCI/AD. The dataset is written into a
    temporary sibling folder and renamed into place at the end, so a failure leaves no half-written cohort.
    The same seed gives identical images and manifests; each subject draws from its own generator seeded by
    ``(seed, kind, index)``, so adding subjects does not change earlier ones.

    Args:
        out_dir: destination folder; must not exist or be empty.
        n_cn: paired cognitively normal subjects.
        n_mci: paired MCI subjects.
        n_ad: paired AD subjects.
        n_mri_only: MRI-only subjects (split evenly across diagnoses).
        seed: random seed.
        profile: a key of ``PROFILES`` (``tiny``, ``demo``, ``full``) or a ``SynthProfile``.
        structural_effect: multiplier of the MRI disease effects (atrophy, ventricles); 0 removes them.
        functional_effect: multiplier of the fMRI disease effects (DMN coupling loss); 0 removes them.
        progress: show a progress bar over subjects.
        workers: processes synthesising subjects at once (the cohort does not depend on it).

    Raises:
        ValueError: bad arguments, or ``out_dir`` exists and is not empty.
    """
    counts = {"n_cn": n_cn, "n_mci": n_mci, "n_ad": n_ad, "n_mri_only": n_mri_only}
    _check_arguments(counts, seed, structural_effect, functional_effect)
    settings_profile = get_profile(profile)
    out = Path(out_dir).expanduser().resolve()
    _check_destination(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        subjects = _plan(n_cn, n_mci, n_ad, n_mri_only)
        synthesize = functools.partial(
            _synthesize_subject,
            tmp,
            seed=int(seed),
            profile=settings_profile,
            structural_effect=float(structural_effect),
            functional_effect=float(functional_effect),
        )
        written = _for_each_subject(synthesize, subjects, settings_profile, workers)
        bar = tqdm(written, total=len(subjects), desc="synth", unit="subject", disable=not progress)
        rows, truths = map(list, zip(*bar))
        settings = {
            "profile": settings_profile.name,
            "seed": int(seed),
            "structural_effect": structural_effect,
            "functional_effect": functional_effect,
            **counts,
        }
        _write_dataset_files(tmp, rows, truths, settings)
        _write_manifests(tmp, rows)
        _check_destination(out)
        if out.exists():
            out.rmdir()
        os.chmod(tmp, 0o755)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "manifest.csv"


_README = """\
neurofusion synthetic cohort
============================

THIS DATASET IS SYNTHETIC. No image comes from a person; nothing here has clinical meaning.

What is real: the anatomy is the MNI152 2009 template (T1, tissue probabilities, brain mask, shipped with
nilearn) and the regions are the AAL atlas (116 labels). What is simulated: per-subject disease effects
(graded medial/lateral temporal grey-matter atrophy and ventricle enlargement in the T1; weakened
default-mode and hippocampal-DMN coupling in the resting-state BOLD), and nuisance (head size, small
rigid misalignment, bias field, Rician noise, intensity scaling, drift, thermal noise). Neither image is in
MNI space: the T1 lies in its own pose, and the BOLD run, on a scanner field of view of its own, in the T1's
pose plus a small motion between the acquisitions.

Purpose: exercise the neurofusion pipeline end to end and test whether a model recovers known effects.

Settings: profile {profile}, seed {seed}, structural_effect {structural_effect}, functional_effect
{functional_effect}; paired CN/MCI/AD = {n_cn}/{n_mci}/{n_ad}, MRI-only = {n_mri_only}.
Ground truth per subject (latent severities, sampled parameters): synth_truth.tsv; the T1 pose is
head_scale_*, rotation_deg_*, translation_mm_*, the BOLD pose head_scale_*, bold_rotation_deg_*,
bold_translation_mm_* (template mm -> scanner mm: x = R S (q - c) + c + t, R from "xyz" Euler angles in
degrees, c the MNI152 brain mask's centre).
neurofusion manifests (paths relative to this folder): manifest.csv (and manifest_paired.csv,
manifest_mri_only.csv when both kinds are present).
"""

_PARTICIPANTS_JSON = {
    "participant_id": {
        "Description": "BIDS subject label: sub-001... paired (T1w + rest BOLD), sub-m0001... MRI-only (T1w)"
    },
    "diagnosis": {
        "Description": "Simulated diagnostic group",
        "Levels": {"CN": "cognitively normal", "MCI": "mild cognitive impairment", "AD": "Alzheimer's disease"},
    },
    "age": {"Description": "Simulated age at scan", "Units": "year"},
    "sex": {"Description": "Simulated sex", "Levels": {"F": "female", "M": "male"}},
    "site": {
        "Description": "Simulated acquisition site (differs in noise and bias field)",
        "Levels": {site: f"simulated scanner {k + 1}" for k, site in enumerate(SITES)},
    },
}
