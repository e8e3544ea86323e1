"""Deprecated: ``RingDilatedAttentionV2Collective`` (all_gather of K and V)."""

from ._distributed_base import DistributedAttentionBase


class RingDilatedAttentionV2Collective(DistributedAttentionBase):
    """Deprecated: sequence-sharded like the V2 class, but all_gathers the whole K and V on every
    rank (``ring_dilated_attention_v2_collective``). Exact, slower, more memory. Use
    ``RingDilatedAttentionHybridOptimizedV2``. The op name warns too; this class calls its
    backend directly so the notice is reported once, at construction."""

    OP_NAME = "ring_dilated_attention_v2_collective"
