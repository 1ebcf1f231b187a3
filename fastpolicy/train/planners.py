"""Training driver of the diffusion planners: a store's rewards → returns-to-go → the one Trainer.

It lives in ``train`` (above ``policies``) because it runs the shared :class:`~fastpolicy.train.trainer.
Trainer`; the planners themselves only define ``forward(batch)`` → losses
(:mod:`fastpolicy.policies.planners`). ``fastpolicy train --policy trajectory-diffuser`` reaches it
through :func:`fastpolicy.train.offline.train_offline`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastpolicy.policies.planners.data import discounted_returns, offset_std, planner_dataset
from fastpolicy.train.run_record import store_record

FROM_DATA = ("obs_dim", "action_dim", "return_scale", "return_max", "draft_offset_std")
"""config fields :func:`train_planner` sets from the store when the options leave them out"""


def train_planner(store_path: str | os.PathLike, run_dir: str | os.PathLike,
                  policy_type: str = "trajectory-diffuser", policy_options: dict[str, Any] | None = None,
                  train_config: Any = None, resume: bool = False, task: str | None = None):
    """Train a planner on an EpisodeStore with the shared Trainer; returns (policy, fit stats).

    Normalisers are fitted on the store (``limits`` for obs and action, as ``fastpolicy train`` does);
    ``return_scale`` defaults to 1 / the largest discounted return-to-go of the data, so returns lie in
    [0, 1], and ``return_max`` records that largest return in those units (the return-target rule's
    anchor). A Trajectory Diffuser gets ``draft_offset_std``, the data's k-step spread of the normalised
    states its transformer predicts in (pass ``draft_offset_std=None`` to train unscaled). Resuming
    rebuilds the policy from the run's own checkpoint.
    """
    from fastpolicy.data.normalize import NormalizerSet
    from fastpolicy.data.store import EpisodeStore
    from fastpolicy.policies.registry import build_policy, policy_class
    from fastpolicy.train.trainer import TrainConfig, Trainer
    from fastpolicy.utils.checkpoint import load_tensors, read_config, resolve_checkpoint
    from fastpolicy.utils.misc import seed_everything

    store = EpisodeStore.open(store_path)
    for key in ("obs", "action", "reward"):
        if key not in store.keys:
            raise ValueError(f"store {store_path} has no {key!r} array (keys: {store.keys})")
    train_config = train_config or TrainConfig()
    seed_everything(train_config.seed)
    run_dir = Path(run_dir)
    if resume and (run_dir / "latest").exists():
        ckpt = resolve_checkpoint(run_dir)
        cfg = read_config(ckpt)
        policy = build_policy(cfg["policy_type"], cfg["policy_config"],
                              normalizer_state=load_tensors(ckpt, "normalizer.safetensors"))
    else:
        options = dict(policy_options or {})
        first = store.episode(0)
        options.update(obs_dim=int(first["obs"].shape[-1]), action_dim=int(first["action"].shape[-1]))
        config_cls = policy_class(policy_type).config_cls
        if "return_scale" not in options or "return_max" not in options:
            discount = options.get("discount", config_cls.discount)
            top = float(discounted_returns(store.array("reward"), store.episode_ends, discount).max())
            options.setdefault("return_scale", 1.0 / top if top > 0 else 1.0)
            options.setdefault("return_max", top * float(options["return_scale"]))
        normalizer = NormalizerSet.fit_from_store(store, modes={"obs": "limits", "action": "limits"})
        if "draft_offset_std" not in options and hasattr(config_cls, "draft_offset_std"):
            horizon = options.get("pred_horizon", config_cls.pred_horizon)
            obs_n = normalizer["obs"].normalize(store.array("obs"))
            options["draft_offset_std"] = offset_std(obs_n, store.episode_ends, horizon - 1).tolist()
        policy = build_policy(policy_type, options, normalizer_state=normalizer.state_dict())
    dataset = planner_dataset(store, policy.config.pred_horizon, policy.config.discount)
    extra = {**store_record(store_path, store.attrs), "task": task}
    trainer = Trainer(policy, dataset, train_config, run_dir, resume=resume, extra_config=extra)
    stats = trainer.fit()
    return policy.eval(), stats



__all__ = ["FROM_DATA", "train_planner"]
