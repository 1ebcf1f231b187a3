"""Self-explanatory method ids, and the short ids that older result files were written with.

Code and docs name methods by what they are (``teacher-ddim10``, ``student-1call``,
``streaming-ode6``). Result files committed before the rename keep the ids they were written with
(``dp-ddim10``, ``cm-1step``, ``sdp-ode6``): a row's id links it to the run that produced it, so the
files are not edited. :func:`canonical_method` maps an old id to its new name;
:func:`~fastpolicy.evaluation.results.read_results` applies it to every row it reads, so tables,
summaries and targets computed from results see the new names only (and a benchmark that rewrites a
file writes them). ``docs/method_names.md`` is the table for readers.

This module is the one place that knows the old ids. The policies build today's names themselves
(``policy.method``): they sit below this layer and must not import it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastpolicy.utils.misc import calls

RENAMED: dict[str, str] = {
    "dp-onecall": "teacher-one-call-estimate",
    "sdp-cm": "streaming-student-1call",
}
"""Old ids that no rule below derives (every other old id follows a rule)."""

METHOD_FIELDS: tuple[str, ...] = ("method", "shares_networks_with")
"""Row fields that hold a method id (a derived planner names the run whose networks it reuses)."""


def _sampler_slug(slug: str) -> str:
    """An old sampler fragment in today's spelling: ``dpm10`` → ``dpmsolver10``, ``-t0.5`` → ``-temp0.5``,
    ``-ta4`` → ``-exec4`` (actions executed per plan). Spacing names (``-trailing``) are left alone."""
    slug = re.sub(r"^dpm(?=\d)", "dpmsolver", slug)
    slug = re.sub(r"-ta(?=\d)", "-exec", slug)
    return re.sub(r"-t(?=\d)", "-temp", slug)


_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    # the streaming policy's network sampled as an ordinary teacher
    (re.compile(r"sdp-net-dp-(?P<slug>.+)"),
     lambda m: f"streaming-net-as-teacher-{_sampler_slug(m['slug'])}"),
    # streaming over a grid of levels: sdp-ode6, sdp-ddpm100
    (re.compile(r"sdp-(?P<grid>[a-z]+\d+)"), lambda m: f"streaming-{m['grid']}"),
    # the teacher at a sampler: dp-ddim10, dp-ddpm100-t0.5, dp-ddim10-ta4
    (re.compile(r"dp-(?P<slug>.+)"), lambda m: f"teacher-{_sampler_slug(m['slug'])}"),
    # segmented (progressive) students: cm-seg4
    (re.compile(r"cm-seg(?P<k>\d+)"), lambda m: f"progressive-student-{calls(int(m['k']))}"),
    # the one-segment student chained over k calls, optionally a variant of it: cm-2step, cm-h512-1step
    (re.compile(r"cm-(?:(?P<variant>.+)-)?(?P<k>\d+)step"),
     lambda m: "-".join(filter(None, ("student", m["variant"], calls(int(m["k"])))))),
    # Trajectory Diffuser with k refinement steps of its draft, suffixes kept: -k1-start0.05, -k1/draft
    (re.compile(r"trajectory-diffuser-k(?P<rest>\d.*)"), lambda m: f"trajectory-diffuser-refine{m['rest']}"),
]


def canonical_method(name: str) -> str:
    """The self-explanatory name of method id ``name``; a name that is already new, or unknown, is returned
    unchanged (so the mapping is idempotent and safe on any row)."""
    if name in RENAMED:
        return RENAMED[name]
    for pattern, rename in _RULES:
        match = pattern.fullmatch(name)
        if match:
            return rename(match)
    return name


def canonical_row(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with the method ids of :data:`METHOD_FIELDS` mapped by :func:`canonical_method` (in place)."""
    for key in METHOD_FIELDS:
        if isinstance(row.get(key), str):
            row[key] = canonical_method(row[key])
    return row


__all__ = ["METHOD_FIELDS", "RENAMED", "canonical_method", "canonical_row"]
