"""How much of the planted signal a synthetic (or any) cohort carries, measured with simple features.

Deep models trained briefly on small cohorts sit near chance; this script says whether that is the data or the
training. Two cross-validated logistic regressions, on the same preprocessing the bundles use:

- MRI: the share of dark (CSF-like) voxels in a central box of the preprocessed T1 (ventricle size);
- fMRI: the upper triangle of the ROI correlation matrix (functional connectivity).

Usage::

    python tools/signal_baselines.py runs/demo/cohort/manifest_mri_only.csv --modality mri --limit 150
    python tools/signal_baselines.py runs/demo/cohort/manifest_paired.csv --modality fmri
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.data.datasets import manifest_datalist
from pipeline.transforms import subject_transforms


def ventricle_features(items: list[dict]) -> np.ndarray:
    """Dark-voxel counts at three thresholds in the central box of each preprocessed T1."""
    chain = subject_transforms(["mri"])
    rows = []
    for item in items:
        image = chain(dict(item))["image"][0].numpy()
        x, y, z = (int(n * f) for n, f in zip(image.shape, (0.25, 0.25, 0.33)))
        box = image[x:-x, y:-y, z:-z]
        rows.append([(box < t).mean() for t in (0.3, 0.35, 0.4)])
    return np.array(rows)


def connectivity_features(items: list[dict]) -> np.ndarray:
    """Upper triangle of each run's ROI correlation matrix (empty ROIs give zeros)."""
    chain = subject_transforms(["fmri"], fmri={"timepoints": 10_000})
    rows = []
    for item in items:
        series = chain(dict(item))["series"].numpy()
        series = series[:, np.abs(series).sum(axis=0) > 0]  # drop the padding of the fixed-length step
        with np.errstate(invalid="ignore"):
            corr = np.nan_to_num(np.corrcoef(series))
        rows.append(corr[np.triu_indices(len(corr), 1)])
    return np.array(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest")
    parser.add_argument("--modality", choices=["mri", "fmri"], required=True)
    parser.add_argument("--limit", type=int, help="use the first N subjects")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    items = manifest_datalist(args.manifest, None, [args.modality])[: args.limit]
    labels = np.array([item["label"] for item in items])
    if args.modality == "mri":
        features, model = ventricle_features(items), LogisticRegression(max_iter=2000)
    else:
        features, model = connectivity_features(items), LogisticRegression(C=0.1, max_iter=3000)
    splitter = StratifiedKFold(args.folds, shuffle=True, random_state=0)
    scores = cross_val_score(
        make_pipeline(StandardScaler(), model), features, labels, cv=splitter, scoring="balanced_accuracy"
    )
    print(
        f"{args.modality} baseline on {len(items)} subjects: balanced accuracy {scores.mean():.3f} "
        f"(sd {scores.std(ddof=1):.3f} over {args.folds} folds; chance {1 / len(set(labels)):.3f})"
    )


if __name__ == "__main__":
    main()
