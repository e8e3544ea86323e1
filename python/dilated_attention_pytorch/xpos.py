"""``XPOS``: the xPos relative position embedding (Sun et al., "A Length-Extrapolatable
Transformer", arXiv:2212.10554) with the values, buffer and arguments of torchscale's
``torchscale.component.xpos_relative_position.XPOS``, which the original ``LongNetLM`` used.

For x of shape ``[B, L, D]`` (D = ``head_dim``, even), position i (0-based) and pair j < D/2 of
features (2j, 2j + 1)::

    theta[i, j] = (offset + i) * 10000 ** (-j / (D/2))
    zeta[j]     = (2j + 0.4 D) / (1.4 D)                       # the ``scale`` buffer
    s[i, j]     = zeta[j] ** (n_i / scale_base),  n_i = min_pos + offset + i,
                  min_pos = floor(-(L + offset) / 2)           # centred positions
    out[..., 2j]     = s (x[2j] cos theta - x[2j+1] sin theta)
    out[..., 2j + 1] = s (x[2j+1] cos theta + x[2j] sin theta)

with s replaced by 1/s when ``downscale`` (the keys' side of xPos). As in torchscale, the
rotation counts positions from 0 while the decay counts them from the centre, and the angles are
computed in float32 before they are cast to the buffer's dtype.
"""

from typing import Tuple

import torch
from torch import Tensor, nn


def _sinusoids(scale: Tensor) -> Tuple[Tensor, Tensor]:
    """sin and cos of theta for the rows of ``scale`` ([L, D/2]), in ``scale``'s dtype."""
    length, half = scale.shape[0], scale.shape[1]
    exponents = torch.arange(0, half, device=scale.device, dtype=torch.float32) / half
    inv_freq = 1.0 / torch.pow(10000.0, exponents)
    positions = torch.arange(0, length, device=scale.device, dtype=torch.float32)
    theta = (positions[:, None] * inv_freq[None, :]).to(scale.dtype)
    return torch.sin(theta), torch.cos(theta)


def _rotate_pairs(x: Tensor) -> Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


class XPOS(nn.Module):
    """xPos on ``[B, L, head_dim]`` inputs: a rotation by position-dependent angles, scaled by a
    per-feature decay (or its inverse with ``downscale=True``); ``offset`` shifts the positions
    (a cache of ``offset`` earlier positions). Has a persistent buffer ``scale`` of
    ``head_dim // 2`` values, as torchscale's module."""

    def __init__(self, head_dim: int, scale_base: int = 512):
        super().__init__()
        if head_dim <= 0 or head_dim % 2 != 0:
            raise ValueError(f"head_dim must be a positive even number, got {head_dim}")
        self.head_dim = head_dim
        self.scale_base = scale_base
        self.register_buffer(
            "scale", (torch.arange(0, head_dim, 2) + 0.4 * head_dim) / (1.4 * head_dim))

    def forward(self, x: Tensor, offset: int = 0, downscale: bool = False) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.head_dim:
            raise ValueError(f"XPOS expects x of shape [B, L, {self.head_dim}], got "
                             f"{list(x.shape)}")
        length = x.shape[1]
        min_pos = -(length + offset) // 2
        max_pos = length + offset + min_pos
        # Integer positions cast to the buffer's dtype (bfloat16 rounds those past 256).
        positions = torch.arange(min_pos, max_pos, device=self.scale.device).to(self.scale.dtype)
        scale = self.scale ** (positions / self.scale_base)[:, None]
        sin, cos = _sinusoids(scale)
        if scale.shape[0] > length:
            scale = scale[-length:]
            sin = sin[-length:]
            cos = cos[-length:]
        if downscale:
            scale = 1 / scale
        sin = (sin * scale).repeat_interleave(2, dim=-1)
        cos = (cos * scale).repeat_interleave(2, dim=-1)
        return (x * cos) + (_rotate_pairs(x) * sin)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, scale_base={self.scale_base}"
