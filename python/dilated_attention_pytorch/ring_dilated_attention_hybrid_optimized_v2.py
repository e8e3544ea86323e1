"""``RingDilatedAttentionHybridOptimizedV2``: the recommended sequence-parallel implementation."""

from ._distributed_base import DistributedAttentionBase


class RingDilatedAttentionHybridOptimizedV2(DistributedAttentionBase):
    """Sequence-sharded dilated attention over a segment-aware isend/irecv ring
    (``torch.ops.dilated_attention.ring_dilated_attention_hybrid_optimized_v2``).

    With a process group of P ranks, rank i passes positions [i*N/P, (i+1)*N/P) of q, k, v
    (``[B, N/P, H, D]``) and gets the same rows of the exact dilated attention of the whole
    sequence. Ranks exchange only the dilated key/value rows of segments that span shards,
    nothing when every segment is local. Without a group it is ``DilatedAttention``.
    ``process_group`` defaults to the world group when torch.distributed is initialised."""

    OP_NAME = "ring_dilated_attention_hybrid_optimized_v2"


RingDilatedAttention = RingDilatedAttentionHybridOptimizedV2
