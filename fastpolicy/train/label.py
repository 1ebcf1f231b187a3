"""Proxy labeling (``fastpolicy label``): fill the actions of action-free steps with inverse-dynamics labels.

SS-ORL (Zheng et al., ICML 2023): train an inverse-dynamics model on the labeled transitions of a split
store (``fastpolicy data split``), label every unlabeled step with the model's mean (clipped to the
action range), keep its uncertainty, and train any learner on true + proxy labels as usual.

    fastpolicy label SPLIT --train-idm IDM_DIR [--history 1] [--ensemble 1] [--idm-loss nll] [--steps N]
    fastpolicy label SPLIT --idm IDM_DIR --out LABELED [--overwrite]
    fastpolicy label SPLIT --train-idm IDM_DIR --out LABELED          (both in one go)

The labeled store (:func:`label_store`) keeps every source key and episode and adds:

* ``action``: the true action where ``action_mask`` was True, the proxy label elsewhere;
* ``action_mask``: all True (every step now has an action a learner may train on);
* ``label_source`` (uint8 per step): 0 true label, 1 proxy label;
* ``infos/label_std`` (T, action_dim): the inverse-dynamics std of a proxy label, 0 for a true label;
* attrs ``labeling``: source store path and content hash, the split's seed and fractions, the
  inverse-dynamics checkpoint path, model hash and config, and the number of proxy-labeled steps.

Steps without a next state (the last step of an episode when the store has no ``next_obs``) cannot be
inverted: they take the proxy label (and std) of the step before — the same as holding the last
action — or, in a one-step episode, the model's output with the state repeated as its own successor.

Labeling is deterministic for a given model: the model runs in eval mode in fixed-size batches, with
no sampling.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

TRUE_LABEL, PROXY_LABEL = 0, 1


def action_bounds_for(store: Any, low: float | None = None, high: float | None = None
                      ) -> tuple[list[float] | None, list[float] | None, str]:
    """Bounds that proxy labels are clipped to, and where they came from.

    Explicit ``low``/``high`` win; else the action space of the store's task (``attrs['task']``, when
    fastpolicy knows it); else the range of the store's known actions.
    """
    from fastpolicy.envs.registry import get_task, make_env

    dim = store.shape("action")[-1]
    if low is not None or high is not None:
        if low is None or high is None:
            raise ValueError("give both --action-low and --action-high, or neither")
        return [float(low)] * dim, [float(high)] * dim, "explicit"
    task = store.attrs.get("task")
    if task:
        try:
            spec = get_task(task)
        except ValueError:  # a task this installation does not know
            spec = None
        if spec is not None:
            env = make_env(spec)
            try:
                space = env.action_space
                return (np.broadcast_to(space.low, (dim,)).astype(float).tolist(),
                        np.broadcast_to(space.high, (dim,)).astype(float).tolist(),
                        f"task {task} action space")
            finally:
                env.close()
    action = store.array("action")
    if "action_mask" in store.keys:
        action = action[store.array("action_mask")]
    return action.min(0).astype(float).tolist(), action.max(0).astype(float).tolist(), "labeled data range"


def train_idm_on_store(store_path: str | os.PathLike, out: str | os.PathLike,
                       config_options: dict[str, Any] | None = None, train_config: Any = None,
                       action_low: float | None = None, action_high: float | None = None,
                       overwrite: bool = False, progress: bool = False) -> tuple[Any, Any]:
    """Fit an inverse-dynamics model on the labeled steps of a store and save it at ``out``.

    ``config_options`` override :class:`~fastpolicy.nets.inverse_dynamics.InverseDynamicsConfig`
    fields (history, hidden, depth, ensemble, loss, dropout); dims and action bounds come from the store.
    Returns ``(model, report)``.
    """
    from fastpolicy.data.split import store_content_hash
    from fastpolicy.data.store import EpisodeStore
    from fastpolicy.nets.inverse_dynamics import InverseDynamicsConfig, save_inverse_dynamics
    from fastpolicy.train.inverse_dynamics import fit_inverse_dynamics

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    store = EpisodeStore.open(store_path)
    _require_actions(store)
    low, high, bounds_source = action_bounds_for(store, action_low, action_high)
    options = dict(config_options or {})
    config = InverseDynamicsConfig(obs_dim=store.shape("obs")[-1], action_dim=store.shape("action")[-1],
                                   action_low=low, action_high=high, **options)
    mask = store.array("action_mask") if "action_mask" in store.keys else None
    next_obs = store.array("next_obs") if "next_obs" in store.keys else None
    model, report = fit_inverse_dynamics(store.array("obs"), store.array("action"), store.episode_ends,
                                         config, train_config, action_mask=mask, next_obs=next_obs,
                                         progress=progress)
    extra = {"train_store": str(Path(store.path).resolve()), "train_store_hash": store_content_hash(store),
             "action_bounds_source": bounds_source,
             "train_config": None if train_config is None else vars(train_config)}
    save_inverse_dynamics(model, out, report, extra=extra, overwrite=overwrite)
    return model, report


def _require_actions(store: Any) -> None:
    if "action" not in store.keys:
        raise ValueError(f"{store.path} has no 'action' array; inverse dynamics needs labeled transitions")
    if "action_mask" in store.keys and not store.array("action_mask").any():
        raise ValueError(f"{store.path} has no labeled action (action_mask False everywhere); "
                         "inverse dynamics needs some labeled transitions")


def proxy_labels(model: Any, obs: np.ndarray, episode_ends: np.ndarray, next_obs: np.ndarray | None = None,
                 batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Proxy label and std for every step (see the module docstring for steps without a next state)."""
    from fastpolicy.nets.inverse_dynamics import predict_windows, transition_windows

    windows, has_next = transition_windows(obs, episode_ends, model.config.history, next_obs)
    mean, std = predict_windows(model, windows, batch_size=batch_size)
    ends = np.asarray(episode_ends, dtype=np.int64)
    step_start = np.repeat(np.concatenate([[0], ends[:-1]]), np.diff(ends, prepend=0))
    hold = np.flatnonzero(~has_next)
    hold = hold[hold > step_start[hold]]          # one-step episodes keep the model's own output
    mean[hold], std[hold] = mean[hold - 1], std[hold - 1]
    return mean, std


def label_store(source: str | os.PathLike, idm: str | os.PathLike, out: str | os.PathLike,
                overwrite: bool = False, batch_size: int = 8192) -> Any:
    """Write ``source`` with proxy labels from the inverse-dynamics checkpoint ``idm`` to ``out``
    (atomically) and return the opened new store."""
    from fastpolicy.data.split import store_content_hash
    from fastpolicy.data.store import EpisodeStore
    from fastpolicy.nets.inverse_dynamics import load_inverse_dynamics
    from fastpolicy.utils.checkpoint import resolve_checkpoint

    store = EpisodeStore.open(source)
    out = Path(out)
    if out.resolve() == Path(store.path).resolve():
        raise ValueError(f"labels must go to a new store, not over their source {store.path}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    _require_actions(store)
    model = load_inverse_dynamics(idm)
    obs_dim, act_dim = store.shape("obs")[-1], store.shape("action")[-1]
    if (obs_dim, act_dim) != (model.config.obs_dim, model.config.action_dim):
        raise ValueError(f"the inverse-dynamics model maps obs dim {model.config.obs_dim} to action dim "
                         f"{model.config.action_dim}, but {store.path} has obs {obs_dim}, action {act_dim}")
    known = store.array("action_mask") if "action_mask" in store.keys else np.ones(store.n_steps, bool)
    next_obs = store.array("next_obs") if "next_obs" in store.keys else None
    proxy, std = proxy_labels(model, store.array("obs"), store.episode_ends, next_obs, batch_size)
    true_action = store.array("action")
    data = {key: store.array(key) for key in store.keys
            if key not in ("action", "action_mask", "label_source", "infos/label_std")}
    data["action"] = np.where(known[:, None], true_action, proxy).astype(np.float32)
    data["action_mask"] = np.ones(store.n_steps, bool)
    data["label_source"] = np.where(known, TRUE_LABEL, PROXY_LABEL).astype(np.uint8)
    data["infos/label_std"] = np.where(known[:, None], 0.0, std).astype(np.float32)

    ckpt = resolve_checkpoint(idm)
    split = store.attrs.get("split", {})
    attrs = {k: v for k, v in store.attrs.items() if k != "labeling"}
    attrs["labeling"] = {
        "method": "inverse-dynamics proxy labels (SS-ORL): mean clipped to the action range",
        "source_store": str(Path(store.path).resolve()),
        "source_hash": store_content_hash(store),
        "split_seed": split.get("seed"),
        "split_labeled_fraction": split.get("labeled_fraction"),
        "split_from_bottom": split.get("from_bottom"),
        "split_source_store": split.get("source_store"),
        "split_source_hash": split.get("source_hash"),
        "idm_checkpoint": str(ckpt.resolve()),
        "idm_model_hash": model.checkpoint_hash,
        "idm_config": model.config.to_dict(),
        "proxy_steps": int((~known).sum()),
        "true_steps": int(known.sum()),
        "label_source_codes": {str(TRUE_LABEL): "true", str(PROXY_LABEL): "proxy"},
    }
    return EpisodeStore.from_arrays(out, data, store.episode_ends, attrs=attrs, overwrite=overwrite)


def idm_errors(model: Any, split: Any, true_action: np.ndarray,
               batch_size: int = 8192) -> dict[str, dict[str, float]]:
    """Inverse-dynamics error per part of a split store, against the true actions (from the source store).

    Parts come from ``infos/split`` (labeled / unlabeled in- / out-of-distribution); steps without a
    next state are left out. Per part: ``mse`` (mean over steps and action dims, clipped labels, raw
    units), ``nll`` (Gaussian NLL per action dim, raw units), ``std_mean`` and ``steps``.
    """
    from fastpolicy.data.split import SPLIT_NAMES
    from fastpolicy.nets.inverse_dynamics import gaussian_nll, predict_windows, transition_windows

    if "infos/split" not in split.keys:
        raise ValueError(f"{split.path} is not a split store (no infos/split); run `fastpolicy data split`")
    true_action = np.asarray(true_action, dtype=np.float32)
    if true_action.shape != split.shape("action"):
        raise ValueError(f"true actions have shape {true_action.shape}, the split store "
                         f"{split.shape('action')}")
    next_obs = split.array("next_obs") if "next_obs" in split.keys else None
    windows, has_next = transition_windows(split.array("obs"), split.episode_ends, model.config.history,
                                           next_obs)
    mean, std = predict_windows(model, windows, batch_size=batch_size)
    codes = split.array("infos/split")
    out: dict[str, dict[str, float]] = {}
    for code, name in SPLIT_NAMES.items():
        sel = (codes == code) & has_next
        if not sel.any():
            continue
        out[name] = {"mse": float(np.mean((mean[sel] - true_action[sel]) ** 2)),
                     "nll": float(np.mean(gaussian_nll(mean[sel], std[sel], true_action[sel]))),
                     "std_mean": float(np.mean(std[sel])), "steps": int(sel.sum())}
    return out
