"""Behavior-policy training for the D4RL-style MuJoCo recipes: stable-baselines3 SAC, resumable.

``train_sac(env_id, total_steps, out)`` trains SB3 SAC with rl-zoo3's MuJoCo defaults (the zoo's
``HalfCheetah-v4: &mujoco-defaults`` entry, shared by Hopper / Walker2d / Ant: ``learning_starts=10000``,
otherwise SB3's SAC defaults — lr 3e-4, buffer 1M, batch 256, tau 0.005, gamma 0.99, train_freq 1,
``net_arch=[256, 256]``, automatic entropy) and, every ``checkpoint_every`` env steps:

* saves the SB3 model zip and the replay buffer (so the run resumes where it stopped);
* evaluates the policy (mean return over ``eval_episodes`` deterministic and stochastic episodes with
  fixed reset seeds) and appends a row to ``returns.json``;
* exports the actor as safetensors + JSON (:mod:`fastpolicy.rl.actor`) — the only artefact recipes and
  anyone outside this run directory ever load.

Run directory (``out``)::

    config.json                    how the run was started (env id, hyperparameters, seed)
    returns.json                   [{step, mean_return, std_return, stoch_mean_return, ..., wall_s}]
    latest.json                    {step, checkpoint, replay}: what ``resume`` continues from
    checkpoints/step_00020000/     model.zip (SB3), actor.safetensors, actor.json
    replay_step_00020000.npz       the replay buffer's filled rows + per-transition infos (latest only)
    tb/                            TensorBoard logs
    progress.log                   one line per checkpoint

Trust: ``model.zip`` is SB3's format (it contains cloudpickled objects) and the replay ``.npz`` is loaded
with ``allow_pickle=False``; both are *internal* resume state of a run this machine wrote. Never resume
from, or load, a run directory from an untrusted source. Only the safetensors actors are shared.

Replay-buffer infos: besides SB3's buffer (obs, next_obs, action scaled to [-1, 1], reward, done,
timeout) every transition records ``qpos`` / ``qvel`` of the state the action was taken in and the
log-probability of the action under the policy that chose it (during the ``learning_starts`` warm-up the
actions are uniform, whose density on [-1, 1]^d is ``-d·log 2``). ``medium-replay`` uses them.
Resuming cuts the episode that was running at the checkpoint; those rows are listed as ``cuts``.

Interruption: SIGTERM/SIGINT make the run save a checkpoint at the next step and stop cleanly; a SIGKILL
loses at most ``checkpoint_every`` steps.

Length: one resumable SAC run — config, checkpoints with their replay buffer, evaluation callback and
actor export — in one place, because a resumed run must restore all of them consistently.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: rl-zoo3 ``hyperparams/sac.yml`` MuJoCo defaults (``&mujoco-defaults``); the rest are SB3 SAC defaults.
ZOO_MUJOCO_DEFAULTS: dict[str, Any] = {"policy": "MlpPolicy", "learning_starts": 10_000}
#: SB3 SAC defaults, spelled out so config.json records exactly what ran.
SAC_DEFAULTS: dict[str, Any] = {
    "learning_rate": 3e-4, "buffer_size": 1_000_000, "batch_size": 256, "tau": 0.005, "gamma": 0.99,
    "train_freq": 1, "gradient_steps": 1, "ent_coef": "auto", "net_arch": [256, 256],
}
RETURNS_FILE = "returns.json"
LATEST_FILE = "latest.json"
CONFIG_FILE = "config.json"


@dataclasses.dataclass
class SACRunConfig:
    """How a behavior-policy run was started (``config.json``)."""

    env_id: str
    total_steps: int
    seed: int = 0
    checkpoint_every: int = 20_000
    eval_episodes: int = 5
    eval_seed: int = 10_000
    learning_starts: int = 10_000
    learning_rate: float = 3e-4
    buffer_size: int = 1_000_000
    batch_size: int = 256
    tau: float = 0.005
    gamma: float = 0.99
    train_freq: int = 1
    gradient_steps: int = 1
    ent_coef: str | float = "auto"
    net_arch: list[int] = dataclasses.field(default_factory=lambda: [256, 256])
    torch_threads: int = 1


@dataclasses.dataclass
class SACRunResult:
    out: Path
    step: int                          # env steps reached
    returns: list[dict[str, Any]]      # the rows of returns.json
    resumed_from: int | None           # step the run resumed from, None for a fresh run


# -- small pure helpers ------------------------------------------------------------------------------
def checkpoint_name(step: int) -> str:
    return f"step_{int(step):08d}"


def read_returns(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``returns.json`` (empty when the run has not checkpointed yet), sorted by step."""
    path = Path(run_dir) / RETURNS_FILE
    if not path.is_file():
        return []
    return sorted(json.loads(path.read_text()), key=lambda row: row["step"])


def read_latest(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / LATEST_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _write_json(path: Path, data: Any) -> None:
    from fastpolicy.utils.atomic import atomic_file

    with atomic_file(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def evaluate_policy(predict: Callable[[np.ndarray], np.ndarray], env_id: str, episodes: int,
                    seed: int) -> list[float]:
    """Undiscounted returns of ``episodes`` episodes with reset seeds ``seed, seed+1, ...``."""
    import gymnasium as gym

    env = gym.make(env_id)
    returns = []
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(predict(obs))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return returns


# -- replay buffer persistence (npz, no pickle) -------------------------------------------------------
_BUFFER_KEYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def save_replay(path: Path, buffer: Any, infos: Mapping[str, np.ndarray], cuts: list[int], step: int) -> None:
    """Write the filled rows of an SB3 ``ReplayBuffer`` (single env) plus aligned infos to ``path``."""
    from fastpolicy.utils.atomic import atomic_file

    if buffer.n_envs != 1 or buffer.optimize_memory_usage:
        raise ValueError("save_replay supports a single-env buffer without optimize_memory_usage")
    rows = buffer.buffer_size if buffer.full else buffer.pos
    arrays = {key: getattr(buffer, key)[:rows, 0] for key in _BUFFER_KEYS}
    arrays.update({f"infos_{k}": v[:rows] for k, v in infos.items()})
    arrays["pos"] = np.array(buffer.pos)
    arrays["full"] = np.array(buffer.full)
    arrays["step"] = np.array(step)
    arrays["cuts"] = np.asarray(cuts, dtype=np.int64)
    with atomic_file(path) as f:
        np.savez(f, **arrays)


def load_replay_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a saved replay buffer (``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _restore_replay(buffer: Any, arrays: Mapping[str, np.ndarray]) -> None:
    rows = len(arrays["rewards"])
    for key in _BUFFER_KEYS:
        getattr(buffer, key)[:rows, 0] = arrays[key]
    buffer.pos = int(arrays["pos"])
    buffer.full = bool(arrays["full"])


# -- the checkpointing callback -----------------------------------------------------------------------
def _make_callback(cfg: SACRunConfig, out: Path, infos: dict[str, np.ndarray], cuts: list[int],
                   started: float, log: Callable[[str], None]):
    import torch
    from stable_baselines3.common.callbacks import BaseCallback

    from fastpolicy.rl.actor import meta_from_spaces, save_actor

    class CheckpointEvalExport(BaseCallback):
        """Record per-transition infos; every ``checkpoint_every`` steps save, evaluate, export."""

        def __init__(self) -> None:
            super().__init__()
            self.stop_requested = False
            self._stop_now = False
            self._last_saved = -1

        def _on_training_start(self) -> None:
            self._sim = self.training_env.envs[0].unwrapped
            self._state = (self._sim.data.qpos.copy(), self._sim.data.qvel.copy())

        def _on_step(self) -> bool:
            if self._stop_now:
                return False
            # Called after env.step and before SB3 stores the transition: replay_buffer.pos is its row,
            # model._last_obs still the observation the action was chosen from.
            row = self.model.replay_buffer.pos
            infos["qpos"][row], infos["qvel"][row] = self._state
            if self.num_timesteps <= cfg.learning_starts:
                infos["action_log_probs"][row] = -infos["action_log_probs_dim"] * math.log(2.0)
            else:
                actor = self.model.actor
                with torch.no_grad():
                    obs = torch.as_tensor(self.model._last_obs, dtype=torch.float32)
                    mean, log_std, _ = actor.get_action_dist_params(obs)
                    dist = actor.action_dist.proba_distribution(mean, log_std)
                    act = torch.as_tensor(self.locals["buffer_actions"], dtype=torch.float32)
                    infos["action_log_probs"][row] = float(dist.log_prob(act)[0])
            self._state = (self._sim.data.qpos.copy(), self._sim.data.qvel.copy())
            return True

        def _on_rollout_end(self) -> None:
            # After the step's transition was stored (train_freq=1: one step per rollout).
            step = self.num_timesteps
            due = step % cfg.checkpoint_every == 0 or step >= cfg.total_steps or self.stop_requested
            if due and step != self._last_saved:
                self.checkpoint()
            if self.stop_requested:
                self._stop_now = True

        def checkpoint(self) -> None:
            step = self.num_timesteps
            self._last_saved = step
            t0 = time.time()
            ckpt = out / "checkpoints" / checkpoint_name(step)
            ckpt.mkdir(parents=True, exist_ok=True)
            self.model.save(ckpt / "model.zip")
            replay = out / f"replay_{checkpoint_name(step)}.npz"
            save_replay(replay, self.model.replay_buffer,
                        {k: v for k, v in infos.items() if isinstance(v, np.ndarray)}, cuts, step)

            model = self.model
            det = evaluate_policy(lambda o: model.predict(o, deterministic=True)[0], cfg.env_id,
                                  cfg.eval_episodes, cfg.eval_seed)
            sto = evaluate_policy(lambda o: model.predict(o, deterministic=False)[0], cfg.env_id,
                                  cfg.eval_episodes, cfg.eval_seed + 1000)
            env = self.training_env
            meta = meta_from_spaces(env.observation_space, env.action_space, cfg.net_arch, env_id=cfg.env_id,
                                    step=step, eval_return=float(np.mean(det)),
                                    eval_return_std=float(np.std(det)), eval_episodes=cfg.eval_episodes,
                                    extra={"stochastic_eval_return": float(np.mean(sto)),
                                           "eval_seed": cfg.eval_seed, "train_seed": cfg.seed})
            save_actor(ckpt / "actor", model.policy.actor.state_dict(), meta)
            row = {"step": step, "mean_return": float(np.mean(det)), "std_return": float(np.std(det)),
                   "stoch_mean_return": float(np.mean(sto)), "stoch_std_return": float(np.std(sto)),
                   "episodes": cfg.eval_episodes, "wall_s": round(time.time() - started, 1)}
            rows = [r for r in read_returns(out) if r["step"] != step] + [row]
            _write_json(out / RETURNS_FILE, sorted(rows, key=lambda r: r["step"]))
            # latest.json last: a crash before this line resumes from the previous checkpoint.
            _write_json(out / LATEST_FILE, {"step": step, "checkpoint": str(ckpt.relative_to(out)),
                                            "replay": replay.name})
            for old in out.glob("replay_step_*.npz"):
                if old != replay:
                    old.unlink()
            self.logger.record("eval/mean_return", row["mean_return"])
            self.logger.record("eval/stoch_mean_return", row["stoch_mean_return"])
            log(f"checkpoint step={step} return={row['mean_return']:.1f}±{row['std_return']:.1f} "
                f"stoch={row['stoch_mean_return']:.1f} save+eval={time.time() - t0:.1f}s "
                f"wall={row['wall_s']:.0f}s")

    return CheckpointEvalExport()


def _make_env(env_id: str):
    import gymnasium as gym
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    return DummyVecEnv([lambda: Monitor(gym.make(env_id))])


def train_sac(env_id: str, total_steps: int, out: str | Path, *, resume: bool = False, seed: int = 0,
              checkpoint_every: int = 20_000, eval_episodes: int = 5, learning_starts: int = 10_000,
              buffer_size: int = 1_000_000, net_arch: list[int] | None = None, progress: bool = True,
              tensorboard: bool = True, torch_threads: int = 1, verbose: int = 0,
              log: Callable[[str], None] | None = None) -> SACRunResult:
    """Train (or resume) SB3 SAC on ``env_id`` up to ``total_steps`` env steps; see the module docstring.

    ``resume=True`` continues from ``out/latest.json`` (model, optimizer and entropy state, replay
    buffer, step counter) — with the hyperparameters the run was started with, except ``total_steps``.
    A fresh run refuses a directory that already holds a run. Returns the step reached and the returns.
    """
    import torch
    from stable_baselines3 import SAC

    out = Path(out)
    torch.set_num_threads(torch_threads)
    started = time.time()
    latest = read_latest(out) if resume else None
    if resume and latest is None and (out / CONFIG_FILE).is_file():
        resume = False   # started but never checkpointed: begin again with the same config
    if latest is not None:
        data = json.loads((out / CONFIG_FILE).read_text())
        if data["env_id"] != env_id:
            raise ValueError(f"run {out} trains {data['env_id']!r}, not {env_id!r}")
        data["total_steps"] = int(total_steps)
        cfg = SACRunConfig(**data)
    else:
        if not resume and (out / LATEST_FILE).is_file():
            raise FileExistsError(f"{out} already holds a SAC run; pass resume=True (--resume) to "
                                  "continue it")
        cfg = SACRunConfig(env_id=env_id, total_steps=int(total_steps), seed=seed,
                           checkpoint_every=checkpoint_every, eval_episodes=eval_episodes,
                           learning_starts=learning_starts, buffer_size=buffer_size,
                           net_arch=list(net_arch or SAC_DEFAULTS["net_arch"]), torch_threads=torch_threads)
    if cfg.checkpoint_every <= 0 or cfg.total_steps <= 0:
        raise ValueError("total_steps and checkpoint_every must be positive")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / CONFIG_FILE, dataclasses.asdict(cfg))

    log_path = out / "progress.log"

    def _log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        with open(log_path, "a") as f:
            f.write(line + "\n")
        (log or print)(line)

    env = _make_env(cfg.env_id)
    tb = str(out / "tb") if tensorboard else None
    cuts: list[int] = []
    if latest is not None:
        model = SAC.load(out / latest["checkpoint"] / "model.zip", env=env, device="cpu",
                         tensorboard_log=tb, verbose=verbose)
        arrays = load_replay_arrays(out / latest["replay"])
        _restore_replay(model.replay_buffer, arrays)
        infos = _alloc_infos(model.replay_buffer, env)
        rows = len(arrays["rewards"])
        for key in ("qpos", "qvel", "action_log_probs"):
            infos[key][:rows] = arrays[f"infos_{key}"]
        cuts = [int(c) for c in arrays["cuts"]] + [int(model.replay_buffer.pos)]
        # A different seed per resume, so the restarted env does not replay the first run's resets.
        model.set_random_seed(cfg.seed + model.num_timesteps)
        resumed_from = int(model.num_timesteps)
        _log(f"resume {cfg.env_id} from step {resumed_from} (replay {rows} rows) to {cfg.total_steps}")
    else:
        model = SAC(ZOO_MUJOCO_DEFAULTS["policy"], env, learning_rate=cfg.learning_rate,
                    buffer_size=cfg.buffer_size, learning_starts=cfg.learning_starts,
                    batch_size=cfg.batch_size, tau=cfg.tau, gamma=cfg.gamma,
                    train_freq=cfg.train_freq, gradient_steps=cfg.gradient_steps, ent_coef=cfg.ent_coef,
                    policy_kwargs={"net_arch": list(cfg.net_arch)}, tensorboard_log=tb, seed=cfg.seed,
                    device="cpu", verbose=verbose)
        infos = _alloc_infos(model.replay_buffer, env)
        resumed_from = None
        _log(f"start {cfg.env_id} seed={cfg.seed} to {cfg.total_steps} steps, checkpoint every "
             f"{cfg.checkpoint_every}")
    remaining = cfg.total_steps - int(model.num_timesteps)
    if remaining <= 0:
        env.close()
        return SACRunResult(out, int(model.num_timesteps), read_returns(out), resumed_from)

    if resumed_from is not None:  # wall_s in returns.json counts the whole run, across resumes
        # Rows past the checkpoint resumed from were written by a run killed before its latest.json update.
        previous_rows = [r for r in read_returns(out) if r["step"] <= resumed_from]
        _write_json(out / RETURNS_FILE, previous_rows)
        started -= previous_rows[-1]["wall_s"] if previous_rows else 0.0
    callback = _make_callback(cfg, out, infos, cuts, started, _log)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _request_stop(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
        _log(f"signal {signum}: checkpointing at the next step and stopping")
        callback.stop_requested = True

    in_main = _in_main_thread()
    if in_main:
        for sig in previous:
            signal.signal(sig, _request_stop)
    try:
        model.learn(total_timesteps=remaining, callback=callback, progress_bar=progress,
                    reset_num_timesteps=resumed_from is None, tb_log_name="sac")
    finally:
        if in_main:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        env.close()
    step = callback._last_saved if callback._last_saved >= 0 else int(model.num_timesteps)
    _log(f"stopped at step {step}")
    return SACRunResult(out, step, read_returns(out), resumed_from)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _alloc_infos(buffer: Any, env: Any) -> dict[str, Any]:
    sim = env.envs[0].unwrapped
    size = buffer.buffer_size
    return {"qpos": np.zeros((size, sim.model.nq)), "qvel": np.zeros((size, sim.model.nv)),
            "action_log_probs": np.zeros(size, dtype=np.float32),
            "action_log_probs_dim": int(np.prod(env.action_space.shape))}


def export_actor(run_dir: str | Path, step: int, dest: str | Path, **extra: Any) -> Path:
    """Copy the actor of checkpoint ``step`` of a run to ``dest`` (``.safetensors`` + ``.json``).

    ``extra`` is merged into the metadata's ``extra`` (e.g. the band it was chosen for).
    """
    from fastpolicy.rl.actor import load_actor, save_actor

    src = Path(run_dir) / "checkpoints" / checkpoint_name(step) / "actor"
    actor = load_actor(src)
    actor.meta.extra = {**actor.meta.extra, **extra}
    return save_actor(dest, actor.state_dict(), actor.meta)


def run_rows_to_pairs(rows: list[Mapping[str, Any]], key: str = "mean_return") -> list[tuple[int, float]]:
    """``returns.json`` rows -> ``[(step, return)]`` for :func:`select_medium_checkpoint`."""
    return [(int(r["step"]), float(r[key])) for r in rows]

