"""Closed-loop rounds for a streaming consistency student (DAgger-style distillation).

Why: a streaming student is fit on data actions noised to its levels, yet its buffer at a control step
holds what *its own* previous calls left there, under observations the data may never show (an AGV
hesitating in front of the block). Measured on agv-bimodal-block (``docs/benchmarks.md``): in episodes
the student fails, its one-call error against its teacher's stream from the same buffer is ~20× the
error in the episodes it solves. So a round rolls the student out in its task on *training* env seeds
(disjoint from the validation and test seeds), keeps the steady-state buffers and observation windows
it met, and distils a new student from the previous one with part of each batch drawn from those
states — labelled exactly, by the teacher's own stream run from the same buffer (no environment needed
for the label). This sits above ``train`` because it runs environments.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastpolicy.envs.registry import TaskSpec, get_task, make_vector_env
from fastpolicy.policies.consistency import ConsistencyPolicy

#: env seeds of closed-loop collection start here: evaluation uses seeds s·1000 + i with s < 1000
#: (validation 100–129, test 0–2), so the states a student trains on never come from a scored episode
TRAINING_ENV_SEED_BASE = 1_000_000
STATES_FILE = "states.safetensors"


@torch.inference_mode()
def collect_stream_states(student: ConsistencyPolicy, task: TaskSpec | str, episodes: int, seed: int,
                          batch: int = 10, progress: bool = False) -> dict[str, torch.Tensor]:
    """Roll ``student`` out for ``episodes`` episodes (``batch`` in lockstep, env seeds ``seed``, ``seed``
    + 1, …) and return the inputs of its steady streaming steps: ``{"buffer": (M, Tp, A), "cond": (M, C)}``
    (normalised, as the student holds them): only buffers at the steady start levels, the one input a
    streaming step is given after its warm-up; finished episodes are left out."""
    from tqdm.auto import tqdm

    if not (isinstance(student, ConsistencyPolicy) and student.config.streaming):
        raise ValueError(f"closed-loop states are a streaming student's; got {type(student).__name__}")
    if episodes < 1 or batch < 1:
        raise ValueError(f"episodes and batch must be ≥ 1, got {episodes} and {batch}")
    task = get_task(task) if isinstance(task, str) else task
    buffers: list[torch.Tensor] = []
    conds: list[torch.Tensor] = []
    bar = tqdm(total=episodes, desc=f"closed-loop states ({task.name})", disable=not progress, leave=False)
    for first in range(0, episodes, batch):
        n = min(batch, episodes - first)
        venv = make_vector_env(task, n)
        try:
            low, high = venv.single_action_space.low, venv.single_action_space.high
            obs, _ = venv.reset(seed=seed + first)
            session = student.new_session(batch_size=n, seed=seed + first)
            done = np.zeros(n, bool)
            for _ in range(task.max_episode_steps):
                state, plans = session.state, session.queued == 0
                action = session.act(obs)
                if plans and state is not None:
                    steady = (state["levels"] == student._start_levels).all(dim=1)
                    keep = torch.as_tensor(~done) & steady
                    if bool(keep.any()):
                        buffers.append(state["buffer"][keep].clone())
                        conds.append(student.encode_obs(session.observation_window())[keep].clone())
                obs, _, terminated, truncated, _ = venv.step(np.clip(action, low, high))
                done |= terminated | truncated
                if done.all():
                    break
        finally:
            venv.close()
        bar.update(n)
    bar.close()
    if not buffers:
        raise ValueError(f"no steady streaming step in {episodes} episodes of {task.name}")
    return {"buffer": torch.cat(buffers).float(), "cond": torch.cat(conds).float()}


def save_states(states: dict[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Atomically write closed-loop states (safetensors: tensors only, no pickle)."""
    from safetensors.torch import save

    from fastpolicy.utils.atomic import atomic_file

    path = Path(path)
    with atomic_file(path) as f:
        f.write(save({k: v.contiguous() for k, v in states.items()}))
    return path


def load_states(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def distill_closed_loop(teacher: Any, store: str | os.PathLike, start: str | os.PathLike | ConsistencyPolicy,
                        out: str | os.PathLike, task: TaskSpec | str, train_config: Any,
                        distill_config: Any, rounds: int = 1, episodes: int = 200,
                        fraction: float = 0.5, progress: bool = False) -> ConsistencyPolicy:
    """``rounds`` closed-loop rounds from the streaming student ``start`` (a policy or its run): round r
    rolls out the previous round's student for ``episodes`` training episodes, then distils
    (``train_config.steps`` steps, initialised from that student) with ``fraction`` of each batch from
    the states it met.

    Round r lives in ``out/rounds/round{r}`` (the last in ``out`` itself) with its states in
    ``<round dir>/closed_loop/states.safetensors``; a finished round is reused and an interrupted one
    resumes from its checkpoint, with the states it was started on.
    """
    from fastpolicy.policies.checkpoint import load_policy
    from fastpolicy.train.distill import distill

    if rounds < 1:
        raise ValueError(f"rounds must be ≥ 1, got {rounds}")
    dcfg = dataclasses.replace(distill_config, closed_loop_fraction=fraction)
    out = Path(out)
    prev = (start if isinstance(start, ConsistencyPolicy) else load_policy(start)).eval()
    segments = (prev.config.segments,)
    for r in range(1, rounds + 1):
        run_dir = out if r == rounds else out / "rounds" / f"round{r}"
        states_path = run_dir / "closed_loop" / STATES_FILE
        if states_path.exists():
            states = load_states(states_path)
        else:
            seed = TRAINING_ENV_SEED_BASE + 100_000 * r
            states = collect_stream_states(prev, task, episodes, seed, progress=progress)
            save_states(states, states_path)
        prev = distill(teacher, store, run_dir, segments, train_config, resume=True, distill_config=dcfg,
                       init_student=prev, closed_loop_states=states).eval()
    return prev
