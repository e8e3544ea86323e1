"""``LongNetDilatedAttention``: LongNet's dilated attention as torchscale computes it, every head in
every (segment length, dilation rate) branch, over ``[B, N, H, D]`` tensors; and
``RingLongNetDilatedAttention``, the same over a sequence sharded across a process group."""

from typing import Optional, Sequence

import torch
from torch import nn

from . import _library
from ._config import resolve_group_name, set_attention_attributes

_library.load_library()

OP_NAME = "longnet_attention"


class LongNetDilatedAttention(nn.Module):
    """LongNet dilated attention, computed exactly by
    ``torch.ops.dilated_attention.longnet_attention``.

    Unlike ``DilatedAttention`` (heads split into one group per segment length, outputs averaged),
    every head takes part in every branch i = (``segment_lengths[i]``, ``dilation_rates[i]``):
    each branch attends within its dilated segments, and a position's branch outputs are combined
    with weights proportional to their softmax denominators (the log-sum-exp combination of
    torchscale's LongNet), which is attention over the union of the keys the branches see.
    Dropout acts on the attention weights, in training only.
    """

    def __init__(
        self,
        segment_lengths: Sequence[int],
        dilation_rates: Sequence[int],
        softmax_scale: Optional[float] = None,
        attention_dropout: float = 0.0,
    ):
        super().__init__()
        set_attention_attributes(self, segment_lengths, dilation_rates, attention_dropout,
                                 softmax_scale, op_name=OP_NAME)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        is_causal: bool = False,
        key_padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """key_padding_mask: bool [B, N], True where the key is padding (excluded from every
        softmax; a query that sees no key gets 0)."""
        return torch.ops.dilated_attention.longnet_attention(
            query,
            key,
            value,
            self.segment_lengths,
            self.dilation_rates,
            self.dropout if self.training else 0.0,
            is_causal,
            self.softmax_scale,
            key_padding_mask,
        )

    def extra_repr(self) -> str:
        return f"segment_lengths={self.segment_lengths}, dilation_rates={self.dilation_rates}"


class RingLongNetDilatedAttention(LongNetDilatedAttention):
    """``LongNetDilatedAttention`` over a sequence sharded across the ranks of ``process_group``
    (default: the world group when torch.distributed is initialised, else one process): each rank
    passes its rows ``[B, N/P, H, D]`` of query, key and value (and ``key_padding_mask`` rows
    ``[B, N/P]``) and gets the same rows of the output, computed by
    ``torch.ops.dilated_attention.ring_longnet_attention``. Only the dilated key/value rows of
    segments that span shards travel between ranks (isend/irecv); forward and backward are exact.
    ``ring_size``, when given, must equal the group's size."""

    def __init__(
        self,
        segment_lengths: Sequence[int],
        dilation_rates: Sequence[int],
        softmax_scale: Optional[float] = None,
        attention_dropout: float = 0.0,
        process_group=None,
        ring_size: Optional[int] = None,
    ):
        super().__init__(segment_lengths, dilation_rates, softmax_scale, attention_dropout)
        self.group_name = resolve_group_name(process_group, ring_size)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        is_causal: bool = False,
        key_padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Shards: this rank's rows of query, key, value and key_padding_mask."""
        return torch.ops.dilated_attention.ring_longnet_attention(
            query,
            key,
            value,
            self.segment_lengths,
            self.dilation_rates,
            self.dropout if self.training else 0.0,
            is_causal,
            self.softmax_scale,
            self.group_name,
            key_padding_mask,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group_name={self.group_name!r}"
