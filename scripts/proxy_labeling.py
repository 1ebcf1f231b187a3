"""Train a policy from mostly action-free data: split → inverse dynamics → proxy labels → learner.

The SS-ORL workflow on one store, top to bottom (each step is one library call, also reachable from
the CLI as ``fastpolicy data split``, ``fastpolicy label`` and ``fastpolicy train``):

1. ``split_store``: keep the actions of ``--labeled`` of the episodes, drawn from the ``--from-bottom``
   lowest-return ones (skip with ``--already-split`` when the store has an ``action_mask`` already);
2. ``train_idm_on_store``: Gaussian inverse dynamics on [s_(t-k) .. s_t, s_(t+1)], best validation
   checkpoint;
3. ``label_store``: true labels where known, the model's clipped mean elsewhere (``label_source``,
   ``infos/label_std``);
4. ``train_offline``: the learner (``bc`` or ``diffusion``) on the proxy-labeled store, then
   ``evaluate`` on ``--task`` when given.

    .venv/bin/python scripts/proxy_labeling.py --store datasets/store/maze2d-umaze --task maze2d-umaze
    .venv/bin/python scripts/proxy_labeling.py --store datasets/store/hopper-medium --task hopper-medium \
        --learner diffusion --train-steps 20000

For the labeled-only / proxy / fully-labeled comparison see ``bench/bench_proxy_labeling.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fastpolicy.data.split import split_store
from fastpolicy.data.store import EpisodeStore
from fastpolicy.nets.inverse_dynamics import load_inverse_dynamics
from fastpolicy.train.inverse_dynamics import IDMTrainConfig
from fastpolicy.train.label import idm_errors, label_store, train_idm_on_store
from fastpolicy.train.offline import train_offline
from fastpolicy.train.trainer import TrainConfig
from fastpolicy.utils.args import parse_dataclass_args


@dataclass
class Args:
    store: str = ""
    """source EpisodeStore (with actions and rewards), or a split store with --already-split"""
    out: str = "runs/proxy_labeling_script"
    """work directory: split/, idm/, proxy/, policy/"""
    task: str = ""
    """task card to evaluate the learner on (empty: no evaluation)"""
    already_split: bool = False
    """the store already has an action_mask (skip the split)"""
    labeled: float = 0.1
    """fraction of all episodes that keep their actions"""
    from_bottom: float = 0.5
    """the labeled episodes are drawn from this lowest-return fraction"""
    split_seed: int = 0
    """seed of the labeled draw"""
    idm_history: int = 1
    """k: inverse dynamics on [s_(t-k) .. s_t, s_(t+1)]"""
    idm_hidden: int = 256
    """inverse-dynamics MLP width"""
    idm_ensemble: int = 1
    """inverse-dynamics ensemble members"""
    idm_steps: int = 3000
    """inverse-dynamics optimizer steps"""
    learner: str = "bc"
    """policy type trained on the proxy-labeled store (bc, diffusion)"""
    backbone: str = "mlp"
    """diffusion denoiser (learner diffusion)"""
    train_steps: int = 3000
    """learner optimizer steps"""
    lr: float = 1e-3
    """learner learning rate"""
    seed: int = 0
    """training seed"""
    threads: int = 1
    """torch threads"""
    overwrite: bool = False
    """replace existing outputs"""


def parse_args() -> Args:
    args = parse_dataclass_args(Args, __doc__)
    if not args.store:
        raise SystemExit("--store is required")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    split_path = Path(args.store)
    source = EpisodeStore.open(args.store)
    if not args.already_split:
        split_path = out / "split"
        split_store(source, split_path, args.labeled, args.from_bottom, args.split_seed,
                    overwrite=args.overwrite)
    print(f"split: {split_path}")

    options = {"history": args.idm_history, "hidden": args.idm_hidden, "ensemble": args.idm_ensemble}
    _, report = train_idm_on_store(split_path, out / "idm", options, IDMTrainConfig(steps=args.idm_steps),
                                   overwrite=args.overwrite)
    print(f"inverse dynamics: best step {report.best_step}, validation NLL {report.best_val_loss}")
    if not args.already_split:  # the true actions are known to us (not to the learner): report the error
        errors = idm_errors(load_inverse_dynamics(out / "idm"), EpisodeStore.open(split_path),
                            source.array("action"))
        for part, err in errors.items():
            print(f"  {part:<30} action MSE {err['mse']:.4f}  NLL {err['nll']:.3f}  "
                  f"mean std {err['std_mean']:.3f}")

    proxy = label_store(split_path, out / "idm", out / "proxy", overwrite=args.overwrite)
    print(f"proxy-labeled store: {proxy.path} ({proxy.attrs['labeling']['proxy_steps']} proxy steps)")

    options = {"backbone": args.backbone} if args.learner == "diffusion" else {}
    cfg = TrainConfig(steps=args.train_steps, lr=args.lr, warmup_steps=min(200, args.train_steps // 10),
                      checkpoint_every=args.train_steps, seed=args.seed, tensorboard=False)
    policy, _ = train_offline(proxy.path, out / "policy", args.learner, options, cfg, resume=True,
                              task=args.task or None)
    print(f"learner: {out / 'policy'}")
    if args.task:
        from fastpolicy.bench.report import print_table
        from fastpolicy.evaluation import evaluate
        from fastpolicy.policies.checkpoint import load_policy

        print_table([evaluate(load_policy(out / "policy"), args.task, label_condition="proxy")])


if __name__ == "__main__":
    main()
