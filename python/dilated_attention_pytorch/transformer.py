"""``DilatedTransformerEncoderLayer`` and ``DilatedTransformerDecoderLayer``: the layers of the
original package's LongNet (``dilated_attention_pytorch.transformer``), with its arguments,
``state_dict`` layout and initialisation.

Both follow MAGNETO (https://arxiv.org/abs/2210.06423): pre-LayerNorm residual blocks with a
sub-LayerNorm inside each block (the attention module's norm before its output projection, and
``norm3`` / ``norm4`` between the feed-forward linears), and xavier-normal weights with gain
``gamma_init`` (which ``LongNet`` computes from the numbers of layers).

``attention="longnet"`` (default ``"dilated"``) gives every attention module of the layer
LongNet's log-sum-exp combination of its branches (``LongNetDilatedAttention``) instead of the
head-split ``DilatedAttention``; the projections, and so the ``state_dict``, are the same.
"""

from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dilated_attention import MultiheadDilatedAttention

Activation = Union[str, Callable[[Tensor], Tensor]]


def resolve_activation(activation: Activation) -> Callable[[Tensor], Tensor]:
    """"relu" / "gelu" as torch's transformer layers name them, or the callable itself."""
    if isinstance(activation, str):
        if activation == "relu":
            return F.relu
        if activation == "gelu":
            return F.gelu
        # The error (type and words) of torch.nn.TransformerEncoderLayer, which upstream used.
        raise RuntimeError(f"activation should be relu/gelu, not {activation}")
    return activation


def _init_linear(linear: nn.Linear, gain: float) -> None:
    nn.init.xavier_normal_(linear.weight, gain=gain)
    nn.init.constant_(linear.bias, 0)


class DilatedTransformerEncoderLayer(nn.Module):
    """``nn.TransformerEncoderLayer`` (batch first) with MAGNETO's sub-LayerNorm and dilated
    self-attention::

        x = src + dropout(self_attn(norm1(src)))          # self_attn has its own sub-LN
        x = x + dropout(linear2(norm3(dropout(activation(linear1(norm2(x)))))))

    ``dropout`` is also the attention-weight dropout of ``self_attn``. Inputs ``[B, N, d_model]``
    with N a multiple of ``max(segment_lengths)``.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        segment_lengths: Sequence[int],
        dilation_rates: Sequence[int],
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Activation = F.relu,
        layer_norm_eps: float = 1e-5,
        gamma_init: float = 1.0,
        device: Optional[Union[torch.device, str]] = None,
        dtype: Optional[torch.dtype] = None,
        attention: str = "dilated",
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.activation = resolve_activation(activation)
        self.gamma_init = gamma_init
        self.dropout = nn.Dropout(dropout)
        # Self-attention block
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, **factory)
        self.self_attn = MultiheadDilatedAttention(
            embed_dim=d_model,
            num_heads=nhead,
            dilation_rates=dilation_rates,
            segment_lengths=segment_lengths,
            dropout=dropout,
            layer_norm=True,
            layer_norm_eps=layer_norm_eps,
            gamma_init=gamma_init,
            attention=attention,
            **factory,
        )
        # Feed-forward block
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, **factory)
        self.linear1 = nn.Linear(d_model, dim_feedforward, **factory)
        self.norm3 = nn.LayerNorm(dim_feedforward, eps=layer_norm_eps, **factory)
        self.linear2 = nn.Linear(dim_feedforward, d_model, **factory)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # MAGNETO's initialisation (arXiv:2210.06423, Fig. 2); self_attn initialises its own
        # projections with the same gain.
        _init_linear(self.linear1, self.gamma_init)
        _init_linear(self.linear2, self.gamma_init)

    def _self_attention_block(self, x: Tensor, is_causal: bool = False) -> Tensor:
        x = self.norm1(x)
        x, _ = self.self_attn(x, x, x, is_causal=is_causal)
        return self.dropout(x)

    def _feedforward_block(self, x: Tensor) -> Tensor:
        x = self.norm2(x)
        x = self.dropout(self.activation(self.linear1(x)))
        x = self.norm3(x)
        return self.dropout(self.linear2(x))

    def forward(self, src: Tensor, is_causal: bool = False) -> Tensor:
        x = src + self._self_attention_block(src, is_causal=is_causal)
        return x + self._feedforward_block(x)


class DilatedTransformerDecoderLayer(nn.Module):
    """``nn.TransformerDecoderLayer`` (batch first) with MAGNETO's sub-LayerNorm and dilated
    self- and cross-attention::

        x = tgt + dropout(self_attn(norm1(tgt)))                 # no sub-LN (layer_norm=False)
        x = x + dropout(multihead_attn(norm2(x), memory, memory))  # with its sub-LN
        x = x + dropout(linear2(norm4(dropout(activation(linear1(norm3(x)))))))

    As upstream, the self-attention has no inner layer norm and the cross-attention has one.
    ``tgt_is_causal`` / ``memory_is_causal`` make the self- / cross-attention causal (memory and
    tgt have the same length).
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        segment_lengths: Sequence[int],
        dilation_rates: Sequence[int],
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Activation = F.relu,
        layer_norm_eps: float = 1e-5,
        gamma_init: float = 1.0,
        device: Optional[Union[torch.device, str]] = None,
        dtype: Optional[torch.dtype] = None,
        attention: str = "dilated",
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.activation = resolve_activation(activation)
        self.gamma_init = gamma_init
        self.dropout = nn.Dropout(dropout)
        # Self-attention block
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, **factory)
        self.self_attn = MultiheadDilatedAttention(
            embed_dim=d_model,
            num_heads=nhead,
            dilation_rates=dilation_rates,
            segment_lengths=segment_lengths,
            dropout=dropout,
            layer_norm=False,
            gamma_init=gamma_init,
            attention=attention,
            **factory,
        )
        # Cross-attention block
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, **factory)
        self.multihead_attn = MultiheadDilatedAttention(
            embed_dim=d_model,
            num_heads=nhead,
            dilation_rates=dilation_rates,
            segment_lengths=segment_lengths,
            dropout=dropout,
            layer_norm_eps=layer_norm_eps,
            gamma_init=gamma_init,
            attention=attention,
            **factory,
        )
        # Feed-forward block
        self.norm3 = nn.LayerNorm(d_model, eps=layer_norm_eps, **factory)
        self.linear1 = nn.Linear(d_model, dim_feedforward, **factory)
        self.norm4 = nn.LayerNorm(dim_feedforward, eps=layer_norm_eps, **factory)
        self.linear2 = nn.Linear(dim_feedforward, d_model, **factory)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        _init_linear(self.linear1, self.gamma_init)
        _init_linear(self.linear2, self.gamma_init)

    def _self_attention_block(self, x: Tensor, is_causal: bool = False) -> Tensor:
        x = self.norm1(x)
        x, _ = self.self_attn(x, x, x, is_causal=is_causal)
        return self.dropout(x)

    def _multihead_attention_block(self, x: Tensor, memory: Tensor,
                                   is_causal: bool = False) -> Tensor:
        x = self.norm2(x)
        x, _ = self.multihead_attn(x, memory, memory, is_causal=is_causal)
        return self.dropout(x)

    def _feedforward_block(self, x: Tensor) -> Tensor:
        x = self.norm3(x)
        x = self.dropout(self.activation(self.linear1(x)))
        x = self.norm4(x)
        return self.dropout(self.linear2(x))

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_is_causal: bool = False,
        memory_is_causal: bool = False,
    ) -> Tensor:
        x = tgt + self._self_attention_block(tgt, is_causal=tgt_is_causal)
        x = x + self._multihead_attention_block(x, memory, is_causal=memory_is_causal)
        return x + self._feedforward_block(x)
