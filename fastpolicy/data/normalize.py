"""Per-dimension affine normalizers (``y = x * scale + offset``) and a keyed set of them.

``limits`` maps each dimension's [min, max] to [-1, 1] (Diffusion Policy's default for actions and
low-dim observations); ``gaussian`` maps to zero mean, unit std. Dimensions that are (nearly) constant
(range or std below ``eps`` = 1e-4) would blow up under a plain division, so they get unit scale and an
offset that sends the constant to 0; unnormalizing returns exactly the constant.

State is a flat ``dict[str, torch.Tensor]`` so it can go into safetensors next to the weights
(``NormalizerSet.state_dict()`` keys look like ``obs.scale``, ``action.offset``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import numpy as np
import torch

MODES = ("limits", "gaussian")
DEFAULT_MODES: dict[str, str] = {"obs": "limits", "action": "limits"}
"""what training fits when neither the task card nor the caller says otherwise"""
_STAT_NAMES = ("scale", "offset", "min", "max", "mean", "std")


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class Normalizer:
    """One affine normalizer; ``fit`` on ``(N, ..., D)`` data reduces over all leading axes."""

    def __init__(self, mode: str = "limits", eps: float = 1e-4):
        if mode not in MODES:
            raise ValueError(f"unknown normalizer mode {mode!r}; choose from {MODES}")
        self.mode = mode
        self.eps = float(eps)
        self.stats: dict[str, torch.Tensor] = {}

    @property
    def fitted(self) -> bool:
        return "scale" in self.stats

    def fit(self, data: Any) -> Normalizer:
        x = _as_numpy(data).astype(np.float64)
        if x.size == 0:
            raise ValueError("cannot fit a normalizer on empty data")
        if not np.isfinite(x).all():
            raise ValueError("cannot fit a normalizer on data containing NaN/inf")
        axes = tuple(range(x.ndim - 1)) if x.ndim >= 2 else (0,)
        lo, hi = x.min(axis=axes), x.max(axis=axes)
        mean, std = x.mean(axis=axes), x.std(axis=axes)
        if self.mode == "limits":
            span = hi - lo
            flat = span < self.eps
            scale = np.where(flat, 1.0, 2.0 / np.where(flat, 1.0, span))
            offset = np.where(flat, -lo, -1.0 - scale * lo)
        else:
            flat = std < self.eps
            scale = np.where(flat, 1.0, 1.0 / np.where(flat, 1.0, std))
            offset = np.where(flat, -mean, -mean * scale)
        self.stats = {name: torch.as_tensor(np.asarray(v), dtype=torch.float32)
                      for name, v in zip(_STAT_NAMES, (scale, offset, lo, hi, mean, std))}
        return self

    def _params(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.fitted:
            raise ValueError("normalizer is not fitted (call fit() or load a state dict)")
        return (self.stats["scale"].to(device=like.device, dtype=like.dtype),
                self.stats["offset"].to(device=like.device, dtype=like.dtype))

    def normalize(self, x: Any) -> Any:
        """``x * scale + offset``; returns the same kind (tensor or ndarray) it was given."""
        return self._apply(x, inverse=False)

    def unnormalize(self, x: Any) -> Any:
        """``(x - offset) / scale``; exact inverse of :meth:`normalize` up to float rounding."""
        return self._apply(x, inverse=True)

    def _apply(self, x: Any, inverse: bool) -> Any:
        is_numpy = not isinstance(x, torch.Tensor)
        t = torch.as_tensor(np.asarray(x, dtype=np.float32)) if is_numpy else x
        if not t.is_floating_point():
            t = t.float()
        scale, offset = self._params(t)
        if scale.ndim and t.shape[-1:] != scale.shape[-1:]:
            raise ValueError(f"normalizer expects last dimension {tuple(scale.shape)}, got input shape "
                             f"{tuple(t.shape)}")
        y = (t - offset) / scale if inverse else t * scale + offset
        return y.numpy() if is_numpy else y

    def state_dict(self) -> dict[str, torch.Tensor]:
        if not self.fitted:
            raise ValueError("normalizer is not fitted; nothing to save")
        return {"mode": torch.tensor(MODES.index(self.mode), dtype=torch.int64),
                "eps": torch.tensor(self.eps, dtype=torch.float64),
                **{k: v.clone() for k, v in self.stats.items()}}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> Normalizer:
        missing = [k for k in ("mode", "scale", "offset") if k not in state]
        if missing:
            raise KeyError(f"normalizer state is missing {missing}")
        mode_index = int(state["mode"])
        if not 0 <= mode_index < len(MODES):
            raise ValueError(f"normalizer state has unknown mode index {mode_index}")
        eps = float(state["eps"]) if "eps" in state else 1e-4
        norm = cls(MODES[mode_index], eps=eps)
        norm.stats = {k: torch.as_tensor(state[k], dtype=torch.float32).clone()
                      for k in _STAT_NAMES if k in state}
        return norm

    def __repr__(self) -> str:
        shape = tuple(self.stats["scale"].shape) if self.fitted else None
        return f"Normalizer(mode={self.mode!r}, shape={shape})"


class NormalizerSet(MutableMapping):
    """Key (``obs``, ``action``, ...) → :class:`Normalizer`, with one flat state dict for all of them."""

    def __init__(self, normalizers: Mapping[str, Normalizer] | None = None):
        self._items: dict[str, Normalizer] = dict(normalizers or {})

    def __getitem__(self, key: str) -> Normalizer:
        if key not in self._items:
            raise KeyError(f"no normalizer for {key!r}; have {sorted(self._items)}")
        return self._items[key]

    def __setitem__(self, key: str, value: Normalizer) -> None:
        if "." in key:
            raise ValueError(f"normalizer keys may not contain '.', got {key!r}")
        self._items[key] = value

    def __delitem__(self, key: str) -> None:
        del self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def normalize(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Normalize the entries of ``batch`` that have a normalizer; pass the others through."""
        return {k: self._items[k].normalize(v) if k in self._items else v for k, v in batch.items()}

    def unnormalize(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self._items[k].unnormalize(v) if k in self._items else v for k, v in batch.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{key}.{name}": tensor for key, norm in self._items.items()
                for name, tensor in norm.state_dict().items()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> NormalizerSet:
        grouped: dict[str, dict[str, torch.Tensor]] = {}
        for flat_key, tensor in state.items():
            key, sep, name = flat_key.rpartition(".")
            if not sep:
                raise KeyError(f"normalizer state key {flat_key!r} is not of the form '<key>.<stat>'")
            grouped.setdefault(key, {})[name] = tensor
        return cls({key: Normalizer.from_state_dict(d) for key, d in grouped.items()})

    @classmethod
    def fit_from_store(cls, store: Any, modes: Mapping[str, str] | None = None) -> NormalizerSet:
        """Fit one normalizer per key of an EpisodeStore; actions only on labeled steps (action_mask)."""
        modes = dict(modes or DEFAULT_MODES)
        out = cls()
        for key, mode in modes.items():
            data = store.array(key)
            if key == "action" and "action_mask" in store.keys:
                data = data[store.array("action_mask")]
                if len(data) == 0:
                    raise ValueError("cannot fit the action normalizer: no step has action_mask=True")
            out[key] = Normalizer(mode).fit(data)
        return out

    def __repr__(self) -> str:
        return f"NormalizerSet({self._items!r})"
