"""Deprecated: ``HeadParallelDilatedAttention``."""

from ._distributed_base import DistributedAttentionBase


class HeadParallelDilatedAttention(DistributedAttentionBase):
    """Deprecated: every rank passes the full ``[B, N, H, D]``; rank i computes heads
    [i*H/P, (i+1)*H/P) with the op's global head-to-group mapping (so the result equals
    ``DilatedAttention``) and the head slices are all_gathered
    (``head_parallel_dilated_attention``). H must be divisible by P."""

    OP_NAME = "head_parallel_dilated_attention"
