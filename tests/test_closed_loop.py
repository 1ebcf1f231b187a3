"""Closed-loop rounds of a streaming consistency student: what is collected, how it is labelled, resuming."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fastpolicy.envs.registry import get_task
from fastpolicy.evaluation import closed_loop
from fastpolicy.evaluation.closed_loop import collect_stream_states, distill_closed_loop
from fastpolicy.policies.streaming import StreamingPolicy
from fastpolicy.train.distill import ConsistencyDistiller, DistillConfig, distill, student_from_teacher

TASK = "agv-bimodal-block"   # obs 37, action 2; cut to a few steps below


def _sdp_and_student(levels: int = 6):
    torch.manual_seed(0)
    sdp = StreamingPolicy.from_config(dict(obs_dim=37, action_dim=2, backbone="mlp",
                                           backbone_kwargs={"hidden": 32})).eval()
    return sdp.with_stream(f"ode:{levels}"), student_from_teacher(sdp, f"ode:{levels}", segments=3,
                                                                   streaming=True).eval()


def _short_task(steps: int = 12):
    return dataclasses.replace(get_task(TASK), max_episode_steps=steps)


def test_collected_states_are_the_steady_streaming_inputs():
    _, student = _sdp_and_student()
    ta = student.config.action_horizon
    states = collect_stream_states(student, _short_task(12), episodes=3, seed=7, batch=2)
    # 12 steps at Ta 4 = 3 plans per episode; the first is the fresh buffer's warm-up, not collected
    assert states["buffer"].shape == (3 * (12 // ta - 1), student.config.pred_horizon, 2)
    assert states["cond"].shape == (states["buffer"].shape[0], 2 * 37)
    # the buffers are the student's own: re-running its session from the same seed meets them again
    session = student.new_session(batch_size=2, seed=7)
    venv_task = _short_task(12)
    from fastpolicy.envs.registry import make_vector_env

    venv = make_vector_env(venv_task, 2)
    obs, _ = venv.reset(seed=7)
    for _ in range(ta):
        obs, *_ = venv.step(session.act(obs))
    venv.close()
    torch.testing.assert_close(states["buffer"][:2], session.state["buffer"])


def test_closed_loop_rows_are_labelled_by_the_teachers_stream():
    sdp, student = _sdp_and_student(levels=12)
    module = ConsistencyDistiller(sdp, student, DistillConfig("ode:12", segments=3, streaming=True,
                                                              closed_loop_fraction=0.5))
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(5, 2, 37, generator=gen).numpy()
    bank = {"buffer": torch.randn(5, 16, 2, generator=gen), "cond": sdp.encode_obs(obs)}
    module.use_closed_loop_states(bank)
    g, b = module.sample_grid(8, gen)
    x_g, cond = torch.zeros(8, 16, 2), torch.zeros(8, 74)
    x_g, g, b, cond, n = module._closed_loop_rows(x_g, g, b, cond, gen)
    assert n == 4
    # the steady start: every chunk at its segment's top boundary (4 levels each), the tail held at 12
    assert torch.equal(g[:4], torch.tensor([4] * 5 + [8] * 4 + [12] * 7).expand(4, -1))
    assert torch.equal(b[:4], torch.tensor([0] * 5 + [4] * 4 + [8] * 4 + [12] * 3).expand(4, -1))
    picked = [next(j for j in range(5) if torch.equal(x_g[i], bank["buffer"][j])) for i in range(4)]
    assert all(torch.equal(cond[i], bank["cond"][j]) for i, j in enumerate(picked))
    assert torch.equal(x_g[4:], torch.zeros(4, 16, 2))
    # the label is what the SDP's own ode:12 step does from that buffer (4 calls): its rolled state
    # holds the stepped chunks 1, 2 and the tail shifted by Ta (the prefix is re-noised, chunk 0 executed)
    target = module.teacher_solve(x_g[:1], g[:1], b[:1], cond[:1])
    state = {"buffer": x_g[:1].clone(), "levels": sdp._start_levels[None].clone()}
    rolled = sdp.predict_chunk(obs[picked[0]][None], state).state["buffer"]
    ta, pre = 4, 1
    torch.testing.assert_close(rolled[:, pre:16 - ta], target[:, pre + ta:], rtol=1e-4, atol=1e-5)


def test_closed_loop_settings_are_checked():
    with pytest.raises(ValueError, match="streaming"):
        DistillConfig("ode:12", closed_loop_fraction=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        DistillConfig("ode:12", segments=3, streaming=True, closed_loop_fraction=1.5)
    sdp, student = _sdp_and_student()
    module = ConsistencyDistiller(sdp, student, DistillConfig("ode:6", segments=3, streaming=True,
                                                              closed_loop_fraction=0.5))
    with pytest.raises(ValueError, match="expected"):
        module.use_closed_loop_states({"buffer": torch.zeros(3, 8, 2), "cond": torch.zeros(3, 74)})
    with pytest.raises(ValueError, match="go together"):
        distill(sdp, "unused", "unused", (3,), distill_config=DistillConfig(
            "ode:6", segments=3, streaming=True), closed_loop_states={"buffer": torch.zeros(1, 16, 2)})


@pytest.fixture
def agv_like_store(tmp_path):
    """Random data of the AGV task's shapes: enough for a distillation step (no env needed)."""
    from fastpolicy.data.store import EpisodeStore

    rng = np.random.default_rng(0)
    path = tmp_path / "agv_like"
    with EpisodeStore.create(path, attrs={"source": "test", "env_id": "none", "recipe": "random",
                                          "seed": 0}) as w:
        for _ in range(4):
            n = 30
            w.add_episode({"obs": rng.normal(size=(n, 37)).astype(np.float32),
                           "action": rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
                           "reward": np.zeros(n, np.float32), "terminal": np.zeros(n, bool),
                           "timeout": np.eye(1, n, n - 1, dtype=bool)[0]})
    return path


def test_rounds_resume_with_the_states_they_started_on(agv_like_store, tmp_path, monkeypatch):
    from fastpolicy.train.trainer import TrainConfig

    sdp, student = _sdp_and_student()
    cfg = TrainConfig(steps=3, batch_size=8, warmup_steps=1, checkpoint_every=3, progress=False,
                      tensorboard=False)
    dcfg = DistillConfig("ode:6", segments=3, streaming=True)
    out = tmp_path / "closed"
    first = distill_closed_loop(sdp, agv_like_store, student, out, _short_task(8), cfg, dcfg, rounds=2,
                                episodes=2)
    for run in (out / "rounds" / "round1", out):
        saved = closed_loop.load_states(run / "closed_loop" / closed_loop.STATES_FILE)
        assert saved["buffer"].shape[0] == saved["cond"].shape[0] > 0
    # a finished run is reused as it is: no new collection, the same weights
    monkeypatch.setattr(closed_loop, "collect_stream_states",
                        lambda *a, **k: pytest.fail("states collected again"))
    again = distill_closed_loop(sdp, agv_like_store, student, out, _short_task(8), cfg, dcfg, rounds=2,
                                episodes=2)
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
