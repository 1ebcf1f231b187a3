"""Causal temporal transformer with a KV cache, for autoregressive state drafts (Trajectory Diffuser).

A GPT-style stack (pre-norm blocks, learned positions, causal self-attention) over a sequence of
per-step tokens, here ``[state, return-to-go]``. The Trajectory Diffuser reference recomputes the whole
history on every drafting step (O(H²) token passes for H steps); :meth:`CausalTransformer.step` instead
keeps each layer's keys and values in a :class:`KVCache`, so a draft costs one prefill of the context plus
one single-token pass per new step. With a causal mask both paths compute the same function, which the
tests check to 1e-5.

Sizes follow the reference (4 layers, d_model 256, 4 heads, feed-forward 512, no dropout at inference).

Latency notes (a draft is 15 sequential single-token passes, so per-op overhead matters on CPU): the
blocks call ``F.linear`` / ``F.layer_norm`` on their parameters instead of going through submodule
``__call__`` (about a microsecond of hook machinery per call, ~1,500 calls per draft), and the feed-forward
uses the tanh form of GELU (within 1e-3 of the erf form, several times cheaper on CPU for small tensors).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class KVCache:
    """Per-layer keys and values ``(B, heads, T, head_dim)`` of the tokens seen so far."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        return 0 if not self.keys else int(self.keys[0].shape[2])


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention that can append to and read from a KV cache."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``x`` (B, T, d) new tokens, ``past`` the cached (k, v) before them → (output, new (k, v))."""
        b, t, d = x.shape
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias)
        q, k, v = qkv.view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        total = k.shape[2]
        if t == 1:
            # one new token attends to everything before it: no mask needed
            out = F.scaled_dot_product_attention(q, k, v)
        elif total == t:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # new block of t tokens after total - t cached ones: lower-triangular offset mask
            mask = torch.ones(t, total, dtype=torch.bool, device=x.device).tril(total - t)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return F.linear(out.transpose(1, 2).reshape(b, t, d), self.proj.weight, self.proj.bias), (k, v)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(approximate="tanh"),
                                 nn.Linear(d_ff, d_model))

    @staticmethod
    def _norm(ln: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        h, kv = self.attn.forward(self._norm(self.ln1, x), past)
        x = x + h
        up, down = self.mlp[0], self.mlp[2]
        h = F.gelu(F.linear(self._norm(self.ln2, x), up.weight, up.bias), approximate="tanh")
        return x + F.linear(h, down.weight, down.bias), kv


class CausalTransformer(nn.Module):
    """``(B, T, in_dim) -> (B, T, out_dim)``; output ``t`` sees inputs ``≤ t`` only.

    Args:
        in_dim, out_dim: token features in and predictions out (per position).
        d_model, n_layers, n_heads, d_ff: width, depth, heads and feed-forward width.
        max_len: the longest sequence (learned position embeddings).
    """

    def __init__(self, in_dim: int, out_dim: int, d_model: int = 256, n_layers: int = 4, n_heads: int = 4,
                 d_ff: int = 512, max_len: int = 64) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.max_len = in_dim, out_dim, max_len
        self.embed = nn.Linear(in_dim, d_model)
        self.pos = nn.Parameter(torch.zeros(1, max_len, d_model))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList([Block(d_model, n_heads, d_ff) for _ in range(n_layers)])
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, out_dim)

    def _run(self, x: torch.Tensor, cache: KVCache | None) -> tuple[torch.Tensor, KVCache]:
        if x.dim() != 3 or x.shape[-1] != self.in_dim:
            raise ValueError(f"tokens must be (B, T, {self.in_dim}); got {tuple(x.shape)}")
        start = cache.length if cache is not None else 0
        end = start + x.shape[1]
        if end > self.max_len:
            raise ValueError(f"sequence length {end} exceeds max_len {self.max_len}")
        h = F.linear(x, self.embed.weight, self.embed.bias) + self.pos[:, start:end]
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            past = (cache.keys[i], cache.values[i]) if cache is not None and cache.length else None
            h, (k, v) = block.forward(h, past)
            keys.append(k)
            values.append(v)
        h = F.layer_norm(h, self.ln_f.normalized_shape, self.ln_f.weight, self.ln_f.bias, self.ln_f.eps)
        return F.linear(h, self.head.weight, self.head.bias), KVCache(keys, values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Full causal pass over ``x`` (training, and the uncached reference path)."""
        return self._run(x, None)[0]

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
        """Causal pass over a context ``x``; returns the outputs and the cache to continue from."""
        return self._run(x, None)

    def step(self, x: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """Append tokens ``x`` (B, t, in_dim) after the cached ones; only the new tokens are computed."""
        return self._run(x, cache)


__all__ = ["CausalTransformer", "KVCache"]
