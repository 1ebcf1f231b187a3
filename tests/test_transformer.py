"""fastpolicy.nets.transformer: causality, KV cache = full recomputation, shape checks."""

from __future__ import annotations

import pytest
import torch

from fastpolicy.nets.transformer import CausalTransformer


def _model(**kw) -> CausalTransformer:
    torch.manual_seed(0)
    return CausalTransformer(5, 3, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=16, **kw).eval()


def test_reference_sizes_by_default():
    m = CausalTransformer(7, 7)
    assert len(m.blocks) == 4 and m.embed.out_features == 256 and m.blocks[0].attn.n_heads == 4


def test_outputs_do_not_see_the_future():
    m = _model()
    x = torch.randn(2, 8, 5)
    y = x.clone()
    y[:, 5:] += 3.0
    with torch.no_grad():
        a, b = m(x), m(y)
    torch.testing.assert_close(a[:, :5], b[:, :5], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, 5:], b[:, 5:])


@pytest.mark.parametrize("context", [1, 3])
def test_kv_cache_equals_full_recomputation(context):
    m = _model()
    x = torch.randn(4, 10, 5)
    with torch.no_grad():
        full = m(x)
        out, cache = m.prefill(x[:, :context])
        outs = [out]
        for t in range(context, 10):
            out, cache = m.step(x[:, t:t + 1], cache)
            outs.append(out)
        assert cache.length == 10
        torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=0)
        # a block of several new tokens after a cached prefix (offset causal mask)
        out2, _ = m.step(x[:, 4:10], m.prefill(x[:, :4])[1])
        torch.testing.assert_close(out2, full[:, 4:], atol=1e-5, rtol=0)


def test_shape_and_length_errors():
    m = _model()
    with pytest.raises(ValueError, match="tokens must be"):
        m(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="max_len"):
        m(torch.randn(1, 17, 5))
    with pytest.raises(ValueError, match="divisible"):
        CausalTransformer(5, 3, d_model=30, n_heads=4)
