"""Is the Trajectory Diffuser's draft precise where the action is read? Offline, paired, per training seed.

A diagnostic, not a benchmark. The TD's action is the inverse dynamics of the plan's first two states, and
with one action per plan the inverse dynamics reads it off the one-step *change* of the state (on maze2d
the velocity change is 0.24 × the action). So a draft can look accurate — its positions within a few
millimetres — and still carry no action. For each TD run of the planners protocol
(``bench/bench_planners.py``) this measures, on the same data windows (conditioned on their own
return-to-go):

- the one-step R² per state dimension: 1 − E[(ŝ₁ − s₁)²] / Var(s₁ − s₀), the share of the one-step change
  the draft predicts (0: no better than "nothing changes on average");
- the action error through the draft: RMSE of IDM(s₀, ŝ₁) against the data's action, beside the IDM on the
  true next state (its floor) and BC's action regression on the same states (what a regression reaches);
- the same two after the planner's refinement (its default k and starting level, fixed noise): what the
  denoiser keeps of the draft's one-step change.

Measured on maze2d-medium (docs/benchmarks.md): unscaled drafts explained under 20 % of the velocity
change (action RMSE 0.68–0.70, BC 0.51); drafts whose offsets are scaled by the data's k-step spread
(``draft_offset_std``) explain 22–31 %; one refinement step of an x0 denoiser threw that away again
(refined action RMSE 0.70–0.76), a v denoiser's keeps most of it (0.61–0.65, draft 0.59–0.62). Compare
recipes with several ``--work`` folders (e.g. the runs kept from before a recipe change). Output: a
printed table and ``--out`` JSON.
Usage: ``python bench/diag_td_draft.py --task maze2d-medium --store datasets/store/maze2d-medium-dwell``
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

TD_FAMILIES = ("trajectory-diffuser", "trajectory-diffuser-one-pass")


@dataclasses.dataclass
class Args:
    task: str = "maze2d-medium"
    store: str | None = None
    """the protocol's dataset (default: datasets/store/<task>)"""
    work: list[str] = dataclasses.field(default_factory=lambda: ["runs/bench/planners_protocol"])
    """protocol work folders to read TD runs from (several: one table row per folder and run)"""
    seeds: tuple[int, ...] = (0, 1, 2)
    windows: int = 2048
    """data windows (the same for every run)"""
    out: str | None = None
    """JSON output (default: docs/diag_td_draft_<task>.json)"""


def draft_errors(policy: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """One-step R² per state dimension and the action RMSE through the draft and through the true next
    state, of one Trajectory Diffuser on ``batch`` (its windows conditioned on their own return-to-go)."""
    with torch.inference_mode():
        obs_raw, act_raw, obs_n, _, returns = policy._batch_tensors(batch)
        draft, _ = policy.draft(obs_n[:, :1], returns[:, :1])
        change = (obs_raw[:, 1] - obs_raw[:, 0]).double()
        target = act_raw[:, 0]

        def read(plan: torch.Tensor) -> tuple[list[float], float]:
            nxt = policy.unnormalize_obs(plan[:, 1])
            err = (nxt - obs_raw[:, 1]).double()
            r2 = 1.0 - err.square().mean(0) / change.var(0, unbiased=False).clamp_min(1e-12)
            action = policy.idm.action(obs_raw[:, :1], nxt[:, None])[:, 0].clamp(-1, 1)
            return [float(v) for v in r2], float((action - target).square().mean().sqrt())

        r2, rmse = read(draft)
        out = {"one_step_r2": r2, "action_rmse_via_draft": rmse}
        if policy.config.refine_steps > 0:        # what the refinement, at the planner's default, keeps of it
            refined, _ = policy.refine(draft, torch.Generator().manual_seed(0))
            out["one_step_r2_refined"], out["action_rmse_refined"] = read(refined)
        a_true = policy.idm.action(obs_raw[:, :1], obs_raw[:, 1:2])[:, 0].clamp(-1, 1)
        out["action_rmse_via_true_next_state"] = float((a_true - target).square().mean().sqrt())
    return out


def regression_action_rmse(policy: Any, batch: Mapping[str, torch.Tensor]) -> float:
    """RMSE of a state → action policy (BC) on the windows' first states against their actions."""
    obs = np.asarray(batch["obs"][:, 0], dtype=np.float32)
    actions = policy.new_session(batch_size=len(obs), seed=0).act(obs)
    return float(np.sqrt(((np.clip(actions, -1, 1) - np.asarray(batch["action"][:, 0])) ** 2).mean()))


def main(args: Args) -> dict[str, Any]:
    from fastpolicy.data.store import EpisodeStore
    from fastpolicy.policies.checkpoint import load_policy
    from fastpolicy.policies.planners.data import planner_dataset
    from fastpolicy.utils.atomic import atomic_file

    torch.set_num_threads(1)
    store = EpisodeStore.open(Path(args.store or f"datasets/store/{args.task}"))
    runs = _td_runs([Path(w) / args.task for w in args.work], args.seeds)
    if not runs:
        raise SystemExit(f"no Trajectory Diffuser runs of {args.task} under {args.work}")
    first = load_policy(runs[0][2]).config
    data = planner_dataset(store, first.pred_horizon, first.discount)
    batch = data.sample_batch(np.random.default_rng(123).integers(0, len(data), args.windows))
    report: dict[str, Any] = {"task": args.task, "windows": args.windows, "runs": [], "bc": {}}
    for seed in args.seeds:   # BC's runs: from the first work folder that has them
        bc_runs = [Path(w) / args.task / "bc" / f"seed{seed}" for w in args.work]
        bc_run = next((r for r in bc_runs if r.exists()), None)
        if bc_run is not None:
            report["bc"][seed] = regression_action_rmse(load_policy(bc_run).eval(), batch)
            print(f"bc seed {seed}: action RMSE {report['bc'][seed]:.3f}")
    for work, family, run in runs:
        policy = load_policy(run).eval()
        row = {"work": str(work), "family": family, "train_seed": int(run.name.removeprefix("seed")),
               "offset_scaled": policy.config.draft_offset_std is not None,
               "one_pass_prefixes": (policy.config.one_pass_prefixes if policy.config.draft_mode == "one-pass"
                                     else None),
               **draft_errors(policy, batch)}
        report["runs"].append(row)
        print(f"{row['work']} {family} seed {row['train_seed']} (scaled: {row['offset_scaled']}, "
              f"prefixes: {row['one_pass_prefixes']}): "
              f"one-step R² "
              f"{np.round(row['one_step_r2'], 3).tolist()} | action RMSE via draft "
              f"{row['action_rmse_via_draft']:.3f} (via true next state "
              f"{row['action_rmse_via_true_next_state']:.3f})"
              + (f" | refined: R² {np.round(row['one_step_r2_refined'], 3).tolist()}, action RMSE "
                 f"{row['action_rmse_refined']:.3f}" if "action_rmse_refined" in row else ""), flush=True)
    out = Path(args.out or f"docs/diag_td_draft_{args.task}.json")
    with atomic_file(out, "w") as f:
        f.write(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return report


def _td_runs(works: Sequence[Path], seeds: Sequence[int]) -> list[tuple[Path, str, Path]]:
    return [(w.parent, family, w / family / f"seed{s}") for w in works for family in TD_FAMILIES
            for s in seeds if (w / family / f"seed{s}" / "latest").exists()]


if __name__ == "__main__":
    from fastpolicy.utils.args import parse_dataclass_args

    main(parse_dataclass_args(Args, __doc__.split("\n")[0]))
