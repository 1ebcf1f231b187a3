"""Benchmarks: every method of a suite scored and timed side by side, and the report.

``suites`` (the budgets, as data) → ``methods`` / ``teacher_methods`` / ``planners`` (method builders)
→ ``runner`` (scores and interleaved timing, one front door: ``run_suite``) → ``report`` (tables,
Pareto plot, targets); ``select`` picks a method for a latency budget. The result row itself lives
below, in ``fastpolicy.evaluation.results``. The
studies under ``bench/`` in the repository are listed in ``bench/manifest.toml``.
"""
