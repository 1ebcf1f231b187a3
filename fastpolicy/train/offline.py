"""Offline training from an EpisodeStore: fit normalisers, build the window dataset, run the Trainer.

This is what ``fastpolicy train`` and ``scripts/train_offline.py`` call. Resuming rebuilds the policy
from the run's own checkpoint (config and normaliser), so a resumed run cannot drift from its start.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastpolicy.train.run_record import check_run_store, store_record
from fastpolicy.train.trainer import TrainConfig, Trainer
from fastpolicy.utils.misc import seed_everything

if TYPE_CHECKING:
    from fastpolicy.data.store import EpisodeStore
    from fastpolicy.policies.torch_policy import TorchPolicy


def build_dataset(store, obs_horizon: int, pred_horizon: int, action_horizon: int):
    """Training windows of Tp steps over the store.

    ``pad_after = Tp − To`` lets every frame of an episode, the last included, be the conditioning
    observation (window position To − 1); the actions past the episode's end repeat its last action.
    Diffusion Policy's ``Ta − 1`` dropped the last Tp − To − Ta + 1 observations of every episode from
    training (for BC and the teacher alike), so the policy never learnt what to do near the end — e.g.
    holding the goal. ``action_horizon`` is kept in the signature for callers; it no longer decides
    the padding.
    """
    from fastpolicy.data.sampler import SequenceDataset

    keys = ["obs", "action"] + (["action_mask"] if "action_mask" in store.keys else [])
    return SequenceDataset(
        store,
        horizon=pred_horizon,
        pad_before=obs_horizon - 1,
        pad_after=pred_horizon - obs_horizon,
        keys=tuple(keys),
    )


def train_offline(
    store_path: str | os.PathLike | EpisodeStore,
    run_dir: str | os.PathLike,
    policy_type: str = "diffusion",
    policy_options: dict[str, Any] | None = None,
    train_config: TrainConfig | None = None,
    resume: bool = False,
    task: str | None = None,
) -> tuple[TorchPolicy, dict[str, float]]:
    """Train ``policy_type`` on the store; returns (policy, fit stats). ``policy_options`` override the
    config (e.g. backbone, horizons); obs/action dims come from the store.

    ``store_path`` is a store's path or an opened :class:`~fastpolicy.data.store.EpisodeStore` (so a
    store just built in Python — ``make_dataset(...)`` or ``EpisodeStore.from_arrays(path, {"obs": ...,
    "action": ...}, episode_ends)`` — trains without reopening it by name). The returned policy holds
    the raw weights; the run's checkpoint (``fastpolicy.load(run_dir)``) holds the EMA ones.

    The diffusion planners (``diffuser``, ``decision-diffuser``, ``trajectory-diffuser``) learn from
    return-to-go targets as well: they train through
    :func:`fastpolicy.train.planners.train_planner`, which turns the store's rewards into per-episode
    discounted returns (their own horizons; the task card's are for action-chunk policies).
    """
    from fastpolicy.data.store import EpisodeStore

    if resume and (Path(run_dir) / "latest").exists():
        check_run_store(run_dir, store_path)    # a resumed run goes on with the data it started on
    if isinstance(store_path, EpisodeStore):
        # the object is a read-only view of a store on disk: its path is what the run records
        store, store_path = store_path, store_path.path
    else:
        store = None
    if _is_planner(run_dir, policy_type, resume):
        from fastpolicy.train.planners import train_planner

        return train_planner(store_path, run_dir, policy_type, policy_options, train_config, resume=resume,
                             task=task)
    from fastpolicy.data.normalize import DEFAULT_MODES, NormalizerSet
    from fastpolicy.policies.registry import build_policy
    from fastpolicy.utils.checkpoint import load_tensors, read_config, resolve_checkpoint

    if store is None:
        store = EpisodeStore.open(store_path)
    for key in ("obs", "action"):
        if key not in store.keys:
            raise ValueError(f"store {store_path} has no {key!r} array (keys: {store.keys})")
    train_config = train_config or TrainConfig()
    seed_everything(train_config.seed)  # same seed → same initial weights (and DDP ranks agree)
    run_dir = Path(run_dir)
    if resume and (run_dir / "latest").exists():
        ckpt = resolve_checkpoint(run_dir)
        cfg = read_config(ckpt)
        policy = build_policy(
            cfg["policy_type"],
            cfg["policy_config"],
            normalizer_state=load_tensors(ckpt, "normalizer.safetensors"),
        )
    else:
        options = dict(policy_options or {})
        modes = dict(DEFAULT_MODES)
        if task is not None:
            from fastpolicy.envs.registry import get_task

            spec = get_task(task)
            h = spec.horizons
            options.setdefault("obs_horizon", h["obs"])
            options.setdefault("pred_horizon", h["pred"])
            options.setdefault("action_horizon", h["action"])
            if policy_type in ("diffusion", "streaming"):
                for key, value in spec.teacher.items():   # the card's validated teacher choices
                    options.setdefault(key, value)
            modes.update(spec.normalization)
        # not a network option: it decides how the normalizers are fitted (saved with the checkpoint)
        if "obs_normalization" in options:
            modes["obs"] = options.pop("obs_normalization")
        first = store.episode(0)
        obs_dim, act_dim = int(first["obs"].shape[-1]), int(first["action"].shape[-1])
        options.update(obs_dim=obs_dim, action_dim=act_dim)
        normalizer = NormalizerSet.fit_from_store(store, modes=modes)
        policy = build_policy(policy_type, options, normalizer_state=normalizer.state_dict())
    c = policy.config
    dataset = build_dataset(store, c.obs_horizon, c.pred_horizon, c.action_horizon)
    extra = {**store_record(store_path, store.attrs), "task": task}
    trainer = Trainer(policy, dataset, train_config, run_dir, resume=resume, extra_config=extra)
    stats = trainer.fit()
    return policy, stats


def _is_planner(run_dir: str | os.PathLike, policy_type: str, resume: bool) -> bool:
    """Whether this run trains a return-conditioned planner (a resumed run: whatever its checkpoint is)."""
    from fastpolicy.policies.planners import is_planner_type

    if resume and (Path(run_dir) / "latest").exists():
        from fastpolicy.utils.checkpoint import read_config, resolve_checkpoint

        policy_type = read_config(resolve_checkpoint(run_dir))["policy_type"]
    return is_planner_type(policy_type)

