"""In-process bundle runs send their logs to a per-job file and leave no handler on a closed stream."""

from __future__ import annotations

import logging
import sys

from pipeline.engine.workflow import log_to_file


def test_job_logs_go_to_file_and_handlers_do_not_outlive_the_job(tmp_path, capsys):
    for job in ("a", "b"):
        with log_to_file(tmp_path / f"{job}.txt"):
            job_logger = logging.getLogger(f"job-{job}")
            job_logger.addHandler(logging.StreamHandler(sys.stdout))  # as MONAI's StatsHandler does
            job_logger.warning("hello from %s", job)
            print("printed inside", job)
    assert "hello from a" in (tmp_path / "a.txt").read_text()
    assert "printed inside b" in (tmp_path / "b.txt").read_text()
    assert logging.getLogger("job-a").handlers == []
    logging.getLogger("job-a").warning("after the job")  # must not hit a closed file
    assert "I/O operation on closed file" not in capsys.readouterr().err


def test_switches_given_as_text_on_the_command_line_mean_what_they_say():
    from pipeline.engine import flag

    assert flag("false", "augment") is False and flag("True", "augment") is True and flag(0, "amp") is False


def test_a_switch_that_is_not_yes_or_no_is_refused():
    import pytest

    from pipeline.engine import flag

    with pytest.raises(ValueError, match="bundle key 'augment' must be true or false, got 'sometimes'"):
        flag("sometimes", "augment")


def test_augment_false_on_the_bundle_command_line_turns_augmentation_off():
    from tests.conftest import REPO, run_cli

    config = REPO / "bundles" / "mri_cnn3d" / "configs" / "train.yaml"
    show = "['$print(\"CHAIN\", [type(t).__name__ for t in @train#preprocessing.transforms])']"
    chains = {}
    for value in ("false", "true"):
        result = run_cli("-m", "monai.bundle", "run", "--config_file", str(config), "--augment", value, "--run", show)
        assert result.returncode == 0, result.stderr[-2000:]
        chains[value] = next(line for line in result.stdout.splitlines() if line.startswith("CHAIN"))
    assert "'Rand" not in chains["false"]  # no random transform at all
    assert "'RandBiasFieldd'" in chains["true"] and "'RandGaussianNoised'" in chains["true"]
