"""fastpolicy.nets: shapes, per-position timesteps, zero-initialised stop time, validation, sizes."""

from __future__ import annotations

import pytest
import torch

from fastpolicy.nets import (
    BACKBONES,
    MLP,
    UNET_SIZES,
    ConditionalUnet1D,
    MLPDenoiser,
    count_parameters,
    make_backbone,
)
from fastpolicy.nets.embeddings import SinusoidalPosEmb

B, T, D, C = 3, 16, 2, 12
# A GEMM over B rows and one over B*T rows may round differently in the last bit (BLAS blocking), so
# "the same function" is checked to float32 round-off, not bitwise.
ROUNDOFF = 1e-5


def _inputs(seed: int = 0, horizon: int = T):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, horizon, D, generator=g), torch.randn(B, C, generator=g)


def _small_unet(**kw) -> ConditionalUnet1D:
    torch.manual_seed(0)
    return ConditionalUnet1D(D, C, down_dims=(16, 32, 64), time_embed_dim=32, **kw)


def _mlp_denoiser(**kw) -> MLPDenoiser:
    """The streaming form (one time embedding per position), which shares the U-Net's contract."""
    torch.manual_seed(0)
    return MLPDenoiser(T, D, C, hidden=64, depth=3, time_embed_dim=16, per_position_time=True, **kw)


def test_mlp_denoiser_embeds_time_once_per_sample_by_default():
    torch.manual_seed(0)
    plain = MLPDenoiser(T, D, C, hidden=64, depth=3, time_embed_dim=16)
    # the first layer sees the flattened sample, the condition and ONE time embedding
    assert plain.input_layer[0].in_features == T * D + C + 16
    assert _mlp_denoiser().input_layer[0].in_features == T * D + C + T * 16
    x, g = _inputs()
    assert plain(x, torch.full((B,), 37), g).shape == (B, T, D)
    assert torch.equal(plain(x, 37, g), plain(x, torch.full((B,), 37), g))
    with pytest.raises(ValueError, match="per_position_time"):
        plain(x, torch.full((B, T), 37), g)
    student = MLPDenoiser(T, D, C, hidden=64, depth=3, time_embed_dim=16, stop_time=True)
    student.load_state_dict(plain.state_dict(), strict=False)
    # zero-initialised stop time: the student starts as its teacher
    assert torch.equal(student(x, 37, g, stop_time=torch.full((B,), 5)), plain(x, 37, g))


def _perturb(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)


# ---- embeddings --------------------------------------------------------------------------------

def test_sinusoidal_embedding_any_leading_shape():
    emb = SinusoidalPosEmb(8)
    t = torch.tensor([[0, 5], [50, 99]])
    out = emb(t)
    assert out.shape == (2, 2, 8)
    assert torch.equal(out[1, 0], emb(torch.tensor([50]))[0])
    assert torch.equal(out[0, 0], torch.cat([torch.zeros(4), torch.ones(4)]))  # sin(0), cos(0)
    with pytest.raises(ValueError):
        SinusoidalPosEmb(7)


# ---- both denoisers: the shared contract -------------------------------------------------------

@pytest.mark.parametrize("factory", [_small_unet, _mlp_denoiser], ids=["unet", "mlp"])
def test_denoiser_shapes_and_timestep_forms(factory):
    model = factory().eval()
    x, g = _inputs()
    with torch.no_grad():
        per_sample = model(x, torch.full((B,), 37), g)
        assert per_sample.shape == (B, T, D)
        assert torch.equal(model(x, 37, g), per_sample)
        assert torch.equal(model(x, torch.tensor(37), g), per_sample)
        # (B, T) with the value repeated is the same function
        per_position = model(x, torch.full((B, T), 37), g)
        torch.testing.assert_close(per_position, per_sample, rtol=0, atol=ROUNDOFF)
        # and per-position levels are really used: changing one position's level changes the output
        levels = torch.full((B, T), 37)
        levels[:, 3] = 90
        assert (model(x, levels, g) - per_sample).abs().max() > 1e-3
        # mixed levels per sample match running each sample on its own
        t = torch.tensor([5, 50, 95])
        batched = model(x, t, g)
        for b in range(B):
            one = model(x[b:b + 1].expand(B, -1, -1), t[b].expand(B), g[b:b + 1].expand(B, -1))
            torch.testing.assert_close(one[0], batched[b], rtol=0, atol=ROUNDOFF)


@pytest.mark.parametrize("factory", [_small_unet, _mlp_denoiser], ids=["unet", "mlp"])
def test_stop_time_is_exact_identity_at_init(factory):
    teacher = factory().eval()
    student = factory(stop_time=True).eval()
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("stop_time_embedding.") for k in missing)
    x, g = _inputs(1)
    t = torch.tensor([10, 40, 99])
    with torch.no_grad():
        ref = teacher(x, t, g)
        for s in (torch.tensor([0, 3, 7]), 5):
            assert torch.equal(student(x, t, g, stop_time=s), ref)
        # a per-position s makes the condition per position: same function, up to GEMM round-off
        per_position = student(x, t, g, stop_time=torch.randint(0, 100, (B, T)))
        torch.testing.assert_close(per_position, ref, rtol=0, atol=ROUNDOFF)
        assert torch.equal(student(x, t, g), ref)   # no s: the stop-time path is simply skipped
        _perturb(student.stop_time_embedding)
        assert (student(x, t, g, stop_time=torch.tensor([0, 3, 7])) - ref).abs().max() > 1e-4


@pytest.mark.parametrize("factory", [_small_unet, _mlp_denoiser], ids=["unet", "mlp"])
def test_stop_time_branch_receives_gradient(factory):
    # zero init must not be a dead end: the last layer's gradient is nonzero from step one
    model = factory(stop_time=True)
    x, g = _inputs(2)
    model(x, torch.tensor([1, 2, 3]), g, stop_time=torch.tensor([0, 1, 2])).square().mean().backward()
    assert model.stop_time_embedding.mlp[-1].weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("factory", [_small_unet, _mlp_denoiser], ids=["unet", "mlp"])
def test_denoiser_input_validation(factory):
    model = factory()
    x, g = _inputs()
    with pytest.raises(ValueError, match="sample must be"):
        model(torch.randn(B, T, D + 1), 1, g)
    with pytest.raises(ValueError, match="global_cond"):
        model(x, 1, None)
    with pytest.raises(ValueError, match="global_cond"):
        model(x, 1, torch.randn(B, C + 1))
    with pytest.raises(ValueError, match="timestep must be"):
        model(x, torch.zeros(B, T + 1), g)
    with pytest.raises(ValueError, match="stop_time=False"):
        model(x, 1, g, stop_time=2)


def test_unet_horizon_divisibility_message():
    model = _small_unet()
    x, g = _inputs(horizon=15)
    with pytest.raises(ValueError, match=r"horizon 15 must be divisible by 4 for down_dims=\[16, 32, 64\]"):
        model(x, 1, g)
    with pytest.raises(ValueError, match="horizon 10 must be divisible by 4"):
        make_backbone("unet-small", 10, D, C)
    # two levels halve once: horizon 6 is fine
    two = ConditionalUnet1D(D, C, down_dims=(16, 32), time_embed_dim=32)
    assert two(torch.randn(1, 6, D), 3, torch.randn(1, C)).shape == (1, 6, D)


def test_unet_without_global_cond():
    model = ConditionalUnet1D(D, 0, down_dims=(16, 32), time_embed_dim=32)
    assert model(torch.randn(2, 8, D), torch.tensor([1, 2])).shape == (2, 8, D)
    with pytest.raises(ValueError, match="global_cond_dim=0"):
        model(torch.randn(2, 8, D), 1, torch.randn(2, 3))


def test_unet_conditions_on_observation():
    model = _small_unet().eval()
    x, g = _inputs()
    with torch.no_grad():
        assert (model(x, 5, g) - model(x, 5, g + 1.0)).abs().max() > 1e-3


# ---- factory and sizes -------------------------------------------------------------------------

def test_make_backbone_names_and_errors():
    assert set(BACKBONES) == {"unet-small", "unet-base", "mlp"}
    unet = make_backbone("unet-small", 16, 2, 12)
    assert isinstance(unet, ConditionalUnet1D) and unet.down_dims == UNET_SIZES["small"]
    mlp = make_backbone("mlp", 16, 2, 12, stop_time=True, hidden=32)
    assert isinstance(mlp, MLPDenoiser) and mlp.stop_time_embedding is not None
    for bad in ("unet-huge", "transformer", "UNET-small"):
        with pytest.raises(ValueError, match="unet-small, unet-base, mlp"):
            make_backbone(bad, 16, 2, 12)


def test_parameter_counts():
    # DESIGN.md: small ~4.6 M, base ~66 M (Diffusion Policy sizes); cond = 2 * obs_dim
    small = count_parameters(make_backbone("unet-small", 16, 2, 12))
    assert 4.0e6 < small < 5.0e6
    base = count_parameters(make_backbone("unet-base", 16, 2, 12))
    assert 60e6 < base < 70e6
    mlp = MLPDenoiser(1, 2, 12)           # single-step action denoiser, 3 x 256
    assert 0.1e6 < count_parameters(mlp) < 0.3e6
    frozen = MLP(4, 2)
    frozen.net[0].weight.requires_grad_(False)
    assert count_parameters(frozen, trainable_only=True) == count_parameters(frozen) - 4 * 256


def test_mlp_block_options():
    x = torch.randn(5, 7)
    plain = MLP(7, 3, hidden=32, depth=2)
    assert plain(x).shape == (5, 3)
    assert sum(isinstance(m, torch.nn.Linear) for m in plain.modules()) == 3
    ln = MLP(7, 3, hidden=32, depth=3, activation="relu", layer_norm=True)
    assert ln(x).shape == (5, 3)
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in ln.modules()) == 3
    assert any(isinstance(m, torch.nn.ReLU) for m in ln.modules())
    with pytest.raises(ValueError, match="mish"):
        MLP(7, 3, activation="swishy")
    with pytest.raises(ValueError):
        MLP(7, 3, depth=0)


def test_plain_mlp_denoiser_variant():
    model = MLPDenoiser(T, D, C, hidden=32, depth=2, time_embed_dim=16, residual=False)
    x, g = _inputs()
    assert model(x, torch.tensor([1, 2, 3]), g).shape == (B, T, D)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())


def test_unet_can_fit_a_batch():
    # the whole stack trains: a few Adam steps reduce the loss on one fixed batch substantially
    torch.manual_seed(0)
    model = ConditionalUnet1D(D, C, down_dims=(16, 32), time_embed_dim=16)
    x, g = _inputs(3, horizon=8)
    target = torch.randn_like(x)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    t = torch.tensor([3, 30, 60])
    first = None
    for _ in range(60):
        loss = (model(x, t, g) - target).square().mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first


def test_benchmark_script_smoke(tmp_path, run_script):
    # CleanRL-style smoke test: the real script on a tiny budget (in-process: no second torch import)
    import json
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "bench_backbones.py"
    out = tmp_path / "bb.json"
    run_script(script, "--quick", "--out", out)
    rows = json.loads(out.read_text())
    assert {(r["method"], r["batch_size"]) for r in rows} == {("unet-small", 1), ("unet-small", 4),
                                                              ("mlp", 1), ("mlp", 4)}
    assert all(r["latency_ms_p50"] > 0 and r["params"] > 0 for r in rows)


def test_per_position_net_warm_started_from_a_per_sample_net_is_the_same_function():
    torch.manual_seed(0)
    plain = MLPDenoiser(T, D, C, hidden=64, depth=3, time_embed_dim=16).eval()
    streaming = MLPDenoiser(T, D, C, hidden=64, depth=3, time_embed_dim=16, per_position_time=True).eval()
    streaming.load_per_sample_weights(plain.state_dict())
    x, g = _inputs()
    t = torch.tensor([3, 50, 97])
    with torch.no_grad():
        got = streaming(x, t[:, None].expand(B, T), g)
        torch.testing.assert_close(got, plain(x, t, g), rtol=0, atol=1e-5)


def test_inference_time_embedding_table_tracks_the_weights():
    """At inference integer timesteps come from a table; it equals the direct computation and is rebuilt
    when the weights change (an optimizer step, a load)."""
    import torch

    from fastpolicy.nets.embeddings import TimestepEmbedding

    torch.manual_seed(0)
    emb = TimestepEmbedding(16)
    t = torch.tensor([-1, 0, 7, 99, 999])
    direct = emb(t)                                     # autograd on: computed directly
    with torch.no_grad():
        torch.testing.assert_close(emb(t), direct, rtol=1e-5, atol=1e-6)
        emb.mlp[2].bias.add_(1.0)                       # an in-place update, as an optimizer makes
        torch.testing.assert_close(emb(t), direct + 1.0, rtol=1e-5, atol=1e-5)
        emb.load_state_dict({k: torch.zeros_like(v) for k, v in emb.state_dict().items()})
        assert torch.equal(emb(t), torch.zeros(5, 16))
        assert emb(torch.tensor([3.5])).shape == (1, 16)   # float timesteps: computed directly


def test_mlp_level_features_give_the_same_output_and_follow_weight_changes():
    """The fixed-level fast path (time features looked up once) is the plain forward, bit for bit,
    and a weight update is seen by the next call (the cache follows the embedding tables)."""
    from fastpolicy.nets.mlp import MLPDenoiser

    torch.manual_seed(0)
    net = MLPDenoiser(horizon=4, input_dim=2, global_cond_dim=6, hidden=32, stop_time=True).eval()
    torch.nn.init.normal_(net.stop_time_embedding.mlp[-1].weight)   # a trained (non-zero) stop time
    x, cond = torch.randn(3, 4, 2), torch.randn(3, 6)
    with torch.inference_mode():
        for t, s in [(90, -1), (45, 20), (0, -1)]:
            plain = net(x, torch.full((3,), t), cond, stop_time=torch.full((3,), s))
            fast = net(x, None, cond, time_features=net.level_features(t, s))
            assert torch.equal(plain, fast)
        before = net(x, None, cond, time_features=net.level_features(90, -1))
    with torch.no_grad():
        net.time_embedding.mlp[-1].bias.add_(1.0)
    with torch.inference_mode():
        after = net(x, None, cond, time_features=net.level_features(90, -1))
        plain = net(x, torch.full((3,), 90), cond, stop_time=torch.full((3,), -1))
    assert not torch.equal(before, after) and torch.equal(after, plain)
