"""Deprecated: ``HilbertRingDilatedAttention``."""

from ._distributed_base import DistributedAttentionBase


class HilbertRingDilatedAttention(DistributedAttentionBase):
    """Deprecated: the same exact function as the V2 class over all_gather
    (``hilbert_ring_dilated_attention``). Upstream advertised a Hilbert-curve token order; a
    reordering cannot change the result and brings no locality to segment-contiguous dilated
    attention, so none is applied. Use ``RingDilatedAttentionHybridOptimizedV2``."""

    OP_NAME = "hilbert_ring_dilated_attention"
