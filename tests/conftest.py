"""Shared fixtures: a tiny synthetic BIDS cohort (real MNI anatomy, AAL labels) written once per session.

The suite runs in parallel test processes (pytest-xdist, ``-n auto --dist loadfile``: a module's tests, and so its
module-scoped fixtures, stay in one process). Each of them is pinned to a core of its own and computes with one
thread, as the study executor's workers do, so they share the cores without oversubscribing them; the studies the
tests run then see one core and run their fold jobs in their own process (no worker start-up per study), unless a
test asks for ``--jobs``. ``pytest -n 0`` runs everything in one process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest

REPO = Path(__file__).resolve().parents[1]
PARALLEL = "PYTEST_XDIST_WORKER" in os.environ
if PARALLEL:  # before torch loads; subprocesses (bundle runs, CLI) inherit both
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = "1"
    if hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cores[int(os.environ["PYTEST_XDIST_WORKER"].lstrip("gw")) % len(cores)]})
NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"

# bundle keys that make a tiny-profile cohort train in seconds
TINY_OVERRIDES = {
    "epochs": 2,
    "batch_size": 2,
    "mri_pixdim": [6.0, 6.0, 6.0],
    "mri_spatial_size": [24, 28, 24],
    "fmri_timepoints": 32,
}


@pytest.fixture(scope="session", autouse=True)
def registration_cache(tmp_path_factory) -> Path:
    """One cache of T1 registrations for the session (the bundles read ``NEUROFUSION_REGISTRATION_CACHE``, and
    subprocesses inherit it): each synthetic T1 is registered to MNI152 once, however many tests train on it."""
    base = tmp_path_factory.getbasetemp()
    # one folder for all the session's test processes (their base folders share a parent); writes are atomic
    folder = base.parent / "registration" if PARALLEL else base / "registration"
    folder.mkdir(exist_ok=True)
    previous = os.environ.get("NEUROFUSION_REGISTRATION_CACHE")
    os.environ["NEUROFUSION_REGISTRATION_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("NEUROFUSION_REGISTRATION_CACHE", None)
    else:
        os.environ["NEUROFUSION_REGISTRATION_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """12 paired subjects (4 CN / 4 MCI / 4 AD) + 3 MRI-only, tiny profile; returns the cohort folder."""
    from pipeline.synth import write_cohort

    out = tmp_path_factory.mktemp("cohort") / "bids"
    write_cohort(out, n_cn=4, n_mci=4, n_ad=4, n_mri_only=3, seed=0, profile="tiny", progress=False)
    return out


@pytest.fixture(scope="session")
def fold_dir(tiny_cohort, tmp_path_factory) -> Path:
    """Fold manifests of the paired tiny cohort (2 folds, validation carved from training)."""
    out = tmp_path_factory.mktemp("folds")
    from pipeline.cli import main

    assert (
        main(
            [
                "split",
                str(tiny_cohort / "manifest_paired.csv"),
                "--folds",
                "2",
                "--val-fraction",
                "0.34",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def cli_overrides(overrides: dict) -> list[str]:
    """Bundle overrides as ``python -m monai.bundle run`` arguments."""
    args = []
    for key, value in overrides.items():
        args += [f"--{key}", str(value).replace(" ", "")]
    return args


def run_cli(*args: str, cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a command with this interpreter's environment, capturing output."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def corpus(tmp_path):
    """Good scans and a good manifest in ``tmp_path``, and the broken cases of ``tests.bad_inputs`` on demand."""
    from tests.bad_inputs import Corpus

    return Corpus(tmp_path)
