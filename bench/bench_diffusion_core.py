"""Which diffusion core should a teacher use? Parametrisation × horizons × backbone × temperature, measured.

The defaults users get (``DiffusionPolicyConfig.prediction_type``, the task cards' horizons, the
sampling temperature) are set from this table. Every variant of a task is trained with the same data,
optimizer steps, batch and learning rate, then evaluated with each sampler at each temperature on
*validation* seeds (``--seeds``, default 100: disjoint from the task cards' evaluation seeds 0-2, on
which the chosen defaults are then reported by ``bench_d4rl.py`` / the suites). BC with the same
horizons is trained alongside, as the baseline a teacher must beat.

Factors (one run per prediction type × horizon set × backbone; temperatures and samplers are
inference-time, so they are evaluated on the same run):

* ``prediction_type``: ``epsilon`` / ``sample`` / ``v_prediction``;
* horizons: "card", the task cards' before this study (To 2 / Tp 16; Ta 2 for locomotion, 8 for maze /
  AGV), and "alt" (locomotion: To 1 / Tp 4 / Ta 1, since velocities are in the observation; maze / AGV:
  To 1 / Tp 8 / Ta 4);
* backbone: ``mlp`` everywhere, ``unet-small`` where ``--unet`` names the task (10× the cost per step);
* temperature 1 and 0.5 (CleanDiffuser's ``temperature``; 0 = deterministic from x_T = 0 with
  ``--temperatures``), samplers DDPM-100 and DDIM-10.

Rows go to ``bench/results/diffusion_core_<task>.json`` (one file per task, so tasks can run in
parallel processes); runs are reused when complete (``runs/bench/diffusion_core/<task>/<variant>``).

    nice -n 3 .venv/bin/python bench/bench_diffusion_core.py --task maze2d-umaze agv-simple-static
    nice -n 3 .venv/bin/python bench/bench_diffusion_core.py --task walker2d-medium hopper-medium
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


@dataclass(frozen=True)
class TaskSetup:
    """Data and budget of one task (the same for every variant)."""

    recipe: str
    """dataset recipe, built at datasets/store/<recipe> when missing"""
    card_horizons: tuple[int, int, int]
    """(To, Tp, Ta) of the task card before this study ("card"; fixed here so reruns compare the same)"""
    alt_horizons: tuple[int, int, int]
    """(To, Tp, Ta) compared with it ("alt")"""
    steps: int
    batch_size: int = 256
    lr: float = 1e-3
    size: int | None = None
    """dataset size (None: the recipe's default)"""
    episodes: int = 10
    bc_steps: int | None = None
    samplers: tuple[str, ...] = ("ddpm:100", "ddim:10")
    temperatures: tuple[float, ...] = (1.0, 0.5)
    extra: dict[str, Any] = field(default_factory=dict)


TASKS: dict[str, TaskSetup] = {
    "walker2d-medium": TaskSetup("walker2d-medium", (2, 16, 2), (1, 4, 1), steps=5000),
    "hopper-medium": TaskSetup("hopper-medium", (2, 16, 2), (1, 4, 1), steps=5000),
    "halfcheetah-medium": TaskSetup("halfcheetah-medium", (2, 16, 2), (1, 4, 1), steps=5000),
    # the demo's data: D4RL's waypoint controller holding each goal (see docs/benchmarks.md)
    "maze2d-umaze": TaskSetup("maze2d-umaze-dwell", (2, 16, 8), (1, 8, 4), steps=4000, size=100_000),
    "agv-simple-static": TaskSetup("agv-simple-static-expert", (2, 16, 8), (1, 8, 4), steps=4000,
                                   episodes=20),
    "agv-bimodal-block": TaskSetup("agv-bimodal-block-expert", (2, 16, 8), (1, 8, 4), steps=4000,
                                   episodes=20),
}


def variant_name(ptype: str, horizons: str, backbone: str) -> str:
    return f"{ptype}-{horizons}-{backbone}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", nargs="+", default=["maze2d-umaze"], choices=list(TASKS))
    p.add_argument("--prediction-types", nargs="+", default=list(PREDICTION_TYPES), choices=PREDICTION_TYPES)
    p.add_argument("--horizons", nargs="+", default=["card", "alt"], choices=["card", "alt"])
    p.add_argument("--unet", nargs="*", default=[], help="tasks that also train a unet-small teacher")
    p.add_argument("--seeds", type=int, nargs="+", default=[100], help="validation seeds (not the cards')")
    p.add_argument("--episodes", type=int, default=None, help="per seed (default: the task's setup)")
    p.add_argument("--steps", type=int, default=None, help="override every variant's optimizer steps")
    p.add_argument("--samplers", nargs="+", default=None, help="override the task's samplers")
    p.add_argument("--temperatures", type=float, nargs="+", default=None,
                   help="override the task's temperatures (0: deterministic sampling from x_T = 0)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default=str(REPO / "runs" / "bench" / "diffusion_core"))
    p.add_argument("--results", default=str(REPO / "bench" / "results"))
    p.add_argument("--store-root", default=str(REPO / "datasets" / "store"), help="where datasets live")
    p.add_argument("--size", type=int, default=None, help="override the dataset size (smoke tests)")
    p.add_argument("--no-bc", action="store_true", help="skip the BC baseline")
    args = p.parse_args(argv)

    import torch

    from fastpolicy.bench.methods import ensure_dataset
    from fastpolicy.envs.registry import get_task
    from fastpolicy.evaluation import evaluate
    from fastpolicy.evaluation.results import update_results
    from fastpolicy.policies.checkpoint import load_policy
    from fastpolicy.train.offline import train_offline
    from fastpolicy.train.trainer import TrainConfig
    from fastpolicy.utils.checkpoint import read_config

    torch.set_num_threads(args.threads)
    for task_name in args.task:
        setup = TASKS[task_name]
        task = get_task(task_name)
        store = ensure_dataset(task_name, Path(args.store_root) / setup.recipe, args.size or setup.size,
                               recipe=setup.recipe)
        steps = args.steps or setup.steps
        episodes = args.episodes or setup.episodes
        horizon_sets = {"card": setup.card_horizons, "alt": setup.alt_horizons}
        out = Path(args.results) / f"diffusion_core_{task_name}.json"

        jobs: list[tuple[str, str, dict[str, Any], str]] = []   # (name, policy type, options, horizons)
        for hname in args.horizons:
            if not args.no_bc:
                jobs.append((f"bc-{hname}", "bc", {}, hname))
            for ptype in args.prediction_types:
                jobs.append((variant_name(ptype, hname, "mlp"), "diffusion",
                             {"backbone": "mlp", "prediction_type": ptype}, hname))
        if task_name in args.unet:
            jobs.append((variant_name("sample", "card", "unet-small"), "diffusion",
                         {"backbone": "unet-small", "prediction_type": "sample"}, "card"))

        for name, policy_type, options, hname in jobs:
            to, tp, ta = horizon_sets[hname]
            run = Path(args.work) / task_name / name
            t0 = time.perf_counter()
            if not ((run / "latest").exists() and read_config(run)["step"] >= steps):
                cfg = TrainConfig(steps=steps, batch_size=setup.batch_size, lr=setup.lr,
                                  warmup_steps=min(500, steps // 10), checkpoint_every=max(steps // 2, 1),
                                  progress=False, tensorboard=False)
                train_offline(store, run, policy_type,
                              {**options, "obs_horizon": to, "pred_horizon": tp, "action_horizon": ta},
                              cfg, resume=True, task=task_name)
            train_seconds = round(time.perf_counter() - t0, 1)
            policy = load_policy(run)
            common = dict(variant=name, policy_type=policy_type, backbone=options.get("backbone", "mlp"),
                          prediction_type=options.get("prediction_type"), horizons=hname, obs_horizon=to,
                          pred_horizon=tp, action_horizon=ta, train_steps=steps, batch_size=setup.batch_size,
                          lr=setup.lr, dataset=setup.recipe, train_seconds_this_run=train_seconds,
                          split="validation")
            rows = []
            samplers = args.samplers or setup.samplers
            temperatures = args.temperatures or setup.temperatures
            evals = [(None, None)] if policy_type == "bc" else [
                (s, t) for s in samplers for t in temperatures]
            for spec, temperature in evals:
                label, mode = name, policy
                if spec is not None:
                    from fastpolicy.diffusion import SamplerSpec

                    mode = policy.with_sampler(SamplerSpec.parse(spec, temperature=temperature))
                    label = f"{name} {mode.sampler.spec.name}"
                row = evaluate(mode, task, episodes, args.seeds, latency_steps=16, progress=False,
                               method=label, sampler=spec, temperature=temperature, **common)
                row["steps"] = steps
                rows.append(row)
                print(f"{task_name:18s} {label:44s} score {row['score_mean']:6.1f} ± {row['score_std']:5.1f}"
                      f"  success {row['success_rate']:.2f}", flush=True)
            update_results(out, rows, key=lambda r: r["method"])
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
