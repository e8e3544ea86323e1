"""``create_dilated_attention`` / ``create_multihead_dilated_attention``: pick a module by kind.

Kinds: "auto" (the improved single-device module, or the ring module when torch.distributed is
initialised with more than one rank), "standard", "improved", "ring".
"""

from typing import Sequence

import torch.distributed as dist

from .dilated_attention import DilatedAttention
from .improved_dilated_attention import ImprovedDilatedAttention
from .multihead_dilated_attention import MultiheadDilatedAttention
from .ring_dilated_attention_hybrid_optimized_v2 import RingDilatedAttentionHybridOptimizedV2
from .ring_multihead_dilated_attention import RingMultiheadDilatedAttention

KINDS = ("auto", "standard", "improved", "ring")


def _resolve(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind != "auto":
        return kind
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    return "ring" if distributed else "improved"


def create_dilated_attention(kind: str = "auto", segment_lengths: Sequence[int] = (2048, 4096, 8192),
                             dilation_rates: Sequence[int] = (1, 2, 4), **kwargs):
    kind = _resolve(kind)
    if kind == "standard":
        if "dropout" in kwargs:
            kwargs["attention_dropout"] = kwargs.pop("dropout")
        return DilatedAttention(segment_lengths, dilation_rates, **kwargs)
    if kind == "improved":
        return ImprovedDilatedAttention(segment_lengths, dilation_rates, **kwargs)
    return RingDilatedAttentionHybridOptimizedV2(segment_lengths, dilation_rates, **kwargs)


def create_multihead_dilated_attention(kind: str = "auto", embed_dim: int = 768, num_heads: int = 12,
                                       segment_lengths: Sequence[int] = (2048, 4096, 8192),
                                       dilation_rates: Sequence[int] = (1, 2, 4), **kwargs):
    kind = _resolve(kind)
    if kind == "ring":
        return RingMultiheadDilatedAttention(embed_dim, num_heads, segment_lengths, dilation_rates,
                                             **kwargs)
    return MultiheadDilatedAttention(embed_dim, num_heads, dilation_rates=dilation_rates,
                                     segment_lengths=segment_lengths, **kwargs)
