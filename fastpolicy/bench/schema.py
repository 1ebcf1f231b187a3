"""Transition shim: the result schema moved to :mod:`fastpolicy.evaluation.results`.

Kept for ``bench/bench_d4rl.py`` and ``bench/bench_d4rl_peers.py`` (and any script outside the
repository); new code imports from ``fastpolicy.evaluation.results``.
"""

from fastpolicy.evaluation.results import (  # noqa: F401
    REQUIRED_FIELDS,
    environment_fields,
    make_row,
    merge_rows,
    read_results,
    update_results,
    validate_row,
    write_results,
)
