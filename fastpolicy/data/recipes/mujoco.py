"""D4RL-style MuJoCo locomotion datasets (hopper / halfcheetah / walker2d) on gymnasium v5 envs.

D4RL's recipe (``generate_mujoco_datasets``: an rlkit SAC run, checkpoints, rollouts), scaled to this
machine and rebuilt on stable-baselines3 SAC (:mod:`fastpolicy.rl.sac`):

``random``         uniform actions over the action box.
``medium``         the *first* checkpoint whose mean (deterministic) evaluation return is ≥ ~1/3 of
                   D4RL's REF_MAX (hopper 1064, halfcheetah 3858, walker2d 1532), rolled out with
                   *stochastic* actions.
``medium-replay``  the SAC run's replay buffer up to that checkpoint (needs the run directory).
``expert``         the run's last checkpoint, rolled out stochastically, when it is in the expert band
                   (mean return ≥ ``EXPERT_FRACTION`` · REF_MAX); otherwise the recipe raises.
``medium-expert``  ``medium`` and ``expert`` concatenated (half the size each; D4RL: 1M + 1M).

Rollouts use the committed actors ``datasets/behavior/<env>-<band>.safetensors`` (+ ``.json``), so any
rollout dataset is rebuilt from a fresh clone in minutes without the SAC run. ``medium-replay`` needs
the run directory (``runs/sac-<env>`` or ``$FASTPOLICY_SAC_RUNS/sac-<env>``), which is not committed.

Per step ``t``: ``obs`` (before the action), ``action`` (env units), ``reward``, ``next_obs``,
``terminal`` (true termination only), ``timeout`` (the 1000-step time limit only; exclusive with
terminal), ``infos/qpos``, ``infos/qvel`` (simulator state at ``obs``, float64) and
``infos/action_log_probs`` (log-density of the action under the behaviour policy: the tanh-squashed
Gaussian for SAC actors, ``-Σ log(high - low)`` for uniform actions). The last episode of a
``--size``-limited rollout ends with neither flag (it was cut by the size, as in D4RL's files).
Deterministic for a given seed: the env is seeded once, actions come from a seeded ``torch.Generator``
(or ``numpy`` generator for ``random``).

Every dataset also gets a data card (:mod:`fastpolicy.data.datacard`) next to the store. Exports:
``fastpolicy data export STORE --format d4rl --out X.hdf5`` (:func:`fastpolicy.data.d4rl.export_d4rl`) and,
on request, :func:`fastpolicy.data.minari_io.export_minari` (needs the ``minari`` extra).

Length: the whole D4RL-style MuJoCo recipe — checkpoint selection, actor export, rollouts, replay and
provenance — that one data card documents; SAC training itself is ``fastpolicy.rl.sac``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastpolicy.utils.atomic import file_sha256 as _sha256

LABEL = "D4RL-style (gymnasium v5)"
#: A checkpoint is "expert" when its mean return reaches this fraction of D4RL's REF_MAX (D4RL's own
#: expert policies score ≈ 100-110 normalized; 0.8 leaves room for the v5 reward differences).
EXPERT_FRACTION = 0.8
BANDS = ("random", "medium", "medium-replay", "expert", "medium-expert")
#: D4RL dataset sizes (transitions); medium-replay is "whatever the buffer held", so no default here.
DEFAULT_SIZES = {"random": 1_000_000, "medium": 1_000_000, "expert": 1_000_000, "medium-expert": 2_000_000}


@dataclasses.dataclass(frozen=True)
class MujocoSpec:
    name: str
    env_id: str
    ref_min: float      # D4RL REF_MIN_SCORE (random policy on the v2 env)
    ref_max: float      # D4RL REF_MAX_SCORE (expert policy on the v2 env)
    medium_threshold: float      # "1/3 of REF_MAX", as this project's medium recipe fixes it (see MUJOCO)
    max_episode_steps: int = 1000

    @property
    def expert_threshold(self) -> float:
        return round(self.ref_max * EXPERT_FRACTION, 2)

    def normalized(self, returns: Any) -> Any:
        return 100.0 * (np.asarray(returns, dtype=np.float64) - self.ref_min) / (self.ref_max - self.ref_min)


#: Medium thresholds are the values the project fixed (hopper 1064, halfcheetah 3858, walker2d
#: 1532), defined as "1/3 of D4RL's REF_MAX"; they are close to, not exactly, REF_MAX / 3
#: (1078.1 / 4045.0 / 1530.8). The fixed numbers are used so every dataset is cut at the same point.
MUJOCO = {
    "hopper": MujocoSpec("hopper", "Hopper-v5", -20.272305, 3234.3, medium_threshold=1064.0),
    "halfcheetah": MujocoSpec("halfcheetah", "HalfCheetah-v5", -280.178953, 12135.0, medium_threshold=3858.0),
    "walker2d": MujocoSpec("walker2d", "Walker2d-v5", 1.629008, 4592.3, medium_threshold=1532.0),
}


def spec_for_env_id(env_id: str) -> MujocoSpec:
    for spec in MUJOCO.values():
        if spec.env_id == env_id:
            return spec
    raise ValueError(f"no MuJoCo recipe for env id {env_id!r}; known: {[s.env_id for s in MUJOCO.values()]}")


# -- checkpoint selection (pure) ----------------------------------------------------------------------
def select_medium_checkpoint(returns: Sequence[tuple[int, float]], threshold: float) -> int:
    """Step of the *first* checkpoint (by step) whose mean return is ≥ ``threshold`` — not the best one.

    ``returns`` is ``[(step, mean_return), ...]`` in any order. ValueError when no checkpoint crosses.
    """
    ordered = sorted((int(s), float(r)) for s, r in returns)
    for step, ret in ordered:
        if math.isfinite(ret) and ret >= threshold:
            return step
    best = max(ordered, key=lambda sr: sr[1], default=None)
    got = f"best so far {best[1]:.1f} at step {best[0]}" if best else "no checkpoints"
    raise ValueError(f"no checkpoint reaches the medium threshold {threshold:.1f} ({got}); train longer")


def select_expert_checkpoint(returns: Sequence[tuple[int, float]], threshold: float) -> int:
    """Step of the *last* checkpoint, provided its mean return is in the expert band (≥ ``threshold``)."""
    if not returns:
        raise ValueError("no checkpoints yet")
    step, ret = max((int(s), float(r)) for s, r in returns)
    if not ret >= threshold:
        raise ValueError(f"the last checkpoint (step {step}, mean return {ret:.1f}) is below the expert "
                         f"band (≥ {threshold:.1f} = {EXPERT_FRACTION:g}·REF_MAX); no expert dataset until "
                         "the run gets there")
    return step


# -- where things live --------------------------------------------------------------------------------
def _repo_root() -> Path:
    """The source checkout holding the package; the working directory for an installed package."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "setup.cfg").is_file() else Path.cwd()


def behavior_dir() -> Path:
    """``$FASTPOLICY_BEHAVIOR_DIR``, else the actors shipped in the package (the checkout's
    ``datasets/behavior``); see :mod:`fastpolicy.resources`."""
    from fastpolicy.resources import resource_dir

    return resource_dir("behavior")


def run_dir(name: str) -> Path:
    """The SAC run directory of env ``name``: ``$FASTPOLICY_SAC_RUNS/sac-<name>`` or ``runs/sac-<name>``."""
    root = os.environ.get("FASTPOLICY_SAC_RUNS")
    return (Path(root) if root else _repo_root() / "runs") / f"sac-{name}"


def actor_path(name: str, band: str) -> Path:
    return behavior_dir() / f"{name}-{band}.safetensors"


def export_band(run: str | Path, band: str, dest_dir: str | Path | None = None) -> Path:
    """Copy the ``band`` (``medium`` or ``expert``) checkpoint's actor of a SAC run to ``dest_dir``.

    The metadata records the run's whole return curve (so a data card can say how far the budget got).
    """
    from fastpolicy.rl.sac import export_actor, read_returns, run_rows_to_pairs

    run = Path(run)
    config = json.loads((run / "config.json").read_text())
    spec = spec_for_env_id(config["env_id"])
    rows = read_returns(run)
    pairs = run_rows_to_pairs(rows)
    if band == "medium":
        threshold = spec.medium_threshold
        step = select_medium_checkpoint(pairs, threshold)
    elif band == "expert":
        threshold = spec.expert_threshold
        step = select_expert_checkpoint(pairs, threshold)
    else:
        raise ValueError(f"band must be 'medium' or 'expert', got {band!r}")
    dest = Path(dest_dir) if dest_dir is not None else behavior_dir()
    curve = [[r["step"], round(r["mean_return"], 1), round(r.get("stoch_mean_return", float("nan")), 1)]
             for r in rows]
    return export_actor(run, step, dest / f"{spec.name}-{band}", band=band, threshold=threshold,
                        run_steps_reached=max(p[0] for p in pairs), run_seed=config["seed"],
                        run_config={k: config[k] for k in ("learning_starts", "buffer_size", "batch_size",
                                                            "learning_rate", "checkpoint_every",
                                                            "eval_episodes")},
                        return_curve_columns=["step", "det_mean_return", "stoch_mean_return"],
                        return_curve=curve)


def _load_band_actor(spec: MujocoSpec, band: str):
    from fastpolicy.rl.actor import actor_sha256, load_actor

    path = actor_path(spec.name, band)
    if not path.is_file():
        if band == "expert":
            raise FileNotFoundError(
                f"no expert actor for {spec.name} ({path} missing): no checkpoint of the SAC run reached the "
                f"expert band (mean return ≥ {spec.expert_threshold:.0f}) yet, so {spec.name}-expert and "
                f"{spec.name}-medium-expert cannot be built. Train longer (scripts/train_behavior.py "
                f"--env {spec.env_id} --resume) and export it (--export expert)")
        raise FileNotFoundError(
            f"no {band} actor for {spec.name} ({path} missing); train one with scripts/train_behavior.py "
            f"--env {spec.env_id} --out runs/sac-{spec.name} and export it with --export {band}")
    actor = load_actor(path)
    if actor.meta.env_id != spec.env_id:
        raise ValueError(f"{path} is an actor for {actor.meta.env_id!r}, not {spec.env_id!r}")
    return actor, actor_sha256(path), path


# -- rollouts -----------------------------------------------------------------------------------------
Policy = Callable[[np.ndarray], tuple[np.ndarray, float]]


def uniform_policy(action_space: Any, seed: int) -> Policy:
    """Uniform actions over the box; log-prob is the constant uniform density ``-Σ log(high - low)``."""
    rng = np.random.default_rng(seed)
    low, high = action_space.low.astype(np.float64), action_space.high.astype(np.float64)
    logp = float(-np.sum(np.log(high - low)))

    def policy(obs: np.ndarray) -> tuple[np.ndarray, float]:  # noqa: ARG001 - uniform ignores obs
        return rng.uniform(low, high), logp

    return policy


def iter_rollouts(env_id: str, make_policy: Callable[[Any], Policy], size: int, seed: int,
                  progress: bool = False, desc: str = "rollout") -> Iterator[dict[str, np.ndarray]]:
    """Yield episodes of ``make_policy(env)`` on ``env_id`` until ``size`` steps (last one cut by size)."""
    import gymnasium as gym
    from tqdm.auto import tqdm

    if size <= 0:
        raise ValueError(f"size must be a positive number of steps, got {size}")
    env = gym.make(env_id)
    policy = make_policy(env)
    sim = env.unwrapped
    obs, _ = env.reset(seed=seed)
    bar = tqdm(total=size, desc=desc, unit="step", disable=not progress, mininterval=0.5)
    done = 0
    try:
        while done < size:
            rows: dict[str, list] = {k: [] for k in ("obs", "action", "reward", "next_obs", "terminal",
                                                      "timeout", "qpos", "qvel", "logp")}
            while True:
                rows["qpos"].append(sim.data.qpos.copy())
                rows["qvel"].append(sim.data.qvel.copy())
                action, logp = policy(obs)
                next_obs, reward, terminated, truncated, _ = env.step(action)
                rows["obs"].append(obs)
                rows["action"].append(action)
                rows["reward"].append(reward)
                rows["next_obs"].append(next_obs)
                rows["terminal"].append(terminated)
                rows["timeout"].append(truncated and not terminated)
                rows["logp"].append(logp)
                done += 1
                obs = next_obs
                if terminated or truncated or done >= size:
                    break
            bar.update(len(rows["obs"]))
            if terminated or truncated:
                obs, _ = env.reset()
            yield {
                "obs": np.asarray(rows["obs"], dtype=np.float32),
                "action": np.asarray(rows["action"], dtype=np.float32),
                "reward": np.asarray(rows["reward"], dtype=np.float32),
                "next_obs": np.asarray(rows["next_obs"], dtype=np.float32),
                "terminal": np.asarray(rows["terminal"], dtype=bool),
                "timeout": np.asarray(rows["timeout"], dtype=bool),
                "infos/qpos": np.asarray(rows["qpos"], dtype=np.float64),
                "infos/qvel": np.asarray(rows["qvel"], dtype=np.float64),
                "infos/action_log_probs": np.asarray(rows["logp"], dtype=np.float32),
            }
    finally:
        bar.close()
        env.close()


@functools.lru_cache(maxsize=8)
def measure_random_return(env_id: str, episodes: int = 20, seed: int = 0) -> tuple[float, float]:
    """Mean and std return of uniform actions over ``episodes`` episodes (the local 'random' reference)."""
    import gymnasium as gym

    env = gym.make(env_id)
    rng = np.random.default_rng(seed)
    returns = []
    for i in range(episodes):
        env.reset(seed=seed + i)
        total, finished = 0.0, False
        while not finished:
            action = rng.uniform(env.action_space.low, env.action_space.high)
            _, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            finished = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns)), float(np.std(returns))


# -- medium-replay from a run's replay buffer ---------------------------------------------------------
def replay_episodes(run: str | Path, upto_step: int, size: int | None = None
                    ) -> tuple[list[dict[str, np.ndarray]], dict[str, Any]]:
    """Episodes of a SAC run's replay buffer, rows ``[0, upto_step)`` (optionally only the first ``size``).

    Splits on SB3's ``dones``: ``terminal = done & ~timeout``, ``timeout = done & timeout``. An episode
    cut by a training resume, by ``upto_step`` or by ``size`` ends with ``timeout`` (it was truncated;
    its ``next_obs`` is still the true next observation). Returns the episodes and facts for the attrs.
    """
    from fastpolicy.rl.sac import load_replay_arrays, read_latest

    run = Path(run)
    latest = read_latest(run)
    if latest is None:
        raise FileNotFoundError(f"{run} holds no SAC checkpoint (latest.json missing)")
    arrays = load_replay_arrays(run / latest["replay"])
    if bool(arrays["full"]):
        raise ValueError(f"the replay buffer of {run} wrapped around (more steps than its size); rows no "
                         "longer start at step 0, so the medium-replay prefix is gone")
    n_rows = len(arrays["rewards"])
    if upto_step > n_rows:
        raise ValueError(f"the replay buffer of {run} has {n_rows} rows, fewer than the medium checkpoint "
                         f"step {upto_step}")
    rows = upto_step if size is None else min(int(size), upto_step)
    dones = arrays["dones"][:rows].astype(bool)
    timeouts = arrays["timeouts"][:rows].astype(bool) & dones
    terminal = dones & ~timeouts
    cut = np.zeros(rows, dtype=bool)
    cuts = [int(c) for c in arrays["cuts"] if 0 < int(c) <= rows]
    cut[[c - 1 for c in cuts]] = True
    cut[rows - 1] = True
    timeout = timeouts | (cut & ~terminal)
    ends = np.flatnonzero(terminal | timeout) + 1
    low, high = _action_bounds(json.loads((run / "config.json").read_text())["env_id"])
    # SB3 stores actions scaled to [-1, 1]; the store holds env units.
    actions = low + 0.5 * (arrays["actions"][:rows].astype(np.float64) + 1.0) * (high - low)
    data = {
        "obs": arrays["observations"][:rows].astype(np.float32),
        "action": actions.astype(np.float32),
        "reward": arrays["rewards"][:rows].astype(np.float32),
        "next_obs": arrays["next_observations"][:rows].astype(np.float32),
        "terminal": terminal,
        "timeout": timeout,
        "infos/qpos": arrays["infos_qpos"][:rows],
        "infos/qvel": arrays["infos_qvel"][:rows],
        "infos/action_log_probs": arrays["infos_action_log_probs"][:rows].astype(np.float32),
    }
    episodes = []
    start = 0
    for end in ends:
        episodes.append({k: v[start:end] for k, v in data.items()})
        start = int(end)
    facts = {"replay_rows_used": rows, "replay_rows_available": n_rows, "resume_cuts": cuts,
             "truncated_by_resume_or_size": int(np.sum(cut & ~terminal & ~timeouts)),
             "replay_file": latest["replay"], "replay_sha256": _sha256(run / latest["replay"])}
    return episodes, facts


def _action_bounds(env_id: str) -> tuple[np.ndarray, np.ndarray]:
    import gymnasium as gym

    env = gym.make(env_id)
    low, high = env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64)
    env.close()
    return low, high


# -- the recipes --------------------------------------------------------------------------------------
def _task_name(spec: MujocoSpec, band: str) -> str | None:
    from fastpolicy.envs.registry import tasks_dir

    name = f"{spec.name}-{band}"
    return name if (tasks_dir() / f"{name}.yaml").is_file() else None


def _actor_facts(actor: Any, sha: str, path: Path) -> dict[str, Any]:
    meta = actor.meta
    return {"actor_file": path.name, "actor_sha256": sha, "checkpoint_step": int(meta.step),
            "checkpoint_eval_return": meta.eval_return, "checkpoint_eval_return_std": meta.eval_return_std,
            "checkpoint_stochastic_eval_return": meta.extra.get("stochastic_eval_return"),
            "checkpoint_eval_episodes": meta.eval_episodes,
            "run_steps_reached": meta.extra.get("run_steps_reached"),
            "net_arch": list(meta.net_arch)}


def _availability(spec: MujocoSpec) -> dict[str, str]:
    """Which bands of this env can be built here and now, and why not (for the data card)."""
    out = {"random": "yes"}
    for band in ("medium", "expert"):
        path = actor_path(spec.name, band)
        out[band] = "yes" if path.is_file() else (
            f"no: no checkpoint reached the expert band (≥ {spec.expert_threshold:.0f}) in the SAC budget"
            if band == "expert" else f"no: {path.name} not committed")
    out["medium-expert"] = "yes" if out["medium"] == out["expert"] == "yes" else "no: needs medium and expert"
    run = run_dir(spec.name)
    if not (run / "latest.json").is_file():
        out["medium-replay"] = f"no: needs the SAC run's replay buffer ({run}), which is not committed"
    else:
        from fastpolicy.rl.sac import read_returns, run_rows_to_pairs

        try:
            step = select_medium_checkpoint(run_rows_to_pairs(read_returns(run)), spec.medium_threshold)
            out["medium-replay"] = f"yes: {run.name} replay rows up to step {step}"
        except ValueError as exc:
            out["medium-replay"] = f"no: {exc}"
    return out


def local_reference(spec: MujocoSpec) -> dict[str, Any]:
    """Locally measured random return: the ``<env>-medium`` task card's (100 episodes), else measured now."""
    from fastpolicy.envs.registry import get_task

    try:
        card = get_task(f"{spec.name}-medium").reference
        return {k: card[k] for k in ("random_return", "random_return_std", "random_episodes")}
    except (KeyError, ValueError):
        mean, std = measure_random_return(spec.env_id, episodes=20, seed=0)
        return {"random_return": mean, "random_return_std": std, "random_episodes": 20}


def recipe_attrs(spec: MujocoSpec, band: str, size: int, seed: int) -> dict[str, Any]:
    """Attributes shared by every MuJoCo dataset (what built it and what it is scored against)."""
    local = local_reference(spec)
    return {
        "source": "fastpolicy recipe (D4RL generate_mujoco_datasets, SB3 SAC behaviour policies)",
        "recipe": f"{spec.name}-{band}",
        "band": band,
        "task": _task_name(spec, band),
        "env_id": spec.env_id,
        "seed": int(seed),
        "size": int(size),
        "label": LABEL,
        "d4rl_env_id": f"{spec.name}-{band}-v2",
        "ref_min_score": spec.ref_min,
        "ref_max_score": spec.ref_max,
        "medium_threshold": spec.medium_threshold,
        "expert_threshold": spec.expert_threshold,
        "local_reference": local,
        "max_episode_steps": spec.max_episode_steps,
    }


def make_mujoco_dataset(name: str, band: str, out: Path, size: int | None = None, seed: int = 0,
                        overwrite: bool = False, progress: bool = True, datacard: bool = True) -> Any:
    """Build ``<name>-<band>`` at ``out`` (atomically), write its data card, return the EpisodeStore."""
    from fastpolicy.data.store import EpisodeStore

    if name not in MUJOCO:
        raise ValueError(f"unknown MuJoCo env {name!r}; known: {', '.join(MUJOCO)}")
    if band not in BANDS:
        raise ValueError(f"unknown band {band!r}; known: {', '.join(BANDS)}")
    spec = MUJOCO[name]
    if size is not None and int(size) <= 0:
        raise ValueError(f"size must be a positive number of steps, got {size}")
    started = time.time()
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass overwrite=True / --overwrite to replace)")
    desc = f"data make {name}-{band}"
    parts: list[tuple[str, Iterator[dict[str, np.ndarray]]]] = []
    extra: dict[str, Any] = {}
    if band == "random":
        size = DEFAULT_SIZES[band] if size is None else int(size)
        parts.append(("random", iter_rollouts(spec.env_id, lambda env: uniform_policy(env.action_space, seed),
                                              size, seed, progress, desc)))
        extra["behavior"] = {"policy": "uniform over the action box"}
    elif band in ("medium", "expert", "medium-expert"):
        size = DEFAULT_SIZES[band] if size is None else int(size)
        names = ["medium", "expert"] if band == "medium-expert" else [band]
        actors = [_load_band_actor(spec, b) for b in names]   # all loaded first: fail before writing
        sizes = [size - size // 2, size // 2] if band == "medium-expert" else [size]
        behavior = []
        for i, (part, (actor, sha, path), n) in enumerate(zip(names, actors, sizes)):
            part_seed = seed + 1_000_003 * i   # distinct env and noise streams per half
            policy = functools.partial(lambda a, s, env: a.numpy_policy(deterministic=False, seed=s), actor,
                                       part_seed)
            rollout = iter_rollouts(spec.env_id, policy, n, part_seed, progress, f"{desc} ({part})")
            parts.append((part, rollout))
            behavior.append({"band": part, "steps": n, "seed": part_seed,
                             "actions": "stochastic (SAC Gaussian, tanh-squashed)",
                             **_actor_facts(actor, sha, path)})
        extra["behavior"] = behavior[0] if len(behavior) == 1 else behavior
        extra["checkpoint_step"] = behavior[0]["checkpoint_step"] if len(behavior) == 1 else \
            {b["band"]: b["checkpoint_step"] for b in behavior}
        extra["actor_sha256"] = behavior[0]["actor_sha256"] if len(behavior) == 1 else \
            {b["band"]: b["actor_sha256"] for b in behavior}
    else:  # medium-replay
        from fastpolicy.rl.sac import read_returns, run_rows_to_pairs

        run = run_dir(name)
        if not (run / "latest.json").is_file():
            raise FileNotFoundError(
                f"{name}-medium-replay needs the SAC run's replay buffer ({run}/latest.json missing): it is "
                f"not committed (hundreds of MB). Train with scripts/train_behavior.py --env {spec.env_id} "
                f"--out {run} or point $FASTPOLICY_SAC_RUNS at a directory holding sac-<env>/")
        medium_step = select_medium_checkpoint(run_rows_to_pairs(read_returns(run)), spec.medium_threshold)
        episodes, facts = replay_episodes(run, medium_step, size)
        size = sum(len(e["obs"]) for e in episodes)
        parts.append(("medium-replay", iter(episodes)))
        extra["checkpoint_step"] = medium_step
        extra["behavior"] = {"policy": f"SAC replay buffer rows [0, {facts['replay_rows_used']}) of "
                             f"{run.name} (the medium checkpoint is step {medium_step})", **facts}
        medium = actor_path(name, "medium")
        if medium.is_file():
            from fastpolicy.rl.actor import actor_sha256, load_actor

            extra["actor_sha256"] = actor_sha256(medium)
            extra["medium_actor_matches_run"] = load_actor(medium).meta.step == medium_step
    attrs = {**recipe_attrs(spec, band, size, seed), **extra}
    with EpisodeStore.create(out, attrs=attrs, overwrite=overwrite) as writer:
        for _, episodes in parts:
            for episode in episodes:
                writer.add_episode(episode)
    store = writer.store
    if datacard:
        from fastpolicy.data.datacard import write_datacard

        write_datacard(store, extra=datacard_extra(spec, band, store, time.time() - started))
    return store


def datacard_extra(spec: MujocoSpec, band: str, store: Any, seconds: float) -> dict[str, Any]:
    """The MuJoCo-specific part of a data card: local references, training progress, availability."""
    attrs = store.attrs
    behavior = attrs.get("behavior")
    behaviors = behavior if isinstance(behavior, list) else [behavior] if isinstance(behavior, dict) else []
    local = dict(attrs.get("local_reference", {}))
    for b in behaviors:
        if "checkpoint_eval_return" in b:
            local[f"{b['band']}_policy_eval_return_deterministic"] = b["checkpoint_eval_return"]
            local[f"{b['band']}_policy_eval_return_stochastic"] = b["checkpoint_stochastic_eval_return"]
    training: dict[str, Any] = {"medium_threshold": spec.medium_threshold,
                                "expert_threshold": spec.expert_threshold,
                                "expert_fraction_of_ref_max": EXPERT_FRACTION}
    for band_name in ("medium", "expert"):
        path = actor_path(spec.name, band_name)
        if path.is_file():
            meta = json.loads(path.with_suffix(".json").read_text())
            training.setdefault("run_steps_reached", meta["extra"].get("run_steps_reached"))
            training.setdefault("return_curve_columns", meta["extra"].get("return_curve_columns"))
            training.setdefault("return_curve", meta["extra"].get("return_curve"))
            training[f"{band_name}_checkpoint_step"] = meta["step"]
    run = run_dir(spec.name)
    if (run / "returns.json").is_file():  # the live run may be further than the committed actors' record
        from fastpolicy.rl.sac import read_returns

        rows = read_returns(run)
        training["run_steps_reached"] = rows[-1]["step"] if rows else 0
        training["return_curve"] = [[r["step"], round(r["mean_return"], 1),
                                     round(r.get("stoch_mean_return", float("nan")), 1)] for r in rows]
        training["return_curve_columns"] = ["step", "det_mean_return", "stoch_mean_return"]
    curve = training.get("return_curve") or []
    training["expert_band_reached"] = any(r[1] >= spec.expert_threshold for r in curve)
    return {"local_reference": local, "training": training, "availability": _availability(spec),
            "build_seconds": round(seconds, 1),
            "command": f"fastpolicy data make {spec.name}-{band} --size {attrs['size']} "
                       f"--seed {attrs['seed']}"}


RECIPES = {f"{name}-{band}": functools.partial(make_mujoco_dataset, name, band)
           for name in MUJOCO for band in BANDS}
