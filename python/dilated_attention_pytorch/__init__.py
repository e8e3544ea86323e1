"""Drop-in dilated attention for PyTorch users of ``dilated_attention_pytorch``: the same
classes, constructor arguments and ``state_dict`` names, computed exactly by the
``torch.ops.dilated_attention`` custom operators (loaded once on import)."""

from ._library import library_path, load_library

load_library()

from . import functional  # noqa: E402
from .dilated_attention import DilatedAttention  # noqa: E402
from .factory import create_dilated_attention, create_multihead_dilated_attention  # noqa: E402
from .head_parallel_dilated_attention import HeadParallelDilatedAttention  # noqa: E402
from .improved_dilated_attention import ImprovedDilatedAttention  # noqa: E402
from .improved_distributed_dilated_attention import (  # noqa: E402
    DistributedImprovedDilatedAttention,
    DistributedImprovedMultiheadDilatedAttention,
)
from .long_net import LongNet, LongNetLM  # noqa: E402
from .longnet_attention import LongNetDilatedAttention, RingLongNetDilatedAttention  # noqa: E402
from .multihead_dilated_attention import MultiheadDilatedAttention  # noqa: E402
from .ring_dilated_attention_hybrid_optimized import RingDilatedAttentionHybridOptimized  # noqa: E402
from .ring_dilated_attention_hybrid_optimized_v2 import (  # noqa: E402
    RingDilatedAttention,
    RingDilatedAttentionHybridOptimizedV2,
)
from .ring_dilated_attention_production import (  # noqa: E402
    RingAttentionConfig,
    RingDilatedAttentionProduction,
    create_production_ring_attention,
)
from .ring_dilated_attention_v2_collective import RingDilatedAttentionV2Collective  # noqa: E402
from .ring_hilbert_dilated_attention import HilbertRingDilatedAttention  # noqa: E402
from .ring_multihead_dilated_attention import RingMultiheadDilatedAttention  # noqa: E402
from .transformer import DilatedTransformerDecoderLayer, DilatedTransformerEncoderLayer  # noqa: E402

__version__ = "0.5.0"

__all__ = [
    "DilatedAttention",
    "DilatedTransformerDecoderLayer",
    "DilatedTransformerEncoderLayer",
    "DistributedImprovedDilatedAttention",
    "DistributedImprovedMultiheadDilatedAttention",
    "HeadParallelDilatedAttention",
    "HilbertRingDilatedAttention",
    "ImprovedDilatedAttention",
    "LongNet",
    "LongNetDilatedAttention",
    "LongNetLM",
    "MultiheadDilatedAttention",
    "RingAttentionConfig",
    "RingDilatedAttention",
    "RingDilatedAttentionHybridOptimized",
    "RingDilatedAttentionHybridOptimizedV2",
    "RingDilatedAttentionProduction",
    "RingDilatedAttentionV2Collective",
    "RingLongNetDilatedAttention",
    "RingMultiheadDilatedAttention",
    "create_dilated_attention",
    "create_multihead_dilated_attention",
    "create_production_ring_attention",
    "functional",
    "library_path",
]
