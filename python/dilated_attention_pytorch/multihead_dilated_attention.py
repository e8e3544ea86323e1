"""``MultiheadDilatedAttention``: projections and layer norms around dilated attention."""

import warnings
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ._config import (check_multihead_input, init_projections, reject_mask_message,
                      resolve_key_value_heads)
from .longnet_attention import LongNetDilatedAttention

# The inner attention modules ``attention=`` selects.
ATTENTION_KINDS = ("dilated", "longnet")


def check_heads(embed_dim: int, num_heads: int) -> int:
    """The head dim, after the checks users of the upstream class rely on."""
    if embed_dim <= 0:
        raise ValueError(f"embed_dim must be positive, got {embed_dim}")
    if num_heads <= 0:
        raise ValueError(f"num_heads must be positive, got {num_heads}")
    if embed_dim % num_heads != 0:
        raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
    head_dim = embed_dim // num_heads
    if head_dim % 8 != 0:
        warnings.warn(
            f"head_dim (embed_dim / num_heads = {head_dim}) should be divisible by 8 "
            f"for the fastest attention kernels",
            stacklevel=3,
        )
    if head_dim > 128:
        warnings.warn(
            f"head_dim (embed_dim / num_heads = {head_dim}) should be <= 128 "
            f"for the fastest attention kernels",
            stacklevel=3,
        )
    return head_dim


class MultiheadDilatedAttention(nn.Module):
    """Multi-head dilated attention on ``[B, N, E]`` inputs.

    Computes, as existing checkpoints of this class do (and so keeps their ``state_dict``
    names and meaning)::

        q = q_ln(q_proj(query)); k = k_ln(k_proj(key)); v = v_proj(value)
        x = dilated_attention(q, k, v) with heads merged
        out = out_proj(q_ln(x))        # q_ln is applied again here, as upstream does

    With ``layer_norm=False`` both norms are skipped. Weights get ``xavier_normal_`` with gain
    ``gamma_init``; biases start at zero. Note the argument order: dilation_rates comes before
    segment_lengths, as users' positional calls expect.

    ``num_key_value_heads`` (default ``num_heads``) gives grouped-query attention: ``k_proj`` and
    ``v_proj`` project to ``num_key_value_heads * head_dim`` features, ``k_ln`` normalises those,
    and query head h reads key/value head ``h // (num_heads // num_key_value_heads)`` without a
    copy per query head. The default keeps existing checkpoints loading unchanged.

    ``attention`` picks the inner attention: ``"dilated"`` (default, ``DilatedAttention``: heads
    split into one group per segment length) or ``"longnet"`` (``LongNetDilatedAttention``: every
    head in every branch, branches combined by their softmax denominators, as torchscale's
    LongNet). Both have no parameters, so the ``state_dict`` is the same for either.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dilation_rates: Sequence[int],
        segment_lengths: Sequence[int],
        dropout: float = 0.0,
        bias: bool = True,
        layer_norm: bool = True,
        layer_norm_eps: float = 1e-5,
        gamma_init: float = 1.0,
        device=None,
        dtype=None,
        num_key_value_heads: Optional[int] = None,
        attention: str = "dilated",
    ):
        super().__init__()
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_KINDS)}, "
                             f"got {attention!r}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = check_heads(embed_dim, num_heads)
        self.num_key_value_heads = resolve_key_value_heads(num_heads, num_key_value_heads)
        kv_dim = self.num_key_value_heads * self.head_dim
        self.layer_norm = layer_norm
        self.gamma_init = gamma_init
        factory = {"device": device, "dtype": dtype}
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.k_proj = nn.Linear(embed_dim, kv_dim, bias=bias, **factory)
        self.v_proj = nn.Linear(embed_dim, kv_dim, bias=bias, **factory)
        self.attention_kind = attention
        if attention == "longnet":
            self.attention = LongNetDilatedAttention(segment_lengths, dilation_rates,
                                                     attention_dropout=dropout)
        else:
            # Imported here: dilated_attention.py imports this module (for the subclass with the
            # original package's return convention), so a module-level import would be circular.
            from .dilated_attention import DilatedAttention
            self.attention = DilatedAttention(segment_lengths, dilation_rates,
                                              attention_dropout=dropout)
        self.q_ln = nn.LayerNorm(embed_dim, eps=layer_norm_eps, **factory) if layer_norm else nn.Identity()
        self.k_ln = nn.LayerNorm(kv_dim, eps=layer_norm_eps, **factory) if layer_norm else nn.Identity()
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self._reset_parameters()

    def __setstate__(self, state):
        # Modules pickled before grouped-query attention existed had one key head per query head.
        state.setdefault("num_key_value_heads", state.get("num_heads"))
        # ... and before the inner attention could be chosen, it was always DilatedAttention.
        state.setdefault("attention_kind", "dilated")
        super().__setstate__(state)

    def _reset_parameters(self) -> None:
        init_projections(self.q_proj, self.k_proj, self.v_proj, self.out_proj, gain=self.gamma_init)

    def forward(
        self,
        query: torch.Tensor,
        key: Optional[torch.Tensor] = None,
        value: Optional[torch.Tensor] = None,
        key_padding_mask: Optional[torch.Tensor] = None,
        need_weights: bool = False,
        attn_mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
        average_attn_weights: bool = True,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, Optional[torch.Tensor]]]:
        out = self._attend(query, key, value, key_padding_mask, attn_mask, is_causal)
        if need_weights:
            # Dilated attention never materialises the weights; upstream returned None too.
            return out, None
        return out

    def _attend(
        self,
        query: torch.Tensor,
        key: Optional[torch.Tensor],
        value: Optional[torch.Tensor],
        key_padding_mask: Optional[torch.Tensor],
        attn_mask: Optional[torch.Tensor],
        is_causal: bool,
    ) -> torch.Tensor:
        """The output of ``forward`` (shared with the subclass that returns ``(out, None)``)."""
        if attn_mask is not None:
            raise ValueError(reject_mask_message("attn_mask"))
        key = query if key is None else key
        value = key if value is None else value
        check_multihead_input(query, "query", self.embed_dim)
        check_multihead_input(key, "key", self.embed_dim)
        check_multihead_input(value, "value", self.embed_dim)
        q = self.q_ln(self.q_proj(query)).unflatten(-1, (self.num_heads, self.head_dim))
        k = self.k_ln(self.k_proj(key)).unflatten(-1, (self.num_key_value_heads, self.head_dim))
        v = self.v_proj(value).unflatten(-1, (self.num_key_value_heads, self.head_dim))
        x = self.attention(q, k, v, is_causal, key_padding_mask=key_padding_mask).flatten(-2)
        return self.out_proj(self.q_ln(x))
