"""Deprecated: ``DistributedImprovedDilatedAttention`` and
``DistributedImprovedMultiheadDilatedAttention`` (replicated inputs, all_gather of results)."""

from typing import Optional, Sequence

import torch
from torch import nn

from . import _op_table
from ._config import (
    init_projections,
    reject_mask_message,
    resolve_group_name,
    set_attention_attributes,
)
from ._deprecation import warn_deprecated
from ._distributed_base import DistributedAttentionBase
from .multihead_dilated_attention import check_heads


class DistributedImprovedDilatedAttention(DistributedAttentionBase):
    """Deprecated: every rank passes the full ``[B, N, H, D]`` and gets the full output; rank i
    computes rows [i*N/P, (i+1)*N/P) and the rows are all_gathered
    (``distributed_improved_dilated_attention``). Gradients are exact when every rank's loss
    (and so grad_output) agrees. Use ``RingDilatedAttentionHybridOptimizedV2``."""

    OP_NAME = "distributed_improved_dilated_attention"


class DistributedImprovedMultiheadDilatedAttention(nn.Module):
    """Deprecated: ``[B, N, E]`` inputs, q/k/v projections, the replicated-rows attention of
    ``DistributedImprovedDilatedAttention``, head merge, output projection
    (``distributed_improved_multihead_dilated_attention``; its backend, contract and notice come
    from that op's row of the library's named-op table)."""

    OP_NAME = "distributed_improved_multihead_dilated_attention"

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        segment_lengths: Sequence[int],
        dilation_rates: Sequence[int],
        dropout: float = 0.0,
        bias: bool = True,
        gamma_init: float = 1.0,
        device=None,
        dtype=None,
        process_group=None,
        softmax_scale: Optional[float] = None,
    ):
        row = _op_table.row(self.OP_NAME, "projected", type(self).__name__)
        warn_deprecated(row)
        super().__init__()
        self.backend = row["backend"]
        self.contract = row["contract"]
        check_heads(embed_dim, num_heads)
        self.num_heads = num_heads
        set_attention_attributes(self, segment_lengths, dilation_rates, dropout, softmax_scale)
        self.group_name = resolve_group_name(process_group, None)
        factory = {"device": device, "dtype": dtype}
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        init_projections(self.q_proj, self.k_proj, self.v_proj, self.out_proj, gain=gamma_init)

    def forward(self, query: torch.Tensor, key: Optional[torch.Tensor] = None,
                value: Optional[torch.Tensor] = None, is_causal: bool = False,
                attn_mask: Optional[torch.Tensor] = None,
                key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if attn_mask is not None:
            raise ValueError(reject_mask_message("attn_mask"))
        key = query if key is None else key
        value = key if value is None else value
        return torch.ops.dilated_attention._multihead_dilated_attention(
            query, key, value, self.q_proj.weight, self.q_proj.bias, self.k_proj.weight,
            self.k_proj.bias, self.v_proj.weight, self.v_proj.bias, self.out_proj.weight,
            self.out_proj.bias, self.num_heads, self.segment_lengths, self.dilation_rates,
            self.dropout if self.training else 0.0, is_causal, self.softmax_scale,
            self.group_name, self.backend, key_padding_mask)
