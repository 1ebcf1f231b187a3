"""``fastpolicy label``: the command line of :mod:`fastpolicy.train.label`."""

from __future__ import annotations

import argparse
from pathlib import Path

from fastpolicy.train import label as _label
from fastpolicy.train.cli import add_threads_flag
from fastpolicy.train.inverse_dynamics import IDMTrainConfig
from fastpolicy.train.label import label_store, train_idm_on_store
from fastpolicy.utils.args import add_config_flags, config_kwargs

#: The inverse-dynamics training flags, each defined once by its ``IDMTrainConfig`` field.
IDM_TRAINING_FLAGS = ("steps", "batch_size", "lr", "val_fraction", "seed")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("label", help="proxy-label action-free steps with an inverse-dynamics model (SS-ORL)",
                       description=_label.__doc__.splitlines()[0])
    p.add_argument("store", type=Path, help="store with action_mask (e.g. from `fastpolicy data split`)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--idm", type=Path, default=None,
                     help="trained inverse-dynamics checkpoint to label with")
    src.add_argument("--train-idm", type=Path, default=None, metavar="IDM_DIR",
                     help="train an inverse-dynamics model on the store's labeled steps and save it here")
    p.add_argument("--out", type=Path, default=None, help="labeled store to write (required with --idm)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    g = p.add_argument_group("inverse-dynamics training (--train-idm)")
    g.add_argument("--history", type=int, default=1, help="k past states before s_t (0: [s_t, s_t+1])")
    g.add_argument("--hidden", type=int, default=512)
    g.add_argument("--depth", type=int, default=2)
    g.add_argument("--ensemble", type=int, default=1, help="independently trained members")
    g.add_argument("--idm-loss", choices=("nll", "mse"), default="nll")
    g.add_argument("--dropout", type=float, default=0.0)
    add_config_flags(g, IDMTrainConfig, IDM_TRAINING_FLAGS,
                     helps={"val_fraction": "labeled episodes held out for selection"})
    g.add_argument("--action-low", type=float, default=None, help="clip labels below (default: task / data)")
    g.add_argument("--action-high", type=float, default=None, help="clip labels above (default: task / data)")
    add_threads_flag(g)
    p.set_defaults(func=_cmd_label)


def _cmd_label(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.idm is not None and args.out is None:
        raise ValueError("--idm needs --out (the labeled store to write)")
    from fastpolicy.utils.atomic import check_writable

    for target in (args.train_idm, args.out):  # before training, not after it
        if target is not None:
            check_writable(target)
    idm = args.idm
    if args.train_idm is not None:
        options = {"history": args.history, "hidden": args.hidden, "depth": args.depth,
                   "ensemble": args.ensemble, "loss": args.idm_loss, "dropout": args.dropout}
        train = IDMTrainConfig(**config_kwargs(args, IDM_TRAINING_FLAGS))
        _, report = train_idm_on_store(args.store, args.train_idm, options, train, args.action_low,
                                       args.action_high, overwrite=args.overwrite, progress=True)
        print(f"wrote {args.train_idm}: inverse dynamics on {report.train_transitions} transitions "
              f"(validation {report.val_transitions}); best step {report.best_step}, "
              f"validation loss {[round(v, 4) for v in report.best_val_loss]}")
        idm = args.train_idm
    if args.out is not None:
        store = label_store(args.store, idm, args.out, overwrite=args.overwrite)
        info = store.attrs["labeling"]
        print(f"wrote {args.out}: {info['proxy_steps']} proxy-labeled steps, {info['true_steps']} true "
              f"(model {info['idm_model_hash'][:12]})")
    return 0
