"""``fastpolicy data ...``: make, import, inspect and export datasets.

    fastpolicy data make NAME [--out STORE] [--size N] [--seed S] [--overwrite]
                         [--ray-address ADDR [--shards K]]
    fastpolicy data import PATH [--format d4rl|minari] --out STORE [--overwrite]
    fastpolicy data info STORE [--png PATH] [--json]
    fastpolicy data verify STORE                     (every chunk present, its sha256 right, decodable)
    fastpolicy data recipes                          (the NAMEs data make knows)
    fastpolicy data export STORE --format d4rl --out FILE.hdf5 [--overwrite]
    fastpolicy data split STORE --labeled 0.1 --from-bottom 0.5 --seed S --out STORE [--labeled-only STORE]

Only argparse is imported here; each handler imports what it needs (zarr, h5py, matplotlib, recipes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fastpolicy.distributed import add_ray_arguments, ray_config_from_args

DEFAULT_STORE_ROOT = Path("datasets") / "store"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="make, import, inspect and export datasets",
                                   description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True

    p = sub.add_parser("make", help="build a dataset from a recipe (behavior policy / expert rollouts)")
    p.add_argument("name", help="recipe name (list them: fastpolicy data recipes)")
    p.add_argument("--out", type=Path, default=None, help="store path (default datasets/store/NAME)")
    p.add_argument("--size", type=int, default=None, help="number of steps (recipe default if omitted)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--shards", type=int, default=None,
                   help="with --ray-address: split the recipe into K seed-sharded Ray tasks (default: one "
                        "per 50k steps; the dataset depends on K, never on the cluster; K = 1 equals the "
                        "local build)")
    add_ray_arguments(p)
    p.set_defaults(func=_make)

    p = sub.add_parser("import", help="convert a D4RL HDF5 file or a Minari dataset into a store")
    p.add_argument("path", type=Path, help="D4RL .hdf5 file or Minari dataset directory")
    p.add_argument("--format", choices=("d4rl", "minari"), default=None,
                   help="input format (default: minari for a directory, d4rl for a file)")
    p.add_argument("--out", type=Path, required=True, help="store path to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--max-episode-steps", type=int, default=None,
                   help="d4rl files without 'timeouts': also cut episodes every N steps")
    p.set_defaults(func=_import)

    p = sub.add_parser("info", help="summarise a store and plot its return / length histograms")
    p.add_argument("store", type=Path)
    p.add_argument("--png", type=Path, default=None, help="histogram path (default: <store>.returns.png)")
    p.add_argument("--no-png", dest="write_png", action="store_false", help="do not write the histogram")
    p.add_argument("--json", action="store_true", help="print the full summary as JSON")
    p.set_defaults(func=_info)

    p = sub.add_parser("verify", help="check every chunk of a store against its manifest (sha256) "
                                      "and that every array decodes")
    p.add_argument("store", type=Path)
    p.set_defaults(func=_verify)

    p = sub.add_parser("recipes", help="list the dataset recipes (NAMEs for data make)")
    p.set_defaults(func=_recipes)

    p = sub.add_parser("export", help="write a store as a D4RL HDF5 file")
    p.add_argument("store", type=Path)
    p.add_argument("--format", choices=("d4rl",), default="d4rl")
    p.add_argument("--out", type=Path, required=True, help="output .hdf5 file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.set_defaults(func=_export)

    p = sub.add_parser("split", help="SS-ORL action-free split: keep the actions of a few low-return "
                                     "episodes only")
    p.add_argument("store", type=Path, help="source store (with actions and rewards)")
    p.add_argument("--labeled", type=float, default=0.1,
                   help="fraction of all episodes that keep their actions, in (0, 1] (default 0.1)")
    p.add_argument("--from-bottom", type=float, default=0.5,
                   help="draw the labeled episodes from this lowest-return fraction, in (0, 1] (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draw")
    p.add_argument("--out", type=Path, required=True, help="split store to create")
    p.add_argument("--labeled-only", type=Path, default=None,
                   help="also write the labeled episodes alone as a store here")
    p.add_argument("--overwrite", action="store_true", help="replace existing output stores")
    p.set_defaults(func=_split)


def _check_output(path: Path, overwrite: bool) -> None:
    """Before any work: the output is new (or --overwrite) and its folder can be written."""
    from fastpolicy.utils.atomic import check_writable

    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass --overwrite to replace it)")
    check_writable(path)


def _make(args: argparse.Namespace) -> int:
    from fastpolicy.data.recipes import make_dataset

    out = args.out if args.out is not None else DEFAULT_STORE_ROOT / args.name
    if args.size is not None and args.size <= 0:
        raise ValueError(f"--size must be a positive number of steps, got {args.size}")
    _check_output(out, args.overwrite)
    ray_config = ray_config_from_args(args, progress=args.progress)
    if ray_config is not None:
        from fastpolicy.distributed.ray_runner import make_dataset_on_ray

        store = make_dataset_on_ray(args.name, out, ray_config, size=args.size, seed=args.seed,
                                    overwrite=args.overwrite, shards=args.shards)
    elif args.shards is not None:
        raise ValueError("--shards splits a build into Ray tasks: it needs --ray-address")
    else:
        store = make_dataset(args.name, out, size=args.size, seed=args.seed, overwrite=args.overwrite,
                             progress=args.progress)
    summary = f": {store.n_episodes} episodes, {store.n_steps} steps" if store is not None else ""
    print(f"wrote {out}{summary}")
    return 0


def _import(args: argparse.Namespace) -> int:
    fmt = args.format or ("minari" if args.path.is_dir() else "d4rl")
    if not args.path.exists():
        raise FileNotFoundError(f"{args.path} does not exist")
    _check_output(args.out, args.overwrite)
    if fmt == "d4rl":
        from fastpolicy.data.d4rl import import_d4rl

        store = import_d4rl(args.path, args.out, overwrite=args.overwrite,
                            max_episode_steps=args.max_episode_steps)
    else:
        from fastpolicy.data.minari_io import import_minari

        store = import_minari(args.path, args.out, overwrite=args.overwrite)
    print(f"imported {args.path} ({fmt}) -> {args.out}: {store.n_episodes} episodes, {store.n_steps} steps")
    return 0


def _info(args: argparse.Namespace) -> int:
    from fastpolicy.data.info import format_info, plot_returns, store_info
    from fastpolicy.data.store import EpisodeStore
    from fastpolicy.utils.atomic import check_writable

    store = EpisodeStore.open(args.store)
    png = None
    if args.write_png:
        png = args.png if args.png is not None else args.store.parent / f"{args.store.name}.returns.png"
        check_writable(png)
    info = store_info(store)
    if png is not None:
        plot_returns(store, png)
        info["histogram_png"] = str(png)
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        print(format_info(info))
        if png is not None:
            print(f"  histogram: {png}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    import sys

    from fastpolicy.data.store import verify_store

    report = verify_store(args.store)
    how = "sha256 + decode" if report.has_manifest else "decode only: no manifest (an older store)"
    summary = (f"{report.arrays} arrays, {report.chunks} chunks, {report.bytes / 1e6:.1f} MB checked "
               f"({how}) in {report.seconds:.1f} s")
    if report.ok:
        print(f"ok: {args.store}: {summary}")
        if not report.has_manifest:
            print("  a missing chunk of a store without a manifest reads as zeros and cannot be detected; "
                  "rebuild it (data make / import) to get one")
        return 0
    for problem in report.problems:
        print(f"{args.store}: {problem}", file=sys.stderr)
    print(f"fastpolicy data verify: {len(report.problems)} problem(s) in {args.store} ({summary}); "
          "rebuild the store", file=sys.stderr)
    return 1


def _recipes(args: argparse.Namespace) -> int:
    import importlib

    from fastpolicy.data.recipes import RECIPE_MODULES, all_recipes

    recipes = all_recipes()
    for module_name in RECIPE_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        names = sorted(n for n in recipes if n in module.RECIPES)
        summary = (module.__doc__ or module_name).strip().splitlines()[0].replace("``", "")
        print(f"{summary}\n  " + "\n  ".join(names))
    print("\nbuild one: fastpolicy data make NAME [--size N] [--out STORE]")
    return 0


def _export(args: argparse.Namespace) -> int:
    from fastpolicy.data.d4rl import export_d4rl

    _check_output(args.out, args.overwrite)
    path = export_d4rl(args.store, args.out, overwrite=args.overwrite)
    print(f"exported {args.store} -> {path} (d4rl)")
    return 0


def _split(args: argparse.Namespace) -> int:
    from fastpolicy.data.split import labeled_subset, split_store

    _check_output(args.out, args.overwrite)
    if args.labeled_only is not None:
        _check_output(args.labeled_only, args.overwrite)
    store = split_store(args.store, args.out, labeled=args.labeled, from_bottom=args.from_bottom,
                        seed=args.seed, overwrite=args.overwrite)
    info = store.attrs["split"]
    print(f"wrote {args.out}: {len(info['labeled_episodes'])} labeled episodes "
          f"({info['labeled_steps']} steps), "
          f"{len(info['unlabeled_in_distribution'])} unlabeled in-distribution, "
          f"{len(info['unlabeled_out_of_distribution'])} unlabeled out-of-distribution "
          f"(return threshold {info['return_threshold']:.4g})")
    if args.labeled_only is not None:
        subset = labeled_subset(store, args.labeled_only, overwrite=args.overwrite)
        print(f"wrote {args.labeled_only}: {subset.n_episodes} labeled episodes, {subset.n_steps} steps")
    return 0
