"""Consistency students and distillation: boundary, warm start, loss, NFE, checkpoints, streaming."""

import numpy as np
import pytest
import torch

from fastpolicy.diffusion.samplers import predict_x0_eps
from fastpolicy.policies.consistency import ConsistencyPolicy
from fastpolicy.policies.diffusion_policy import DiffusionPolicy
from fastpolicy.policies.streaming import StreamingPolicy
from fastpolicy.train.distill import ConsistencyDistiller, DistillConfig, distill, student_from_teacher

OBS = np.random.default_rng(0).random((3, 2, 3)).astype(np.float32)


def _teacher(**kw):
    # per-position time: these tests drive the consistency function with (B, T) levels as well
    cfg = dict(obs_dim=3, action_dim=2, backbone="mlp", sampler="ddim:10",
               backbone_kwargs={"per_position_time": True})
    cfg.update(kw)
    torch.manual_seed(0)
    return DiffusionPolicy.from_config(cfg).eval()


def test_boundary_is_exact_identity():
    student = student_from_teacher(_teacher(), "ddim:12", segments=4)
    x, cond = torch.randn(5, 16, 2) * 3, torch.randn(5, 6)
    clean = torch.full((5,), -1)
    assert torch.equal(student.consistency_fn(x, clean, clean, cond), x)        # f(x, t_min) = x
    t = student.grid_timesteps()[torch.tensor([3, 6, 9, 12, 0])]
    assert torch.equal(student.consistency_fn(x, t, t, cond), x)                # segment boundaries too
    per_pos = torch.full((5, 16), -1)
    assert torch.equal(student.consistency_fn(x, per_pos, per_pos, cond), x)


def test_student_at_init_is_the_teachers_x0_prediction():
    teacher = _teacher()
    student = student_from_teacher(teacher, "ddim:12", segments=1)
    x, cond = torch.randn(4, 16, 2), torch.randn(4, 6)
    t = torch.tensor([0, 30, 70, 99])
    zero_stop = student.backbone(x, t, cond, stop_time=torch.full((4,), -1))
    assert torch.equal(zero_stop, teacher.backbone(x, t, cond))
    abar = teacher.schedule.alphas_cumprod[t].view(4, 1, 1)
    x0, _ = predict_x0_eps(x, teacher.backbone(x, t, cond), abar.sqrt(), (1 - abar).sqrt(),
                           teacher.config.prediction_type)
    # clipped as the teacher's sampler clips its clean estimate
    torch.testing.assert_close(student.consistency_fn(x, t, torch.full((4,), -1), cond), x0.clamp(-1, 1))


def test_heun_teacher_step_beats_ddim_on_a_known_ode():
    """Data ~ N(0, I) has ε*(x, t) = σ_t x and an ODE that keeps x fixed: Heun must err less than DDIM."""
    teacher = _teacher(prediction_type="epsilon")

    class Exact(torch.nn.Module):
        def forward(self, x, t, cond):
            abar = teacher.schedule.alphas_cumprod[t]
            return (1 - abar).sqrt().reshape(-1, *[1] * (x.dim() - 1)) * x

    teacher.backbone = Exact()
    teacher.config.clip_sample = False
    errs = {}
    for solver in ("ddim", "heun"):
        student = student_from_teacher(_teacher(prediction_type="epsilon"), "ddim:12")
        d = ConsistencyDistiller(teacher, student,
                                 DistillConfig(solver=solver))
        x = torch.randn(4, 16, 2)
        t_from = torch.tensor([50, 50, 20, 20]).view(4, 1).expand(4, 16)   # grid-sized steps (G = 24)
        errs[solver] = (d.teacher_step(x, t_from, t_from - 4, torch.zeros(4, 6)) - x).abs().max().item()
    assert errs["heun"] < 0.2 * errs["ddim"]


def test_distillation_loss_falls(linear_store):
    from fastpolicy.data.store import EpisodeStore
    from fastpolicy.train.offline import build_dataset

    # v-prediction: bounded both ways (an x0 student's implied noise blows up at low levels, an ε
    # student's x0 at high ones); measured over 150 steps: 0.47 → 0.24
    teacher = _teacher(obs_dim=2, action_dim=1, prediction_type="v_prediction")
    module = ConsistencyDistiller(teacher, student_from_teacher(teacher, "ddim:8"),
                                  DistillConfig(target="bootstrap", target_decay=0.5))
    data = build_dataset(EpisodeStore.open(linear_store), 2, 16, 8)
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(150):
        batch = data.sample_batch(torch.randint(0, len(data), (32,), generator=gen).numpy())
        loss = module(batch, gen)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.65 * np.mean(losses[:10])
    assert all(not p.requires_grad for p in module.teacher.parameters())


@pytest.mark.parametrize("k", [1, 2, 4])
def test_segmented_sampling_spends_k_calls(k):
    student = student_from_teacher(_teacher(), "ddim:8", segments=k).eval()
    calls = []
    student.backbone.register_forward_hook(lambda m, i, o: calls.append(1))
    out = student.predict_chunk(OBS, None, torch.Generator().manual_seed(0))
    assert out.nfe == k == len(calls) and out.actions.shape == (3, 8, 2)
    assert student.method == ("student-1call" if k == 1 else f"progressive-student-{k}calls")


def test_single_segment_chaining_spends_steps_calls():
    student = student_from_teacher(_teacher(), "ddim:8", segments=1).eval()
    for steps in (1, 2, 3):
        assert student.with_steps(steps).predict_chunk(OBS).nfe == steps


def test_checkpoint_loads_as_consistency_policy_with_identical_actions(linear_store, tmp_path):
    from fastpolicy.data.store import EpisodeStore
    from fastpolicy.policies.checkpoint import load_policy
    from fastpolicy.train.offline import build_dataset
    from fastpolicy.train.trainer import TrainConfig, Trainer
    from fastpolicy.utils.checkpoint import save_checkpoint

    teacher = _teacher(obs_dim=2, action_dim=1)
    save_checkpoint(tmp_path / "teacher", policy_type="diffusion", policy_config=teacher.config_dict(),
                    model_state=teacher.state_dict(), normalizer_state={}, step=0)
    module = ConsistencyDistiller(teacher, student_from_teacher(teacher, "ddim:8", 2),
                                  DistillConfig(segments=2))
    cfg = TrainConfig(steps=3, batch_size=8, warmup_steps=1, ema=False, progress=False, tensorboard=False)
    Trainer(module, build_dataset(EpisodeStore.open(linear_store), 2, 16, 8), cfg, tmp_path / "cm").fit()
    loaded = load_policy(tmp_path / "cm")
    assert isinstance(loaded, ConsistencyPolicy) and loaded.config.segments == 2
    assert not any(k.startswith(("teacher.", "target.")) for k in loaded.state_dict())
    obs = OBS[..., :2]
    a = loaded.predict_chunk(obs, None, torch.Generator().manual_seed(1))
    b = module.student.eval().predict_chunk(obs, None, torch.Generator().manual_seed(1))
    assert a.nfe == 2 and np.array_equal(a.actions, b.actions)

    # progressive stages 2 → 1 write stages/seg2 and the final student at --out; --resume skips them
    cfg = TrainConfig(steps=2, batch_size=8, warmup_steps=1, progress=False, tensorboard=False)
    final = distill(tmp_path / "teacher", linear_store, tmp_path / "prog", (2, 1), cfg, resume=True,
                    distill_config=DistillConfig("ddim:8"))   # --resume on a fresh directory starts it
    assert load_policy(tmp_path / "prog" / "stages" / "seg2").config.segments == 2
    assert final.config.segments == 1 and final.predict_chunk(obs).nfe == 1
    again = distill(tmp_path / "teacher", linear_store, tmp_path / "prog", (2, 1), cfg, resume=True,
                    distill_config=DistillConfig("ddim:8"))
    assert again.checkpoint_hash == final.checkpoint_hash
    # ... but never a student of another recipe: its numbers would be reported under the new settings
    with pytest.raises(ValueError, match="student_hidden"):
        distill(tmp_path / "teacher", linear_store, tmp_path / "prog", (2, 1), cfg, resume=True,
                distill_config=DistillConfig("ddim:8", student_hidden=32))


def test_streaming_student_costs_at_most_one_call_per_step(linear_store):
    sdp = StreamingPolicy.from_config(dict(obs_dim=2, action_dim=1, backbone="mlp")).eval()
    student = student_from_teacher(sdp, "ode:12", segments=3, streaming=True).eval()
    assert student.method == "streaming-student-1call"
    state, gen = student.init_state(3), torch.Generator().manual_seed(0)
    for _ in range(4):
        out = student.predict_chunk(OBS[..., :2], state, gen)
        state = out.state
        assert out.nfe == 1 and out.actions.shape == (3, 4, 1)
        assert state["levels"][0].tolist() == [0] * 5 + [1] * 4 + [2] * 7
    # distillation with per-position segments runs and gives a finite loss
    from fastpolicy.data.store import EpisodeStore
    from fastpolicy.train.offline import build_dataset

    module = ConsistencyDistiller(sdp, student, DistillConfig("ode:12", segments=3, streaming=True))
    g, b = module.sample_grid(10, gen)
    assert (g >= b).all() and (g[:8, 13:] == 12).all() and (b[8:] == 0).all()
    data = build_dataset(EpisodeStore.open(linear_store), 2, 16, 4)
    assert torch.isfinite(module(data.sample_batch(np.arange(8)), gen)["loss"])


def test_grid_is_the_teachers_evaluated_sampler():
    """The student never sees a level its teacher's sampler does not use (DDIM-10 leading: t = 90 … 0)."""
    teacher = _teacher(sampler="ddim:10")
    student = student_from_teacher(teacher)
    assert student.config.teacher_sampler == "ddim:10"
    assert student.grid_timesteps().tolist() == [-1, 0, 10, 20, 30, 40, 50, 60, 70, 80, 90]
    trailing = student_from_teacher(teacher, "ddim:10,spacing=trailing")
    assert trailing.grid_timesteps().tolist()[-1] == 99 and trailing.grid_timesteps().tolist()[1] == 9
    cold = student_from_teacher(teacher, "ddpm:100,temperature=0")
    assert cold.temperature == 0.0 and len(cold.grid_timesteps()) == 101
    # temperature 0: the initial noise is zero, so the student's sample is deterministic
    a = cold.predict_chunk(OBS, None, torch.Generator().manual_seed(0)).actions
    b = cold.predict_chunk(OBS, None, torch.Generator().manual_seed(1)).actions
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="amplifies"):   # an ε student from t = 99: refused
        student_from_teacher(_teacher(prediction_type="epsilon"), "ddim:10,spacing=trailing")


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction", "epsilon"])
def test_distillation_target_is_one_teacher_sampler_step(prediction_type):
    """At a segment's lower boundary the target *is* one step of the teacher's DDIM sampler (clipped alike),
    and one grid point above it is that step followed by the target network."""
    from fastpolicy.diffusion import make_sampler

    teacher = _teacher(prediction_type=prediction_type, sampler="ddim:10", backbone_kwargs={})
    student = student_from_teacher(teacher)
    module = ConsistencyDistiller(teacher, student, DistillConfig())
    sampler = make_sampler(teacher.schedule, teacher._sampler_spec("ddim:10"))
    x, cond = torch.randn(4, 16, 2) * 2, torch.randn(4, 6)
    ts = student.grid_timesteps()
    for i, t in enumerate(sampler.timesteps.tolist()):
        g = len(ts) - 1 - i                                   # grid point of timestep t
        assert int(ts[g]) == t
        t_from = torch.full((4, 16), t)
        t_to = ts[g - 1].expand(4, 16)
        mine = module.teacher_step(x, t_from, t_to, cond)
        ref, _ = sampler.step(i, x, teacher.backbone(x, torch.full((4,), t), cond))
        torch.testing.assert_close(mine, ref)
    # g = 1 (t = 0), boundary b = 0 (clean): the consistency target is the teacher's last step itself
    one = torch.full((4, 16), int(ts[1]))
    clean = torch.full((4,), -1)
    x_prev = module.teacher_step(x, one, ts[0].expand(4, 16), cond)
    target = student.consistency_fn(x_prev, clean, clean, cond, backbone=module.target)
    assert torch.equal(target, x_prev)


@pytest.mark.parametrize("student_hidden", [None, 32])
def test_student_learns_both_modes_of_a_bimodal_toy(student_hidden):
    """Actions ±0.8 with equal odds and nothing in the observation to choose: a teacher samples both;
    its one-call clean estimate averages them (≈ 0); the distilled 1-step student samples both again —
    also a student 4× narrower than its teacher, distilled from a random init."""
    torch.manual_seed(0)
    cfg = dict(obs_dim=1, action_dim=1, obs_horizon=1, pred_horizon=2, action_horizon=1, backbone="mlp",
               sampler="ddim:10", backbone_kwargs={"hidden": 128})
    teacher = DiffusionPolicy.from_config(cfg)
    gen = torch.Generator().manual_seed(0)

    def batch(n: int = 256):
        sign = torch.randint(0, 2, (n, 1, 1), generator=gen).float() * 2 - 1
        action = (0.8 * sign + 0.03 * torch.randn(n, 1, 1, generator=gen)).expand(n, 2, 1)
        return {"obs": torch.zeros(n, 1, 1), "action": action.contiguous()}

    opt = torch.optim.Adam(teacher.parameters(), lr=2e-3)
    for _ in range(600):
        loss = teacher(batch(), gen)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    teacher.eval()
    obs = np.zeros((400, 1, 1), np.float32)

    def modes(policy) -> tuple[float, float, float]:
        a = policy.predict_chunk(obs, None, torch.Generator().manual_seed(3)).actions[:, 0, 0]
        return float((a > 0.4).mean()), float((a < -0.4).mean()), float((np.abs(a) < 0.4).mean())

    hi, lo, mid = modes(teacher)
    assert hi > 0.3 and lo > 0.3 and mid < 0.1                     # the teacher keeps both modes
    student = student_from_teacher(teacher, hidden=student_hidden)
    if student_hidden is None:
        assert modes(student.eval())[2] > 0.5                      # untrained: the average of the modes
    module = ConsistencyDistiller(teacher, student.train(), DistillConfig(student_hidden=student_hidden))
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(500):
        loss = module(batch(), gen)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    hi, lo, mid = modes(student.eval())
    assert hi > 0.25 and lo > 0.25 and mid < 0.2, (hi, lo, mid)


def test_streaming_student_zero_first_step_spends_one_call():
    sdp = StreamingPolicy.from_config(dict(obs_dim=2, action_dim=1, backbone="mlp")).eval()
    student = student_from_teacher(sdp, "ode:12", segments=3, streaming=True)
    student.config.first_step = "zeros"
    student = student.eval()
    state = student.init_state(2)
    nfe = []
    for _ in range(3):
        out = student.predict_chunk(OBS[:2, :, :2], state, torch.Generator().manual_seed(0))
        state = out.state
        nfe.append(out.nfe)
    assert nfe == [1, 1, 1]


def test_ode_target_is_the_teachers_evaluated_sampler_output():
    """``target="ode"``: from the grid's top to the clean end, the target is the teacher's DDIM-10 sample
    itself; from an intermediate point, the sampler's remaining steps (rows held at their boundary)."""
    teacher = _teacher(sampler="ddim:10", backbone_kwargs={})
    module = ConsistencyDistiller(teacher, student_from_teacher(teacher), DistillConfig(target="ode"))
    x, cond = torch.randn(3, 16, 2), torch.randn(3, 6)
    top = torch.full((3, 16), 10)
    mine = module.teacher_solve(x, top, torch.zeros_like(top), cond)
    ref, nfe = teacher.sampler.sample(lambda xt, t: teacher.backbone(xt, t, cond), x)
    torch.testing.assert_close(mine, ref)
    assert nfe == 10
    # row 0 from grid point 3 (t = 20) to clean: the sampler's last three steps; row 1 already at its boundary
    g = torch.tensor([3, 4, 10]).view(3, 1).expand(3, 16)
    b = torch.tensor([0, 4, 5]).view(3, 1).expand(3, 16)
    out = module.teacher_solve(x, g, b, cond)
    part = x[:1]
    for i in (7, 8, 9):
        t = teacher.sampler.timesteps[i:i + 1]
        part, _ = teacher.sampler.step(i, part, teacher.backbone(part, t, cond[:1]))
    torch.testing.assert_close(out[:1], part)
    assert torch.equal(out[1], x[1])


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction", "epsilon"])
def test_sampling_fast_path_is_the_consistency_function(prediction_type):
    """The float-coefficient sampling path computes f(x, t, s) exactly as the training path does."""
    student = student_from_teacher(_teacher(prediction_type=prediction_type, backbone_kwargs={}), "ddim:10")
    student = student.eval()
    x, cond = torch.randn(3, 16, 2) * 1.5, torch.randn(3, 6)
    ts = student.grid_timesteps()
    with torch.inference_mode():
        for i, j in ((10, 0), (10, 5), (5, 0), (3, 1)):
            fast = student._grid_map(x, i, j, cond)
            ref = student.consistency_fn(x, ts[i].expand(3), ts[j].expand(3), cond)
            torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


def test_narrow_student_has_its_own_width_and_a_seeded_init():
    teacher = _teacher()
    a = student_from_teacher(teacher, hidden=64, seed=1)
    b = student_from_teacher(teacher, hidden=64, seed=1)
    c = student_from_teacher(teacher, hidden=64, seed=2)
    assert a.backbone.output_layer.in_features == 64 and a.config.backbone_kwargs["hidden"] == 64
    assert teacher.backbone.output_layer.in_features == 256
    wa, wb, wc = (s.backbone.input_layer[0].weight for s in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    # the teacher's width is the warm start, whatever way it is asked for
    same = student_from_teacher(teacher, hidden=256)
    assert torch.equal(same.backbone.output_layer.weight, teacher.backbone.output_layer.weight)
    with pytest.raises(ValueError, match="target='ode'"):
        DistillConfig(student_hidden=64, target="bootstrap")
    with pytest.raises(ValueError, match="student_hidden"):
        DistillConfig(student_hidden=0)
    with pytest.raises(ValueError, match="MLP denoiser"):
        student_from_teacher(_teacher(backbone="unet-small", backbone_kwargs={}), hidden=64)
