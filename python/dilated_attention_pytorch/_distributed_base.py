"""Common construction of the distributed attention modules: validated config, dropout, and the
``group_name`` of the process group the op communicates over."""

from typing import Optional, Sequence

import torch
from torch import nn

from . import _library
from ._config import resolve_group_name, set_attention_attributes
from ._deprecation import warn_deprecated

_library.load_library()


class DistributedAttentionBase(nn.Module):
    """Holds what every distributed module passes to the op. A subclass names its backend (the
    schedule behind one of the op names in ``torch.ops.dilated_attention``); ``forward`` is one
    call of ``_distributed_dilated_attention``, the op every distributed name resolves to.
    A subclass that sets ``DEPRECATED`` warns once per process on construction."""

    BACKEND = "segment_ring"
    DEPRECATED = False

    def __init__(
        self,
        segment_lengths: Sequence[int],
        dilation_rates: Sequence[int],
        dropout: float = 0.0,
        ring_size: Optional[int] = None,
        device=None,
        dtype=None,
        process_group=None,
        softmax_scale: Optional[float] = None,
    ):
        if self.DEPRECATED:
            warn_deprecated(type(self).__name__)
        super().__init__()
        self.backend = self.BACKEND
        set_attention_attributes(self, segment_lengths, dilation_rates, dropout, softmax_scale)
        self.group_name = resolve_group_name(process_group, ring_size)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                is_causal: bool = False) -> torch.Tensor:
        return torch.ops.dilated_attention._distributed_dilated_attention(
            query, key, value, self.segment_lengths, self.dilation_rates,
            self.dropout if self.training else 0.0, is_causal, self.softmax_scale,
            self.group_name, self.backend)

    def extra_repr(self) -> str:
        return (
            f"segment_lengths={self.segment_lengths}, dilation_rates={self.dilation_rates}, "
            f"group_name={self.group_name!r}"
        )
