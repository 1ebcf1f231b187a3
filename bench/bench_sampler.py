"""How fast can training read windows? SequenceDataset item access vs DataLoader vs one batched gather.

A synthetic store-shaped dataset (episodes of obs + action) is windowed the way the teacher trains
(horizon Tp=16, pad_before To-1=1, pad_after Ta-1=7). Three readers are timed on the same random
windows, interleaved round by round so machine drift hits all of them alike:

* ``numpy_getitem``    — reference: Diffusion Policy's per-item numpy slicing + edge padding;
* ``dataset_getitem``  — ``ds[i]`` in a Python loop (what a DataLoader worker does per item);
* ``dataloader``       — ``torch.utils.data.DataLoader(ds, batch_size, shuffle=True)``, num_workers=0,
                         default collate (the standard PyTorch path);
* ``sample_batch``     — ``ds.sample_batch(indices)``: one numba gather for the whole batch.

Reports windows/s (median over rounds) and writes bench/results/sampler.json.

    .venv/bin/python bench/bench_sampler.py            # full run (~10 s on 2 cores)
    .venv/bin/python bench/bench_sampler.py --quick    # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastpolicy.data.sampler import SequenceDataset
from fastpolicy.evaluation.results import make_row, write_results


@dataclass
class Args:
    episodes: int = 200
    """number of synthetic episodes"""
    episode_length: int = 500
    """steps per episode"""
    obs_dim: int = 20
    """observation size"""
    action_dim: int = 6
    """action size"""
    horizon: int = 16
    """window length (prediction horizon Tp)"""
    pad_before: int = 1
    """To - 1"""
    pad_after: int = 7
    """Ta - 1"""
    batch_size: int = 256
    """windows per batch"""
    rounds: int = 7
    """interleaved timing rounds (median reported)"""
    items_per_round: int = 8192
    """windows read per reader per round"""
    threads: int = 1
    """torch threads (the collate/stack cost is single-threaded anyway)"""
    seed: int = 0
    """RNG seed for data and window order"""
    out: str = "bench/results/sampler.json"
    """where the JSON rows go"""


def parse_args() -> Args:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in dataclasses.fields(Args):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    parser.add_argument("--quick", action="store_true", help="tiny run for smoke testing")
    ns = parser.parse_args()
    args = Args(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(Args)})
    if ns.quick:
        args = dataclasses.replace(args, episodes=20, rounds=2, items_per_round=512)
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    n = args.episodes * args.episode_length
    source = {"obs": rng.normal(size=(n, args.obs_dim)).astype(np.float32),
              "action": rng.uniform(-1, 1, size=(n, args.action_dim)).astype(np.float32),
              "episode_ends": np.arange(1, args.episodes + 1, dtype=np.int64) * args.episode_length}
    t0 = time.perf_counter()
    ds = SequenceDataset(source, args.horizon, args.pad_before, args.pad_after)
    index_s = time.perf_counter() - t0  # includes numba load from cache (or compile on first run)

    arrays = {"obs": source["obs"], "action": source["action"]}

    def run_numpy_getitem(order: np.ndarray) -> None:
        for i in order:
            bs, be, ss, se = ds.indices[int(i)]
            item = {}
            for key, arr in arrays.items():
                window = arr[bs:be]
                if ss > 0 or se < args.horizon:
                    padded = np.empty((args.horizon, *arr.shape[1:]), dtype=arr.dtype)
                    padded[:ss] = window[0]
                    padded[se:] = window[-1]
                    padded[ss:se] = window
                    window = padded
                item[key] = torch.from_numpy(np.ascontiguousarray(window))

    def run_getitem(order: np.ndarray) -> None:
        for i in order:
            ds[int(i)]

    def run_dataloader(order: np.ndarray) -> None:
        sampler = torch.utils.data.SubsetRandomSampler(order.tolist())
        for _ in torch.utils.data.DataLoader(ds, batch_size=args.batch_size, sampler=sampler, num_workers=0):
            pass

    def run_sample_batch(order: np.ndarray) -> None:
        for start in range(0, len(order), args.batch_size):
            ds.sample_batch(order[start:start + args.batch_size])

    readers = {"numpy_getitem": run_numpy_getitem, "dataset_getitem": run_getitem,
               "dataloader": run_dataloader, "sample_batch": run_sample_batch}
    warm = rng.integers(0, len(ds), size=args.batch_size)
    for fn in readers.values():
        fn(warm)
    rates: dict[str, list[float]] = {name: [] for name in readers}
    for _ in range(args.rounds):
        order = rng.integers(0, len(ds), size=args.items_per_round)
        for name, fn in readers.items():
            t = time.perf_counter()
            fn(order)
            rates[name].append(len(order) / (time.perf_counter() - t))

    rows = []
    base = float(np.median(rates["dataset_getitem"]))
    for name, values in rates.items():
        median = float(np.median(values))
        rows.append(make_row(
            "synthetic", name, windows_per_s=round(median, 1), speedup_vs_getitem=round(median / base, 2),
            windows_per_s_min=round(float(np.min(values)), 1), rounds=args.rounds, batch_size=args.batch_size,
            horizon=args.horizon, pad_before=args.pad_before, pad_after=args.pad_after, obs_dim=args.obs_dim,
            action_dim=args.action_dim, dataset_steps=n, dataset_windows=len(ds),
            index_build_s=round(index_s, 4)))
        print(f"{name:<16} {median:>12,.0f} windows/s   ({median / base:6.1f}x getitem)")
    path = write_results(Path(args.out), rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
