"""Clinical-style inference: input QC that refuses bad scans, explained predictions, a report per subject.

``neurofusion predict`` is the command; :class:`Predictor` does the work for one subject with a bundle loaded once
(:class:`InferenceBundle`), and :func:`predict_subjects` runs a batch into an output folder atomically.
"""

from __future__ import annotations

from pipeline.inference.bundle import InferenceBundle
from pipeline.inference.outputs import predict_subjects
from pipeline.inference.predict import Predictor, Subject
from pipeline.inference.qc import Finding, QCError

__all__ = ["Finding", "InferenceBundle", "Predictor", "QCError", "Subject", "predict_subjects"]
