"""A corpus of broken inputs, written by the tests into a folder: scans, manifests and study YAMLs that every entry
point must refuse with one message naming the file, row or key and the problem.

Each case is a name, the words its refusal must contain and whether it can be seen from the header alone (commands
that read no voxels, such as ``split``, refuse only those). :class:`Corpus` writes a case on demand next to a small
set of good files: a T1, a BOLD run with its TR in the header, and a manifest of twelve subjects (four per class) that
every entry point accepts, so a refusal is due to the case and nothing else.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import shutil
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


@functools.lru_cache(maxsize=1)
def _template() -> np.ndarray:
    """nilearn's MNI152 T1 on the T1 grid (resampled once)."""
    from nibabel.processing import resample_from_to
    from nilearn.datasets import load_mni152_template

    return resample_from_to(load_mni152_template(resolution=2), (T1_SHAPE, T1_AFFINE), order=1).get_fdata()


def _brain(seed: int) -> np.ndarray:
    """The MNI152 T1 on the T1 grid with some noise drawn with ``seed``: a whole brain that registers."""
    return (100.0 * _template() + 0.05 * _noise(T1_SHAPE, seed)).astype(np.float32)


def write_t1(path: Path, data: np.ndarray | None = None, seed: int = 1) -> Path:
    """A 3D T1 (the MNI152 brain with noise drawn with ``seed`` unless ``data``), 6 mm voxels."""
    nib.save(nib.Nifti1Image(_brain(seed) if data is None else data, T1_AFFINE), path)
    return path


def write_bold(path: Path, data: np.ndarray | None = None, tr: float = 2.0, seed: int = 2) -> Path:
    """A 4D BOLD run (random with ``seed`` unless ``data``), 16 mm voxels; ``tr`` goes to the header's pixdim[4] in
    seconds."""
    image = nib.Nifti1Image(_noise(BOLD_SHAPE, seed) if data is None else data, BOLD_AFFINE)
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


def _gzipped(path: Path, write: Callable[[Path], Path]) -> Path:
    """A gzip-compressed NIfTI under a ``.nii`` name (a download that kept its compression, renamed)."""
    path.write_bytes(gzip.compress(write(path).read_bytes()))
    return path


def _uncompressed(path: Path, write: Callable[[Path], Path]) -> Path:
    """An uncompressed NIfTI under a ``.nii.gz`` name."""
    plain = write(path.with_name(path.name.removesuffix(".gz")))
    return plain.rename(path)


def nan_scan(seed: int = 1) -> np.ndarray:
    """T1 voxels with NaN and infinite values."""
    return _with_bad_values(_noise(T1_SHAPE, seed))


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
    suffix: str = ".nii.gz"  # of the file's name


def _image_cases() -> list[ImageCase]:
    t1, bold = functools.partial(write_t1, seed=7), functools.partial(write_bold, seed=8)  # images of no subject
    return [
        ImageCase("t1-truncated", "mri", "mri file is truncated", lambda p: _truncated(p, t1)),
        ImageCase("t1-not-nifti", "mri", "mri file is not a readable NIfTI", lambda p: _text(p, "subject,notes\n")),
        ImageCase("t1-empty", "mri", "mri file is empty", lambda p: _text(p, "")),
        ImageCase("t1-is-4d", "mri", "mri must be a 3D T1 image, got shape (12, 14, 12, 40)", bold),
        ImageCase(
            "t1-absurd-grid",
            "mri",
            "mri header claims an implausible grid",
            lambda p: _absurd(p, (ABSURD,) * 3),
            suffix=".nii",
        ),
        ImageCase(
            "t1-gzipped-named-nii",
            "mri",
            "mri file is gzip-compressed but named .nii: rename it to .nii.gz",
            lambda p: _gzipped(p, t1),
            suffix=".nii",
        ),
        ImageCase(
            "t1-uncompressed-named-nii-gz",
            "mri",
            "mri file is not gzip-compressed but named .nii.gz: rename it to .nii",
            lambda p: _uncompressed(p, t1),
        ),
        ImageCase("t1-missing", "mri", "mri file not found", lambda p: p),
        ImageCase(
            "t1-nan-inf",
            "mri",
            "NaN or infinite voxel value(s)",
            lambda p: t1(p, nan_scan()),
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
            suffix=".nii",
        ),
        ImageCase(
            "bold-gzipped-named-nii",
            "fmri",
            "fmri file is gzip-compressed but named .nii: rename it to .nii.gz",
            lambda p: _gzipped(p, bold),
            suffix=".nii",
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

BAD_ROW = 14  # line of the subject with the broken file (after the header and twelve good subjects)
GOOD_AGE, GOOD_TR = "71.5", "2.5"  # every good subject's age; sub-01's TR (the others' come from the header: 2 s)

#: manifest cases that break the table itself: name -> what the refusal says
TABLE_CASES = {
    "unknown-diagnosis": "unknown diagnosis 'Dementia' (expected one of CN, MCI, AD)",
    "duplicate-rows": "duplicate subject/session rows on lines 2, 14",
    "missing-columns": "missing required column(s) subject_id",
}


@dataclass(frozen=True)
class TextCase:
    """A manifest as a spreadsheet or an editor leaves it, refused: ``message`` on the file's line ``line`` (of the
    row of ``subject`` when given)."""

    name: str
    message: str
    line: int
    subject: str | None = None


#: manifests broken as text: the row of sub-13 follows blank lines or a value quoted over two lines (the line named
#: must be the file's own), bytes that are not UTF-8, a row longer than the header, a quote never closed
TEXT_CASES = {
    case.name: case
    for case in (
        TextCase("row-after-blank-lines", TABLE_CASES["unknown-diagnosis"], 18, "sub-13"),
        TextCase("row-after-multiline-value", TABLE_CASES["unknown-diagnosis"], 15, "sub-13"),
        TextCase("not-utf8", "not UTF-8 text (byte 0xe9); save the manifest as UTF-8", 6),
        TextCase("ragged-row", "7 values, the header has 6 (quote a value that holds the delimiter)", BAD_ROW),
        TextCase("unclosed-quote", "not a readable table (unexpected end of data; a quote never closed?)", BAD_ROW),
        TextCase("column-named-twice", "column 'mri' appears twice in the header", 1),
        TextCase("decimal-comma-in-a-comma-file", "tr is not a number: '2,5' (a decimal comma?", BAD_ROW, "sub-13"),
    )
}

#: one image under two subjects, and one subject under two IDs: name -> what the refusal says
IDENTITY_CASES = {
    "same-file-two-subjects": "one image under different subjects (the same file): line 2 (sub-01) mri ",
    "linked-file-two-subjects": "one image under different subjects (the same file): line 2 (sub-01) mri ",
    "copied-image-two-subjects": "one image under different subjects (identical header and data): line 2 (sub-01) mri ",
    "ids-differ-by-case": "subject IDs 'sub-01' (line 2) and 'SUB-01' (line 14) differ only by case",
}

#: BIDS sidecars of sub-13's BOLD run that cannot be read: name -> (content, or None for a link to nothing; refusal)
SIDECAR_CASES = {
    "sidecar-truncated": (b'{"RepetitionTime": 3.0, "TaskN', "BIDS sidecar is not valid JSON (Unterminated string"),
    "sidecar-list": (b'[{"RepetitionTime": 3.0}]', "BIDS sidecar must hold a JSON object"),
    "sidecar-empty": (b"", "BIDS sidecar is empty"),
    "sidecar-not-utf8": (b'{"RepetitionTime": 3.0, "Manufacturer": "Soci\xe9t\xe9"}', "BIDS sidecar is not UTF-8"),
    "sidecar-tr-text": (b'{"RepetitionTime": "3 s"}', "RepetitionTime '3 s'"),
    "sidecar-not-fetched": (None, "a symbolic link to a missing file: a DataLad / git-annex file not fetched?"),
}

#: every manifest case: the broken scans (in a subject's row), the TR cases, the table, text, identity and sidecar cases
MANIFEST_CASES = [*IMAGE_CASES, *TR_CASES, *TABLE_CASES, *TEXT_CASES, *IDENTITY_CASES, *SIDECAR_CASES]
#: the manifest cases a command that reads only headers (split, experiment before training) refuses
HEADER_MANIFEST_CASES = [name for name in MANIFEST_CASES if name not in IMAGE_CASES or IMAGE_CASES[name].from_header]

#: spreadsheet exports of the good manifest that are read as they are: name -> how the text is changed
SPREADSHEET_CASES: dict[str, Callable[[str], str]] = {
    "byte-order-mark": lambda t: "\ufeff" + t,
    "crlf": lambda t: t.replace("\n", "\r\n"),
    "semicolons": lambda t: t.replace(",", ";"),
    "tabs": lambda t: t.replace(",", "\t"),
    "excel-sep-line": lambda t: "sep=;\n" + t.replace(",", ";"),
    "decimal-commas": lambda t: t.replace(",", ";").replace("71.5", "71,5").replace(";2.5", ";2,5"),
    "spaces-around-names-and-values": lambda t: (
        "\n".join(" , ".join(f" {c}" for c in line.split(",")) for line in t.splitlines()) + "\n"
    ),
    "blank-and-empty-rows": lambda t: t.replace("\n", "\n\n", 2).replace("\nsub-05,", "\n,,,,,\n   \nsub-05,"),
    "all-of-excel": lambda t: (
        "\ufeffsep=;\r\n"
        + t.replace(",", " ; ").replace("71.5", "71,5").replace(" 2.5", " 2,5").replace("\n", "\r\n\r\n")
    ),
}

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


class Corpus:
    """Writes good files and broken cases into ``folder``.

    Every good subject has its own T1 and BOLD run (validation refuses one image under two subjects); sub-01's are
    :attr:`t1` and :attr:`bold`, the others' are written when a manifest first needs them.

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
        return self.folder / f"{name}{IMAGE_CASES[name].suffix}"

    def bold_with_tr(self, name: str) -> Path:
        """The BOLD run of TR case ``name``: good voxels, the case's TR in the header."""
        return write_bold(self.folder / f"{name}_bold.nii.gz", tr=TR_CASES[name].header_tr, seed=9)

    def subject_files(self, number: int) -> tuple[Path, Path]:
        """The T1 and BOLD run of good subject ``number`` (1 to 13), written on first use."""
        if number == 1:
            return self.t1, self.bold
        t1 = self.folder / f"sub-{number:02d}_T1w.nii"
        bold = self.folder / f"sub-{number:02d}_space-MNI152NLin2009cAsym_bold.nii"
        if not t1.exists():
            write_t1(t1, seed=100 + number)
            write_bold(bold, seed=200 + number)
        return t1, bold

    def good_rows(self) -> list[dict]:
        rows = []
        for number, diagnosis in enumerate(GOOD_DIAGNOSES, start=1):
            t1, bold = self.subject_files(number)
            row = {"subject_id": f"sub-{number:02d}", "diagnosis": diagnosis, "mri": t1.name, "fmri": bold.name}
            rows.append({**row, "tr": GOOD_TR if number == 1 else "", "age": GOOD_AGE})
        return rows

    def sidecar(self, name: str) -> Path:
        """The sidecar of sidecar case ``name`` beside sub-13's BOLD run (a link to nothing for content None)."""
        path = self.subject_files(13)[1].with_suffix(".json")
        content = SIDECAR_CASES[name][0]
        if content is None:
            path.symlink_to(Path(".git", "annex", "objects", "Xx", "Yy", "MD5E-s42--0123", "MD5E-s42--0123.json"))
        else:
            path.write_bytes(content)
        return path

    def manifest(self, name: str | None = None) -> Path:
        """A manifest of the twelve good subjects plus, for case ``name``, what breaks it (mostly a thirteenth subject
        on line :data:`BAD_ROW` with the broken scan, TR, text, shared image or sidecar; a duplicate of line 2, no
        subject_id column); None: the good manifest."""
        rows = self.good_rows()
        t1, bold = self.subject_files(13)
        extra = {"subject_id": "sub-13", "diagnosis": "AD", "mri": t1.name, "fmri": bold.name, "tr": "", "age": ""}
        if name in IMAGE_CASES:
            extra[IMAGE_CASES[name].kind] = self.image(name).name
        elif name in TR_CASES:
            extra.update(fmri=self.bold_with_tr(name).name, tr=TR_CASES[name].given or "")
        elif name in ("unknown-diagnosis", "row-after-blank-lines", "row-after-multiline-value"):
            extra["diagnosis"] = "Dementia"
        elif name == "duplicate-rows":
            extra = dict(rows[0])
        elif name == "decimal-comma-in-a-comma-file":
            extra["tr"] = '"2,5"'
        elif name == "ids-differ-by-case":
            extra["subject_id"] = "SUB-01"
        elif name in IDENTITY_CASES:
            extra["mri"] = self._shared_t1(name).name
        elif name in SIDECAR_CASES:
            self.sidecar(name)
        elif name is not None and name not in (*TABLE_CASES, *TEXT_CASES):
            raise KeyError(name)
        if name not in (None, "missing-columns", "column-named-twice", "not-utf8"):
            rows.append(extra)
        columns = list(rows[0])
        if name == "row-after-multiline-value":
            columns.append("notes")
            rows[4]["notes"] = '"moved to\nscanner 2"'
        names = list(columns)
        if name == "missing-columns":
            names[0] = "participant_id"
        elif name == "column-named-twice":
            names[names.index("age")] = "mri"
        lines = [",".join(names)] + [",".join(str(row.get(c, "")) for c in columns) for row in rows]
        text = "\n".join(lines) + "\n"
        path = self.folder / f"manifest_{name or 'good'}.csv"
        path.write_bytes(self._broken_text(name, text))
        return path

    def _shared_t1(self, name: str) -> Path:
        """Sub-13's T1 of an identity case: sub-01's own file, a link to it or a copy of it (written)."""
        path = self._shared_t1_path(name)
        if name == "linked-file-two-subjects":
            path.symlink_to(self.t1.name)
        elif name == "copied-image-two-subjects":
            shutil.copyfile(self.t1, path)
        return path

    @staticmethod
    def _broken_text(name: str | None, text: str) -> bytes:
        """The manifest's bytes, broken as text case ``name`` says."""
        if name == "row-after-blank-lines":
            header, _, rest = text.partition("\n")
            text = header + "\n\n,,,,,\n   \n" + rest.replace("\nsub-13,", "\n\nsub-13,")
        elif name == "ragged-row":
            text = text.removesuffix("\n") + ",extra\n"  # on sub-13's line, the last
        elif name == "unclosed-quote":
            text = text.replace("sub-13,AD", 'sub-13,"AD')
        data = text.encode()
        return data.replace(b"sub-05,", b"sub-05\xe9,") if name == "not-utf8" else data

    def expected(self, name: str, manifest: Path | None = None) -> list[str]:
        """What the refusal of case ``name`` must say: the problem, and the file, line and subject of the manifest
        (when the case came in one) or the broken file itself."""
        if name in TABLE_CASES:
            where = f"{manifest}:{BAD_ROW}: sub-13: " if name == "unknown-diagnosis" else f"{manifest}: "
            return [where + TABLE_CASES[name]]
        if name in TEXT_CASES:
            case = TEXT_CASES[name]
            return [f"{manifest}:{case.line}: " + (f"{case.subject}: " if case.subject else "") + case.message]
        if name in IDENTITY_CASES:
            shared = (
                [] if name == "ids-differ-by-case" else [f"; line {BAD_ROW} (sub-13) mri {self._shared_t1_path(name)}"]
            )
            return [f"{manifest}: {IDENTITY_CASES[name]}", *shared]
        if name in SIDECAR_CASES:
            parts = [SIDECAR_CASES[name][1], str(self.subject_files(13)[1].with_suffix(".json"))]
        elif name in TR_CASES:
            parts = [TR_CASES[name].message]
            if TR_CASES[name].given is None:
                parts.append(str(self.folder / f"{name}_bold.nii.gz"))
        else:
            parts = [IMAGE_CASES[name].message, str(self._image_path(name))]
        return parts + ([f"{manifest}:{BAD_ROW}: sub-13: "] if manifest is not None else [])

    def _shared_t1_path(self, name: str) -> Path:
        copied = name in ("linked-file-two-subjects", "copied-image-two-subjects")
        return self.folder / f"{name}_T1w.nii.gz" if copied else self.t1

    def spreadsheet(self, name: str) -> Path:
        """The good manifest exported as spreadsheet case ``name`` says (read as it is)."""
        path = self.folder / f"manifest_{name}.csv"
        path.write_text(SPREADSHEET_CASES[name](self.manifest().read_text()), newline="")
        return path

    def datalad(self, fetched: bool = True) -> Path:
        """The twelve good subjects as a DataLad dataset leaves them: every file but ``dataset_description.json`` (the
        images, their sidecars with a TR of 3 s while the headers say 2 s, ``participants.tsv``, the manifest) is a
        symbolic link into ``.git/annex/objects``. With ``fetched=False`` the content of sub-01's BOLD run is absent
        (the link points to nothing, as before ``datalad get``). Returns the manifest."""
        root = self.folder / "datalad"
        (root / "dataset_description.json").parent.mkdir(parents=True)
        (root / "dataset_description.json").write_text('{"Name": "annexed", "BIDSVersion": "1.8.0"}')
        rows, participants = [], ["participant_id\tdiagnosis"]
        for number, diagnosis in enumerate(GOOD_DIAGNOSES, start=1):
            subject = f"sub-{number:02d}"
            t1, bold = (
                gzip.compress(p.read_bytes(), mtime=0) if p.suffix == ".nii" else p.read_bytes()
                for p in self.subject_files(number)
            )
            anat = f"{subject}/anat/{subject}_T1w.nii.gz"
            func = f"{subject}/func/{subject}_task-rest_space-MNI152NLin2009cAsym_bold"
            _annex(root, anat, t1)
            _annex(root, func + ".nii.gz", bold)
            _annex(root, func + ".json", b'{"RepetitionTime": 3.0, "TaskName": "rest"}')
            rows.append(f"{subject},{diagnosis},{anat},{func}.nii.gz")
            participants.append(f"{subject}\t{diagnosis}")
        _annex(root, "participants.tsv", ("\n".join(participants) + "\n").encode())
        manifest = _annex(root, "manifest.csv", ("subject_id,diagnosis,mri,fmri\n" + "\n".join(rows) + "\n").encode())
        if not fetched:
            (root / "sub-01" / "func" / "sub-01_task-rest_space-MNI152NLin2009cAsym_bold.nii.gz").resolve().unlink()
        return manifest

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


def _annex(root: Path, relative: str, content: bytes) -> Path:
    """``root/relative`` as git-annex stores it: the content in ``.git/annex/objects/<hash dirs>/<key>/<key>``, named
    by its checksum, and a relative symbolic link to it (one object for files with one content)."""
    link = root / relative
    key = f"MD5E-s{len(content)}--{hashlib.md5(content).hexdigest()}{''.join(link.suffixes)}"
    target = root / ".git" / "annex" / "objects" / key[6:8] / key[8:10] / key / key
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent))
    return link
