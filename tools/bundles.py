"""Check (or rewrite) the parts the three bundles share: LICENSE, logging.conf, multi_gpu_train.yaml, evaluate.yaml,
the shared-keys blocks of train.yaml and inference.yaml, and the keys their check_bundle_keys(...) call checks.

They are derived from the fused bundle and each bundle's own train.yaml (see pipeline.engine.bundle_parts).

Usage::

    python tools/bundles.py --check     # exit 1 and one line per drifted file
    python tools/bundles.py --write     # rewrite the drifted files, then edit the fused bundle to change a shared part
"""

from __future__ import annotations

import argparse
import sys

from pipeline.engine import REPO_BUNDLES
from pipeline.engine.bundle_parts import drifted, expected_parts, write_parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="list the drifted files; exit 1 if any")
    mode.add_argument("--write", action="store_true", help="rewrite the drifted files")
    parser.add_argument("--bundles", default=str(REPO_BUNDLES), help="folder of the bundles (default: the repo's)")
    args = parser.parse_args(argv)
    try:
        parts = expected_parts(args.bundles)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.write:
        for path in write_parts(parts):
            print(f"rewrote {path}")
        return 0
    problems = drifted(parts)
    for problem in problems:
        print(problem)
    print(f"{len(parts)} shared parts: {len(problems) or 'none'} drifted", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
