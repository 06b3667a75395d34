"""glibc's allocator tuned for a CPU training loop.

glibc ``malloc`` serves a block above its mmap threshold (128 KiB, raised on the fly up to 32 MiB) with a fresh
``mmap`` and unmaps it on ``free``, and gives the top of its heap back to the system beyond the trim threshold. A
training step allocates and frees activations and gradients of a few to some tens of MiB, so every step maps them
anew and faults their pages in, zeroed by the kernel: on this project's 2-core machine a quarter of a 3D CNN
training step was system time (``neurofusion bench malloc``). Keeping freed blocks in the heap for the next step
removes those faults and leaves the arithmetic as it was, so results are bitwise the same. The peak memory does not
change; the process keeps its peak until it exits. PyTorch's CPU tuning guide recommends jemalloc or TCMalloc for the
same reason; these two settings get that effect from the C library already loaded, with nothing to install.

Only training is tuned (the bundles' ``initialize``): registration gains nothing from it (N4 and ANTs allocate once
and compute long: 0.96-1.04x in ``neurofusion bench malloc``) and inference runs few steps.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: set to ``0`` to keep glibc's own allocator settings (e.g. to compare: ``neurofusion bench malloc``)
OPT_OUT = "NEUROFUSION_RETAIN_FREED_MEMORY"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
#: blocks up to this size come from the heap: 1 GiB, or glibc's 32 MiB limit on 64-bit where it refuses more
_MMAP_THRESHOLDS = (1 << 30, 32 << 20)
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int


def retain_freed_memory() -> bool:
    """Keep freed memory in this process's heap for re-use instead of returning it to the system (module
    docstring); later child processes that fork inherit it.

    Returns:
        True when glibc's allocator was tuned; False where there is no glibc (macOS, Windows, musl) or the
        environment variable :data:`OPT_OUT` is ``0``.
    """
    if os.environ.get(OPT_OUT) == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if not any(mallopt(_M_MMAP_THRESHOLD, size) for size in _MMAP_THRESHOLDS):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
