"""The `neurofusion` command: help texts, exit codes and one-line errors."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli

COMMANDS = [
    "synth",
    "manifest check",
    "manifest from-bids",
    "manifest from-table",
    "split",
    "roi",
    "experiment",
    "report",
    "demo",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_itself(command):
    result = run_cli("-m", "pipeline.cli", *command.split(), "--help")
    assert result.returncode == 0
    assert len(result.stdout.split()) > 40


def test_manifest_check_reports_every_problem_and_fails(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject_id,diagnosis,mri\nsub-01,Dementia,missing.nii.gz\n")
    result = run_cli("-m", "pipeline.cli", "manifest", "check", str(manifest))
    assert result.returncode == 1
    assert f"{manifest}:2: sub-01: unknown diagnosis 'Dementia'" in result.stdout
    assert "mri file not found" in result.stdout
    assert result.stderr.strip().splitlines() == [f"neurofusion manifest: error: {manifest}: 2 problem(s) found"]


def test_manifest_check_accepts_the_synthetic_cohort(tiny_cohort):
    result = run_cli(
        "-m", "pipeline.cli", "manifest", "check", str(tiny_cohort / "manifest.csv"), "--require-diagnosis"
    )
    assert result.returncode == 0, result.stderr
    assert "OK, 15 rows, 15 subjects" in result.stdout


def test_errors_are_one_line_without_traceback(tmp_path):
    result = run_cli("-m", "pipeline.cli", "split", str(tmp_path / "absent.csv"), "--out", str(tmp_path / "f"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"neurofusion split: error: {tmp_path / 'absent.csv'}: manifest not found"
    assert not (tmp_path / "f").exists()


def test_roi_writes_one_column_per_roi(tmp_path):
    from tests.conftest import NIBABEL_DATA

    result = run_cli(
        "-m", "pipeline.cli", "roi", str(NIBABEL_DATA / "functional.nii"), "--out", str(tmp_path / "s.tsv"),
        "--registration", "none",  # three 8 mm slices already in MNI space
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "s.tsv").read_text().splitlines()
    assert len(lines) == 21 and lines[0].split("\t")[:2] == ["Precentral_L", "Precentral_R"]
