"""Run a bundle's workflow in this process, as ``python -m monai.bundle run`` would, with its log in a file."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigWorkflow


@contextlib.contextmanager
def log_to_file(path: str | Path) -> Iterator[None]:
    """Send log records, stdout and stderr to ``path`` (and nowhere else) for the duration of the block.

    MONAI's handlers create their own console loggers when the workflow is parsed, inside the block, so standard
    streams are redirected too; the caller's progress bar and console stay clean.
    """
    root = logging.getLogger()
    saved_root = root.handlers[:], root.level
    # loggers that already own console handlers (MONAI's, ignite's) send their records to the root meanwhile
    owners = [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger) and lg.handlers]
    saved = {lg: (lg.handlers[:], lg.propagate) for lg in owners}
    with open(path, "a", encoding="utf8") as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
        root.handlers = [handler]
        root.setLevel(logging.INFO)
        for lg in owners:
            lg.handlers, lg.propagate = [], True
        try:
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                yield
        finally:
            root.handlers, root.level = saved_root
            for lg, (handlers, propagate) in saved.items():
                lg.handlers, lg.propagate = handlers, propagate
            _drop_handlers_on(stream)


def _drop_handlers_on(stream) -> None:
    """Remove handlers that loggers created inside the block bound to ``stream``, which is about to close."""
    for lg in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        if isinstance(lg, logging.Logger):
            lg.handlers = [h for h in lg.handlers if getattr(h, "stream", None) is not stream]


def run_bundle(
    bundle_dir: str | Path,
    configs: Sequence[str],
    workflow_type: str = "train",
    log_file: str | Path | None = None,
    **overrides: Any,
) -> ConfigWorkflow:
    """Initialise, run and finalise a bundle workflow.

    Args:
        bundle_dir: the bundle folder.
        configs: config file names under ``configs/``, merged in order (e.g. ``["train.yaml", "evaluate.yaml"]``).
        workflow_type: ``"train"`` or ``"infer"`` (MONAI workflow properties to expect).
        log_file: where the workflow's log goes (None: the bundle's ``logging.conf``).
        overrides: top-level bundle keys, as on the command line (``epochs=2``).
    """
    config_dir = Path(bundle_dir) / "configs"
    files = [str(config_dir / name) for name in configs]
    context = log_to_file(log_file) if log_file else contextlib.nullcontext()
    with context:
        workflow = ConfigWorkflow(
            config_file=files,
            meta_file=str(config_dir / "metadata.json"),
            logging_file=False if log_file else str(config_dir / "logging.conf"),
            workflow_type=workflow_type,
            bundle_root=str(Path(bundle_dir).resolve()),
            **overrides,
        )
        workflow.initialize()
        workflow.run()
        workflow.finalize()
    return workflow
