"""``RingDilatedAttentionHybridOptimized``: the classic full ring (the v2 design's baseline)."""

from ._distributed_base import DistributedAttentionBase


class RingDilatedAttentionHybridOptimized(DistributedAttentionBase):
    """Sequence-sharded dilated attention where every rank's whole K/V shard visits every rank
    over P - 1 ring steps (``ring_dilated_attention_hybrid_optimized``). Same result as the V2
    class; more bytes moved."""

    OP_NAME = "ring_dilated_attention_hybrid_optimized"
