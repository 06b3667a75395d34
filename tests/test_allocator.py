"""The training allocator setting (``pipeline.engine.retain_freed_memory``): freed blocks are re-used, not faulted in
anew; opting out keeps glibc's behaviour. Each case runs in a fresh process: the setting holds for a whole process."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from pipeline.cli import main
from pipeline.engine import allocator
from pipeline.engine.allocator import OPT_OUT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")

#: prints whether the allocator was tuned and the page faults of writing a 64 MiB malloc block after one was freed
#: (straight from the C library: numpy would ask for huge pages; the module is run from its file, since importing
#: the package would load torch and MONAI, seconds per process)
_FRESH_BLOCK_FAULTS = """
import ctypes, resource, runpy, sys
retain_freed_memory = runpy.run_path(sys.argv[2])["retain_freed_memory"]
tuned = retain_freed_memory() if sys.argv[1] == "retain" else False
libc, size = ctypes.CDLL("libc.so.6"), 64 << 20
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
block = libc.malloc(size)
ctypes.memset(block, 1, size)
libc.free(block)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
ctypes.memset(libc.malloc(size), 1, size)
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def fresh_block_faults(mode: str, **environment: str) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", _FRESH_BLOCK_FAULTS, mode, allocator.__file__],
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        check=True,
    )
    tuned, faults = done.stdout.split()
    return tuned, int(faults)


def test_retained_memory_is_reused_instead_of_faulted_in_again():
    default_tuned, default_faults = fresh_block_faults("default")
    tuned, faults = fresh_block_faults("retain")
    assert (default_tuned, tuned) == ("False", "True")
    assert default_faults > 0  # glibc maps a block this size afresh and faults it in
    assert faults * 10 < default_faults


def test_opting_out_keeps_glibcs_allocator():
    default_faults = fresh_block_faults("default")[1]
    tuned, faults = fresh_block_faults("retain", **{OPT_OUT: "0"})
    assert tuned == "False"
    assert faults * 10 >= default_faults


def test_every_bundle_trains_with_the_retained_allocator():
    from monai.bundle import ConfigParser

    from pipeline.engine import REPO_BUNDLES

    for bundle in ("mri_cnn3d", "fmri_lstm", "mri_fmri_fusion"):
        steps = ConfigParser.load_config_file(REPO_BUNDLES / bundle / "configs" / "train.yaml")["initialize"]
        assert "$pipeline.engine.retain_freed_memory()" in steps, bundle


def test_bench_malloc_compares_both_allocators_in_fresh_processes_with_identical_results(capsys):
    # 3 steps: the first timed step alone can fault about as often with either allocator (a CI run: 7,129 vs 7,127)
    assert main(["bench", "malloc", "--what", "cnn-paper", "--steps", "3", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    measured = r"([\d.]+) s +\d+% +(\d+)"
    row = re.search(rf"^3D CNN, paper grid +{measured} +{measured} +([\d.]+)x +(\w+)$", out, re.M)
    assert row, out
    assert row[6] == "yes"  # the same logits bitwise
    assert int(row[4]) < int(row[2])  # fewer page faults retained
