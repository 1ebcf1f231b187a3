"""The multimodal AGV tier (bimodal-block): the expert commits to a side of the block at random and
reproducibly, both modes occur, the mode classifier agrees with the expert, averaging the modes fails,
and the dataset recipe records the modes."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import fastpolicy.envs.agv  # noqa: F401  (registers the tiers)
from fastpolicy.envs.agv.expert import AGVExpert, measure_expert, run_expert_episode
from fastpolicy.envs.agv.layout import get_layout, parse_layout
from fastpolicy.envs.agv.modes import blocked_side_cells, classify_mode, mode_fractions
from fastpolicy.envs.registry import get_task

ENV_ID = "fastpolicy/AGV-BimodalBlock-v0"


@pytest.fixture(scope="module")
def layout():
    return get_layout("bimodal-block")


def test_task_card_and_layout(layout):
    task = get_task("agv-bimodal-block")
    assert task.env_id == ENV_ID and task.dataset == "agv-bimodal-block-expert"
    assert gym.spec(ENV_ID).max_episode_steps == task.max_episode_steps == 400
    assert layout.modes is not None and layout.modes.names == ("south", "north")
    # Straight from any start to any goal runs through the block: starts and goals lie within its y span.
    bx0, by0, bx1, by1 = layout.shelves[layout.modes.block]
    r = layout.robot.radius
    for regions in (layout.start_regions, layout.goal_regions):
        assert (regions[:, 1] > by0 + r).all() and (regions[:, 3] < by1 - r).all()
    assert layout.start_regions[:, 2].max() < bx0 and layout.goal_regions[:, 0].min() > bx1


def test_expert_succeeds_with_both_modes_and_classifier_agrees():
    result = measure_expert("bimodal-block", episodes=40, seed=1)
    assert result["success_rate"] >= 0.95, result
    for frac in result["mode_fractions"].values():
        assert 0.3 <= frac <= 0.7, result
    assert result["classifier_agreement"] == 1.0, result
    assert result["classified"]["none"] == 0.0
    assert result["mean_length"] < 200


def test_modes_are_reproducible_from_the_env_seed(layout):
    def modes(seed):
        env = gym.make(ENV_ID)
        expert = AGVExpert(layout)
        return [run_expert_episode(env, expert, seed=seed if i == 0 else None)["mode"] for i in range(8)]

    assert modes(3) == modes(3)
    assert modes(3) != modes(4)


def test_forced_mode_plans_on_that_side(layout):
    env = gym.make(ENV_ID)
    expert = AGVExpert(layout)
    env.reset(seed=0)
    base = env.unwrapped
    for mode in layout.modes.names:
        expert.reset(base.pose, base.goal, mode=mode)
        assert expert.mode == mode and classify_mode(layout, expert.path) == mode
    with pytest.raises(ValueError, match="has modes"):
        expert.reset(base.pose, base.goal, mode="east")
    # Layouts without modes draw nothing and refuse a mode.
    plain = AGVExpert(get_layout("simple-static"))
    with pytest.raises(ValueError, match="has modes"):
        plain.reset(np.array([1.0, 6.0, 0.0]), np.array([14.0, 6.0]), mode="north")


def test_classifier(layout):
    x = np.linspace(0.5, 11.5, 50)
    assert classify_mode(layout, np.column_stack([x, np.full(50, 5.2)])) == "north"
    assert classify_mode(layout, np.column_stack([x, np.full(50, 0.8)])) == "south"
    assert classify_mode(layout, np.column_stack([np.linspace(1, 4.5, 20), np.full(20, 3.0)])) is None
    assert mode_fractions(layout, ["north", "south", None, "north"]) == {"south": 0.25, "north": 0.5,
                                                                          "none": 0.25}
    assert blocked_side_cells(layout, "north").any() and not (
        blocked_side_cells(layout, "north") & blocked_side_cells(layout, "south")).any()
    with pytest.raises(ValueError, match="declares no modes"):
        classify_mode(get_layout("simple-static"), np.zeros((3, 2)))


def test_bad_modes_entry_is_refused():
    data = {"name": "x", "size": [10.0, 6.0], "shelves": [[4.0, 2.0, 6.0, 4.0]],
            "start_regions": [[0.6, 2.5, 1.6, 3.5]], "goal_regions": [[8.4, 2.5, 9.4, 3.5]]}
    assert parse_layout({**data, "modes": {"block": 0}}).modes.names == ("south", "north")
    with pytest.raises(ValueError, match="modes.block"):
        parse_layout({**data, "modes": {"block": 3}})
    with pytest.raises(ValueError, match="modes.axis"):
        parse_layout({**data, "modes": {"block": 0, "axis": "z"}})


def _outcome(info) -> str:
    return "success" if info["success"] else ("collision" if info["collision"] else "timeout")


def test_averaging_the_modes_fails(layout):
    """The mean of a south and a north expert's actions stalls at the block; heading straight for the
    goal collides with it."""
    env = gym.make(ENV_ID)
    core = env.unwrapped.core
    south, north = AGVExpert(layout), AGVExpert(layout)
    averaged = []
    for i in range(10):
        env.reset(seed=100 + i)
        south.reset(core.pose[0], core.goal[0], mode="south")
        north.reset(core.pose[0], core.goal[0], mode="north")
        xy = [core.pose[0, :2].copy()]
        while True:
            action = 0.5 * (south.act(core.pose[0]) + north.act(core.pose[0]))
            _, _, term, trunc, info = env.step(action)
            xy.append(core.pose[0, :2].copy())
            if term or trunc:
                break
        averaged.append(_outcome(info))
        assert classify_mode(layout, np.asarray(xy)) is None       # never got past the block's face
    assert averaged.count("success") <= 2, averaged

    straight = []
    for i in range(10):
        env.reset(seed=200 + i)
        while True:
            pose, goal = core.pose[0], core.goal[0]
            bearing = np.arctan2(goal[1] - pose[1], goal[0] - pose[0]) - pose[2]
            bearing = (bearing + np.pi) % (2 * np.pi) - np.pi
            speed = 1.0 - 2.0 * min(abs(bearing) / (np.pi / 3), 1.0)     # turn in place when far off
            action = np.array([speed, np.clip(1.7 * bearing, -1, 1)])
            _, _, term, trunc, info = env.step(action)
            if term or trunc:
                break
        straight.append(_outcome(info))
    assert straight.count("success") <= 2, straight


def test_recipe_records_modes(tmp_path):
    from fastpolicy.data.recipes import make_dataset
    from fastpolicy.data.store import EpisodeStore

    make_dataset("agv-bimodal-block-expert", tmp_path / "ds", size=1200, seed=0, progress=False)
    store = EpisodeStore.open(tmp_path / "ds")
    attrs = store.attrs
    assert store.n_steps == 1200 and attrs["env_id"] == ENV_ID and attrs["task"] == "agv-bimodal-block"
    assert attrs["mode_names"] == ["south", "north"]
    assert sum(attrs["mode_counts"].values()) == store.n_episodes
    layout = get_layout("bimodal-block")
    for i in range(store.n_episodes - 1):          # the last episode was cut to fit the size
        ep = store.episode(i)
        mode = ep["infos/mode"]
        assert (mode == mode[0]).all()
        assert classify_mode(layout, ep["infos/pose"][:, :2]) == attrs["mode_names"][int(mode[0])]
