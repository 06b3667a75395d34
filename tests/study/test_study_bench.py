"""``neurofusion bench study``'s parts: peak memory of a run and its workers, failures, nested balanced cohorts."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from pipeline.bench.study import measure, nested_manifests
from pipeline.errors import CommandError

# a process that starts a worker holding ~400 MiB and waits for it, as a study's pool does: spawned, or forked by
# multiprocessing's fork server (which this process never waits for)
WORKER = (
    "import multiprocessing as mp, numpy as np\n"
    "def hold():\n    a = np.ones(400 * 2**20 // 8); a += 1\n"
    "if __name__ == '__main__':\n    p = mp.get_context({method!r}).Process(target=hold); p.start(); p.join()\n"
    "    assert p.exitcode == 0\n"
)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_peak_memory_is_that_of_the_largest_process_including_its_workers(method, tmp_path):
    ballast = np.ones(300 * 2**20 // 8)  # a child forked from this process would report at least this much
    (tmp_path / "worker.py").write_text(WORKER.format(method=method))
    _, alone = measure([sys.executable, "-c", "pass"], tmp_path / "alone.log")
    seconds, peak = measure([sys.executable, str(tmp_path / "worker.py")], tmp_path / "worker.log")
    assert seconds > 0 and alone < 0.2 < 0.39 < peak < 1.0 and ballast.sum() > 0


def test_a_failed_run_is_refused_naming_its_log(tmp_path):
    with pytest.raises(CommandError, match=r"exit code 3: see .*failed\.log"):
        measure([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], tmp_path / "failed.log")
    assert (tmp_path / "failed.log").read_text().strip() == "boom"


def test_smaller_cohorts_are_balanced_first_subjects_of_the_largest(tmp_path):
    manifests = nested_manifests(tmp_path / "cohort", [3, 9, 6], profile="tiny")
    tables = {size: pd.read_csv(path) for size, path in manifests.items()}
    assert sorted(tables) == [3, 6, 9] and all(len(tables[n]) == n for n in tables)
    for size, table in tables.items():
        assert table["diagnosis"].value_counts().to_dict() == {"CN": size // 3, "MCI": size // 3, "AD": size // 3}
        assert table["mri"].map(lambda p: (tmp_path / "cohort" / p).is_file()).all()
    assert set(tables[3]["subject_id"]) < set(tables[6]["subject_id"]) < set(tables[9]["subject_id"])
