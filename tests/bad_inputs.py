"""A corpus of broken inputs, written by the tests into a folder: scans, manifests and study YAMLs that every entry
point must refuse with one message naming the file, row or key and the problem.

Each case is a name, the words its refusal must contain and whether it can be seen from the header alone (commands
that read no voxels, such as ``split``, refuse only those). :class:`Corpus` writes a case on demand next to a small
set of good files: a T1, a BOLD run with its TR in the header, and a manifest of twelve subjects (four per class) that
every entry point accepts, so a refusal is due to the case and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np


def _grid(voxel_mm: float) -> np.ndarray:
    """An affine of ``voxel_mm`` voxels from the corner of the MNI brain (the AAL atlas overlaps it)."""
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = (-90.0, -126.0, -72.0)
    return affine


T1_SHAPE, T1_AFFINE = (30, 36, 30), _grid(6.0)
BOLD_SHAPE, BOLD_AFFINE = (12, 14, 12, 40), _grid(16.0)
#: a grid no scanner writes: refused from the header, before anything is allocated (it would be 4 PB of float32)
ABSURD = 100_000
GOOD_DIAGNOSES = ("CN", "MCI", "AD") * 4


def _noise(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(10.0, 100.0, shape).astype(np.float32)


def _brain(shape: tuple[int, ...], affine: np.ndarray, seed: int) -> np.ndarray:
    """nilearn's MNI152 T1 on the grid ``(shape, affine)`` with some noise: a whole brain that registers."""
    from nibabel.processing import resample_from_to
    from nilearn.datasets import load_mni152_template

    brain = resample_from_to(load_mni152_template(resolution=2), (shape, affine), order=1).get_fdata()
    return (100.0 * brain + 0.05 * _noise(shape, seed)).astype(np.float32)


def write_t1(path: Path, data: np.ndarray | None = None) -> Path:
    """A 3D T1 (the MNI152 brain with noise unless ``data``), 6 mm voxels."""
    nib.save(nib.Nifti1Image(_brain(T1_SHAPE, T1_AFFINE, 1) if data is None else data, T1_AFFINE), path)
    return path


def write_bold(path: Path, data: np.ndarray | None = None, tr: float = 2.0) -> Path:
    """A 4D BOLD run (random unless ``data``), 16 mm voxels; ``tr`` goes to the header's pixdim[4] in seconds."""
    image = nib.Nifti1Image(_noise(BOLD_SHAPE, 2) if data is None else data, BOLD_AFFINE)
    image.header.set_zooms((16.0, 16.0, 16.0, tr))
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, path)
    return path


def _truncated(path: Path, write: Callable[[Path], Path]) -> Path:
    """A ``.nii.gz`` cut in the middle of its data, as an interrupted download or copy leaves it."""
    whole = write(path).read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    return path


def _absurd(path: Path, shape: tuple[int, ...]) -> Path:
    """A NIfTI-2 header (64-bit dimensions) claiming ``shape`` over four bytes of data."""
    header = nib.Nifti2Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 544
    with open(path, "wb") as handle:
        header.write_to(handle)
        handle.write(b"\0" * 8)
    return path


def _with_bad_values(data: np.ndarray) -> np.ndarray:
    data = data.copy()
    data.flat[::97] = np.nan
    data.flat[5] = np.inf
    return data


@dataclass(frozen=True)
class ImageCase:
    """A broken scan offered as ``kind`` (``mri``: T1, ``fmri``: BOLD run)."""

    name: str
    kind: str
    message: str  # what the refusal says (the file's path is named too)
    write: Callable[[Path], Path]  # writes the file under the given path (name chosen by the case), returns it
    from_header: bool = True  # refused without reading the voxels


def _image_cases() -> list[ImageCase]:
    t1, bold = write_t1, write_bold
    return [
        ImageCase("t1-truncated", "mri", "mri file is truncated", lambda p: _truncated(p, t1)),
        ImageCase("t1-not-nifti", "mri", "mri file is not a readable NIfTI", lambda p: _text(p, "subject,notes\n")),
        ImageCase("t1-empty", "mri", "mri file is empty", lambda p: _text(p, "")),
        ImageCase("t1-is-4d", "mri", "mri must be a 3D T1 image, got shape (12, 14, 12, 40)", bold),
        ImageCase(
            "t1-absurd-grid", "mri", "mri header claims an implausible grid", lambda p: _absurd(p, (ABSURD,) * 3)
        ),
        ImageCase("t1-missing", "mri", "mri file not found", lambda p: p),
        ImageCase(
            "t1-nan-inf",
            "mri",
            "NaN or infinite voxel value(s)",
            lambda p: t1(p, _with_bad_values(_noise(T1_SHAPE, 1))),
            from_header=False,
        ),
        ImageCase(
            "t1-all-zero",
            "mri",
            "mri image is blank: every voxel is 0",
            lambda p: t1(p, np.zeros(T1_SHAPE, np.float32)),
            from_header=False,
        ),
        ImageCase("bold-truncated", "fmri", "fmri file is truncated", lambda p: _truncated(p, bold)),
        ImageCase("bold-not-nifti", "fmri", "fmri file is not a readable NIfTI", lambda p: _text(p, "<html></html>")),
        ImageCase("bold-empty", "fmri", "fmri file is empty", lambda p: _text(p, "")),
        ImageCase("bold-is-3d", "fmri", "fmri must be a 4D BOLD run, got shape (30, 36, 30)", t1),
        ImageCase(
            "bold-absurd-grid",
            "fmri",
            "fmri header claims an implausible grid",
            lambda p: _absurd(p, (ABSURD, ABSURD, ABSURD, 200)),
        ),
        ImageCase("bold-missing", "fmri", "fmri file not found", lambda p: p),
        ImageCase(
            "bold-nan-inf",
            "fmri",
            "NaN or infinite voxel value(s)",
            lambda p: bold(p, _with_bad_values(_noise(BOLD_SHAPE, 2))),
            from_header=False,
        ),
        ImageCase(
            "bold-all-zero",
            "fmri",
            "fmri image is blank: every voxel is 0",
            lambda p: bold(p, np.zeros(BOLD_SHAPE, np.float32)),
            from_header=False,
        ),
        ImageCase(
            "bold-constant-in-time",
            "fmri",
            "fmri run has no signal over time",
            lambda p: bold(p, np.repeat(_noise(BOLD_SHAPE[:3], 3)[..., None], BOLD_SHAPE[3], axis=3)),
            from_header=False,
        ),
    ]


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


IMAGE_CASES = {case.name: case for case in _image_cases()}
MRI_CASES = [name for name, case in IMAGE_CASES.items() if case.kind == "mri"]
FMRI_CASES = [name for name, case in IMAGE_CASES.items() if case.kind == "fmri"]


@dataclass(frozen=True)
class TRCase:
    """A BOLD run with usable voxels whose repetition time is wrong: ``header_tr`` in its header, ``given`` in the
    manifest's ``tr`` column (or ``roi --tr``), None for none."""

    name: str
    message: str
    header_tr: float
    given: str | None = None


TR_CASES = {
    case.name: case
    for case in (
        TRCase("tr-zero", "tr must be a positive number of seconds, got '0'", 2.0, "0"),
        TRCase("tr-missing", "no TR in the manifest, the sidecar or the header", 0.0),
        TRCase(
            "tr-in-ms", "implausible TR 2000 s from the header (pixdim[4]=2000 sec) (it looks like milliseconds", 2000.0
        ),
    )
}

#: manifest cases that break the table itself: name -> what the refusal says
TABLE_CASES = {
    "unknown-diagnosis": "unknown diagnosis 'Dementia' (expected one of CN, MCI, AD)",
    "duplicate-rows": "duplicate subject/session rows on lines 2, 14",
    "missing-columns": "missing required column(s) subject_id",
}
#: every manifest case: the broken scans (in a subject's row), the TR cases and the table cases
MANIFEST_CASES = [*IMAGE_CASES, *TR_CASES, *TABLE_CASES]
#: the manifest cases a command that reads only headers (split, experiment before training) refuses
HEADER_MANIFEST_CASES = [name for name in MANIFEST_CASES if name not in IMAGE_CASES or IMAGE_CASES[name].from_header]

#: study YAML cases: name -> (text added to or replaced in a valid study, what the refusal says)
STUDY_CASES = {
    "unknown-key": ("epochs: 3\n", "unknown key(s) epochs"),
    "unknown-bundle": ("models: [mri_cnn3d, fmri_transformer]\n", "unknown bundle 'fmri_transformer'"),
    "override-wrong-type": (
        "overrides: {epochs: '5'}\n",
        "overrides: bundle key 'epochs' must be a positive integer, got '5'",
    ),
    "override-number-as-text": (
        "overrides: {learning_rate: '0.001'}\n",
        "bundle key 'learning_rate' must be a number >= 0",
    ),
    "cohort-name-is-a-path": (None, "cohorts.../escaped: a cohort name names a folder of the run"),
    "folds-not-a-number": ("cv: {folds: five}\n", "cv.folds: must be an integer >= 2, got 'five'"),
    "python-object-tag": (  # yaml.safe_load builds no Python objects: the tag is refused, nothing runs
        "name: !!python/object/apply:os.system ['echo ran']\n",
        "not valid YAML (could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply",
    ),
}

BAD_ROW = 14  # line of the subject with the broken file (after the header and twelve good subjects)


class Corpus:
    """Writes good files and broken cases into ``folder``.

    Args:
        folder: an empty folder (pytest's ``tmp_path``).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder).resolve()
        self.t1 = write_t1(self.folder / "good_T1w.nii.gz")
        # noise on a 16 mm grid, named as a run already in MNI space (fMRIPrep): registration skips it
        self.bold = write_bold(self.folder / "good_space-MNI152NLin2009cAsym_bold.nii.gz")

    def image(self, name: str) -> Path:
        """The broken scan of image case ``name`` (written; for ``*-missing`` a path where nothing is)."""
        return IMAGE_CASES[name].write(self._image_path(name))

    def _image_path(self, name: str) -> Path:
        return self.folder / f"{name}{'.nii' if 'absurd' in name else '.nii.gz'}"

    def bold_with_tr(self, name: str) -> Path:
        """The BOLD run of TR case ``name``: good voxels, the case's TR in the header."""
        return write_bold(self.folder / f"{name}_bold.nii.gz", tr=TR_CASES[name].header_tr)

    def good_rows(self) -> list[dict]:
        return [
            {"subject_id": f"sub-{i + 1:02d}", "diagnosis": d, "mri": self.t1.name, "fmri": self.bold.name, "tr": ""}
            for i, d in enumerate(GOOD_DIAGNOSES)
        ]

    def manifest(self, name: str | None = None) -> Path:
        """A manifest of the twelve good subjects plus, for case ``name``, what breaks it (a thirteenth subject on line
        :data:`BAD_ROW` with the broken scan or TR, a duplicate of line 2, an unknown diagnosis, no subject_id
        column); None: the good manifest."""
        rows = self.good_rows()
        extra = {"subject_id": "sub-13", "diagnosis": "AD", "mri": self.t1.name, "fmri": self.bold.name, "tr": ""}
        if name in IMAGE_CASES:
            extra[IMAGE_CASES[name].kind] = self.image(name).name
            rows.append(extra)
        elif name in TR_CASES:
            extra.update(fmri=self.bold_with_tr(name).name, tr=TR_CASES[name].given or "")
            rows.append(extra)
        elif name == "unknown-diagnosis":
            rows.append({**extra, "diagnosis": "Dementia"})
        elif name == "duplicate-rows":
            rows.append(dict(rows[0]))
        elif name is not None and name not in TABLE_CASES:
            raise KeyError(name)
        columns = list(rows[0])
        if name == "missing-columns":
            columns = ["participant_id", *columns[1:]]
        lines = [",".join(columns)] + [",".join(str(row[c]) for c in rows[0]) for row in rows]
        path = self.folder / f"manifest_{name or 'good'}.csv"
        path.write_text("\n".join(lines) + "\n")
        return path

    def expected(self, name: str, manifest: Path | None = None) -> list[str]:
        """What the refusal of case ``name`` must say: the problem, and the file, line and subject of the manifest
        (when the case came in one) or the broken file itself."""
        if name in TABLE_CASES:
            where = f"{manifest}:{BAD_ROW}: sub-13: " if name == "unknown-diagnosis" else f"{manifest}: "
            return [where + TABLE_CASES[name]]
        if name in TR_CASES:
            parts = [TR_CASES[name].message]
            if TR_CASES[name].given is None:
                parts.append(str(self.folder / f"{name}_bold.nii.gz"))
        else:
            parts = [IMAGE_CASES[name].message, str(self._image_path(name))]
        return parts + ([f"{manifest}:{BAD_ROW}: sub-13: "] if manifest is not None else [])

    def study(self, name: str | None, manifest: Path) -> Path:
        """A study YAML on ``manifest`` (2 folds, one model, tiny grid), broken as study case ``name`` says."""
        cohort = "../escaped" if name == "cohort-name-is-a-path" else "paired"
        text = (
            f"name: bad_inputs\ncohorts:\n  {cohort}: {{manifest: {manifest}}}\nmodels: [mri_cnn3d]\n"
            "augmentation: [false]\ncv: {folds: 2, val_fraction: 0.34}\n"
            "overrides: {epochs: 1, batch_size: 2, mri_pixdim: [6.0, 6.0, 6.0], mri_spatial_size: [24, 28, 24]}\n"
        )
        change = STUDY_CASES[name][0] if name else None
        if change:
            key = change.split(":")[0]
            kept = [line for line in text.splitlines(keepends=True) if not line.startswith(f"{key}:")]
            text = "".join(kept) + change
        path = self.folder / f"study_{name or 'good'}.yaml"
        path.write_text(text)
        return path

    def snapshot(self) -> dict[str, int]:
        """Every file under the folder with its size: compare before and after a refused command."""
        return {
            str(p.relative_to(self.folder)): p.stat().st_size for p in sorted(self.folder.rglob("*")) if p.is_file()
        }
