"""Functions for users who call functions rather than modules: the library's ops with their
arguments, nothing hidden (no training flag: pass dropout_p=0.0 in evaluation)."""

from typing import List, Optional, Sequence

import torch

from ._config import as_int_list


def dilated_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    segment_lengths: Sequence[int],
    dilation_rates: Sequence[int],
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    key_padding_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Dilated attention of query ``[B, N, H, D]`` and key/value ``[B, N, H_kv, D]`` (H_kv
    dividing H: grouped-query attention); ``key_padding_mask`` bool ``[B, N]``, True = padding.
    The op ``torch.ops.dilated_attention.dilated_attention``; the math is in the README."""
    segments: List[int] = as_int_list(segment_lengths)
    rates: List[int] = as_int_list(dilation_rates)
    return torch.ops.dilated_attention.dilated_attention(
        query, key, value, segments, rates, dropout_p, is_causal, scale, key_padding_mask)


def dilated_attention_varlen(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    segment_lengths: Sequence[int],
    dilation_rates: Sequence[int],
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Packed variable-length sequences (flash-attn's layout): query ``[T, H, D]``, key/value
    ``[T, H_kv, D]``, ``cu_seqlens`` int32/int64 ``[S + 1]`` (0, ..., T); sequence i is rows
    cu_seqlens[i] .. cu_seqlens[i+1], attended alone, its last segment truncated at its end. The
    op ``torch.ops.dilated_attention.dilated_attention_varlen``."""
    segments: List[int] = as_int_list(segment_lengths)
    rates: List[int] = as_int_list(dilation_rates)
    return torch.ops.dilated_attention.dilated_attention_varlen(
        query, key, value, cu_seqlens, max_seqlen, segments, rates, dropout_p, is_causal, scale)


def longnet_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    segment_lengths: Sequence[int],
    dilation_rates: Sequence[int],
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    key_padding_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """LongNet's combination (the paper's and torchscale's): every head in every (segment, rate)
    branch, the branches weighted by their softmax denominators; any N. Shapes as
    ``dilated_attention``. The op ``torch.ops.dilated_attention.longnet_attention``."""
    segments: List[int] = as_int_list(segment_lengths)
    rates: List[int] = as_int_list(dilation_rates)
    return torch.ops.dilated_attention.longnet_attention(
        query, key, value, segments, rates, dropout_p, is_causal, scale, key_padding_mask)


def dilated_attention_with_kv_cache(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    segment_lengths: Sequence[int],
    dilation_rates: Sequence[int],
    scale: Optional[float] = None,
    key_padding_mask: Optional[torch.Tensor] = None,
    sequence_starts: Optional[torch.Tensor] = None,
    longnet: bool = False,
) -> torch.Tensor:
    """Decoding: query ``[B, Nq, H, D]`` is the last Nq positions of causal sequences whose keys
    and values (cache and new tokens) are key/value ``[B, Nk, H_kv, D]`` (any strides, e.g.
    transformers' ``[B, H_kv, Nk, D]`` cache transposed). The last Nq rows of
    ``dilated_attention_varlen`` over ``[0, Nk]`` (``longnet=True``: of ``longnet_attention``),
    reading only each query's segment. ``sequence_starts`` int64 ``[B]``: where row b's sequence
    begins. Forward only. The op ``torch.ops.dilated_attention.dilated_attention_with_kv_cache``."""
    segments: List[int] = as_int_list(segment_lengths)
    rates: List[int] = as_int_list(dilation_rates)
    return torch.ops.dilated_attention.dilated_attention_with_kv_cache(
        query, key, value, segments, rates, scale, key_padding_mask, sequence_starts, longnet)
