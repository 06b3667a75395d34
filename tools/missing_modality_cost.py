"""What the fused model loses when the fMRI is missing, measured on a finished study.

For every finished fold job of the fused bundle in a study run folder, the job's trained weights predict its test fold
twice: with the MRI and the fMRI, as the study evaluated it, and with the MRI alone through the network's MRI-only
path (what ``neurofusion predict --allow-missing-fmri`` uses). Balanced accuracy of both, per job and averaged over
folds, and the share of test subjects whose predicted class stays the same; the 3D CNN's own figure on the same folds
and with the same transfer mode (from scratch, or its encoder from the same pretraining), where the study ran it, is
shown for comparison.

    python tools/missing_modality_cost.py runs/demo/study            # the demo's study (cohort "paired")
    python tools/missing_modality_cost.py RUN --cohort paired --bundle bundles/mri_fmri_fusion
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from pipeline.data.datasets import manifest_datalist
from pipeline.engine.metrics import classification_metrics
from pipeline.inference import InferenceBundle
from pipeline.study.runner import JOB_COLUMNS, Job, finished_jobs

REPO = Path(__file__).resolve().parents[1]
MODEL = "mri_fmri_fusion"


def study_overrides(run: Path, cohort: str, bundle_dir: Path) -> dict:
    """The study's bundle overrides for ``cohort`` (its ``study.yaml`` copy in the run folder) that the bundle's
    inference config has: training keys such as ``epochs`` are left out (the inference config refuses them)."""
    study = yaml.safe_load((run / "study.yaml").read_text())
    overrides = {**(study.get("overrides") or {}), **((study["cohorts"][cohort] or {}).get("overrides") or {})}
    inference = yaml.safe_load((bundle_dir / "configs" / "inference.yaml").read_text())
    return {key: value for key, value in overrides.items() if key.split("#")[0] in inference}


def model_inputs(bundle: InferenceBundle, manifest: Path) -> tuple[list[dict], list[int]]:
    """The test fold's subjects through the bundle's chain (weights do not enter), and their labels."""
    items = manifest_datalist(manifest, ["test"], ["mri", "fmri"], bundle.keys)
    chain = bundle.chain(["mri", "fmri"])
    return [chain(item) for item in items], [int(item["label"]) for item in items]


def probabilities(bundle: InferenceBundle, inputs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``[N, 3]`` with both modalities and with the MRI alone."""
    image, series = bundle.keys["mri"], bundle.keys["fmri"]
    both, alone = [], []
    with torch.no_grad():
        for item in inputs:
            mri, fmri = item[image][None].to(bundle.device), item[series][None].to(bundle.device)
            both.append(torch.softmax(bundle.network(mri, fmri), dim=1)[0].cpu().numpy())
            alone.append(torch.softmax(bundle.network(mri), dim=1)[0].cpu().numpy())
    return np.stack(both), np.stack(alone)


def measure(run: Path, cohort: str, bundle_dir: Path) -> pd.DataFrame:
    overrides = study_overrides(run, cohort, bundle_dir)
    rows, cache = [], {}
    jobs = [(d, row) for d, row in finished_jobs(run) if row["cohort"] == cohort and Path(row["model"]).name == MODEL]
    if not jobs:
        raise SystemExit(f"{run}: no finished {MODEL} job of cohort {cohort!r}")
    for job_dir, recorded in jobs:
        job = Job(**{key: recorded[key] for key in JOB_COLUMNS})
        fold_dir = run / job.fold_dir
        bundle = InferenceBundle(bundle_dir, job_dir / "ckpt" / "model.pt", overrides)
        if fold_dir not in cache:
            cache[fold_dir] = model_inputs(bundle, fold_dir / "manifest.csv")
        inputs, labels = cache[fold_dir]
        both, alone = probabilities(bundle, inputs)
        cnn = run / dataclasses.replace(job, model="mri_cnn3d").job_dir  # same fold, same transfer mode
        row = {
            "fold": fold_dir.name,
            "augment": recorded["augment"],
            "n_test": len(labels),
            "study": recorded["balanced_accuracy"],
            "mri+fmri": classification_metrics(labels, both)["balanced_accuracy"],
            "mri only": classification_metrics(labels, alone)["balanced_accuracy"],
            "3D CNN": json.loads((cnn / "done.json").read_text())["balanced_accuracy"]
            if (cnn / "done.json").is_file()
            else np.nan,
        }
        row["cost"] = row["mri+fmri"] - row["mri only"]
        row["same class"] = float(np.mean(both.argmax(axis=1) == alone.argmax(axis=1)))
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="study run folder (holds study.yaml and folds/)")
    parser.add_argument("--cohort", default="paired", help="cohort of the fused jobs (default: paired)")
    parser.add_argument("--bundle", type=Path, default=REPO / "bundles" / MODEL, help="the fused bundle folder")
    args = parser.parse_args(argv)
    table = measure(args.run, args.cohort, args.bundle)
    pd.set_option("display.width", 120)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\nbalanced accuracy, mean over folds (study: as the study evaluated it; mri+fmri: recomputed here)")
    summary = table.groupby("augment")[["study", "mri+fmri", "mri only", "cost", "3D CNN", "same class"]].mean()
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
