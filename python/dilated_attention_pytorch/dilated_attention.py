"""``DilatedAttention``: LongNet-style dilated attention over ``[B, N, H, D]`` tensors; and
``MultiheadDilatedAttention`` where the original package defined it, with its return convention."""

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from . import _library
from ._config import reject_mask_message, set_attention_attributes

_library.load_library()


class DilatedAttention(nn.Module):
    """Dilated attention, computed exactly by ``torch.ops.dilated_attention.dilated_attention``.

    Heads split into ``len(segment_lengths)`` groups (extra heads to the first groups); group g
    attends within segments of ``segment_lengths[g]`` positions, over every
    ``dilation_rates[g]``-th position starting at offset ``g % dilation_rates[g]``; the result is
    divided by the number of groups. Dropout acts on the attention weights, in training only.
    """

    def __init__(
        self,
        segment_lengths: Sequence[int],
        dilation_rates: Sequence[int],
        softmax_scale: Optional[float] = None,
        attention_dropout: float = 0.0,
        op=None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if op is not None:
            raise ValueError("op is not supported: the attention kernel is chosen by the library")
        set_attention_attributes(self, segment_lengths, dilation_rates, attention_dropout,
                                 softmax_scale)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        is_causal: bool = False,
        attention_mask: Optional[torch.Tensor] = None,
        key_padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """key_padding_mask: bool [B, N], True where the key is padding (excluded from every
        softmax; a query that sees no key gets 0)."""
        if attention_mask is not None:
            raise ValueError(reject_mask_message("attention_mask"))
        return torch.ops.dilated_attention.dilated_attention(
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


# After DilatedAttention: multihead_dilated_attention imports it from here (when it builds one),
# and imports nothing from here at its own import, so either module may be imported first.
from .multihead_dilated_attention import (  # noqa: E402
    MultiheadDilatedAttention as _MultiheadDilatedAttention,
)


class MultiheadDilatedAttention(_MultiheadDilatedAttention):
    """``dilated_attention_pytorch.multihead_dilated_attention.MultiheadDilatedAttention`` with
    the return convention of the package that defined the class in this module: ``forward``
    always returns ``(output, None)`` (the attention weights are never materialised).

    Same constructor, weights, ``state_dict`` and computation. The arguments of ``forward`` are
    those of the base class too, except that ``is_causal`` comes fourth, where that package had it
    (``forward(query, key, value, is_causal=False)``), so its positional calls keep working; pass
    the others by keyword.
    """

    def forward(  # type: ignore[override]
        self,
        query: torch.Tensor,
        key: Optional[torch.Tensor] = None,
        value: Optional[torch.Tensor] = None,
        is_causal: bool = False,
        key_padding_mask: Optional[torch.Tensor] = None,
        need_weights: bool = False,
        attn_mask: Optional[torch.Tensor] = None,
        average_attn_weights: bool = True,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        return self._attend(query, key, value, key_padding_mask, attn_mask, is_causal), None
