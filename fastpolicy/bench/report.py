"""The one report of a benchmark: terminal and markdown tables, the Pareto plot, the targets' verdicts.

Everything here reads result rows (``fastpolicy.evaluation.results``) and nothing else, so a suite run,
``fastpolicy report`` over committed JSON and ``bench/update_docs.py`` render the same tables.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLUMNS = [
    ("task", "task", "{}"),
    ("method", "method", "{}"),
    ("score", "score_mean", "{:.1f}"),
    ("± std", "score_std", "{:.1f}"),
    ("success", "success_rate", "{:.2f}"),
    ("NFE/step mean", "nfe_per_step_mean", "{:.2f}"),
    ("NFE/step max", "nfe_per_step_max", "{}"),
    ("p50 ms", "latency_ms_p50", "{:.2f}"),
    ("p99 ms", "latency_ms_p99", "{:.2f}"),
]
#: Shown by ``fastpolicy report`` when rows carry it: which weights were measured (short form).
HASH_COLUMN = ("checkpoint", "checkpoint_hash", "{:.15}")


def _fmt(row: dict[str, Any], key: str, fmt: str) -> str:
    v = row.get(key)
    if v is None:
        return "–"
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


Column = tuple[str, str, str]  # (title, row key, format)


def _columns(rows: Sequence[dict[str, Any]], extra: Sequence[str] = (),
             columns: Sequence[Column] = COLUMNS) -> list[Column]:
    """The given columns that some row fills, then ``extra`` keys with a format guessed from their values."""
    cols = [c for c in columns if any(r.get(c[1]) is not None for r in rows)]

    def fmt(key: str) -> str:
        first = next((r[key] for r in rows if r.get(key) is not None), None)
        return "{:.3g}" if isinstance(first, float) else "{}"

    return cols + [(k, k, fmt(k)) for k in extra]


def print_table(rows: Sequence[dict[str, Any]], title: str | None = None, extra: Sequence[str] = (),
                columns: Sequence[Column] = COLUMNS) -> None:
    """A rich table on the terminal (plain text when output is not a terminal)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    cols = _columns(rows, extra, columns)
    for name, key, _ in cols:
        table.add_column(name, justify="left" if name in ("task", "method") else "right",
                         no_wrap=key == "checkpoint_hash")
    for r in rows:
        table.add_row(*[_fmt(r, key, fmt) for _, key, fmt in cols])
    Console(width=160).print(table)


def markdown_table(rows: Sequence[dict[str, Any]], extra: Sequence[str] = (),
                   columns: Sequence[Column] = COLUMNS) -> str:
    """A markdown table of ``columns`` (those some row fills) and ``extra`` keys."""
    cols = _columns(rows, extra, columns)
    lines = ["| " + " | ".join(c[0] for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r, key, fmt) for _, key, fmt in cols) + " |" for r in rows]
    return "\n".join(lines)


#: y-axis label per ``score_kind`` of the rows (the task card's score kind).
SCORE_LABELS = {
    "d4rl": "normalised score (D4RL: 0 = random, 100 = expert)",
    "success": "episode return (not normalised; success rate is its own column)",
    "return": "episode return (not normalised)",
}


#: x-axis label per latency column.
LATENCY_LABELS = {
    "step_latency_ms_max_p99": "worst-case control step (one that replans), p99 (ms)",
    "step_latency_ms_p50": "planning step (a control step that calls the denoiser), median (ms)",
    "latency_ms_p99": "latency per action, p99 (ms)",
    "latency_ms_p50": "latency per action, p50 (ms)",
}


def score_label(rows: Sequence[dict[str, Any]]) -> str:
    """What the score axis shows, from the rows' ``score_kind`` (mixed kinds are said to be mixed)."""
    kinds = sorted({r.get("score_kind") or "return" for r in rows})
    if len(kinds) == 1:
        return SCORE_LABELS.get(kinds[0], f"score ({kinds[0]})")
    return f"score (mixed kinds: {', '.join(kinds)})"


def pareto_plot(
    rows: Sequence[dict[str, Any]],
    path: str | os.PathLike,
    title: str = "",
    latency_key: str = "latency_ms_p99",
    budget_ms: float | None = None,
) -> Path:
    """Score vs per-step latency (log x), one marker per method, the Pareto front drawn through them.

    Methods are told apart by colour and marker in a legend beside the axes (labels written next to
    the points overlapped wherever methods cluster); ``budget_ms`` is drawn as a vertical line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [
        (r[latency_key], r["score_mean"], r.get("score_std") or 0.0, r["method"])
        for r in rows
        if r.get(latency_key) is not None and r.get("score_mean") is not None
    ]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    colors = plt.get_cmap("tab20").colors
    markers = "os^Dv<>pPhX*"
    for i, (lat, score, std, name) in enumerate(pts):
        ax.errorbar(lat, score, yerr=std, fmt=markers[i % len(markers)], color=colors[i % len(colors)],
                    capsize=3, ms=7, label=name)
    front, best = [], float("-inf")
    for lat, score, _, _ in sorted(pts):
        if score > best:
            front.append((lat, score))
            best = score
    if len(front) > 1:
        ax.plot(*zip(*front), "--", color="gray", lw=1, label="Pareto front", zorder=0)
    if budget_ms is not None:
        ax.axvline(budget_ms, color="crimson", ls=":", lw=1.5, label=f"budget {budget_ms:g} ms")
    ax.set_xscale("log")
    ax.set_xlabel(LATENCY_LABELS.get(latency_key, latency_key.replace("_", " ") + " (ms)")
                  + ", batch 1, log scale")
    ax.set_ylabel(score_label(rows))
    ax.set_title(title or (rows[0]["task"] if rows else ""), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if pts or budget_ms is not None:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write a matplotlib figure to ``path`` (creating its folder) and close it; returns the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def summarize_targets(rows: Sequence[dict[str, Any]], teacher_method: str = "teacher-ddpm100"
                      ) -> dict[str, Any]:
    """The students' targets, computed from the rows (nothing hidden: misses are reported as such).

    Ratios are of *median* planning-step latencies measured in this run (interleaved): a student
    must keep ≥ 95 % of the teacher's DDPM-100 score while planning ≥ 50× faster than DDPM-100 and
    ≥ 5× faster than DDIM-10; the streaming student must keep ≥ 95 % at one call per control step.
    """
    by = {r["method"]: r for r in rows}
    out: dict[str, Any] = {}
    ddpm, ddim = by.get(teacher_method), by.get("teacher-ddim10")
    key = "step_latency_ms_p50"
    if ddpm is None or ddpm.get(key) is None or ddpm.get("score_mean") is None:
        return out
    floor = 0.95 * ddpm["score_mean"] if ddpm["score_mean"] >= 0 else 1.05 * ddpm["score_mean"]
    out["teacher_score"] = ddpm["score_mean"]
    out["score_floor_95pct"] = floor

    def check(r: dict[str, Any]) -> dict[str, Any]:
        res = {"score_ratio": r["score_mean"] / ddpm["score_mean"] if ddpm["score_mean"] else None,
               "keeps_95pct": bool(r["score_mean"] >= floor),
               "speedup_vs_ddpm100": ddpm[key] / r[key]}
        if ddim and ddim.get(key):
            res["speedup_vs_ddim10"] = ddim[key] / r[key]
        res["meets_all"] = bool(res["keeps_95pct"] and res["speedup_vs_ddpm100"] >= 50
                                and res.get("speedup_vs_ddim10", 0.0) >= 5)
        return res

    students = [r for r in rows
                if r["method"].startswith(("student-", "progressive-student-")) and r.get(key)
                and r.get("score_mean") is not None]
    checked = {r["method"]: check(r) for r in students}
    winners = [m for m, c in checked.items() if c["meets_all"]]
    pick = min(winners or checked, key=lambda m: by[m][key], default=None)
    if pick is not None:
        out["best_student"] = pick
        out.update({f"best_student_{k}": v for k, v in checked[pick].items()})
    scm = by.get("streaming-student-1call")
    if scm is not None and scm.get("score_mean") is not None:
        out["streaming_student_keeps_95pct"] = bool(scm["score_mean"] >= floor)
        out["streaming_student_calls_per_step_max"] = scm.get("nfe_per_step_max")
        if scm.get(key):
            out["streaming_student_speedup_vs_ddpm100"] = ddpm[key] / scm[key]
    return out


def write_suite_report(rows: Sequence[dict[str, Any]], name: str, results_dir: str | os.PathLike,
                       plot_dir: str | os.PathLike, targets: dict[str, Any], extra: Sequence[str] = (),
                       budget_ms: float | None = None) -> list[Path]:
    """``<name>.json`` (schema rows) and ``<name>.md`` (table + targets) in ``results_dir``, and
    ``pareto_<name>.png`` in ``plot_dir``; returns the three paths."""
    from fastpolicy.evaluation.results import write_results

    task = rows[0]["task"] if rows else ""
    path = write_results(Path(results_dir) / f"{name}.json", rows)
    md = Path(results_dir) / f"{name}.md"
    notes = [f"- {k}: {v:.3g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in targets.items()]
    md.write_text(markdown_table(rows, extra=extra) + "\n\n" + "\n".join(notes) + "\n")
    # medians: a p99 of a few hundred samples on a shared machine is the machine, not the method
    png = pareto_plot(rows, Path(plot_dir) / f"pareto_{name}.png",
                      title=f"{task}: score vs median planning-step latency (batch 1)",
                      latency_key="step_latency_ms_p50", budget_ms=budget_ms)
    return [path, md, png]
