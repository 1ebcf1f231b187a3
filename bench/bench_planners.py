"""Diffusion planners compared fairly on one task: the protocol of docs/planners_protocol.md, enforced.

Top to bottom (CleanRL style), with the protocol's pieces in ``fastpolicy.bench.planners_protocol``:

1. build or reuse the task's dataset (the planners suite's recipe, e.g. the goal-holding
   maze2d-umaze-dwell);
2. train every method family separately per training seed — BC, the Diffuser with a value function, the
   Decision Diffuser, the Trajectory Diffuser — all with the same optimizer steps × batch, wall time in
   each run's ``cost.json``;
3. score every method × setting of its declared grid on the **validation** env seeds, for every training
   seed; per method keep the setting with the best validation mean (the test episodes unseen);
4. score each method's chosen setting on the **test** env seeds — the same episodes for every method —
   and pair the episodes: differences against DD at its full DDPM chain and against BC;
5. time each chosen method's plan at batch 1, one thread, interleaved rounds (median and p99);
6. write ``<results-dir>/planners_protocol_<task>.json`` (shared schema: one validation row per method ×
   setting, one test row per method) and ``<plot-dir>/planners_protocol_<task>.png``.

Finished training runs and evaluations are reused (``<work>/<task>/...``), so an interrupted protocol
resumes; a run folder trained with another recipe stops the run with the differing fields named (move it
aside to retrain). The compared methods: BC, Diffuser (value-guided), DD at DDPM-N (the reference),
DDIM-10 and DDIM-4, the Trajectory Diffuser and its draft alone.

    OMP_NUM_THREADS=1 nice -n 10 python bench/bench_planners.py --task hopper-medium --train-seeds 0 1 2
    python bench/bench_planners.py --quick --work /tmp/p --results-dir /tmp/p --plot-dir /tmp/p  # ~1 min
    python bench/bench_planners.py --task maze2d-umaze --plot-only   # redraw a PNG from its JSON

On a machine with n cores, ``--train-only <family>`` runs and ``--shard i/n`` runs (one process per core)
share the training and the evaluations; the final unsharded run, alone on the machine, only times the
plans and writes the rows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fastpolicy.utils.args import parse_dataclass_args


@dataclass
class Args:
    task: str = "maze2d-umaze"
    """task card name"""
    store: str | None = None
    """dataset store (default: <work>/<task>/data, built there with the planners suite's recipe)"""
    dataset_size: int = 100_000
    work: str = "runs/bench/planners_protocol"
    steps: int = 8000
    """optimizer steps of every method (the same for all: equal steps × batch)"""
    batch_size: int = 128
    lr: float = 1e-3
    horizon: int = 16
    """planning horizon H of every planner"""
    train_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """one training run per method family and seed"""
    validation_seeds: list[int] = field(default_factory=lambda: [100, 101, 102])
    """env seeds s·1000 + i the inference settings are chosen on (disjoint from the test seeds)"""
    validation_episodes: int = 4
    """episodes per validation seed"""
    test_seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    test_episodes: int = 5
    """episodes per test seed (4 × 5 = 20 paired test episodes)"""
    latency_rounds: int = 5
    latency_calls: int = 40
    """timed plans per method per round (5 × 40 = 200 samples per method)"""
    td_draft_modes: list[str] = field(default_factory=lambda: ["autoregressive", "one-pass"])
    """one Trajectory Diffuser training run (and its draft alone) per draft mode: ``autoregressive`` (the
    reference's, H−1 transformer calls) and ``one-pass`` (one call). Both by default: the refined
    autoregressive TD planned only 2.7× faster than DD-200 (maze2d-umaze, seed 0, batch 1: 12.2 vs 32.8 ms),
    its 15 draft calls being the plan; the one-pass TD is the fast-by-design variant"""
    threads: int = 1
    max_episode_steps: int | None = None
    """cut episodes short (smoke runs only; scores then mean little)"""
    train_only: str | None = None
    """train (or resume) just this family (bc, diffuser, decision-diffuser, trajectory-diffuser,
    trajectory-diffuser-one-pass) for every training seed and exit: run several side by side to use more
    cores, then the protocol reuses them"""
    shard: str | None = None
    """``i/n``: evaluate only every n-th validation / test unit (from i) and stop before timing, reading the
    other shards' units from the cache; run n shards side by side (one per core), then once unsharded,
    alone on the machine, to time the plans and write the rows"""
    quick: bool = False
    """toy sizes (tiny data, nets, steps, episodes; 2 entries per grid): the protocol's mechanics in about
    a minute, not its numbers"""
    results_dir: str = "bench/results"
    plot_dir: str = "docs"
    plot_only: bool = False
    """train and evaluate nothing: redraw ``<plot-dir>/planners_protocol_<task>.png`` from
    ``<results-dir>/planners_protocol_<task>.json`` as it is"""


PUBLISHED: dict[tuple[str, str], float] = {
    ("diffuser", "hopper-medium"): 74.3, ("diffuser", "walker2d-medium"): 79.6,
    ("diffuser", "maze2d-umaze"): 113.9, ("diffuser", "maze2d-medium"): 121.5,
    ("decision-diffuser", "hopper-medium"): 79.3, ("decision-diffuser", "walker2d-medium"): 82.5,
}
"""Published D4RL normalized scores by (family, task): Janner et al. 2022 (Diffuser, Tables 1-2) and Ajay et
al. 2023 (Decision Diffuser, Table 1). Ours train on the task card's locally generated data (maze2d: the
goal-holding ``-dwell`` recipe), not on D4RL's files, so the ratio is a sanity line, not a replication."""

QUICK: dict[str, Any] = {"dataset_size": 2000, "steps": 20, "batch_size": 16, "horizon": 4,
                         "validation_seeds": [100], "validation_episodes": 2, "test_seeds": [0, 1],
                         "test_episodes": 2, "latency_rounds": 2, "latency_calls": 3, "max_episode_steps": 12}
"""what ``--quick`` sets (besides tiny networks: :data:`QUICK_NETS`)"""

QUICK_NETS: dict[str, dict[str, Any]] = {
    "*": {"backbone_kwargs": {"hidden": 32, "depth": 1}, "critic_hidden": 16, "num_train_timesteps": 10},
    "bc": {"hidden": 32, "depth": 1},
    "diffuser": {"sampler": "ddpm:10", "value_hidden": 16},
    "state": {"sampler": "ddpm:10", "idm_hidden": 16, "d_model": 16, "d_ff": 16, "n_layers": 1},
}


def parse_args() -> Args:
    return parse_dataclass_args(Args, __doc__.split("\n")[0])


def family_options(family: str, args: Args) -> dict[str, Any]:
    """Options of a family's training run: the planners share H and Ta = 1; the Diffuser trains its value
    function; BC regresses one action from one observation."""
    planner = {"pred_horizon": args.horizon, "action_horizon": 1}
    out: dict[str, Any] = {
        "bc": {"obs_horizon": 1, "pred_horizon": 1, "action_horizon": 1},
        "diffuser": {**planner, "value_guidance": True},
        "decision-diffuser": dict(planner),
        "trajectory-diffuser": dict(planner),
        "trajectory-diffuser-one-pass": {**planner, "draft_mode": "one-pass"},
    }[family]
    if args.quick:
        if family == "bc":
            out.update(QUICK_NETS["bc"])
        else:
            own = QUICK_NETS["diffuser" if family == "diffuser" else "state"]
            out.update(QUICK_NETS["*"], **own)
            if family == "decision-diffuser":
                for key in ("d_model", "d_ff", "n_layers"):
                    out.pop(key)
    return out


def main(args: Args) -> None:
    from tqdm.auto import tqdm

    from fastpolicy.bench.methods import ensure_dataset
    from fastpolicy.bench.planners import planner_train_config
    from fastpolicy.bench.planners_protocol import (
        FAMILIES,
        apply_setting,
        cached_record,
        check_disjoint,
        ensure_run,
        owns_unit,
        parse_shard,
        protocol_methods,
        score_record,
        select_settings,
        setting_key,
    )
    from fastpolicy.bench.runner import obs_windows_from_store
    from fastpolicy.bench.suites import SUITES
    from fastpolicy.envs.registry import get_task
    from fastpolicy.evaluation.results import read_results, write_results

    if args.plot_only:
        rows = [r for r in read_results(Path(args.results_dir) / f"planners_protocol_{args.task}.json")
                if r["split"] == "test"]
        print(f"wrote {plot(rows, Path(args.plot_dir) / f'planners_protocol_{args.task}.png', args.task)}")
        return
    if args.quick:
        args = dataclasses.replace(args, **{k: v for k, v in QUICK.items()})
    shard = parse_shard(args.shard) if args.shard is not None else None
    check_disjoint(args.validation_seeds, args.test_seeds, max(args.validation_episodes, args.test_episodes))
    torch.set_num_threads(args.threads)
    spec = get_task(args.task)
    if args.max_episode_steps is not None:
        spec = dataclasses.replace(spec, max_episode_steps=args.max_episode_steps)
    work = Path(args.work) / args.task
    store = Path(args.store) if args.store else work / "data"
    if not (store / "zarr.json").exists():
        store = ensure_dataset(args.task, store, args.dataset_size,
                               recipe=SUITES["planners"].dataset_recipes.get(args.task))

    # --- 2. training: every family, every seed, the same steps × batch -------------------------------
    from fastpolicy.policies.planner_configs import StatePlannerConfig

    n_levels = family_options("decision-diffuser", args).get("num_train_timesteps",
                                                             StatePlannerConfig.num_train_timesteps)
    methods = protocol_methods(n_levels, quick=args.quick, td_draft_modes=args.td_draft_modes)
    families = list(dict.fromkeys(m.family for m in methods))
    if args.train_only is not None:
        if args.train_only not in FAMILIES:
            raise SystemExit(f"--train-only must be one of {sorted(FAMILIES)}, got {args.train_only!r}")
        families = [args.train_only]
    trained: dict[tuple[str, int], tuple[Any, float]] = {}
    for family in families:
        for seed in args.train_seeds:
            print(f"[protocol] {family} seed {seed}: {args.steps} steps × batch {args.batch_size}",
                  flush=True)
            config = planner_train_config(args.steps, args.batch_size, args.lr, seed=seed,
                                          progress=not args.quick)
            trained[family, seed] = ensure_run(store, work / family / f"seed{seed}", FAMILIES[family],
                                               family_options(family, args), config, args.task)
    if args.train_only is not None:
        return
    cache = work / "evals"

    def record(index, method, setting, seed, split, seeds, episodes, may_compute=True):
        policy = apply_setting(trained[method.family, seed][0], setting)
        key = setting_key(setting)

        def compute():
            return score_record(policy, spec, method.name, key, seed, split, seeds, episodes)

        return cached_record(cache, method.name, key, seed, split, seeds, episodes, policy.checkpoint_step,
                             compute if may_compute and owns_unit(index, shard) else None,
                             checkpoint_hash=getattr(policy, "checkpoint_hash", None))

    def missing(records, units, split, seeds, episodes) -> bool:
        """A shard stops where another shard's units are not cached yet (rerun it once they are); units the
        other shards finished while this one ran are read again first."""
        for i, r in enumerate(records):
            if r is None:
                m, s, seed = units[i]
                records[i] = record(i, m, s, seed, split, seeds, episodes, may_compute=False)
        if all(r is not None for r in records):
            return False
        n = sum(r is None for r in records)
        print(f"[protocol] shard {args.shard}: own {split} units done, {n} of other shards' still missing; "
              "rerun once they finish", flush=True)
        return True

    # --- 3. validation: every grid entry, every training seed ------------------------------------------
    units = [(m, s, seed) for m in methods for s in m.settings() for seed in args.train_seeds]
    validation = [record(i, m, s, seed, "validation", args.validation_seeds, args.validation_episodes)
                  for i, (m, s, seed) in enumerate(tqdm(units, desc="validation", disable=args.quick))]
    if missing(validation, units, "validation", args.validation_seeds, args.validation_episodes):
        return
    chosen = select_settings(validation)
    settings = {m.name: next(s for s in m.settings() if setting_key(s) == chosen[m.name][0]) for m in methods}
    print("[protocol] chosen on validation:", {k: v[0] for k, v in chosen.items()}, flush=True)

    # --- 4. test: the chosen setting on the same episodes for every method ----------------------------
    units = [(m, settings[m.name], seed) for m in methods for seed in args.train_seeds]
    test = [record(i, m, s, seed, "test", args.test_seeds, args.test_episodes)
            for i, (m, s, seed) in enumerate(tqdm(units, desc="test", disable=args.quick))]
    if missing(test, units, "test", args.test_seeds, args.test_episodes):
        return
    if shard is not None:
        print(f"[protocol] shard {args.shard}: every evaluation is cached; run once without --shard, "
              "alone on the machine, to time the plans and write the rows", flush=True)
        return

    # --- 5. plan latency of the chosen settings (training seed 0's weights) ---------------------------
    from fastpolicy.bench.planners_protocol import time_plans

    first = args.train_seeds[0]
    chosen_policies = {m.name: apply_setting(trained[m.family, first][0], settings[m.name]) for m in methods}
    windows = obs_windows_from_store(store, 1, batch=1)
    latency = time_plans(chosen_policies, windows, args.latency_rounds, args.latency_calls,
                         progress=not args.quick)

    # --- 6. rows ------------------------------------------------------------------------------------
    rows = protocol_rows(args, methods, validation, test, chosen, settings, latency, trained, chosen_policies)
    path = write_results(Path(args.results_dir) / f"planners_protocol_{args.task}.json", rows)
    test_rows = [r for r in rows if r["split"] == "test"]
    png = plot(test_rows, Path(args.plot_dir) / f"planners_protocol_{args.task}.png", args.task)
    print_table(test_rows)
    print(f"wrote {path} and {png}", flush=True)


def protocol_rows(args: Args, methods, validation, test, chosen, settings, latency, trained,
                  chosen_policies) -> list[dict[str, Any]]:
    """One validation row per method × setting (over training seeds) and one test row per method: its
    score with standard errors, paired differences against DD at its full chain and BC, plan latency,
    network calls per plan, training cost."""
    import numpy as np

    from fastpolicy.bench.planners import planner_extra
    from fastpolicy.bench.planners_protocol import paired_difference, summarize_method
    from fastpolicy.envs.registry import get_task
    from fastpolicy.evaluation.results import make_row

    kind = {"score_kind": get_task(args.task).score.get("kind", "return")}   # what the scores are (the plot)
    rows = []
    for m in methods:
        own = [r for r in validation if r.method == m.name]
        for key in dict.fromkeys(r.setting for r in own):
            recs = [r for r in own if r.setting == key]
            s = summarize_method(recs)
            rows.append(make_row(args.task, m.name, steps=args.steps, split="validation", setting=key,
                                 selected_on_validation=key == chosen[m.name][0], **s, **kind))
    reference_dd = next(m.name for m in methods if m.name.startswith("decision-diffuser-ddpm"))
    test_by = {m.name: [r for r in test if r.method == m.name] for m in methods}
    for m in methods:
        seconds = [trained[m.family, seed][1] for seed in args.train_seeds]
        policy = chosen_policies[m.name]
        extra = planner_extra(policy, None) if hasattr(policy, "distinct_candidates") else {}
        extra.pop("train_seconds", None)
        row = make_row(args.task, m.name, steps=args.steps, split="test", setting=chosen[m.name][0],
                       setting_values=settings[m.name], selected_on_validation=True,
                       validation_score=chosen[m.name][1],
                       validation_seeds=list(args.validation_seeds), **summarize_method(test_by[m.name]),
                       **latency[m.name], family=m.family, batch_size=args.batch_size,
                       samples_seen=args.steps * args.batch_size,
                       train_seconds=float(np.mean(seconds)) if None not in seconds else None,
                       train_seconds_per_seed=seconds, action_horizon=int(policy.action_horizon), **extra,
                       **kind)
        # every control step plans (Ta = 1): the plan latency is the step latency the other tables show
        row.update(step_latency_ms_p50=row["latency_ms_p50"], step_latency_ms_max_p99=row["latency_ms_p99"])
        # fixed keys whatever N is (``dd_full`` names DD at its full DDPM chain), so tables can read them
        for ref, key in ((reference_dd, "dd_full"), ("bc-mlp", "bc")):
            if ref != m.name:
                d = paired_difference(test_by[m.name], test_by[ref])
                row.update({f"diff_vs_{key}_mean": d["mean"], f"diff_vs_{key}_se": d["se"],
                            f"diff_vs_{key}_pairs": d["pairs"]})
        # the published numbers are the references' configurations: the Diffuser and DD at its full chain
        references = (reference_dd, "diffuser-value-guided")
        published = PUBLISHED.get((m.family, args.task)) if m.name in references else None
        if published is not None:
            row.update(published_score=published, fraction_of_published=row["score_mean"] / published)
        row["dd_full_method"] = reference_dd
        row["speedup_vs_dd_full"] = latency[reference_dd]["latency_ms_p50"] / row["latency_ms_p50"]
        if m.family.startswith("trajectory-diffuser") and not m.name.endswith("-draft"):
            row.update(td_verdict(m.name, [d.name for d in methods if d.family == "decision-diffuser"],
                                  test_by, latency, row))
        rows.append(row)
    return rows


def td_verdict(td: str, dd_methods: list[str], test_by, latency, row: dict[str, Any]) -> dict[str, Any]:
    """The issue's two claims for a refined TD, from the same run: it scores at least DD at its full chain
    (paired difference ≥ −1 SE) while planning ≥ 10× faster; and, against the *fastest* DD sampler that
    reaches the TD's score (DD − TD ≥ −1 SE, paired), the TD's speed-up over that sampler (< 1: DD is
    faster at the TD's score)."""
    from fastpolicy.bench.planners_protocol import paired_difference

    out: dict[str, Any] = {
        "td_scores_at_least_dd_full": bool(row["diff_vs_dd_full_mean"] >= -row["diff_vs_dd_full_se"]),
        "td_10x_faster_than_dd_full": bool(row["speedup_vs_dd_full"] >= 10)}
    reaching = []
    for dd in dd_methods:
        d = paired_difference(test_by[dd], test_by[td])
        if d["mean"] >= -d["se"]:
            reaching.append(dd)
    if reaching:
        fastest = min(reaching, key=lambda n: latency[n]["latency_ms_p50"])
        speedup = latency[fastest]["latency_ms_p50"] / row["latency_ms_p50"]
        out.update(fastest_dd_at_td_score=fastest, speedup_vs_fastest_dd_at_td_score=speedup)
    else:
        out.update(fastest_dd_at_td_score=None, speedup_vs_fastest_dd_at_td_score=None)
    return out


def plot(rows: list[dict[str, Any]], png: Path, task: str) -> Path:
    """Score vs planning latency (p50, batch 1) per method, ablation points hollow; error bars are the
    standard error over episodes where the rows have it (the protocol's), else the std.

    Methods are told apart by colour and marker in a legend beside the axes, as in
    :func:`fastpolicy.bench.report.pareto_plot`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastpolicy.bench.report import save_figure, score_label

    fig, ax = plt.subplots(figsize=(9, 4.8))
    colors = plt.get_cmap("tab20").colors
    markers = "os^Dv<>pPhX*"
    points = [r for r in rows if r.get("step_latency_ms_p50") is not None and r.get("score_mean") is not None]
    for i, r in enumerate(points):
        hollow = r.get("ablation", False)
        color = colors[i % len(colors)]
        err = r.get("score_se_episodes", r.get("score_std")) or 0
        ax.errorbar(r["step_latency_ms_p50"], r["score_mean"], yerr=err, fmt=markers[i % len(markers)],
                    color=color, capsize=3, ms=7, mfc="none" if hollow else color,
                    alpha=0.7 if hollow else 1.0, label=r["method"].replace("trajectory-diffuser", "TD"))
    ax.set_xscale("log")
    ax.set_xlabel("planning latency per control step, p50 (ms, batch 1, CPU, log scale)")
    ax.set_ylabel(score_label(points))
    ax.set_title(f"{task}: diffusion planners", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if points:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return save_figure(fig, png)


def print_table(rows: list[dict[str, Any]]) -> None:
    """The markdown table of the test rows: score ± SE (episodes; training seeds), paired differences,
    the setting chosen on validation, calls per plan, plan latency."""
    refs = [("DD full chain", "dd_full"), ("BC", "bc")]
    print("| method | score | ± SE ep. | ± SE seeds | " + " | ".join(f"Δ vs {t}" for t, _ in refs)
          + " | chosen on validation | denoiser calls | plan p50 ms | plan p99 ms | × DD full |")
    print("|" + "---|" * (9 + len(refs)))

    def num(v: Any, fmt: str = "{:.1f}") -> str:
        return "–" if v is None else fmt.format(v)

    for r in rows:
        diffs = [f"{num(r.get(f'diff_vs_{key}_mean'))} ± {num(r.get(f'diff_vs_{key}_se'))}"
                 if f"diff_vs_{key}_mean" in r else "–" for _, key in refs]
        print(f"| {r['method']} | {num(r['score_mean'])} | {num(r.get('score_se_episodes'))} | "
              f"{num(r.get('score_se_train_seeds'))} | " + " | ".join(diffs) + f" | {r.get('setting')} | "
              f"{r.get('denoiser_calls_per_plan', '–')} | {num(r.get('latency_ms_p50'), '{:.2f}')} | "
              f"{num(r.get('latency_ms_p99'), '{:.2f}')} | {num(r.get('speedup_vs_dd_full'))} |")


if __name__ == "__main__":
    main(parse_args())
