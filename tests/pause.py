"""A training handler for fault tests: at a chosen iteration it writes a marker file and waits, so the test can
kill the process with SIGKILL at a known point in the middle of an epoch."""

from __future__ import annotations

import time
from pathlib import Path

from ignite.engine import Engine, Events


class PauseAt:
    """At trainer iteration ``iteration`` write ``marker`` (the iteration) and sleep until killed.

    Args:
        iteration: the trainer's iteration (counted over epochs, from 1).
        marker: file written when the pause starts.
    """

    def __init__(self, iteration: int, marker: str) -> None:
        self.iteration = int(iteration)
        self.marker = Path(marker)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=self.iteration), self._pause)

    def _pause(self, engine: Engine) -> None:
        self.marker.write_text(f"epoch {engine.state.epoch} iteration {engine.state.iteration}\n")
        time.sleep(600)
