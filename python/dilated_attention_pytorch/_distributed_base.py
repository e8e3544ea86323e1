"""Common construction of the distributed attention modules: validated config, dropout, and the
``group_name`` of the process group the op communicates over."""

from typing import Optional, Sequence

import torch
from torch import nn

from . import _library, _op_table
from ._config import resolve_group_name, set_attention_attributes
from ._deprecation import warn_deprecated

_library.load_library()


class DistributedAttentionBase(nn.Module):
    """Holds what every distributed module passes to the op. A subclass names its op
    (``OP_NAME``, a row of the library's named-op table, see ``_op_table``) and takes from that
    row the backend (the schedule behind the name), the contract ("sharded": this rank's rows;
    "replicated": the whole sequence on every rank) and, for a deprecated op, the notice it gives
    once per process on construction. ``forward`` is one call of
    ``_distributed_dilated_attention`` with that backend, the op every distributed name resolves
    to. In a build that leaves the op out, construction raises a RuntimeError."""

    OP_NAME = "ring_dilated_attention_hybrid_optimized_v2"

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
        row = _op_table.row(self.OP_NAME, "attention", type(self).__name__)
        warn_deprecated(row)
        super().__init__()
        self.backend = row["backend"]
        self.contract = row["contract"]
        set_attention_attributes(self, segment_lengths, dilation_rates, dropout, softmax_scale)
        self.group_name = resolve_group_name(process_group, ring_size)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                is_causal: bool = False,
                key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """key_padding_mask: bool, True = padding; this rank's rows [B, N/P] for the sharded
        (ring) classes, the whole [B, N] for the replicated ones."""
        return torch.ops.dilated_attention._distributed_dilated_attention(
            query, key, value, self.segment_lengths, self.dilation_rates,
            self.dropout if self.training else 0.0, is_causal, self.softmax_scale,
            self.group_name, self.backend, key_padding_mask)

    def extra_repr(self) -> str:
        return (
            f"segment_lengths={self.segment_lengths}, dilation_rates={self.dilation_rates}, "
            f"group_name={self.group_name!r}"
        )
