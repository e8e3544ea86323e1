"""``RingDilatedAttentionProduction``: the V2 ring plus safeguards, configured by
``RingAttentionConfig``."""

from dataclasses import dataclass, field
from typing import List, Optional

from ._distributed_base import DistributedAttentionBase


@dataclass
class RingAttentionConfig:
    segment_lengths: List[int]
    dilation_rates: List[int]
    dropout: float = 0.0
    ring_size: Optional[int] = None
    softmax_scale: Optional[float] = None
    process_group: object = field(default=None, repr=False)


class RingDilatedAttentionProduction(DistributedAttentionBase):
    """The V2 exchange with safeguards (``ring_dilated_attention_production``): before every call
    all ranks check they agree on shapes, dtype, segment_lengths,
    dilation_rates, causal, dropout and scale (every rank raises the same clear error when they
    do not), and every wait is bounded (``DILATED_ATTENTION_COMM_TIMEOUT_S``, default 300 s): a
    silent peer is named in an error instead of a hang."""

    OP_NAME = "ring_dilated_attention_production"

    def __init__(self, config: RingAttentionConfig, device=None, dtype=None):
        super().__init__(config.segment_lengths, config.dilation_rates, config.dropout,
                         config.ring_size, device, dtype, config.process_group,
                         config.softmax_scale)


def create_production_ring_attention(segment_lengths, dilation_rates, **kwargs):
    """``RingDilatedAttentionProduction(RingAttentionConfig(segment_lengths, dilation_rates,
    **kwargs))``; ``device`` and ``dtype`` go to the module."""
    module_args = {name: kwargs.pop(name) for name in ("device", "dtype") if name in kwargs}
    config = RingAttentionConfig(list(segment_lengths), list(dilation_rates), **kwargs)
    return RingDilatedAttentionProduction(config, **module_args)
