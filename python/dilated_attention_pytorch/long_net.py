"""``LongNet`` (an encoder-decoder of dilated transformer layers) and ``LongNetLM`` (a language
model around it, with an xPos position embedding), with the constructor arguments, defaults,
``state_dict`` names and forward of the original package's ``dilated_attention_pytorch.long_net``.
"""

from math import log
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .transformer import DilatedTransformerDecoderLayer, DilatedTransformerEncoderLayer
from .xpos import XPOS

# The *base* LongNet hyperparameters of the paper (arXiv:2307.02486, Section 4.1, Appendix A).
DEFAULT_SEGMENT_LENGTHS = (2048, 4096, 8192, 16384, 32768)
DEFAULT_DILATION_RATES = (1, 2, 4, 6, 12)


def magneto_gamma_init(num_encoder_layers: int, num_decoder_layers: int):
    """The (encoder, decoder) initialisation gains of MAGNETO (arXiv:2210.06423, Fig. 2) for an
    encoder-decoder of N encoder and M decoder layers: sqrt(log(3M) log(2N) / 3) and
    sqrt(log(3M)), as the original computes them."""
    encoder = (log(3 * num_decoder_layers) * log(2 * num_encoder_layers) / 3) ** 0.5
    decoder = log(3 * num_decoder_layers) ** 0.5
    return encoder, decoder


class _EncoderStack(nn.TransformerEncoder):
    """``nn.TransformerEncoder`` (the container upstream used, so the ``state_dict`` names are
    ``encoder.layers.<i>.*``) whose forward runs the dilated layers; nn.TransformerEncoder's own
    forward passes masks these layers do not take, and could not be scripted with them."""

    def forward(self, src: Tensor, is_causal: bool = False) -> Tensor:  # type: ignore[override]
        x = src
        for layer in self.layers:
            x = layer(x, is_causal=is_causal)
        if self.norm is not None:
            x = self.norm(x)
        return x


class _DecoderStack(nn.TransformerDecoder):
    """``nn.TransformerDecoder`` (``decoder.layers.<i>.*``) running the dilated layers."""

    def forward(  # type: ignore[override]
        self, tgt: Tensor, memory: Tensor, tgt_is_causal: bool = False,
        memory_is_causal: bool = False,
    ) -> Tensor:
        x = tgt
        for layer in self.layers:
            x = layer(x, memory, tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal)
        if self.norm is not None:
            x = self.norm(x)
        return x


class LongNet(nn.Module):
    """LongNet's encoder-decoder (MAGNETO layers with dilated attention) on ``[B, N, d_model]``
    inputs, N a multiple of ``max(segment_lengths)``. The defaults are the paper's *base* model.

    The encoder runs on x; the decoder runs on x (as tgt) with the encoder's output as memory.
    ``is_causal`` applies to the encoder's self-attention and to the decoder's self- and
    cross-attention. Every layer starts from the same weights, as upstream (which deep-copies one
    layer per depth through ``nn.TransformerEncoder`` / ``nn.TransformerDecoder``); the encoder's
    layers with gain ``sqrt(log(3M) log(2N) / 3)``, the decoder's with ``sqrt(log(3M))``.
    ``attention="longnet"`` switches every layer to LongNet's log-sum-exp combination of the
    branches (same ``state_dict``).
    """

    def __init__(
        self,
        d_model: int = 768,
        nhead: int = 12,
        num_encoder_layers: int = 12,
        num_decoder_layers: int = 12,
        dim_feedforward: int = 3072,
        segment_lengths: Sequence[int] = DEFAULT_SEGMENT_LENGTHS,
        dilation_rates: Sequence[int] = DEFAULT_DILATION_RATES,
        dropout: float = 0.0,
        activation: Union[str, Callable[[Tensor], Tensor]] = F.relu,
        layer_norm_eps: float = 1e-5,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        attention: str = "dilated",
    ):
        super().__init__()
        encoder_gamma_init, decoder_gamma_init = magneto_gamma_init(num_encoder_layers,
                                                                    num_decoder_layers)
        layer_args = dict(
            d_model=d_model,
            nhead=nhead,
            segment_lengths=segment_lengths,
            dilation_rates=dilation_rates,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            activation=activation,
            layer_norm_eps=layer_norm_eps,
            device=device,
            dtype=dtype,
            attention=attention,
        )
        self.encoder = _EncoderStack(
            DilatedTransformerEncoderLayer(gamma_init=encoder_gamma_init, **layer_args),
            num_layers=num_encoder_layers,
            mask_check=False,
            enable_nested_tensor=False,
        )
        self.decoder = _DecoderStack(
            DilatedTransformerDecoderLayer(gamma_init=decoder_gamma_init, **layer_args),
            num_layers=num_decoder_layers,
        )

    def forward(self, x: Tensor, is_causal: bool = True) -> Tensor:
        """x: ``[B, N, d_model]`` -> ``[B, N, d_model]``."""
        memory = self.encoder(x, is_causal=is_causal)
        return self.decoder(x, memory, tgt_is_causal=is_causal, memory_is_causal=is_causal)


class LongNetLM(nn.Module):
    """A language model: token embedding, plus its xPos embedding (``x + XPOS(d_model)(x)``, as
    upstream), ``LongNet``, a final LayerNorm and the output projection to ``num_tokens`` logits.
    Input ``[B, N]`` token ids, output ``[B, N, num_tokens]``; ``is_causal=True`` (default) makes
    position t see tokens <= t only.

    As upstream, ``_reset_parameters`` (kaiming-normal output weights) exists but the constructor
    does not call it: ``out`` keeps ``nn.Linear``'s default initialisation.
    """

    def __init__(
        self,
        num_tokens: int,
        d_model: int = 768,
        nhead: int = 12,
        num_encoder_layers: int = 12,
        num_decoder_layers: int = 12,
        dim_feedforward: int = 3072,
        segment_lengths: Sequence[int] = DEFAULT_SEGMENT_LENGTHS,
        dilation_rates: Sequence[int] = DEFAULT_DILATION_RATES,
        dropout: float = 0.0,
        activation: Union[str, Callable[[Tensor], Tensor]] = F.relu,
        layer_norm_eps: float = 1e-5,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        attention: str = "dilated",
    ):
        super().__init__()
        self.token_embedding = nn.Embedding(num_tokens, d_model, device=device, dtype=dtype)
        self.pos_embedding = XPOS(d_model).to(device=device, dtype=dtype)
        self.long_net = LongNet(
            d_model=d_model,
            nhead=nhead,
            num_encoder_layers=num_encoder_layers,
            num_decoder_layers=num_decoder_layers,
            dim_feedforward=dim_feedforward,
            segment_lengths=segment_lengths,
            dilation_rates=dilation_rates,
            dropout=dropout,
            activation=activation,
            layer_norm_eps=layer_norm_eps,
            device=device,
            dtype=dtype,
            attention=attention,
        )
        self.norm = nn.LayerNorm(d_model, eps=layer_norm_eps, device=device, dtype=dtype)
        self.out = nn.Linear(d_model, num_tokens, device=device, dtype=dtype)

    def _reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.out.weight)
        nn.init.constant_(self.out.bias, 0)

    def forward(self, x: Tensor, is_causal: bool = True) -> Tensor:
        """x: ``[B, N]`` token ids -> ``[B, N, num_tokens]`` logits."""
        x = self.token_embedding(x)
        x = x + self.pos_embedding(x)
        x = self.long_net(x, is_causal=is_causal)
        x = self.norm(x)
        return self.out(x)
