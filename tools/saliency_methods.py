"""How well each MRI saliency method (bundle key ``saliency_method``) points at atrophy, on synthetic twins.

The MRI bundle is trained on the atrophy twins of pipeline.bench.twins (T1 pairs that differ only by temporal atrophy,
6 mm, as tests/inference/test_inference_explain.py trains it), then predicts the held-out atrophied twin with each
method. Printed per method: the saliency mass in the atrophied regions over the mean and over the 90th percentile of
its mass in 20 random brain regions of the same size, in the twin's own anatomy (the test's criterion: above 1
passes), and the time of the map on the model grid (the ``saliency`` stage of ``prediction.json``).

    python tools/saliency_methods.py                 # seed 0, as the test
    python tools/saliency_methods.py --seeds 0 1 2   # one training per seed
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.bench.twins import GRID, QC_LIMITS, atrophy_masses, train_on_twins
from pipeline.inference import InferenceBundle, Predictor, Subject, explain


def measure(seed: int, work: Path) -> list[dict]:
    """Train on the twins with ``seed`` and explain the held-out atrophied twin with every method."""
    data = work / f"twins-{seed}"
    data.mkdir()
    bundle = train_on_twins(data, work / f"bundle-{seed}", seed)
    t1 = data / "sub-00ad_T1w.nii.gz"
    rows = []
    for method in explain.SALIENCY_METHODS:
        predictor = Predictor(InferenceBundle(bundle, None, {**GRID, **QC_LIMITS, "saliency_method": method}))
        folder = work / f"out-{seed}-{method}"
        record = predictor.predict(Subject("sub-00ad", t1), folder)
        saliency = np.asarray(nib.load(folder / "saliency.nii.gz").dataobj)
        mass, masses = atrophy_masses(saliency, nib.load(t1))
        rows.append(
            {
                "seed": seed,
                "method": method,
                "predicted": record["predicted_class"],
                "over_mean_random": mass / max(float(masses.mean()), 1e-12),
                "over_p90_random": mass / max(float(np.percentile(masses, 90)), 1e-12),
                "seconds": record["timings_seconds"]["saliency"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default: 0, as the test)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        rows = [row for seed in args.seeds for row in measure(seed, Path(work))]
    print(f"\n{'method':<14}{'atrophied / mean random':>26}  {'atrophied / p90 random':>24}  {'map seconds':>18}")
    for method in explain.SALIENCY_METHODS:
        mine = [r for r in rows if r["method"] == method]
        cells = [", ".join(f"{r[key]:.2f}" for r in mine) for key in ("over_mean_random", "over_p90_random", "seconds")]
        print(f"{method:<14}{cells[0]:>26}  {cells[1]:>24}  {cells[2]:>18}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
