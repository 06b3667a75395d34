"""Atrophy twins: synthetic T1 pairs that differ only by temporal atrophy, the MRI bundle trained on them, and
where its saliency falls (the atrophied regions against random brain regions of the same size).

The explanation tests (``tests/inference/test_inference_explain.py``) and ``tools/saliency_methods.py`` share them.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from pipeline.bench.registration import planted_template_to_subject
from pipeline.data.atlas import load_atlas
from pipeline.engine import REPO_BUNDLES
from pipeline.engine.workflow import run_bundle
from pipeline.synth import ATROPHY_REGIONS, atrophy_mask
from pipeline.synth.anatomy import resample_nearest
from pipeline.synth.structural import sample_structural, synthesize_t1

__all__ = ["GRID", "PAIRS", "QC_LIMITS", "atrophy_masses", "atrophy_twins", "random_regions", "train_on_twins"]

GRID = {"mri_pixdim": [6.0, 6.0, 6.0], "mri_spatial_size": [24, 28, 24]}
QC_LIMITS = {"qc#mri#voxel_mm": [0.5, 8]}  # the twins are 6 mm scans
PAIRS = 8


def atrophy_twins(folder, pairs: int = PAIRS, voxel_mm: float = 6.0) -> pd.DataFrame:
    """T1 pairs that differ only by temporal atrophy: each pair shares head size, pose, bias field and noise, so the
    atrophy is the only signal a classifier can learn (the cohort writer also enlarges the ventricles)."""
    rows = []
    for pair in range(pairs):
        for diagnosis, atrophy in (("CN", 0.0), ("AD", 1.0)):
            rng = np.random.default_rng(pair)
            params = dataclasses.replace(
                sample_structural(rng, 0.0, 1.0, "site01"),
                medial_atrophy=0.8 * atrophy,
                lateral_atrophy=0.7 * atrophy,
                hippocampal_contraction=0.3 * atrophy,
            )
            name = f"sub-{pair:02d}{diagnosis.lower()}"
            nib.save(synthesize_t1(params, voxel_mm, rng), folder / f"{name}_T1w.nii.gz")
            split = "test" if pair == 0 else ("val" if pair == 1 else "train")
            rows.append({"subject_id": name, "diagnosis": diagnosis, "mri": f"{name}_T1w.nii.gz", "split": split})
    frame = pd.DataFrame(rows)
    frame.to_csv(folder / "manifest.csv", index=False)
    return frame


def train_on_twins(data: Path, bundle: Path, seed: int = 0) -> Path:
    """Write the atrophy twins into ``data`` and train a copy of the MRI bundle at ``bundle`` on them (its
    ``models/model.pt``); returns ``bundle``."""
    atrophy_twins(data)
    shutil.copytree(REPO_BUNDLES / "mri_cnn3d", bundle, ignore=shutil.ignore_patterns("models", "eval"))
    train = {**GRID, "epochs": 40, "batch_size": 4, "manifest": str(data / "manifest.csv"), "cache_rate": 1.0}
    run_bundle(
        bundle,
        ["train.yaml"],
        log_file=data / "train.log",
        output_dir=str(data / "eval"),
        ckpt_dir=str(bundle / "models"),
        seed=seed,
        **train,
    )
    return bundle


def random_regions(reference: nib.Nifti1Image, size: int, count: int, seed: int = 0) -> list[np.ndarray]:
    """Random brain regions of about ``size`` voxels on the grid of ``reference``: unions of AAL regions outside the
    atrophied ones, drawn in random order until the union holds ``size`` voxels, kept when within 15% of it."""
    atlas = load_atlas("AAL")
    labels = resample_nearest(np.asarray(atlas.image.dataobj), atlas.image.affine, reference.shape, reference.affine)
    candidates = [lab for name, lab in zip(atlas.names, atlas.labels) if name not in ATROPHY_REGIONS]
    candidates = [lab for lab in candidates if (labels == lab).any()]
    rng = np.random.default_rng(seed)
    regions = []
    for _ in range(100 * count):
        region = np.zeros(reference.shape, dtype=bool)
        for label in rng.permutation(candidates):
            if region.sum() >= size:
                break
            region |= labels == label
        if abs(int(region.sum()) - size) <= 0.15 * size:
            regions.append(region)
        if len(regions) == count:
            return regions
    raise AssertionError(f"fewer than {count} random regions of {size} voxels")


def twin_anatomy(reference: nib.Nifti1Image, pair: int = 0) -> nib.Nifti1Image:
    """``reference`` with its grid placed in template space through the twin's planted pose (rotation, shift, head
    size): the atlas regions then fall where the synthesis put them in this subject's head."""
    params = sample_structural(np.random.default_rng(pair), 0.0, 1.0, "site01")
    truth = {
        f"{key}_{i}": value[i]
        for key in ("rotation_deg", "translation_mm", "head_scale")
        for i in range(3)
        for value in [getattr(params, key)]
    }
    affine = np.linalg.inv(planted_template_to_subject(truth)) @ reference.affine
    return nib.Nifti1Image(np.zeros(reference.shape[:3], np.uint8), affine)


def atrophy_masses(saliency: np.ndarray, reference: nib.Nifti1Image, count: int = 20) -> tuple[float, np.ndarray]:
    """(saliency mass in the atrophied regions, its mass in each of ``count`` random brain regions of the same size),
    the regions in the held-out twin's own anatomy (``reference`` is the twin's T1)."""
    reference = twin_anatomy(reference)
    atrophied = atrophy_mask(reference)
    masses = [saliency[region].sum() for region in random_regions(reference, int(atrophied.sum()), count)]
    return float(saliency[atrophied].sum()), np.asarray(masses, dtype=float)
