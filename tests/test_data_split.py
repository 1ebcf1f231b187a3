"""fastpolicy.data.split and ``fastpolicy data split``: no action leaks, the SS-ORL draw, ID/OOD records."""

from __future__ import annotations

import numpy as np
import pytest

from fastpolicy.cli import main
from fastpolicy.data.split import (
    LABELED,
    UNLABELED_IN_DIST,
    UNLABELED_OUT_DIST,
    labeled_subset,
    plan_split,
    split_store,
    store_content_hash,
)
from fastpolicy.data.store import EpisodeStore

N_EPISODES = 40


@pytest.fixture
def source(tmp_path):
    """40 episodes with distinct returns and actions that are never 0 (so a zero is never a true value)."""
    rng = np.random.default_rng(1)
    path = tmp_path / "source"
    with EpisodeStore.create(path, attrs={"source": "test", "env_id": "none", "recipe": "t", "seed": 3}) as w:
        for i in range(N_EPISODES):
            n = int(rng.integers(5, 15))
            action = rng.uniform(0.1, 1.0, size=(n, 2)) * rng.choice([-1, 1], size=(n, 2))
            w.add_episode({"obs": rng.normal(size=(n, 3)).astype(np.float32),
                           "action": action.astype(np.float32),
                           "reward": np.full(n, rng.normal() + 0.01 * i, np.float32),
                           "infos/action_log_probs": rng.uniform(-3, -1, size=n).astype(np.float32)})
    return EpisodeStore.open(path)


def test_split_never_leaks_unlabeled_actions(source, tmp_path):
    split = split_store(source, tmp_path / "split", labeled=0.1, from_bottom=0.5, seed=0)
    mask = split.array("action_mask")
    true, stored = source.array("action"), split.array("action")
    assert 0 < mask.sum() < len(mask)
    np.testing.assert_array_equal(stored[mask], true[mask])
    assert not np.any(stored[~mask] == true[~mask])   # no true value survives, not even one coordinate
    np.testing.assert_array_equal(stored[~mask], 0.0)
    # an action-derived key is removed the same way
    np.testing.assert_array_equal(split.array("infos/action_log_probs")[~mask], 0.0)
    # the bytes on disk agree (read back through a fresh handle, not a cache)
    fresh = EpisodeStore.open(tmp_path / "split")
    assert not np.any(fresh.array("action")[~mask] == true[~mask])


def test_labeled_fraction_and_bottom_rule(source, tmp_path):
    returns = source.episode_returns()
    bottom = set(np.argsort(returns, kind="stable")[: N_EPISODES // 2].tolist())
    draws = set()
    for seed in range(5):
        split = split_store(source, tmp_path / f"split{seed}", labeled=0.1, from_bottom=0.5, seed=seed)
        labeled = split.attrs["split"]["labeled_episodes"]
        assert len(labeled) == round(0.1 * N_EPISODES)
        assert set(labeled) <= bottom
        # whole episodes: every step of a labeled episode is known, every other step unknown
        mask = split.array("action_mask")
        for i in range(N_EPISODES):
            start, end = (split.episode_ends[i - 1] if i else 0), split.episode_ends[i]
            assert mask[start:end].all() == (i in labeled) and mask[start:end].any() == (i in labeled)
        draws.add(tuple(labeled))
    assert len(draws) > 1  # the seed matters


def test_in_and_out_of_distribution_records(source, tmp_path):
    split = split_store(source, tmp_path / "split", labeled=0.1, from_bottom=0.5, seed=2)
    info = split.attrs["split"]
    returns = source.episode_returns()
    order = np.argsort(returns, kind="stable")
    labeled, in_dist, out_dist = (set(info[k]) for k in ("labeled_episodes", "unlabeled_in_distribution",
                                                         "unlabeled_out_of_distribution"))
    assert out_dist == set(order[N_EPISODES // 2:].tolist())
    assert in_dist == set(order[: N_EPISODES // 2].tolist()) - labeled
    assert labeled | in_dist | out_dist == set(range(N_EPISODES)) and not (labeled & in_dist)
    assert max(returns[list(labeled | in_dist)]) <= min(returns[list(out_dist)])
    codes = np.repeat(np.array([LABELED if i in labeled else UNLABELED_IN_DIST if i in in_dist
                                else UNLABELED_OUT_DIST for i in range(N_EPISODES)]), split.episode_lengths)
    np.testing.assert_array_equal(split.array("infos/split"), codes)


def test_split_records_provenance(source, tmp_path):
    split = split_store(source, tmp_path / "split", labeled=0.2, from_bottom=0.5, seed=7)
    info = split.attrs["split"]
    assert info["source_store"] == str(source.path.resolve())
    assert info["source_hash"] == store_content_hash(source)
    assert (info["seed"], info["labeled_fraction"], info["from_bottom"]) == (7, 0.2, 0.5)
    assert info["source_attrs"]["seed"] == 3 and split.attrs["env_id"] == "none"
    assert split.n_episodes == source.n_episodes and split.n_steps == source.n_steps


def test_labeled_subset_keeps_only_labeled_episodes(source, tmp_path):
    split = split_store(source, tmp_path / "split", labeled=0.1, seed=0)
    subset = labeled_subset(split, tmp_path / "subset")
    episodes = split.attrs["split"]["labeled_episodes"]
    assert subset.n_episodes == len(episodes)
    for j, i in enumerate(episodes):
        np.testing.assert_array_equal(subset.episode(j)["action"], source.episode(i)["action"])
        assert (subset.episode(j)["infos/source_episode"] == i).all()


@pytest.mark.parametrize("labeled,from_bottom,match", [(0.0, 0.5, "labeled fraction"),
                                                        (1.5, 0.5, "labeled fraction"),
                                                        (0.1, 0.0, "from-bottom"),
                                                        (0.6, 0.5, "must not exceed"),
                                                        (float("nan"), 0.5, "labeled fraction")])
def test_bad_fractions_are_named(labeled, from_bottom, match):
    with pytest.raises(ValueError, match=match):
        plan_split(np.arange(10.0), labeled, from_bottom)


def test_store_without_actions_or_rewards(source, tmp_path):
    no_actions = EpisodeStore.from_arrays(tmp_path / "none", {
        "obs": source.array("obs"), "action": source.array("action"), "reward": source.array("reward"),
        "action_mask": np.zeros(source.n_steps, bool)}, source.episode_ends)
    with pytest.raises(ValueError, match="no labeled actions"):
        split_store(no_actions, tmp_path / "out")
    no_reward = EpisodeStore.from_arrays(tmp_path / "noreward", {"obs": source.array("obs"),
                                                                 "action": source.array("action")},
                                         source.episode_ends)
    with pytest.raises(ValueError, match="'reward'"):
        split_store(no_reward, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_split(source, tmp_path, capsys):
    out, only = tmp_path / "cli_split", tmp_path / "cli_labeled"
    assert main(["data", "split", str(source.path), "--labeled", "0.1", "--from-bottom", "0.5", "--seed", "4",
                 "--out", str(out), "--labeled-only", str(only)]) == 0
    assert "4 labeled episodes" in capsys.readouterr().out
    assert EpisodeStore.open(out).attrs["split"]["seed"] == 4 and EpisodeStore.open(only).n_episodes == 4
    assert main(["data", "split", str(source.path), "--labeled", "0", "--out", str(tmp_path / "x")]) == 2
    assert "labeled fraction must be a fraction in (0, 1]" in capsys.readouterr().err
    assert main(["data", "split", str(source.path), "--out", str(out)]) == 2  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err
