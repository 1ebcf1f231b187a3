"""Refresh the tables in docs/benchmarks.md from the committed JSON under bench/results/.

The prose in docs/benchmarks.md is written by hand; each table sits between
``<!-- table:NAME -->`` and ``<!-- /table -->`` markers and is regenerated from the JSON that
bench/manifest.toml names for it (with a column layout of :data:`LAYOUTS`), so the document can never
drift from the measured rows and every table has a study that produces it. Rows are read with
``read_results``, so method ids written before the rename show under today's names.
Usage: ``python bench/update_docs.py [--check]`` (``--check`` exits 1 if a table is stale).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import manifest  # bench/manifest.py, beside this script

from fastpolicy.bench.report import markdown_table
from fastpolicy.evaluation.results import read_results

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"

# teacher beside BC at one budget (bench_teacher_vs_bc.py); the AGV tables add the way round the block
_TEACHER_VS_BC = [
    ("task", "task", "{}"),
    ("method", "method", "{}"),
    ("score", "score_mean", "{:.1f}"),
    ("± std", "score_std", "{:.1f}"),
    ("success", "success_rate", "{:.2f}"),
    ("episodes", "episodes", "{}"),
    ("seeds", "seeds", "{}"),
    ("train steps", "train_steps", "{}"),
    ("lr", "lr", "{}"),
    ("parametrisation", "prediction_type", "{}"),
    ("NFE/step max", "nfe_per_step_max", "{}"),
    ("p99 ms", "latency_ms_p99", "{:.1f}"),
]
_SUITE_COLUMNS = [
    ("method", "method", "{}"),
    ("score", "score_mean", "{:.1f}"),
    ("± std", "score_std", "{:.1f}"),
    ("success", "success_rate", "{:.2f}"),
    ("NFE/step mean", "nfe_per_step_mean", "{:.2f}"),
    ("NFE/step max", "nfe_per_step_max", "{}"),
    ("p50 ms", "latency_ms_p50", "{:.3f}"),
    ("p99 ms", "latency_ms_p99", "{:.2f}"),
    ("worst step p99 ms", "step_latency_ms_max_p99", "{:.2f}"),
    ("chunks/s @64", "throughput_b64", "{:.0f}"),
    ("distill s", "distill_seconds", "{:.0f}"),
]
# the students' tables: median planning-step latency with its sample count, modes, the load
_STUDENT_COLUMNS = [
    ("method", "method", "{}"),
    ("score", "score_mean", "{:.2f}"),
    ("± std", "score_std", "{:.2f}"),
    ("success", "success_rate", "{:.2f}"),
    ("modes (episode fractions)", "modes", "{}"),
    ("calls/step max", "nfe_per_step_max", "{}"),
    ("Ta", "action_horizon", "{}"),
    ("plan p50 ms", "step_latency_ms_p50", "{:.3f}"),
    ("plan p99 ms", "step_latency_ms_max_p99", "{:.2f}"),
    ("plan samples", "step_latency_samples", "{}"),
    ("per action mean ms", "latency_ms_mean_per_action", "{:.3f}"),
    ("load 1m before/after", "load_avg_1m_before", "{:.1f}"),
    ("distill s", "distill_seconds", "{:.0f}"),
]
_DIFFUSION_CORE_COLUMNS = [
    ("variant", "variant", "{}"),
    ("To", "obs_horizon", "{}"),
    ("Tp", "pred_horizon", "{}"),
    ("Ta", "action_horizon", "{}"),
    ("sampler", "sampler", "{}"),
    ("temperature", "temperature", "{}"),
    ("score", "score_mean", "{:.1f}"),
    ("± std", "score_std", "{:.1f}"),
    ("success", "success_rate", "{:.2f}"),
    ("episodes", "episodes", "{}"),
    ("seeds", "seeds", "{}"),
    ("train steps", "steps", "{}"),
]
# LAYOUT: [(column title, row key, format)] — which table of bench/manifest.toml uses which is said there
LAYOUTS: dict[str, list[tuple[str, str, str]]] = {
    "backbones": [
        ("backbone", "method", "{}"),
        ("batch", "batch_size", "{}"),
        ("params", "params", "{:,}"),
        ("p50 ms", "latency_ms_p50", "{:.3f}"),
        ("p99 ms", "latency_ms_p99", "{:.3f}"),
        ("threads", "torch_threads", "{}"),
    ],
    "sampling_overhead": [
        ("what", "method", "{}"),
        ("batch", "batch_size", "{}"),
        ("loop p50 ms", "latency_ms_p50", "{:.3f}"),
        ("bare forwards p50 ms", "bare_forward_ms_p50", "{:.3f}"),
        ("overhead % (median)", "overhead_pct", "{:.1f}"),
        ("overhead % (min)", "overhead_pct_min", "{:.1f}"),
    ],
    "scheduler_step": [
        ("what", "method", "{}"),
        ("batch", "batch_size", "{}"),
        ("fastpolicy µs", "fastpolicy_us", "{:.1f}"),
        ("diffusers µs", "diffusers_us", "{:.1f}"),
        ("speed-up", "speedup", "{:.1f}×"),
    ],
    "sampler": [
        ("reader", "method", "{}"),
        ("windows/s", "windows_per_s", "{:,.0f}"),
        ("× getitem", "speedup_vs_getitem", "{:.1f}"),
    ],
    "agv_throughput": [
        ("method", "method", "{}"),
        ("N", "num_envs", "{}"),
        ("robot-steps/s", "robot_steps_per_s", "{:,.0f}"),
        ("measured", "measured", "{}"),
        ("× numpy twin", "speedup_vs_numpy_twin", "{:.1f}"),
        ("× async best", "speedup_vs_async_best", "{:.1f}"),
    ],
    "serve_load": [
        ("method", "method", "{}"),
        ("mode", "mode", "{}"),
        ("sessions", "sessions", "{}"),
        ("Hz", "hz", "{}"),
        ("rtt p50 ms", "rtt_ms_p50", "{:.1f}"),
        ("rtt p99 ms", "rtt_ms_p99", "{:.1f}"),
        ("req/s", "throughput_rps", "{:.0f}"),
        ("missed ticks", "deadline_miss_ticks", "{}"),
    ],
    "suite": _SUITE_COLUMNS,
    "students": _STUDENT_COLUMNS,
    "student_capacity": [
        ("Ta", "action_horizon", "{}"), ("method", "method", "{}"), ("hidden", "hidden", "{}"),
        ("score", "score_mean", "{:.2f}"), ("± std", "score_std", "{:.2f}"),
        ("success", "success_rate", "{:.2f}"),
        ("modes (episode fractions)", "modes", "{}"), ("episodes", "episodes", "{}"),
        ("plan p50 ms", "step_latency_ms_p50", "{:.3f}"), ("plan samples", "step_latency_samples", "{}"),
    ],
    "students_curve": [
        ("distillation steps", "distill_steps", "{}"), ("1-step score", "score_mean", "{:.2f}"),
        ("± std", "score_std", "{:.2f}"), ("success", "success_rate", "{:.2f}"),
        ("episodes", "episodes", "{}"), ("modes", "modes", "{}")],
    "rnd_curves": [
        ("task", "task", "{}"),
        ("algo", "method", "{}"),
        ("env steps", "steps", "{:,}"),
        ("final success (train)", "score_mean", "{:.2f}"),
        ("± std over seeds", "score_std", "{:.2f}"),
        ("deterministic eval success", "eval_success_mean", "{:.2f}"),
    ],
    # the fair protocol (bench_planners.py): one test row per method, its setting chosen on validation
    "planners_protocol": [
        ("method", "method", "{}"),
        ("test score", "score_mean", "{:.1f}"),
        ("± SE (episodes)", "score_se_episodes", "{:.1f}"),
        ("± SE (training seeds)", "score_se_train_seeds", "{:.1f}"),
        ("Δ vs DD full chain (paired)", "diff_vs_dd_full_mean", "{:+.1f}"),
        ("± SE", "diff_vs_dd_full_se", "{:.1f}"),
        ("Δ vs BC (paired)", "diff_vs_bc_mean", "{:+.1f}"),
        ("± SE ", "diff_vs_bc_se", "{:.1f}"),
        ("chosen on validation", "setting", "{}"),
        ("denoiser calls/plan", "denoiser_calls_per_plan", "{}"),
        ("transformer calls/plan", "transformer_calls_per_plan", "{}"),
        ("plan p50 ms", "latency_ms_p50", "{:.2f}"),
        ("plan p99 ms", "latency_ms_p99", "{:.2f}"),
        ("× DD full chain", "speedup_vs_dd_full", "{:.1f}"),
        ("train s", "train_seconds", "{:.0f}"),
    ],
    # every setting of every grid on the validation seeds (over the training seeds)
    "planners_protocol_validation": [
        ("method", "method", "{}"),
        ("setting", "setting", "{}"),
        ("validation score", "score_mean", "{:.1f}"),
        ("± SE (episodes)", "score_se_episodes", "{:.1f}"),
        ("± SE (training seeds)", "score_se_train_seeds", "{:.1f}"),
        ("chosen", "selected_on_validation", "{}"),
    ],
    "agv_teacher": [*_TEACHER_VS_BC[:2], *_TEACHER_VS_BC[4:10],
                    ("modes (episode fractions)", "mode_fractions", "{}"), *_TEACHER_VS_BC[10:]],
    "teacher_vs_bc": _TEACHER_VS_BC,
    "d4rl_seeds": [
        ("task", "task", "{}"),
        ("method", "method", "{}"),
        ("test score", "score_mean", "{:.1f}"),
        ("± SE (training seeds)", "score_se", "{:.1f}"),
        ("± std (episodes)", "score_std", "{:.1f}"),
        ("test episodes", "episodes", "{}"),
        ("training seeds", "train_seeds", "{}"),
        ("validation score", "validation_score", "{:.1f}"),
        ("chosen on validation", "selected_on_validation", "{}"),
        ("Δ vs BC (paired)", "diff_vs_bc_mean", "{:+.1f}"),
        ("± SE", "diff_vs_bc_se", "{:.1f}"),
    ],
    "proxy_labeling": [
        ("task", "task", "{}"),
        ("learner", "method", "{}"),
        ("labels", "label_condition", "{}"),
        ("score", "score_mean", "{:.2f}"),
        ("± std", "score_std", "{:.2f}"),
        ("episodes", "episodes", "{}"),
        ("IDM action MSE", "idm_action_mse", "{:.4f}"),
        ("IDM NLL", "idm_action_nll", "{:.2f}"),
    ],
    "d4rl": [
        ("task", "task", "{}"),
        ("method", "method", "{}"),
        ("score", "score_mean", "{:.1f}"),
        ("± std", "score_std", "{:.1f}"),
        ("episodes", "episodes", "{}"),
        ("train steps", "steps", "{}"),
        ("NFE/step max", "nfe_per_step_max", "{}"),
        ("p50 ms", "latency_ms_p50", "{:.2f}"),
        ("p99 ms", "latency_ms_p99", "{:.2f}"),
        ("train s", "train_seconds", "{:.0f}"),
    ],
    "diffusion_core": _DIFFUSION_CORE_COLUMNS,
    "proxy_labeling_peers": [
        ("task", "task", "{}"),
        ("learner", "method", "{}"),
        ("labels", "label_condition", "{}"),
        ("score", "score_mean", "{:.1f}"),
        ("± std", "score_std", "{:.1f}"),
        ("episodes", "episodes", "{}"),
        ("train steps", "steps", "{}"),
        ("train s", "train_seconds", "{:.0f}"),
    ],
    "serve_soak": [
        ("method", "method", "{}"),
        ("minutes", "minutes", "{}"),
        ("requests", "requests", "{}"),
        ("rtt p99 ms", "rtt_ms_p99", "{:.1f}"),
        ("RSS start MB", "rss_mb_start", "{:.1f}"),
        ("RSS end MB", "rss_mb_end", "{:.1f}"),
        ("growth %", "rss_growth_pct", "{:.2f}"),
    ],
}


def render(name: str, tables: dict[str, manifest.Table] | None = None) -> str:
    """The markdown of docs table ``name`` from its manifest entry; KeyError when no study feeds it."""
    tables = manifest.tables() if tables is None else tables
    if name not in tables:
        raise KeyError(f"docs/benchmarks.md has a table {name!r} that no study in bench/manifest.toml feeds")
    table = tables[name]
    path = ROOT / "bench" / "results" / table.file
    if not path.exists():
        return f"_(no results yet: bench/results/{table.file})_"
    # read_results: rows written before the method rename show today's method ids
    rows = [r for r in read_results(path) if (table.task is None or r.get("task") == table.task)
            and (table.split is None or r.get("split") == table.split)]
    lines = [markdown_table(rows, columns=LAYOUTS[table.layout])]
    commits = sorted({r.get("commit", "?") for r in rows})
    lines.append(f"\n<sub>source: `bench/results/{table.file}` · commit {', '.join(commits)}</sub>")
    return "\n".join(lines)


def update(text: str) -> str:
    """``text`` with every table block re-rendered from the committed JSON."""
    tables = manifest.tables()
    pattern = re.compile(r"(<!-- table:(\S+) -->\n).*?(<!-- /table -->)", re.S)
    return pattern.sub(lambda m: f"{m.group(1)}{render(m.group(2), tables)}\n{m.group(3)}", text)


def stale_tables(text: str) -> list[str]:
    """Names of the table blocks in ``text`` whose rendering differs from the committed JSON."""
    tables = manifest.tables()
    pattern = re.compile(r"<!-- table:(\S+) -->\n(.*?)\n<!-- /table -->", re.S)
    return [m.group(1) for m in pattern.finditer(text) if m.group(2) != render(m.group(1), tables)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/benchmarks.md is stale")
    args = parser.parse_args()
    old = DOC.read_text()
    new = update(old)
    if args.check:
        if new != old:
            stale = stale_tables(old)
            print(f"{DOC} is stale (tables: {', '.join(stale)}): run python bench/update_docs.py",
                  file=sys.stderr)
        return int(new != old)
    DOC.write_text(new)
    print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
