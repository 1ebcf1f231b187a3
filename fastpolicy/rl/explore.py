"""``fastpolicy explore``: PPO, RND-PPO or PPO + RND reward bonus on a task's batched vector env.

What a run directory holds (everything a resumed run or an offline learner needs)::

    <run>/config.json                the ExploreConfig (a resumed run checks it matches)
    <run>/checkpoints/step_<N>.zip   SB3 training state after exactly N env steps of training
    <run>/checkpoints/step_<N>.rnd.safetensors   rnd-simple only: the reward wrapper's RND state
    <run>/checkpoints/latest         name of the newest checkpoint
    <run>/tb/                        TensorBoard logs (SB3's, plus explore/success_rate and rnd/*)
    <run>/curve.json                 success rate of the episodes that ended in each rollout vs env steps
    <run>/actor/                     the final deterministic actor: model.safetensors + config.json

SB3's zip stays the internal training-state format (it pickles optimiser and schedule objects); the
actor other parts of fastpolicy consume is exported as safetensors + JSON (``load_actor``).

Checkpoints are taken at rollout starts, after the previous PPO update, so "step N" means N env
steps collected *and* trained on; ``resume=True`` reloads the newest one and continues to
``config.steps`` with SB3's step counter intact. ``save_store`` records every transition of this
invocation (``EpisodeRecorder``) into an EpisodeStore: exploration data for offline training.

Length: the run-directory format, episode recording and resume of one exploration run, which must stay
consistent with each other.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ALGOS = ("ppo", "rnd-ppo", "rnd-simple")


@dataclass
class ExploreConfig:
    """One exploration run (the CLI flags map onto these fields)."""

    task: str
    """task card name, e.g. agv-sparse-detour (needs a natively batched vector env)"""
    algo: str = "rnd-ppo"
    """ppo | rnd-ppo (faithful RND: two value heads) | rnd-simple (PPO on r_ext + beta * r_int)"""
    steps: int = 1_000_000
    """total env steps (robot-steps) to train for"""
    num_envs: int = 64
    """robots stepped per call of the batched env"""
    seed: int = 0
    n_steps: int = 128
    """rollout length per robot (a rollout is n_steps * num_envs transitions)"""
    batch_size: int = 2048
    n_epochs: int = 4
    learning_rate: float = 3e-4
    ent_coef: float = 0.0
    gae_lambda: float = 0.95
    gamma: float | None = None
    """extrinsic discount (default: 0.99 for ppo / rnd-simple, 0.999 for rnd-ppo as in the paper)"""
    gamma_int: float = 0.99
    beta: float = 0.5
    """rnd-simple: intrinsic reward weight (0.5 = RND-PPO's 1:2 int/ext advantage ratio)"""
    obs_warmup_steps: int = 32
    """random-agent steps per robot that initialise RND's observation stats (not counted in steps)"""
    net_arch: list[int] = field(default_factory=lambda: [64, 64])
    checkpoint_every: int = 100_000
    """env steps between checkpoints"""
    keep_checkpoints: int = 3
    tensorboard: bool = True
    progress: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"unknown algo {self.algo!r}; choose one of {', '.join(ALGOS)}")
        for name in ("steps", "num_envs", "n_steps", "batch_size", "n_epochs", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.obs_warmup_steps < 0:
            raise ValueError(f"obs_warmup_steps must be >= 0, got {self.obs_warmup_steps}")

    @property
    def gamma_ext(self) -> float:
        if self.gamma is not None:
            return float(self.gamma)
        return 0.999 if self.algo == "rnd-ppo" else 0.99


@dataclass
class ExploreResult:
    run_dir: Path
    num_timesteps: int
    curve: list[dict[str, float]]
    actor_dir: Path
    store: Path | None
    wall_s: float


# ------------------------------------------------------------------------------ episode recording
class EpisodeRecorder:
    """Turns batched transitions (from ``GymnasiumVecEnv``) into EpisodeStore episodes.

    Per robot, the steps of the current episode sit in ring arrays of ``capacity`` steps (the env's
    step limit), written with one vectorised assignment per step; an episode is copied out and
    appended to the store when it ends. Episodes still running at a reset or at ``close`` are stored
    cut, their last step marked ``timeout``. Stored keys: ``obs`` (before the action), ``action``
    (as applied, clipped), ``reward`` (the environment's, without any intrinsic bonus),
    ``terminal``, ``timeout``, ``infos/success``, ``infos/collision``.
    """

    def __init__(self, path: str | os.PathLike, num_envs: int, obs_dim: int, act_dim: int, capacity: int,
                 attrs: dict[str, Any] | None = None, overwrite: bool = False) -> None:
        from fastpolicy.data.store import EpisodeStore

        if capacity <= 0:
            raise ValueError(f"recorder capacity must be positive, got {capacity}")
        self.path = Path(path)
        self.capacity = int(capacity)
        n, c = int(num_envs), self.capacity
        self._obs = np.zeros((c, n, obs_dim), dtype=np.float32)
        self._action = np.zeros((c, n, act_dim), dtype=np.float32)
        self._reward = np.zeros((c, n), dtype=np.float32)
        flags = ("terminal", "timeout", "success", "collision")
        self._flags = {k: np.zeros((c, n), dtype=bool) for k in flags}
        self._length = np.zeros(n, dtype=np.int64)
        self._arange = np.arange(n)
        self._writer = EpisodeStore.create(self.path, attrs=attrs, overwrite=overwrite)
        self.transitions = 0

    def on_reset(self, obs: np.ndarray) -> None:
        self._flush(np.flatnonzero(self._length > 0), cut=True)

    def on_step(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, terminated: np.ndarray,
                truncated: np.ndarray, next_obs: np.ndarray, success: np.ndarray,
                collision: np.ndarray) -> None:
        pos, cols = self._length, self._arange
        self._obs[pos, cols] = obs
        self._action[pos, cols] = action
        self._reward[pos, cols] = reward
        self._flags["terminal"][pos, cols] = terminated
        self._flags["timeout"][pos, cols] = truncated & ~terminated
        self._flags["success"][pos, cols] = success
        self._flags["collision"][pos, cols] = collision
        self._length += 1
        self.transitions += len(cols)
        ended = terminated | truncated
        self._flush(np.flatnonzero(ended), cut=False)
        # An episode longer than the ring (a step limit above capacity) is stored in pieces.
        self._flush(np.flatnonzero(~ended & (self._length >= self.capacity)), cut=True)

    def _flush(self, robots: np.ndarray, cut: bool) -> None:
        for i in robots:
            n = int(self._length[i])
            if n == 0:
                continue
            timeout = self._flags["timeout"][:n, i].copy()
            if cut and not self._flags["terminal"][n - 1, i]:
                timeout[-1] = True
            self._writer.add_episode({
                "obs": self._obs[:n, i], "action": self._action[:n, i], "reward": self._reward[:n, i],
                "terminal": self._flags["terminal"][:n, i], "timeout": timeout,
                "infos/success": self._flags["success"][:n, i],
                "infos/collision": self._flags["collision"][:n, i],
            })
            self._length[i] = 0

    def close(self, **attrs: Any) -> Path:
        """Store the running episodes (cut) and write the store into place."""
        self._flush(np.flatnonzero(self._length > 0), cut=True)
        self._writer.attrs.update(attrs)
        self._writer.close()
        return self.path

    def abort(self) -> None:
        self._writer.abort()


# ---------------------------------------------------------------------------------- callbacks
def _callbacks():
    """The SB3 callback classes (defined lazily: stable_baselines3 is an optional dependency)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class SuccessCurve(BaseCallback):
        """Success rate and return of the episodes that ended in each rollout, vs env steps."""

        def __init__(self, points: list[dict[str, float]]) -> None:
            super().__init__()
            self.points = points
            self._reset_counts()

        def _reset_counts(self) -> None:
            self._episodes = self._successes = 0
            self._return = 0.0

        def _on_step(self) -> bool:
            dones, infos = self.locals["dones"], self.locals["infos"]
            for i in np.flatnonzero(dones):
                self._episodes += 1
                self._successes += bool(infos[i].get("is_success", False))
                self._return += float(infos[i].get("episode", {}).get("r", 0.0))
            return True

        def _on_rollout_end(self) -> None:
            if self._episodes:
                rate = self._successes / self._episodes
                self.points.append({"steps": int(self.num_timesteps), "success_rate": rate,
                                    "episodes": self._episodes, "return_mean": self._return / self._episodes})
                self.logger.record("explore/success_rate", rate)
                self.logger.record("explore/episodes", self._episodes)
            self._reset_counts()

    class Checkpointer(BaseCallback):
        """Saves the training state at rollout starts (after the previous update) every ``every`` steps."""

        def __init__(self, save: Any, every: int) -> None:
            super().__init__()
            self.save, self.every = save, int(every)
            self.next_at = 0

        def _on_training_start(self) -> None:
            self.next_at = (self.num_timesteps // self.every + 1) * self.every

        def _on_rollout_start(self) -> None:
            if self.num_timesteps >= self.next_at:
                self.save()
                self.next_at = (self.num_timesteps // self.every + 1) * self.every

        def _on_step(self) -> bool:
            return True

    return SuccessCurve, Checkpointer


# --------------------------------------------------------------------------------- checkpoints
_CKPT = re.compile(r"^step_(\d+)\.zip$")


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest ``step_<N>.zip`` of a run (by ``latest``, else by the largest N), or None."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    latest = ckpt_dir / "latest"
    if latest.exists():
        path = ckpt_dir / latest.read_text().strip()
        if path.exists():
            return path
    found = sorted((int(m.group(1)), p) for p in ckpt_dir.glob("step_*.zip") if (m := _CKPT.match(p.name)))
    return found[-1][1] if found else None


def _save_checkpoint(model: Any, wrapper: Any, run_dir: Path, keep: int) -> Path:
    from safetensors.torch import save_file

    from fastpolicy.utils.atomic import atomic_file

    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = f"step_{int(model.num_timesteps):010d}"
    path = ckpt_dir / f"{name}.zip"
    tmp = ckpt_dir / f".tmp-{name}.zip"
    model.save(tmp)
    if wrapper is not None:
        save_file(wrapper.state_dict(), str(ckpt_dir / f"{name}.rnd.safetensors"))
    os.replace(tmp, path)
    with atomic_file(ckpt_dir / "latest", "w") as f:
        f.write(path.name + "\n")
    old = sorted(p for p in ckpt_dir.glob("step_*.zip") if _CKPT.match(p.name))
    for stale in old[:-keep] if keep > 0 else []:
        stale.unlink(missing_ok=True)
        (ckpt_dir / stale.name.replace(".zip", ".rnd.safetensors")).unlink(missing_ok=True)
    return path


# ------------------------------------------------------------------------------------ the actor
def export_actor(model: Any, out_dir: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write the policy's deterministic actor (MLP trunk + mean head) as safetensors + config.json."""
    from safetensors.torch import save_file
    from torch import nn

    from fastpolicy.utils.atomic import atomic_dir

    policy = model.policy
    layers = [m for m in policy.mlp_extractor.policy_net if isinstance(m, nn.Linear)]
    acts = {type(m).__name__ for m in policy.mlp_extractor.policy_net if not isinstance(m, nn.Linear)}
    weights = {}
    for k, layer in enumerate([*layers, policy.action_net]):
        weights[f"layers.{k}.weight"] = layer.weight.detach().cpu().contiguous()
        weights[f"layers.{k}.bias"] = layer.bias.detach().cpu().contiguous()
    space = model.action_space
    config = {"format": "fastpolicy-mlp-actor/1", "obs_dim": int(model.observation_space.shape[0]),
              "action_dim": int(space.shape[0]), "hidden": [int(m.out_features) for m in layers],
              "activation": acts.pop() if len(acts) == 1 else "Tanh", "action_low": space.low.tolist(),
              "action_high": space.high.tolist(), "num_timesteps": int(model.num_timesteps), **(extra or {})}
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=True) as tmp:
        save_file(weights, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    return out_dir


def load_actor(actor_dir: str | os.PathLike):
    """Rebuild an exported actor: a ``torch.nn.Sequential`` mapping obs (B, obs_dim) to the mean
    action (B, action_dim) (clip it to ``config["action_low"/"action_high"]``). Returns (module, config)."""
    from safetensors.torch import load_file
    from torch import nn

    actor_dir = Path(actor_dir)
    config = json.loads((actor_dir / "config.json").read_text())
    weights = load_file(str(actor_dir / "model.safetensors"))
    dims = [config["obs_dim"], *config["hidden"], config["action_dim"]]
    act = getattr(nn, config["activation"])
    modules: list[nn.Module] = []
    for k in range(len(dims) - 1):
        linear = nn.Linear(dims[k], dims[k + 1])
        linear.weight.data.copy_(weights[f"layers.{k}.weight"])
        linear.bias.data.copy_(weights[f"layers.{k}.bias"])
        modules.append(linear)
        if k < len(dims) - 2:
            modules.append(act())
    return nn.Sequential(*modules).eval(), config


# ------------------------------------------------------------------------------------- explore
def _build_model(cfg: ExploreConfig, env: Any, tb_dir: str | None):
    from stable_baselines3 import PPO

    from fastpolicy.rl.rnd import RNDPPO

    common = dict(n_steps=cfg.n_steps, batch_size=cfg.batch_size, n_epochs=cfg.n_epochs,
                  learning_rate=cfg.learning_rate, ent_coef=cfg.ent_coef, gae_lambda=cfg.gae_lambda,
                  gamma=cfg.gamma_ext, seed=cfg.seed, device=cfg.device, tensorboard_log=tb_dir,
                  policy_kwargs={"net_arch": list(cfg.net_arch)}, verbose=0)
    if cfg.algo == "rnd-ppo":
        return RNDPPO("MlpPolicy", env, gamma_int=cfg.gamma_int, obs_warmup_steps=cfg.obs_warmup_steps,
                      **common)
    return PPO("MlpPolicy", env, **common)


def explore(run_dir: str | os.PathLike, config: ExploreConfig, resume: bool = False,
            save_store: str | os.PathLike | None = None, overwrite_store: bool = False) -> ExploreResult:
    """Train (or resume) an exploration run; see the module docstring for what it writes."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import CallbackList

    from fastpolicy.envs.registry import get_task
    from fastpolicy.rl.rnd import RNDPPO, RNDRewardWrapper
    from fastpolicy.rl.sb3_vec import make_sb3_vec_env
    from fastpolicy.utils.atomic import atomic_file

    t_start = time.perf_counter()
    cfg = config
    task = get_task(cfg.task)  # fails early, with the list of tasks, on a typo
    run_dir = Path(run_dir)
    ckpt = latest_checkpoint(run_dir) if resume else None
    if resume and ckpt is None:
        raise FileNotFoundError(f"--resume: no checkpoint under {run_dir / 'checkpoints'}")
    if ckpt is not None:
        saved = json.loads((run_dir / "config.json").read_text())
        for key in ("task", "algo", "num_envs", "n_steps"):
            if saved[key] != getattr(cfg, key):
                raise ValueError(f"--resume: the run was started with {key}={saved[key]!r}, "
                                 f"not {getattr(cfg, key)!r}")
    elif (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").glob("step_*.zip")):
        raise FileExistsError(f"{run_dir} already holds checkpoints; pass --resume to continue it "
                              "or use a new --out")
    # The env first: a task explore cannot run (no batched vector env) fails before anything is written.
    env = make_sb3_vec_env(cfg.task, cfg.num_envs, seed=cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(run_dir / "config.json", "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=1)

    base_env = env
    wrapper = None
    if cfg.algo == "rnd-simple":
        wrapper = env = RNDRewardWrapper(env, beta=cfg.beta, gamma_int=cfg.gamma_int,
                                         update_every=cfg.n_steps, epochs=cfg.n_epochs,
                                         batch_size=cfg.batch_size, lr=cfg.learning_rate, device=cfg.device)
    tb_dir = str(run_dir / "tb") if cfg.tensorboard else None
    curve_path = run_dir / "curve.json"
    curve: list[dict[str, float]] = []
    if ckpt is not None:
        from safetensors.torch import load_file

        cls = RNDPPO if cfg.algo == "rnd-ppo" else PPO
        model = cls.load(ckpt, env=env, device=cfg.device, tensorboard_log=tb_dir)
        model._last_obs = None  # a fresh env: make SB3 reset it instead of trusting the saved obs
        if wrapper is not None:
            rnd_state = ckpt.with_name(ckpt.name.replace(".zip", ".rnd.safetensors"))
            wrapper.load_state_dict(load_file(str(rnd_state)))
        if curve_path.exists():
            curve = [p for p in json.loads(curve_path.read_text()) if p["steps"] <= model.num_timesteps]
    else:
        model = _build_model(cfg, env, tb_dir)
        # Warm the RND observation stats now (random agent), before any transition is recorded.
        if isinstance(model, RNDPPO):
            model.warmup_obs_stats()
        if wrapper is not None:
            wrapper.warmup(cfg.obs_warmup_steps, cfg.seed)
    start_step = int(model.num_timesteps)

    recorder = None
    if save_store is not None:
        obs_dim = int(base_env.observation_space.shape[0])
        act_dim = int(base_env.action_space.shape[0])
        attrs = {"source": "fastpolicy explore", "task": cfg.task, "env_id": task.env_id, "algo": cfg.algo,
                 "seed": cfg.seed, "run": str(run_dir), "start_step": start_step, "recipe": None}
        recorder = EpisodeRecorder(save_store, cfg.num_envs, obs_dim, act_dim, task.max_episode_steps,
                                   attrs=attrs, overwrite=overwrite_store)
        base_env.recorder = recorder

    SuccessCurve, Checkpointer = _callbacks()
    save = lambda: _save_checkpoint(model, wrapper, run_dir, cfg.keep_checkpoints)  # noqa: E731
    callbacks = CallbackList([SuccessCurve(curve), Checkpointer(save, cfg.checkpoint_every)])
    remaining = cfg.steps - start_step
    try:
        if remaining > 0:
            model.learn(remaining, callback=callbacks, reset_num_timesteps=ckpt is None,
                        tb_log_name=cfg.algo, progress_bar=cfg.progress)
        store_path = None
        if recorder is not None:
            base_env.recorder = None
            store_path = recorder.close(end_step=int(model.num_timesteps))
    except BaseException:
        if recorder is not None:
            recorder.abort()
        raise
    finally:
        with atomic_file(curve_path, "w") as f:
            json.dump(curve, f)
    if latest_checkpoint(run_dir) is None or not (run_dir / "checkpoints" /
                                                   f"step_{int(model.num_timesteps):010d}.zip").exists():
        save()
    actor = export_actor(model, run_dir / "actor", {"algo": cfg.algo, "task": cfg.task, "seed": cfg.seed})
    env.close()
    return ExploreResult(run_dir, int(model.num_timesteps), curve, actor, store_path,
                         time.perf_counter() - t_start)
