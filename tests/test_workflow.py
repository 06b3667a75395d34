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
