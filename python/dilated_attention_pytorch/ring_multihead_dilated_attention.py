"""``RingMultiheadDilatedAttention``: sequence-parallel multi-head self-attention."""

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from . import _op_table
from ._config import (
    check_multihead_input,
    init_projections,
    reject_mask_message,
    resolve_group_name,
    resolve_key_value_heads,
    set_attention_attributes,
)
from ._deprecation import warn_deprecated
from .multihead_dilated_attention import check_heads


class RingMultiheadDilatedAttention(nn.Module):
    """Multi-head dilated self-attention over the V2 ring: a fused ``qkv_proj`` (q, k, v in that
    order along 3E), attention, head merge, ``out_proj``. With a process group each rank passes
    its contiguous shard of the sequence. ``layer_norm=True`` adds ``norm`` (a LayerNorm over
    the merged heads before ``out_proj``, as in sub-LN). ``batch_first=False`` takes ``[N, B, E]``.

    Self-attention only: a ``key`` or ``value`` other than ``query`` raises NotImplementedError.
    Returns ``(output, None)``: attention weights are never materialised.

    Runs the op ``ring_multihead_dilated_attention``; with ``layer_norm=True`` (a norm between
    the attention and ``out_proj``, which the fused op has not) the attention alone runs on that
    op's backend, read from its row of the library's named-op table.

    ``num_key_value_heads`` (default ``num_heads``) gives grouped-query attention: ``qkv_proj``
    then has ``embed_dim + 2 * num_key_value_heads * head_dim`` output features (q, k, v in that
    order), only the shared key/value heads travel between ranks, and the attention runs on the
    same backend with the projections in Python (the fused op takes equal q, k, v widths).
    """

    OP_NAME = "ring_multihead_dilated_attention"

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        segment_lengths: Sequence[int],
        dilation_rates: Sequence[int],
        dropout: float = 0.0,
        bias: bool = True,
        layer_norm: bool = False,
        layer_norm_eps: float = 1e-5,
        gamma_init: float = 1.0,
        ring_size: Optional[int] = None,
        device=None,
        dtype=None,
        batch_first: bool = True,
        process_group=None,
        softmax_scale: Optional[float] = None,
        num_key_value_heads: Optional[int] = None,
    ):
        row = _op_table.row(self.OP_NAME, "fused_self_attention", type(self).__name__)
        warn_deprecated(row)
        super().__init__()
        self.backend = row["backend"]
        self.contract = row["contract"]
        self.head_dim = check_heads(embed_dim, num_heads)
        set_attention_attributes(self, segment_lengths, dilation_rates, dropout, softmax_scale)
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_key_value_heads = resolve_key_value_heads(num_heads, num_key_value_heads)
        self.batch_first = batch_first
        self.use_layer_norm = layer_norm
        self.group_name = resolve_group_name(process_group, ring_size)
        factory = {"device": device, "dtype": dtype}
        kv_dim = self.num_key_value_heads * self.head_dim
        self.qkv_proj = nn.Linear(embed_dim, embed_dim + 2 * kv_dim, bias=bias, **factory)
        self.norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps, **factory) if layer_norm else nn.Identity()
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        init_projections(self.qkv_proj, self.out_proj, gain=gamma_init)

    def __setstate__(self, state):
        # Modules pickled before grouped-query attention existed had one key head per query head.
        state.setdefault("num_key_value_heads", state.get("num_heads"))
        super().__setstate__(state)

    def forward(
        self,
        query: torch.Tensor,
        key: Optional[torch.Tensor] = None,
        value: Optional[torch.Tensor] = None,
        need_weights: bool = False,
        attn_mask: Optional[torch.Tensor] = None,
        is_causal: bool = False,
        key_padding_mask: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise NotImplementedError(
                "Cross-attention not yet implemented for Ring Attention. "
                "Currently only self-attention is supported."
            )
        if need_weights:
            raise ValueError("need_weights=True is not supported: dilated attention never "
                             "materialises the attention weights")
        if attn_mask is not None:
            raise ValueError(reject_mask_message("attn_mask"))
        check_multihead_input(query, "query", self.embed_dim)
        x = query if self.batch_first else query.transpose(0, 1)
        dropout_p = self.dropout if self.training else 0.0
        if self.use_layer_norm or self.num_key_value_heads != self.num_heads:
            kv_dim = self.num_key_value_heads * self.head_dim
            q, k, v = self.qkv_proj(x).split([self.embed_dim, kv_dim, kv_dim], dim=-1)
            attended = torch.ops.dilated_attention._distributed_dilated_attention(
                q.unflatten(-1, (self.num_heads, self.head_dim)),
                k.unflatten(-1, (self.num_key_value_heads, self.head_dim)),
                v.unflatten(-1, (self.num_key_value_heads, self.head_dim)), self.segment_lengths,
                self.dilation_rates, dropout_p, is_causal, self.softmax_scale, self.group_name,
                self.backend, key_padding_mask)
            out = self.out_proj(self.norm(attended.flatten(-2)))
        else:
            # OP_NAME (TorchScript needs the op spelled out).
            out = torch.ops.dilated_attention.ring_multihead_dilated_attention(
                x, self.qkv_proj.weight, self.qkv_proj.bias, self.out_proj.weight,
                self.out_proj.bias, self.num_heads, self.segment_lengths, self.dilation_rates,
                dropout_p, is_causal, self.softmax_scale, self.group_name, key_padding_mask)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None
