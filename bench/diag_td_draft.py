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
  true next state (its floor) and BC's action regression on the same states (what a regression reaches).

Measured on maze2d-medium (docs/benchmarks.md): unscaled drafts explained under 20 % of the velocity
change (action RMSE 0.68–0.70, BC 0.51); drafts whose offsets are scaled by the data's k-step spread
(``draft_offset_std``) explain about 25–30 %. Compare two sets of runs with ``--work`` (e.g. the runs kept
from before a recipe change). Output: a printed table and ``--out`` JSON.
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
        draft, _ = policy.draft(obs_n[:, :1], returns[:, :1], length=2)
        nxt = policy.unnormalize_obs(draft[:, 1])
        change = (obs_raw[:, 1] - obs_raw[:, 0]).double()
        err = (nxt - obs_raw[:, 1]).double()
        r2 = 1.0 - err.square().mean(0) / change.var(0, unbiased=False).clamp_min(1e-12)
        a_draft = policy.idm.action(obs_raw[:, :1], nxt[:, None])[:, 0].clamp(-1, 1)
        a_true = policy.idm.action(obs_raw[:, :1], obs_raw[:, 1:2])[:, 0].clamp(-1, 1)
        target = act_raw[:, 0]
    return {"one_step_r2": [float(v) for v in r2],
            "action_rmse_via_draft": float((a_draft - target).square().mean().sqrt()),
            "action_rmse_via_true_next_state": float((a_true - target).square().mean().sqrt())}


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
    horizon = load_policy(runs[0][2]).config.pred_horizon
    data = planner_dataset(store, horizon, load_policy(runs[0][2]).config.discount)
    batch = data.sample_batch(np.random.default_rng(123).integers(0, len(data), args.windows))
    report: dict[str, Any] = {"task": args.task, "windows": args.windows, "runs": [], "bc": {}}
    first_work = Path(args.work[0]) / args.task
    for seed in args.seeds:
        if (first_work / "bc" / f"seed{seed}").exists():
            bc = load_policy(first_work / "bc" / f"seed{seed}").eval()
            report["bc"][seed] = regression_action_rmse(bc, batch)
            print(f"bc seed {seed}: action RMSE {report['bc'][seed]:.3f}")
    for work, family, run in runs:
        policy = load_policy(run).eval()
        row = {"work": str(work), "family": family, "train_seed": int(run.name.removeprefix("seed")),
               "offset_scaled": policy.config.draft_offset_std is not None, **draft_errors(policy, batch)}
        report["runs"].append(row)
        print(f"{row['work']} {family} seed {row['train_seed']} (scaled: {row['offset_scaled']}): "
              f"one-step R² "
              f"{np.round(row['one_step_r2'], 3).tolist()} | action RMSE via draft "
              f"{row['action_rmse_via_draft']:.3f} (via true next state "
              f"{row['action_rmse_via_true_next_state']:.3f})", flush=True)
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
