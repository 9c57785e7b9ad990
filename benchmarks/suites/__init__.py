"""The benchmark's suites, one module per kind of work timed. Each module has ``SUITES``
(name -> :class:`~suites.common.Suite`), ``VARIANTS`` (name -> set-up) and ``worker(name,
units, warmup)``, which a fresh process runs to time one variant."""
