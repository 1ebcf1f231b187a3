"""Refresh the tables in docs/benchmarks.md from the committed JSON under bench/results/.

The prose in docs/benchmarks.md is written by hand; each table sits between
``<!-- table:NAME -->`` and ``<!-- /table -->`` markers and is regenerated from the JSON named in
TABLES, so the document can never drift from the measured rows.
Usage: ``python bench/update_docs.py [--check]`` (``--check`` exits 1 if a table is stale).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from fastpolicy.bench.report import COLUMNS, markdown_table

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"

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
    ("plan p50 ms", "step_latency_ms_p50", "{:.3f}"),
    ("plan p99 ms", "step_latency_ms_max_p99", "{:.2f}"),
    ("plan samples", "step_latency_samples", "{}"),
    ("per action mean ms", "latency_ms_mean_per_action", "{:.3f}"),
    ("load 1m before/after", "load_avg_1m_before", "{:.1f}"),
    ("distill s", "distill_seconds", "{:.0f}"),
]
_PLANNER_COLUMNS = [
    ("method", "method", "{}"),
    ("score", "score_mean", "{:.1f}"),
    ("± std", "score_std", "{:.1f}"),
    ("success", "success_rate", "{:.2f}"),
    ("episodes", "episodes", "{}"),
    ("denoiser calls/plan", "denoiser_calls_per_plan", "{}"),
    ("transformer calls/plan", "transformer_calls_per_plan", "{}"),
    ("plan p50 ms", "step_latency_ms_p50", "{:.1f}"),
    ("plan p99 ms", "step_latency_ms_max_p99", "{:.1f}"),
    ("train s", "train_seconds", "{:.0f}"),
]
# NAME: (json file, [(column title, key, format)], optional task filter)
TABLES: dict[str, tuple] = {
    "backbones": (
        "backbones.json",
        [
            ("backbone", "method", "{}"),
            ("batch", "batch_size", "{}"),
            ("params", "params", "{:,}"),
            ("p50 ms", "latency_ms_p50", "{:.3f}"),
            ("p99 ms", "latency_ms_p99", "{:.3f}"),
            ("threads", "torch_threads", "{}"),
        ],
    ),
    "sampling_overhead": (
        "sampling_overhead.json",
        [
            ("what", "method", "{}"),
            ("batch", "batch_size", "{}"),
            ("loop p50 ms", "latency_ms_p50", "{:.3f}"),
            ("bare forwards p50 ms", "bare_forward_ms_p50", "{:.3f}"),
            ("overhead % (median)", "overhead_pct", "{:.1f}"),
            ("overhead % (min)", "overhead_pct_min", "{:.1f}"),
        ],
        "sampling-overhead",
    ),
    "scheduler_step": (
        "sampling_overhead.json",
        [
            ("what", "method", "{}"),
            ("batch", "batch_size", "{}"),
            ("fastpolicy µs", "fastpolicy_us", "{:.1f}"),
            ("diffusers µs", "diffusers_us", "{:.1f}"),
            ("speed-up", "speedup", "{:.1f}×"),
        ],
        "scheduler-step",
    ),
    "sampler": (
        "sampler.json",
        [
            ("reader", "method", "{}"),
            ("windows/s", "windows_per_s", "{:,.0f}"),
            ("× getitem", "speedup_vs_getitem", "{:.1f}"),
        ],
    ),
    "agv_throughput": (
        "agv_throughput.json",
        [
            ("method", "method", "{}"),
            ("N", "num_envs", "{}"),
            ("robot-steps/s", "robot_steps_per_s", "{:,.0f}"),
            ("measured", "measured", "{}"),
            ("× numpy twin", "speedup_vs_numpy_twin", "{:.1f}"),
            ("× async best", "speedup_vs_async_best", "{:.1f}"),
        ],
    ),
    "serve_load": (
        "serve_load.json",
        [
            ("method", "method", "{}"),
            ("mode", "mode", "{}"),
            ("sessions", "sessions", "{}"),
            ("Hz", "hz", "{}"),
            ("rtt p50 ms", "rtt_ms_p50", "{:.1f}"),
            ("rtt p99 ms", "rtt_ms_p99", "{:.1f}"),
            ("req/s", "throughput_rps", "{:.0f}"),
            ("missed ticks", "deadline_miss_ticks", "{}"),
        ],
    ),
    "quick_maze2d-umaze": ("quick_maze2d-umaze.json", _SUITE_COLUMNS),
    "rnd_curves": (
        "rnd_curves.json",
        [
            ("task", "task", "{}"),
            ("algo", "method", "{}"),
            ("env steps", "steps", "{:,}"),
            ("final success (train)", "score_mean", "{:.2f}"),
            ("± std over seeds", "score_std", "{:.2f}"),
            ("deterministic eval success", "eval_success_mean", "{:.2f}"),
        ],
    ),
    "demo_maze2d-umaze": ("demo_maze2d-umaze.json", _SUITE_COLUMNS),
    "demo_agv-bimodal-block": ("demo_agv-bimodal-block.json", _STUDENT_COLUMNS),
    **{f"students_{t}": (f"students_{t}.json", _STUDENT_COLUMNS)
       for t in ("agv-bimodal-block", "maze2d-umaze", "hopper-medium", "walker2d-medium")},
    **{f"students_curve_{t}": (f"students_curve_{t}.json", [
        ("distillation steps", "distill_steps", "{}"), ("1-step score", "score_mean", "{:.2f}"),
        ("± std", "score_std", "{:.2f}"), ("success", "success_rate", "{:.2f}"),
        ("episodes", "episodes", "{}"), ("modes", "modes", "{}")])
       for t in ("agv-bimodal-block", "maze2d-umaze", "hopper-medium", "walker2d-medium")},
    "demo_agv-simple-static": ("demo_agv-simple-static.json", _SUITE_COLUMNS),
    "planners_maze2d-umaze": ("planners_maze2d-umaze.json", _PLANNER_COLUMNS),
    "planners_maze2d-medium": ("planners_maze2d-medium.json", _PLANNER_COLUMNS),
    "planners_maze2d-large": ("planners_maze2d-large.json", _PLANNER_COLUMNS),
    "planners_hopper-medium": ("planners_hopper-medium.json", _PLANNER_COLUMNS),
    "planners_summary": (
        "planners_summary.json",
        [
            ("task", "task", "{}"),
            *_PLANNER_COLUMNS[:7],  # method … transformer calls/plan; then the quiet latencies
            ("plan p50 ms (quiet)", "latency_ms_p50", "{:.1f}"),
            ("plan p99 ms (quiet)", "latency_ms_p99", "{:.1f}"),
            ("× TD time", "td_speedup", "{:.2f}"),
        ],
    ),
    "planners_timing": (
        "planners_timing.json",
        [
            ("task", "task", "{}"),
            ("what", "method", "{}"),
            ("denoiser", "backbone", "{}"),
            ("weights", "weights", "{}"),
            ("p50 ms", "latency_ms_p50", "{:.2f}"),
            ("p99 ms", "latency_ms_p99", "{:.2f}"),
            ("× TD time", "td_speedup", "{:.2f}"),
            ("load (1 min) before", "loadavg_1min_before", "{}"),
        ],
    ),
    **{name: (
        f"{name}.json",
        [
            ("task", "task", "{}"),
            ("method", "method", "{}"),
            ("success", "success_rate", "{:.2f}"),
            ("episodes", "episodes", "{}"),
            ("seeds", "seeds", "{}"),
            ("train steps", "train_steps", "{}"),
            ("lr", "lr", "{}"),
            ("parametrisation", "prediction_type", "{}"),
            ("modes (episode fractions)", "mode_fractions", "{}"),
            ("NFE/step max", "nfe_per_step_max", "{}"),
            ("p99 ms", "latency_ms_p99", "{:.1f}"),
        ],
    ) for name in ("agv_teacher", "agv_bimodal_teacher")},
    "proxy_labeling": (
        "proxy_labeling.json",
        [
            ("task", "task", "{}"),
            ("learner", "method", "{}"),
            ("labels", "label_condition", "{}"),
            ("score", "score_mean", "{:.2f}"),
            ("± std", "score_std", "{:.2f}"),
            ("episodes", "episodes", "{}"),
            ("IDM action MSE", "idm_action_mse", "{:.4f}"),
            ("IDM NLL", "idm_action_nll", "{:.2f}"),
        ],
    ),
    "d4rl": (
        "d4rl.json",
        [
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
    ),
    **{f"diffusion_core_{task}": (
        f"diffusion_core_{task}.json",
        [
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
        ],
    ) for task in ("maze2d-umaze", "agv-simple-static", "agv-bimodal-block", "walker2d-medium",
                   "hopper-medium")},
    "proxy_labeling_peers": (
        "proxy_labeling_peers.json",
        [
            ("task", "task", "{}"),
            ("learner", "method", "{}"),
            ("labels", "label_condition", "{}"),
            ("score", "score_mean", "{:.1f}"),
            ("± std", "score_std", "{:.1f}"),
            ("episodes", "episodes", "{}"),
            ("train steps", "steps", "{}"),
            ("train s", "train_seconds", "{:.0f}"),
        ],
    ),
    "serve_soak": (
        "serve_soak.json",
        [
            ("method", "method", "{}"),
            ("minutes", "minutes", "{}"),
            ("requests", "requests", "{}"),
            ("rtt p99 ms", "rtt_ms_p99", "{:.1f}"),
            ("RSS start MB", "rss_mb_start", "{:.1f}"),
            ("RSS end MB", "rss_mb_end", "{:.1f}"),
            ("growth %", "rss_growth_pct", "{:.2f}"),
        ],
    ),
}

# The report's default columns, with the episode count after success.
_SCORE_COLUMNS = COLUMNS[:5] + [("episodes", "episodes", "{}")] + COLUMNS[5:]


def render(name: str) -> str:
    file, columns, *task = TABLES[name] if name in TABLES else (f"{name}.json", _SCORE_COLUMNS)
    path = ROOT / "bench" / "results" / file
    if not path.exists():
        return f"_(no results yet: bench/results/{file})_"
    rows = [r for r in json.loads(path.read_text()) if not task or r.get("task") == task[0]]
    lines = [markdown_table(rows, columns=columns)]
    commits = sorted({r.get("commit", "?") for r in rows})
    lines.append(f"\n<sub>source: `bench/results/{file}` · commit {', '.join(commits)}</sub>")
    return "\n".join(lines)


def update(text: str) -> str:
    pattern = re.compile(r"(<!-- table:(\S+) -->\n).*?(<!-- /table -->)", re.S)
    return pattern.sub(lambda m: f"{m.group(1)}{render(m.group(2))}\n{m.group(3)}", text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/benchmarks.md is stale")
    args = parser.parse_args()
    old = DOC.read_text()
    new = update(old)
    if args.check:
        return int(new != old)
    DOC.write_text(new)
    print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
