"""``ImprovedDilatedAttention``: the same exact function as ``DilatedAttention``, with the
constructor users of the ``improved`` variant already call."""

from typing import Optional, Sequence

from .dilated_attention import DilatedAttention


class ImprovedDilatedAttention(DilatedAttention):
    """Dilated attention; ``dropout`` is the attention-weight dropout (training only).

    Upstream's "improved" variant traded exactness for speed; here both classes compute the
    same function exactly, on the same kernels. ``use_tf32`` is accepted for compatibility and
    ignored: attention runs in the input dtype with float32 (or float64) accumulation.
    """

    def __init__(
        self,
        segment_lengths: Sequence[int],
        dilation_rates: Sequence[int],
        dropout: float = 0.0,
        use_tf32: bool = True,
        softmax_scale: Optional[float] = None,
        device=None,
        dtype=None,
    ):
        super().__init__(segment_lengths, dilation_rates, softmax_scale, dropout)
