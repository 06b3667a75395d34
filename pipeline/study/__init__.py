"""Studies: a study YAML run as cross-validated fold jobs of the bundles, aggregated into tables, statistics and a
report (``neurofusion experiment``, ``variants``, ``report``)."""
