"""Scaling out: benchmark sweeps and dataset generation as Ray tasks (``--ray-address``).

The work itself lives in :mod:`fastpolicy.distributed.ray_runner`; this module holds only what the CLI needs
at registration time (argparse options), so ``fastpolicy --help`` imports neither Ray nor numpy.
Ray is an optional extra (``pip install 'fastpolicy[dist]'``); multi-GPU training uses ``torchrun``
(docs/scaling.md) and needs nothing from here.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastpolicy.distributed.ray_runner import RayConfig

INSTALL_HINT = "pip install 'fastpolicy[dist]'"


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--ray-*`` options shared by ``bench`` and ``data make``."""
    g = parser.add_argument_group(f"Ray (needs the dist extra: {INSTALL_HINT})")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="fan the work out as Ray tasks: auto (the cluster this machine joined), HOST:PORT "
                        "(a head node), ray://HOST:10001 (Ray client) or local (a private instance here)")
    g.add_argument("--ray-cpus", type=float, default=1.0, metavar="N", help="CPUs per Ray task (default 1)")
    g.add_argument("--ray-gpus", type=float, default=0.0, metavar="N", help="GPUs per Ray task (default 0)")
    g.add_argument("--ray-max-retries", type=int, default=3, metavar="N",
                   help="retries of a task that failed or whose worker died (default 3)")


def ray_config_from_args(args: argparse.Namespace, progress: bool = True) -> RayConfig | None:
    """The RayConfig the ``--ray-*`` options ask for (None without ``--ray-address``).

    Checks that Ray is importable first, so a missing extra is one clear line before any work starts.
    """
    if not getattr(args, "ray_address", None):
        return None
    from fastpolicy.distributed.ray_runner import RayConfig, import_ray

    import_ray()
    return RayConfig(address=args.ray_address, num_cpus=args.ray_cpus, num_gpus=args.ray_gpus,
                     max_retries=args.ray_max_retries, progress=progress)
