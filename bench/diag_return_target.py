"""Does a return-conditioned planner plan faster gaits for higher return targets? Offline, per training seed.

A diagnostic, not a benchmark. On MuJoCo locomotion the return is almost all forward velocity, so a plan
that follows its return target should plan a faster gait for a higher target. For the planners protocol's
return-conditioned methods (``bench/bench_planners.py``: those whose runs are state planners — DD at its
samplers, the Trajectory Diffuser refined and its draft alone), each in its setting chosen on validation
(the protocol's test rows name it and the run's family), this plans from the same
data states and noise at every return target multiple of the protocol's grid and measures

- the planned forward velocity: at the plan's next state and averaged over the plan's states 1..H−1
  (every candidate, raw units), beside the data's own velocity after those states and the multiple of
  the data's largest return-to-go the data's own windows carry;
- the closed-loop validation score of the same setting at that target, where the protocol's cache has it.

Measured on walker2d-medium (docs/benchmarks.md). Output: a printed table and ``--out`` JSON.
Usage: ``python bench/diag_return_target.py --task walker2d-medium --store datasets/store/walker2d-medium``
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclasses.dataclass
class Args:
    task: str = "walker2d-medium"
    store: str | None = None
    """the protocol's dataset (default: datasets/store/<task>)"""
    work: str = "runs/bench/planners_protocol"
    results: str | None = None
    """the protocol's rows, for each method's chosen setting
    (default: bench/results/planners_protocol_<task>.json)"""
    seeds: tuple[int, ...] = (0, 1, 2)
    multiples: tuple[float, ...] = (0.3, 0.5, 0.8, 1.1)
    """return targets, as multiples of the data's largest return-to-go (the protocol's grid)"""
    states: int = 64
    """data states planned from (the same states and noise for every method, seed and target)"""
    out: str | None = None
    """JSON output (default: docs/diag_return_target_<task>.json)"""


def planned_velocity(policy: Any, states: np.ndarray, velocity_index: int,
                     noise_seed: int = 11) -> dict[str, float]:
    """Mean planned forward velocity (raw units) of ``policy`` from ``states``: at the next state and over
    the plan's states 1..H−1, over every state and candidate."""
    plans = policy.plan_states(np.asarray(states, np.float32)[:, None],
                               generator=torch.Generator().manual_seed(noise_seed))
    with torch.inference_mode():
        raw = policy.unnormalize_obs(plans[..., policy.plan_dim_offset:]).double()
    vel = raw[:, 1:, velocity_index]
    return {"next_state": float(vel[:, 0].mean()), "plan": float(vel.mean())}


def validation_score(cache: Path, method: str, setting: dict[str, Any], train_seed: int, policy: Any,
                     seeds: list[int], episodes: int) -> float | None:
    """The protocol's cached validation mean of ``method`` in ``setting`` for ``policy``'s checkpoint (None
    when the cache has no record of it on those episodes). A grid entry at the default return target may
    leave the target unnamed in its key, so that key is tried too."""
    from fastpolicy.bench.planners_protocol import cached_record, setting_key

    keys = [setting_key(setting)]
    if setting.get("target_return_multiple") == policy.config.target_return_multiple:
        keys.append(setting_key({k: v for k, v in setting.items() if k != "target_return_multiple"}))
    for key in keys:
        record = cached_record(cache, method, key, train_seed, "validation", seeds, episodes,
                               policy.checkpoint_step, None,
                               checkpoint_hash=getattr(policy, "checkpoint_hash", None))
        if record is not None:
            return float(statistics.mean(record.scores.values()))
    return None


def main(args: Args) -> dict[str, Any]:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_planners import Args as ProtocolArgs
    from diag_diffuser_seeds import locomotion_step

    from fastpolicy.bench.planners_protocol import apply_setting, setting_key
    from fastpolicy.data.store import EpisodeStore
    from fastpolicy.envs.registry import get_task
    from fastpolicy.evaluation.results import read_results
    from fastpolicy.policies.checkpoint import load_policy
    from fastpolicy.policies.planners.data import planner_dataset
    from fastpolicy.policies.planners.state import StatePlanner
    from fastpolicy.utils.atomic import atomic_file

    torch.set_num_threads(1)
    protocol = ProtocolArgs()
    work = Path(args.work) / args.task
    store = EpisodeStore.open(Path(args.store or f"datasets/store/{args.task}"))
    rows = read_results(Path(args.results or f"bench/results/planners_protocol_{args.task}.json"))
    families = {r["family"] for r in rows if r["split"] == "test"}
    planners = {family: load_policy(work / family / f"seed{args.seeds[0]}").eval() for family in families}
    conditioned = {family for family, policy in planners.items() if isinstance(policy, StatePlanner)}
    chosen = {r["method"]: (r["family"], dict(r["setting_values"])) for r in rows
              if r["split"] == "test" and r["family"] in conditioned}
    if not chosen:
        raise SystemExit(f"no return-conditioned test rows of {args.task} in the protocol's results")
    first = planners[next(iter(chosen.values()))[0]]
    obs_dim = first.config.obs_dim
    _, velocity_index = locomotion_step(get_task(args.task).env_id, obs_dim)
    if velocity_index is None:
        raise SystemExit(f"{args.task}: the observation is not MuJoCo locomotion's qpos[1:], qvel: "
                         "no forward velocity to read")
    h = first.config.pred_horizon
    data = planner_dataset(store, h, first.config.discount)
    batch = data.sample_batch(np.random.default_rng(321).integers(0, len(data), args.states))
    _, _, _, _, returns = first._batch_tensors(batch)
    states = np.asarray(batch["obs"][:, 0], np.float32)
    report: dict[str, Any] = {
        "task": args.task, "states": args.states, "horizon": h, "multiples": list(args.multiples),
        "data": {"next_state_velocity": float(np.asarray(batch["obs"][:, 1, velocity_index]).mean()),
                 "plan_velocity": float(np.asarray(batch["obs"][:, 1:h, velocity_index]).mean()),
                 "own_return_multiple_mean": float((returns[:, 0] / first.config.return_max).mean())},
        "rows": []}
    print(f"data: velocity next {report['data']['next_state_velocity']:.2f}, over the window "
          f"{report['data']['plan_velocity']:.2f}; the windows' own return-to-go is "
          f"{report['data']['own_return_multiple_mean']:.2f} × the largest", flush=True)
    for method, (family, setting) in chosen.items():
        for seed in args.seeds:
            policy = load_policy(work / family / f"seed{seed}").eval()
            for m in args.multiples:
                probe = {**setting, "target_return_multiple": m}
                if probe.get("trim_draft"):
                    probe["trim_draft"] = False      # the whole draft, to read its velocity over the horizon
                vel = planned_velocity(apply_setting(policy, probe), states, velocity_index)
                score = validation_score(work / "evals", method, {**setting, "target_return_multiple": m},
                                         seed, policy, protocol.validation_seeds,
                                         protocol.validation_episodes)
                row = {"method": method, "train_seed": seed, "target_return_multiple": m,
                       "chosen_setting": setting_key(setting),
                       **{f"planned_velocity_{k}": v for k, v in vel.items()},
                       "validation_score": score}
                report["rows"].append(row)
                print(f"{method:36s} seed {seed} target {m:.1f}×: planned velocity next "
                      f"{vel['next_state']:.2f}, plan {vel['plan']:.2f}; validation "
                      + (f"{row['validation_score']:.1f}" if row["validation_score"] is not None else "–"),
                      flush=True)
    out = Path(args.out or f"docs/diag_return_target_{args.task}.json")
    with atomic_file(out, "w") as f:
        f.write(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    from fastpolicy.utils.args import parse_dataclass_args

    main(parse_dataclass_args(Args, __doc__.split("\n")[0]))
