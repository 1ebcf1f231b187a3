"""Why do a task's Diffuser training seeds disagree in closed loop? Offline, paired measurements per seed.

A diagnostic, not a benchmark: it reads the planners protocol's trained runs and evaluation cache
(``bench/bench_planners.py``) and measures, for every training seed of the Diffuser,

1. **offline errors on the same data windows and the same noise**: the denoising error at every level,
   the first action's error (mean and 99th percentile) and the value function's correlation with the
   return-to-go — what a training seed could have learnt worse;
2. **what value ranking picks** on data states: among C candidates, the top-valued plan against the
   average one, by planned forward velocity and by one-step dynamics consistency (the plan's next state
   against the simulator stepped from the current state with the plan's first action; MuJoCo locomotion
   tasks, whose observation is ``qpos[1:], qvel``);
3. **closed-loop outcomes** from the cache: per setting and seed, the mean score and the episodes under
   ``--low-score`` (on walker2d an episode either walks to the end or falls early).

Measured on walker2d-medium (docs/benchmarks.md): the seeds agree offline to the third digit while their
fall rates differ 1 : 6 and ranking raised them. Output: a printed table and ``--out`` JSON.
Usage: ``python bench/diag_diffuser_seeds.py --task walker2d-medium --store datasets/store/walker2d-medium``
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
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
    seeds: tuple[int, ...] = (0, 1, 2)
    windows: int = 2048
    """data windows for the offline errors (the same windows and noise for every seed)"""
    states: int = 48
    """data states for the ranking probe"""
    candidates: int = 64
    low_score: float = 40.0
    """an episode scoring under this counts as failed (a fall on walker2d)"""
    out: str | None = None
    """JSON output (default: docs/diag_diffuser_seeds_<task>.json)"""


def offline_errors(policy: Any, batch: Mapping[str, torch.Tensor], noise_seed: int = 7) -> dict[str, Any]:
    """Denoising error per level, first-action error and value correlation of one Diffuser on ``batch``.

    Every call with the same ``batch`` and ``noise_seed`` noises the same windows the same way, so two
    training seeds are compared on paired inputs (the spread between seeds is then theirs alone).
    """
    cfg = policy.config
    with torch.inference_mode():
        _, _, obs_n, act_n, returns = policy._batch_tensors(batch)
        x0 = torch.cat([act_n, obs_n], -1)
        state = obs_n[:, 0]
        cond = state if cfg.obs_cond else None
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(noise_seed))
        mask = policy._inpaint_mask(x0)
        per_level, first_action = [], []
        for t in range(cfg.num_train_timesteps):
            level = torch.full((x0.shape[0],), t, dtype=torch.long)
            err = policy.denoising_error(x0, state, cond, noise, level)
            per_level.append(float((err * mask).sum() / mask.sum()))
            first_action.append(err[:, 0, : cfg.action_dim].mean(1))
        mid = first_action[cfg.num_train_timesteps // 2].numpy()
        out: dict[str, Any] = {"denoise_err_per_level": per_level,
                               "denoise_err_mean": float(np.mean(per_level)),
                               "first_action_err_mid_level": float(mid.mean()),
                               "first_action_err_mid_level_p99": float(np.quantile(mid, 0.99))}
        if policy.value is not None:
            v = policy.plan_values(x0).flatten().numpy()
            out["value_corr_with_rtg"] = float(np.corrcoef(v, returns[:, 0].flatten().numpy())[0, 1])
    return out


def ranking_probe(policy: Any, states: np.ndarray, candidates: int,
                  step: Callable[[np.ndarray, np.ndarray], np.ndarray] | None, velocity_index: int | None,
                  obs_scale: np.ndarray) -> dict[str, float]:
    """The top-valued of ``candidates`` plans against the average candidate, over data ``states``.

    ``step(obs, action) -> next obs`` is the simulator from an observation (None: no consistency check);
    the consistency error is the RMS of (planned next state − simulated) / ``obs_scale``.
    """
    view = policy.with_settings(num_candidates=candidates, guide_scale=0.0)
    a_dim = policy.config.action_dim
    top_err, mean_err, top_vel, mean_vel, corr = [], [], [], [], []
    for k, obs in enumerate(states):
        plans = view.plan_states(np.asarray(obs, np.float32)[None, None],
                                 generator=torch.Generator().manual_seed(1000 + k))
        with torch.inference_mode():
            values = view.plan_values(plans).flatten().numpy()
            next_states = view.unnormalize_obs(plans[:, 1, a_dim:]).numpy()
            actions = view.unnormalize_action(plans[:, 0, :a_dim]).numpy()
        best = int(values.argmax())
        if velocity_index is not None:
            top_vel.append(next_states[best, velocity_index])
            mean_vel.append(next_states[:, velocity_index].mean())
        if step is not None:
            simulated = np.stack([step(obs, np.clip(a, -1.0, 1.0)) for a in actions])
            err = np.sqrt((((next_states - simulated) / obs_scale) ** 2).mean(1))
            top_err.append(err[best])
            mean_err.append(err.mean())
            corr.append(np.corrcoef(values, err)[0, 1])
    out = {}
    if top_vel:
        out |= {"planned_velocity_top": float(np.mean(top_vel)),
                "planned_velocity_mean": float(np.mean(mean_vel))}
    if top_err:
        out |= {"dynamics_err_top": float(np.mean(top_err)), "dynamics_err_mean": float(np.mean(mean_err)),
                "corr_value_dynamics_err": float(np.nanmean(corr))}
    return out


def closed_loop_outcomes(cache: Path, method: str, seeds: Sequence[int], low_score: float) -> list[dict]:
    """Per (split, setting, training seed) in the protocol's evaluation cache: mean score, failed episodes."""
    from fastpolicy.bench.planners_protocol import EvalRecord

    rows = []
    for split in ("validation", "test"):
        for setting_dir in sorted((cache / split / method).glob("*")):
            for seed in seeds:
                path = setting_dir / f"train_seed{seed}.json"
                if not path.exists():
                    continue
                record = EvalRecord.from_json(json.loads(path.read_text()))
                scores = np.asarray(list(record.scores.values()), dtype=float)
                rows.append({"split": split, "setting": setting_dir.name, "train_seed": seed,
                             "score_mean": record.mean, "episodes": int(scores.size),
                             "episodes_under_low_score": int((scores < low_score).sum())})
    return rows


def locomotion_step(env_id: str, obs_dim: int):
    """``(step(obs, action) -> next obs, forward-velocity index)`` for MuJoCo locomotion envs whose
    observation is ``qpos[1:], qvel`` (x position excluded); ``(None, None)`` for any other layout."""
    import gymnasium as gym

    env = gym.make(env_id).unwrapped
    env.reset(seed=0)
    model = getattr(env, "model", None)
    if model is None or obs_dim != model.nq - 1 + model.nv:
        return None, None
    nq = model.nq

    def step(obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        env.set_state(np.concatenate([[0.0], obs[: nq - 1]]), obs[nq - 1:])
        return env.step(action)[0]

    return step, nq - 1


def main(args: Args) -> dict[str, Any]:
    from fastpolicy.data.store import EpisodeStore
    from fastpolicy.envs.registry import get_task
    from fastpolicy.policies.checkpoint import load_policy
    from fastpolicy.policies.planners.data import planner_dataset
    from fastpolicy.utils.atomic import atomic_file

    torch.set_num_threads(1)
    work = Path(args.work) / args.task
    store = EpisodeStore.open(Path(args.store or f"datasets/store/{args.task}"))
    policies = {s: load_policy(work / "diffuser" / f"seed{s}").eval() for s in args.seeds}
    first = policies[args.seeds[0]]
    data = planner_dataset(store, first.config.pred_horizon, first.config.discount)
    batch = data.sample_batch(np.random.default_rng(123).integers(0, len(data), args.windows))
    obs = np.asarray(store.array("obs"))
    states = obs[np.random.default_rng(5).integers(0, len(obs), args.states)]
    step, velocity_index = locomotion_step(get_task(args.task).env_id, obs.shape[1])
    scale = obs.std(0) + 1e-6
    report: dict[str, Any] = {"task": args.task, "windows": args.windows, "states": args.states,
                              "candidates": args.candidates, "seeds": {}}
    for s, policy in policies.items():
        report["seeds"][s] = {**offline_errors(policy, batch),
                              **ranking_probe(policy, states, args.candidates, step, velocity_index, scale)}
        r = report["seeds"][s]
        print(f"seed {s}: denoise err {r['denoise_err_mean']:.4f} | first action "
              f"{r['first_action_err_mid_level']:.4f} (p99 {r['first_action_err_mid_level_p99']:.4f})"
              f" | value corr {r.get('value_corr_with_rtg', float('nan')):.3f}"
              + (f" | dynamics err top-valued {r['dynamics_err_top']:.3f} vs {r['dynamics_err_mean']:.3f}"
                 if "dynamics_err_top" in r else "")
              + (f" | planned velocity {r['planned_velocity_top']:.2f} vs {r['planned_velocity_mean']:.2f}"
                 if "planned_velocity_top" in r else ""), flush=True)
    report["closed_loop"] = closed_loop_outcomes(work / "evals", "diffuser-value-guided", args.seeds,
                                                 args.low_score)
    for row in report["closed_loop"]:
        print(f"{row['split']:10s} {row['setting']:36s} seed {row['train_seed']}: {row['score_mean']:5.1f}, "
              f"{row['episodes_under_low_score']}/{row['episodes']} under {args.low_score:g}")
    out = Path(args.out or f"docs/diag_diffuser_seeds_{args.task}.json")
    with atomic_file(out, "w") as f:
        f.write(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    from fastpolicy.utils.args import parse_dataclass_args

    main(parse_dataclass_args(Args, __doc__.split("\n")[0]))
