"""Shared fixtures: a tiny synthetic BIDS cohort (real MNI anatomy, AAL labels) written once per session, and the
three bundles trained on it once per session (``trained_bundles``).

The suite runs in parallel test processes (pytest-xdist, ``-n auto --dist loadfile``: a module's tests, and so its
module-scoped fixtures, stay in one process). Each of them is pinned to a core of its own and computes with one
thread, as the study executor's workers do, so they share the cores without oversubscribing them; the studies the
tests run then see one core and run their fold jobs in their own process (no worker start-up per study), unless a
test asks for ``--jobs``. ``pytest -n 0`` runs everything in one process. Session fixtures are one per test process;
the T1 registrations and the trained bundles are kept in one folder for them all (:func:`shared_folder`), written under
a file lock by the first process that needs them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest
from filelock import FileLock

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


def shared_folder(tmp_path_factory, name: str) -> Path:
    """A folder of the session's: one for all its test processes when they run in parallel (their base folders
    share a parent, as pytest-xdist documents), else in the base folder."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if PARALLEL else base) / name
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session", autouse=True)
def registration_cache(tmp_path_factory) -> Path:
    """One cache of T1 registrations for the session (the bundles read ``NEUROFUSION_REGISTRATION_CACHE``, and
    subprocesses inherit it): each synthetic T1 is registered to MNI152 once, however many tests train on it."""
    folder = shared_folder(tmp_path_factory, "registration")  # writes are atomic
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


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and its content hash."""
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


class TrainedBundles:
    """The bundles, each trained once in the session when a test first asks for it: ``trained_bundles[name]`` is a
    copy of ``bundles/<name>`` in which ``python -m monai.bundle run --config_file configs/train.yaml`` ran on fold 0
    of the tiny cohort with :data:`TINY_OVERRIDES` (``models/``: ``model.pt``, ``model_inputs.json``,
    ``checkpoint.pt``; ``eval/``: ``training_log.csv``).

    Every test and test process reads the same folders: a test that writes into a bundle copies it first.
    """

    def __init__(self, root: Path, manifest: Path) -> None:
        self.root, self.manifest = root, manifest

    def __getitem__(self, name: str) -> Path:
        bundle = self.root / name
        with FileLock(self.root / f"{name}.lock"):  # the first test process to ask trains; the others wait
            if not bundle.is_dir():
                self._train(name, bundle)
        return bundle

    def _train(self, name: str, bundle: Path) -> None:
        staging = self.root / f"{name}.partial" / name  # named as the bundle: it is the working directory's
        shutil.rmtree(staging.parent, ignore_errors=True)
        shutil.copytree(REPO / "bundles" / name, staging, ignore=shutil.ignore_patterns("models", "eval"))
        args = cli_overrides({**TINY_OVERRIDES, "manifest": self.manifest})
        result = run_cli("-m", "monai.bundle", "run", "--config_file", "configs/train.yaml", *args, cwd=staging)
        assert result.returncode == 0, result.stderr[-3000:]
        files = listing(staging)
        staging.rename(bundle)
        staging.parent.rmdir()
        # recorded once the bundle is in place, atomically: another process's check never finds a record without it
        record = self.root / f"{name}.json.partial"
        record.write_text(json.dumps(files))
        record.rename(self.root / f"{name}.json")

    def check_unchanged(self) -> None:
        """Fail when a test wrote into, or deleted from, a trained bundle."""
        for record in self.root.glob("*.json"):
            name = record.stem
            assert listing(self.root / name) == json.loads(record.read_text()), f"a test changed the trained {name}"


@pytest.fixture(scope="session")
def trained_bundles(fold_dir, tmp_path_factory):
    """The bundles trained once for the whole session (:class:`TrainedBundles`), shared by its test processes."""
    bundles = TrainedBundles(
        shared_folder(tmp_path_factory, "trained_bundles"), fold_dir / "repeat-0_fold-0" / "manifest.csv"
    )
    yield bundles
    bundles.check_unchanged()


@pytest.fixture()
def corpus(tmp_path):
    """Good scans and a good manifest in ``tmp_path``, and the broken cases of ``tests.bad_inputs`` on demand."""
    from tests.bad_inputs import Corpus

    return Corpus(tmp_path)
