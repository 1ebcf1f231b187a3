"""Window index kernel and SequenceDataset against plain-python references of Diffusion Policy semantics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastpolicy.data.sampler import SequenceDataset, episode_split
from fastpolicy.data.store import EpisodeStore
from fastpolicy.kernels.sequence import window_indices, window_indices_masked


def reference_indices(episode_ends, sequence_length, pad_before, pad_after):
    """Diffusion Policy's create_indices, written out in plain python (the oracle)."""
    rows = []
    start = 0
    for end in episode_ends:
        length = end - start
        for idx in range(-pad_before, length - sequence_length + pad_after + 1):
            buffer_start = max(idx, 0) + start
            buffer_end = min(idx + sequence_length, length) + start
            rows.append([buffer_start, buffer_end, buffer_start - (idx + start),
                         sequence_length - ((idx + sequence_length + start) - buffer_end)])
        start = end
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


def reference_windows(episodes, horizon, pad_before, pad_after):
    """Every padded window by clamping frame indices into the episode (independent of the index rows)."""
    out = []
    for ep in episodes:
        length = len(ep)
        for idx in range(-pad_before, length - horizon + pad_after + 1):
            out.append(np.stack([ep[min(max(idx + t, 0), length - 1)] for t in range(horizon)]))
    return out


LENGTHS = [1, 2, 5, 16, 3, 8]


def hand_made(lengths=LENGTHS):
    episodes_obs, episodes_act = [], []
    base = 0
    for length in lengths:
        # Distinct values per frame so any mix-up of frames is visible.
        frames = np.arange(base, base + length, dtype=np.float32)
        episodes_obs.append(np.stack([frames, -frames], axis=1))
        episodes_act.append(np.arange(base, base + length, dtype=np.float32)[:, None] * 10)
        base += 100
    ends = np.cumsum(lengths)
    data = {"obs": np.concatenate(episodes_obs), "action": np.concatenate(episodes_act), "episode_ends": ends}
    return data, episodes_obs, episodes_act


@pytest.mark.parametrize("horizon, pad_before, pad_after",
                         [(4, 0, 0), (4, 1, 3), (16, 1, 7), (1, 0, 0), (3, 2, 2)])
def test_kernel_matches_reference(horizon, pad_before, pad_after):
    ends = np.cumsum(LENGTHS).astype(np.int64)
    np.testing.assert_array_equal(window_indices(ends, horizon, pad_before, pad_after),
                                  reference_indices(ends, horizon, pad_before, pad_after))


def test_kernel_hand_computed_rows():
    # One episode of length 3, horizon 4, pad_before 1, pad_after 3: starts -1..2.
    rows = window_indices(np.array([3], dtype=np.int64), 4, 1, 3)
    np.testing.assert_array_equal(rows, [[0, 3, 1, 4], [0, 3, 0, 3], [1, 3, 0, 2], [2, 3, 0, 1]])
    # Too short for any window without padding.
    assert window_indices(np.array([3], dtype=np.int64), 4, 0, 0).shape == (0, 4)


def test_kernel_rejects_bad_padding():
    with pytest.raises(ValueError, match="pad_after"):
        window_indices(np.array([5], dtype=np.int64), 4, 0, 4)
    with pytest.raises(ValueError, match="pad_before"):
        window_indices(np.array([5], dtype=np.int64), 4, -1, 0)


@pytest.mark.parametrize("horizon, pad_before, pad_after", [(4, 1, 3), (16, 1, 7), (3, 0, 0), (5, 4, 4)])
def test_dataset_windows_equal_reference(horizon, pad_before, pad_after):
    data, eps_obs, eps_act = hand_made()
    ds = SequenceDataset(data, horizon, pad_before, pad_after)
    ref_obs = reference_windows(eps_obs, horizon, pad_before, pad_after)
    ref_act = reference_windows(eps_act, horizon, pad_before, pad_after)
    assert len(ds) == len(ref_obs) > 0
    for i in range(len(ds)):
        item = ds[i]
        assert item["obs"].dtype == torch.float32 and item["obs"].shape == (horizon, 2)
        np.testing.assert_array_equal(item["obs"].numpy(), ref_obs[i])
        np.testing.assert_array_equal(item["action"].numpy(), ref_act[i])
    order = np.random.default_rng(0).permutation(len(ds))
    batch = ds.sample_batch(order)
    assert batch["obs"].shape == (len(ds), horizon, 2) and batch["action"].shape == (len(ds), horizon, 1)
    np.testing.assert_array_equal(batch["obs"].numpy(), np.stack(ref_obs)[order])
    np.testing.assert_array_equal(batch["action"].numpy(), np.stack(ref_act)[order])


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=6), horizon=st.integers(1, 8),
       data=st.data())
def test_random_episodes_match_reference(lengths, horizon, data):
    pad_before = data.draw(st.integers(0, horizon - 1))
    pad_after = data.draw(st.integers(0, horizon - 1))
    source, eps_obs, _ = hand_made(lengths)
    ends = source["episode_ends"].astype(np.int64)
    np.testing.assert_array_equal(window_indices(ends, horizon, pad_before, pad_after),
                                  reference_indices(ends, horizon, pad_before, pad_after))
    ds = SequenceDataset(source, horizon, pad_before, pad_after)
    ref = reference_windows(eps_obs, horizon, pad_before, pad_after)
    assert len(ds) == len(ref)
    if ref:
        np.testing.assert_array_equal(ds.sample_batch(np.arange(len(ds)))["obs"].numpy(), np.stack(ref))


def test_episode_mask_and_split():
    data, eps_obs, _ = hand_made()
    mask = np.array([False, True, False, True, False, True])
    ds = SequenceDataset(data, 4, 1, 3, episode_mask=mask)
    ref = reference_windows([e for e, m in zip(eps_obs, mask) if m], 4, 1, 3)
    np.testing.assert_array_equal(ds.sample_batch(np.arange(len(ds)))["obs"].numpy(), np.stack(ref))
    ends = data["episode_ends"].astype(np.int64)
    np.testing.assert_array_equal(window_indices_masked(ends, 4, 1, 3, np.ones(6, bool)),
                                  window_indices(ends, 4, 1, 3))
    train, val = episode_split(10, val_ratio=0.2, seed=1)
    assert train.sum() == 8 and val.sum() == 2 and not (train & val).any()


def test_store_source_with_action_mask_and_dataloader(tmp_path):
    rng = np.random.default_rng(0)
    n = 20
    mask = rng.random(n) < 0.5
    store = EpisodeStore.from_arrays(tmp_path / "s", {
        "obs": rng.normal(size=(n, 3)), "action": np.where(mask[:, None], rng.normal(size=(n, 2)), np.nan),
        "action_mask": mask, "reward": rng.normal(size=n)}, episode_ends=[7, 20])
    ds = SequenceDataset(store, horizon=4, pad_before=1, pad_after=3, keys=("obs", "action", "reward"))
    item = ds[0]
    assert set(item) == {"obs", "action", "reward", "action_mask"}
    assert item["action_mask"].dtype == torch.bool and item["action_mask"].shape == (4,)
    assert item["reward"].shape == (4,)
    ref_mask = reference_windows([mask[:7], mask[7:]], 4, 1, 3)
    batch_mask = ds.sample_batch(np.arange(len(ds)))["action_mask"]
    np.testing.assert_array_equal(batch_mask.numpy(), np.stack(ref_mask))
    loader = torch.utils.data.DataLoader(ds, batch_size=5, shuffle=True)
    batch = next(iter(loader))
    assert batch["obs"].shape == (5, 4, 3) and batch["action"].shape == (5, 4, 2)
    assert torch.isfinite(batch["action"]).all()


def test_bad_arguments():
    data, _, _ = hand_made()
    with pytest.raises(ValueError, match=r"pad_after must be in \[0, horizon - 1\]"):
        SequenceDataset(data, 4, 0, 4)
    with pytest.raises(KeyError, match="key 'reward' not in the dataset"):
        SequenceDataset(data, 4, keys=("obs", "reward"))
    with pytest.raises(ValueError, match="episode_mask has shape"):
        SequenceDataset(data, 4, episode_mask=np.ones(3, bool))
    ds = SequenceDataset(data, 4)
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(IndexError):
        ds.sample_batch([0, len(ds)])
