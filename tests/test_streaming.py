"""StreamingPolicy (SDP): buffer bookkeeping, training level mix, and our steps against diffusers."""

import numpy as np
import pytest
import torch

from fastpolicy.diffusion import ddim_ode_step, make_schedule
from fastpolicy.policies import streaming as sdp_module
from fastpolicy.policies.diffusion_policy import DiffusionPolicy
from fastpolicy.policies.streaming import (
    StreamingPolicy,
    StreamLayout,
    chunk_start_levels,
    ddpm_step_between,
    grid_timesteps,
)

OBS = np.zeros((2, 2, 3), np.float32)


def _sdp(**kw):
    cfg = dict(obs_dim=3, action_dim=2, backbone="mlp", stream="ddpm:12")
    cfg.update(kw)
    return StreamingPolicy.from_config(cfg).eval()


def test_layout_levels_and_chunks():
    layout = StreamLayout(pred_horizon=16, obs_horizon=2, action_horizon=4, num_levels=100)
    assert layout.chunks == 3
    assert chunk_start_levels(100, 3).tolist() == [32, 65, 99]
    assert layout.position_chunks().tolist() == [0] * 5 + [1] * 4 + [2] * 4 + [3] * 3
    assert layout.start_levels().tolist() == [32] * 5 + [65] * 4 + [99] * 7
    assert grid_timesteps(100, 100).tolist() == list(range(-1, 100))
    assert grid_timesteps(100, 4).tolist() == [-1, 24, 49, 74, 99]
    with pytest.raises(ValueError, match="stagger"):
        StreamLayout(16, 2, 4, num_levels=2)


def test_buffer_bookkeeping_every_roll(monkeypatch):
    """Per call: chunk 0 (and the prefix) is clean when executed; after the roll every chunk moved down
    one slot, fresh noise sits at the top level, the prefix took chunk 0's level and was re-noised."""
    policy = _sdp()
    n = policy.layout.num_levels
    seen = {}
    real_roll = sdp_module.roll_buffer

    def spy(layout_, schedule, table, buffer, levels, generator):
        seen["buffer"], seen["levels"] = buffer.clone(), levels.clone()
        out = real_roll(layout_, schedule, table, buffer, levels, generator)
        seen["rolled"] = out
        return out

    monkeypatch.setattr(sdp_module, "roll_buffer", spy)
    gen = torch.Generator().manual_seed(0)
    state = policy.init_state(2)
    assert state["levels"].eq(n - 1).all()
    nfes = []
    for call in range(6):
        before = state["levels"].clone()
        result = policy.predict_chunk(OBS, state, gen)
        pre, pre_buf = seen["levels"], seen["buffer"]
        assert pre[:, :5].eq(-1).all(), "prefix and chunk 0 must be clean when executed"
        chunks = pre[:, 5:13].view(2, 2, 4)
        assert (chunks == chunks[..., :1]).all(), "each chunk carries one level"
        assert pre[:, 13:].eq(n - 1).all(), "the tail is held at the top level"
        expected_calls = n if call == 0 else int(before[0, 1]) + 1
        nfes.append(result.nfe)
        assert result.nfe == expected_calls
        buf, lev = result.state["buffer"], result.state["levels"]
        assert torch.equal(lev[:, 1:12], pre[:, 5:16]), "chunks shift down by Ta"
        assert torch.equal(buf[:, 1:12], pre_buf[:, 5:16])
        assert lev[:, 9:].eq(n - 1).all(), "fresh noise enters at the top level"
        assert lev[:, 0].eq(lev[:, 1]).all(), "the prefix takes the new chunk 0's level"
        assert not torch.allclose(buf[:, 0], pre_buf[:, 4]), "the prefix was re-noised (not left clean)"
        assert result.actions.shape == (2, 4, 2)
        state = result.state
    assert nfes[0] == n and all(k in (4, 5) for k in nfes[1:])


def test_ode_stream_spends_two_calls_on_six_levels():
    policy = _sdp(stream="ode:6")
    state, gen = policy.init_state(1), torch.Generator().manual_seed(1)
    nfe = []
    for _ in range(4):
        out = policy.predict_chunk(OBS[:1], state, gen)
        state = out.state
        nfe.append(out.nfe)
    assert nfe == [6, 2, 2, 2]
    assert state["levels"][0].tolist() == [1] * 5 + [3] * 4 + [5] * 7


def test_training_level_mix_80_20_and_offset_range():
    policy = _sdp()
    levels, chunkwise = policy.sample_training_levels(1000, torch.Generator().manual_seed(0))
    assert int(chunkwise.sum()) == 800
    cw, const = levels[chunkwise], levels[~chunkwise]
    offsets = 32 - cw[:, 1]
    assert offsets.min() == 0 and offsets.max() == 32          # j ∈ [0, ⌊T/h⌋) = [0, 33)
    assert torch.equal(cw[:, 5] - cw[:, 1], torch.full_like(offsets, 33))
    assert torch.equal(cw[:, 9] - cw[:, 1], torch.full_like(offsets, 67))
    assert cw[:, 13:].eq(99).all() and cw.min() >= 0
    assert (const == const[:, :1]).all() and const.min() >= 0 and const.max() <= 99
    batch = dict(obs=torch.randn(8, 16, 3), action=torch.rand(8, 16, 2))
    loss = policy(batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss["loss"])


@pytest.mark.parametrize("levels", [4, 5, 10, 20, 100])
def test_ode_step_equals_diffusers_ddim(levels):
    from diffusers import DDIMScheduler

    schedule = make_schedule(100)
    ref = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                        set_alpha_to_one=True, timestep_spacing="trailing")
    ref.set_timesteps(levels)
    table = grid_timesteps(100, levels)
    assert ref.timesteps.tolist() == table[1:].flip(0).tolist()
    gen = torch.Generator().manual_seed(levels)
    x, eps = torch.randn(3, 16, 2, generator=gen), torch.randn(3, 16, 2, generator=gen)
    for t in ref.timesteps:
        expected = ref.step(eps, t, x, eta=0.0).prev_sample
        t_from = torch.full((3,), int(t))
        ours = ddim_ode_step(schedule, x, eps, t_from, t_from - 100 // levels, clip_sample=True)
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    # per position: each position follows its own level, exactly as separate scheduler steps would
    t_pos = table[torch.randint(1, levels + 1, (3, 16), generator=gen)]
    ours = ddim_ode_step(schedule, x, eps, t_pos, t_pos - 100 // levels, clip_sample=True)
    for b in range(3):
        for p in range(16):
            one = (slice(b, b + 1), slice(p, p + 1))
            expected = ref.step(eps[one], int(t_pos[b, p]), x[one]).prev_sample
            torch.testing.assert_close(ours[b : b + 1, p : p + 1], expected, rtol=1e-5, atol=1e-6)


def test_ddpm_step_equals_diffusers_ddpm():
    from diffusers import DDPMScheduler

    schedule = make_schedule(100)
    ref = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                        timestep_spacing="trailing")
    ref.set_timesteps(10)
    x, eps = torch.randn(2, 16, 2), torch.randn(2, 16, 2)
    for t in ref.timesteps:
        expected = ref.step(eps, t, x, generator=torch.Generator().manual_seed(int(t))).prev_sample
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(int(t)))
        t_from = torch.full((2,), int(t))
        ours = ddpm_step_between(schedule, x, eps, t_from, t_from - 10, noise)
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_dp_mode_is_ordinary_diffusion_sampling():
    sdp = _sdp(sampler="ddim:4")
    dp = DiffusionPolicy.from_config(dict(obs_dim=3, action_dim=2, backbone="mlp", sampler="ddim:4",
                                          action_horizon=4,
                                          backbone_kwargs={"per_position_time": True})).eval()
    dp.load_state_dict(sdp.state_dict())
    sdp = sdp.with_sampler("ddim:4")
    assert sdp.init_state(2) is None
    a = sdp.predict_chunk(OBS, None, torch.Generator().manual_seed(5))
    b = dp.predict_chunk(OBS, None, torch.Generator().manual_seed(5))
    assert a.nfe == b.nfe == 4 and np.array_equal(a.actions, b.actions)


def test_stale_state_from_another_grid_is_named():
    policy = _sdp(stream="ddpm:100")
    state = policy.init_state(1)
    policy = policy.with_stream("ode:6")
    with pytest.raises(ValueError, match="another"):
        policy.predict_chunk(OBS[:1], state)


def test_zero_initialised_first_step_costs_the_steady_calls():
    """``first_step="zeros"`` (the reference SDP) skips the full warm-up denoise: every control step,
    the first included, spends N/h calls; the default ``denoise`` spends N on the first."""
    for first, expected in (("zeros", [2, 2, 2]), ("denoise", [6 + 0, 2, 2])):
        policy = _sdp(stream="ode:6", first_step=first)
        state, calls = policy.init_state(2), []
        for _ in range(3):
            out = policy.predict_chunk(OBS, state, torch.Generator().manual_seed(0))
            state = out.state
            calls.append(out.nfe)
            assert np.isfinite(out.actions).all()
        assert calls == expected, (first, calls)


def test_stream_and_sampler_views_leave_the_shared_policy_as_it_was():
    policy = _sdp(stream="ddpm:100")
    config_before = dict(policy.config_dict())
    ode, dp = policy.with_stream("ode:6"), policy.with_sampler("ddim:4")
    assert (ode.method, dp.method, policy.method) == ("streaming-ode6", "streaming-net-as-teacher-ddim4",
                                                      "streaming-ddpm100")
    assert ode.config.stream == "ode:6" and dp.config.mode == "dp" and dp.init_state(1) is None
    assert policy.config_dict() == config_before and policy.init_state(1) is not None


def test_streaming_policy_refuses_another_action_horizon():
    """Its chunk length is what the buffer was trained on: not an inference setting to tune."""
    sdp = _sdp()
    with pytest.raises(ValueError, match="streams chunks"):
        sdp.with_action_horizon(sdp.config.action_horizon * 2)
