"""Getting a cohort in: manifests and their validation (:mod:`~pipeline.data.manifest`), manifests built from BIDS
(:mod:`~pipeline.data.bids`) or from tables (:mod:`~pipeline.data.tables`), image and sidecar checks
(:mod:`~pipeline.data.images`), atlases (:mod:`~pipeline.data.atlas`), a run's repetition time
(:mod:`~pipeline.data.timing`) and the MONAI data lists and datasets the bundles read (:mod:`~pipeline.data.datasets`).

Nothing is imported here: reading a manifest needs neither torch nor MONAI.
"""
